use pdq_protocol::{redact_url, ErrorClass};

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

    /// Transient errors (the database away, a connection cut) are retried with the message
    /// kept; the rest are not.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Unreachable { .. } => ErrorClass::Transient,
            StoreError::Sql(e) if is_transient(e) => ErrorClass::Transient,
            StoreError::Migrate(_) => ErrorClass::Fatal,
            StoreError::Sql(_) | StoreError::JobNotFound(_) | StoreError::NotCancellable { .. } => ErrorClass::Request,
        }
    }

    /// The code a result row records when this error ends a request.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Unreachable { .. } => "unavailable",
            StoreError::Sql(e) if is_transient(e) => "unavailable",
            StoreError::Sql(_) | StoreError::Migrate(_) => "database",
            StoreError::JobNotFound(_) | StoreError::NotCancellable { .. } => "not_found",
        }
    }
}

/// A connection that broke, or none to be had: the database is away, not the query wrong.
/// `pg_terminate_backend` arrives as an admin-shutdown database error (SQLSTATE 57P01).
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}
