use pdq_broker::BrokerError;
use pdq_protocol::ValidationError;
use pdq_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The whole job is refused (a duplicate `custom_id`): nothing was recorded or enqueued.
    #[error("job rejected: {0}")]
    Rejected(ValidationError),
    /// The input as a whole is refused: a line is not text.
    #[error("line {line} is not UTF-8")]
    NotUtf8 { line: usize },
    #[error("{0} is empty: no request lines")]
    Empty(String),
    #[error("no live workers in namespace '{0}': start a cluster (`pdq serve`, or `pdq worker` per rank) first; its DP sizes decide which ranks a request may ask for")]
    NoCluster(String),
}

impl ProducerError {
    pub fn code(&self) -> &'static str {
        match self {
            ProducerError::Broker(e) => e.code(),
            ProducerError::Store(e) => e.code(),
            ProducerError::Io { .. } | ProducerError::Empty(_) | ProducerError::NotUtf8 { .. } => "input",
            ProducerError::Rejected(e) => e.code(),
            ProducerError::NoCluster(_) => "no_cluster",
        }
    }
}
