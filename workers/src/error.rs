use pdq_broker::BrokerError;
use pdq_engine::EngineError;
use pdq_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("model: {0}")]
    Engine(#[from] EngineError),
    #[error("data plane {endpoint}: {source}")]
    DataPlane { endpoint: String, source: std::io::Error },
    #[error("KV {0} is not held by its prefill worker (freed, expired, or the worker restarted)")]
    KvNotFound(uuid::Uuid),
    #[error("the engine loop has stopped")]
    EngineStopped,
    #[error("{0}")]
    Config(String),
}

impl WorkerError {
    /// The class decides what happens to the message: `unavailable` is requeued and retried,
    /// `kv_lost` re-prefills, the rest fail the request with a result row.
    pub fn error_type(&self) -> &'static str {
        match self {
            WorkerError::Broker(e) => e.error_type(),
            WorkerError::Store(e) => e.error_type(),
            WorkerError::Engine(e) => e.error_type(),
            WorkerError::DataPlane { .. } | WorkerError::KvNotFound(_) => "kv_lost",
            WorkerError::EngineStopped => "unavailable",
            WorkerError::Config(_) => "config",
        }
    }
}
