#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach broker {url}: {source}")]
    Unreachable { url: String, source: lapin::Error },
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{what} '{name}' already exists with other arguments (declared by an older pdq?); delete it or use another namespace: {source}")]
    Topology { what: &'static str, name: String, source: lapin::Error },
    #[error("the broker refused message for {exchange}/{key} ({reason})")]
    Refused { exchange: String, key: String, reason: &'static str },
}

impl BrokerError {
    /// All broker errors are transient from a message's point of view: requeue and retry.
    pub fn error_type(&self) -> &'static str {
        match self {
            BrokerError::Unreachable { .. } | BrokerError::Amqp(_) => "unavailable",
            BrokerError::Topology { .. } => "config",
            BrokerError::Refused { .. } => "unroutable",
        }
    }
}
