use pdq_broker::BrokerError;
use pdq_engine::EngineError;
use pdq_protocol::ErrorClass;
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
    #[error("data plane {endpoint}: {reason}")]
    DataPlaneProtocol { endpoint: String, reason: String },
    #[error("data plane {endpoint}: no answer within {seconds:.1}s")]
    DataPlaneTimeout { endpoint: String, seconds: f64 },
    /// `last` is the failure that put the endpoint in backoff.
    #[error("{last} (the peer is in backoff: next try in {:.1}s)", retry_in.as_secs_f64())]
    DataPlaneUnreachable { last: String, retry_in: std::time::Duration },
    #[error("KV {0} is not held by its prefill worker (freed, expired, or the worker restarted)")]
    KvNotFound(uuid::Uuid),
    #[error("the engine loop has stopped")]
    EngineStopped,
    #[error("the KV store has stopped")]
    KvStoreStopped,
    #[error("the result writer has stopped")]
    WriterStopped,
    #[error("{0}")]
    Config(String),
}

impl WorkerError {
    /// Decides what happens to the message: transient errors requeue it, a lost KV re-prefills
    /// it, request errors end it as a failed row, fatal ones stop the worker.
    pub fn class(&self) -> ErrorClass {
        match self {
            WorkerError::Broker(e) => e.class(),
            WorkerError::Store(e) => e.class(),
            WorkerError::Engine(_) => ErrorClass::Request,
            WorkerError::DataPlane { .. }
            | WorkerError::DataPlaneProtocol { .. }
            | WorkerError::DataPlaneTimeout { .. }
            | WorkerError::DataPlaneUnreachable { .. }
            | WorkerError::KvNotFound(_) => ErrorClass::KvLost,
            WorkerError::EngineStopped | WorkerError::KvStoreStopped | WorkerError::WriterStopped => {
                ErrorClass::Transient
            }
            WorkerError::Config(_) => ErrorClass::Fatal,
        }
    }

    /// The `error.code` of the failed row this error ends a request with.
    pub fn code(&self) -> &'static str {
        match self {
            WorkerError::Broker(e) => e.code(),
            WorkerError::Store(e) => e.code(),
            WorkerError::Engine(e) => e.error_type(),
            WorkerError::DataPlane { .. }
            | WorkerError::DataPlaneProtocol { .. }
            | WorkerError::DataPlaneTimeout { .. }
            | WorkerError::DataPlaneUnreachable { .. }
            | WorkerError::KvNotFound(_) => "kv_lost",
            WorkerError::EngineStopped | WorkerError::KvStoreStopped | WorkerError::WriterStopped => "unavailable",
            WorkerError::Config(_) => "config",
        }
    }
}
