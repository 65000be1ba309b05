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
    /// The engine thread is gone without a recorded reason (it logged one).
    #[error("the engine loop has stopped")]
    EngineStopped,
    /// This rank's device or engine failed; see [`Fault`](crate::Fault).
    #[error("rank fault: {0}")]
    RankFault(String),
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
            WorkerError::Engine(e) => engine_class(e),
            WorkerError::EngineStopped | WorkerError::RankFault(_) => ErrorClass::Rank,
            WorkerError::DataPlane { .. }
            | WorkerError::DataPlaneProtocol { .. }
            | WorkerError::DataPlaneTimeout { .. }
            | WorkerError::DataPlaneUnreachable { .. }
            | WorkerError::KvNotFound(_) => ErrorClass::KvLost,
            WorkerError::KvStoreStopped | WorkerError::WriterStopped => ErrorClass::Transient,
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
            WorkerError::KvStoreStopped | WorkerError::WriterStopped => "unavailable",
            // Never a row's code: a rank fault hands the message back.
            WorkerError::EngineStopped | WorkerError::RankFault(_) => "rank_fault",
            WorkerError::Config(_) => "config",
        }
    }
}

/// Whose fault an engine error is. The device, the model's files and the engine itself are the
/// rank's: the same request would run on a healthy rank. Everything else is about the request
/// (its input, its length, its constraint, what it asks of the pool) and would fail anywhere.
fn engine_class(e: &EngineError) -> ErrorClass {
    match e {
        EngineError::Device(_)
        | EngineError::Io { .. }
        | EngineError::MissingFile { .. }
        | EngineError::Weights { .. }
        | EngineError::Config { .. } => ErrorClass::Rank,
        EngineError::Tokenizer(_)
        | EngineError::ChatTemplate(_)
        | EngineError::InvalidInput(_)
        | EngineError::ContextLength { .. }
        | EngineError::KvCache(_)
        | EngineError::KvCapacity { .. }
        | EngineError::Grammar(_)
        | EngineError::Unsupported(_) => ErrorClass::Request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_failure_is_the_ranks_fault_and_bad_input_the_requests() {
        let rank = [
            WorkerError::Engine(EngineError::Device("CUDA_ERROR_ILLEGAL_ADDRESS".into())),
            WorkerError::EngineStopped,
            WorkerError::RankFault("a decode step failed".into()),
        ];
        for e in rank {
            assert_eq!(e.class(), ErrorClass::Rank, "{e}");
        }
        let request = [
            WorkerError::Engine(EngineError::ContextLength { len: 9, max: 8 }),
            WorkerError::Engine(EngineError::Grammar("no token allowed".into())),
            WorkerError::Engine(EngineError::KvCapacity { needed: 9, available: 8 }),
        ];
        for e in request {
            assert_eq!(e.class(), ErrorClass::Request, "{e}");
        }
    }
}
