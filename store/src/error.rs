use pdq_protocol::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach database {url}: {source}")]
    Unreachable { url: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("job {0} not found")]
    JobNotFound(uuid::Uuid),
    #[error("job {id} is {status}; it can no longer be cancelled")]
    NotCancellable { id: uuid::Uuid, status: String },
}

impl StoreError {
    pub fn unreachable(url: &str, source: sqlx::Error) -> Self {
        StoreError::Unreachable { url: redact_url(url), source }
    }

    /// The class of the error: transient ones are retried (message requeued), the rest are not.
    pub fn error_type(&self) -> &'static str {
        match self {
            StoreError::Unreachable { .. } => "unavailable",
            StoreError::Sql(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => "unavailable",
            StoreError::Sql(_) | StoreError::Migrate(_) => "database",
            StoreError::JobNotFound(_) | StoreError::NotCancellable { .. } => "not_found",
        }
    }
}
