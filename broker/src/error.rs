use pdq_protocol::ErrorClass;

use crate::NodeListError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// `url` names every node tried (passwords masked).
    #[error("cannot reach broker {url}: {source}")]
    Unreachable { url: String, source: lapin::Error },
    #[error("the broker refused pdq's credentials or virtual host at {url}: {source}")]
    AccessRefused { url: String, source: lapin::Error },
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{what} '{name}' already exists with other arguments (declared by an older pdq, or another --queue-type?); delete it or use another namespace: {source}")]
    Topology { what: &'static str, name: String, source: lapin::Error },
    #[error("the broker refused message for {exchange}/{key} ({reason})")]
    Refused { exchange: String, key: String, reason: &'static str },
    #[error(transparent)]
    NodeList(#[from] NodeListError),
    #[error("the broker link is closed")]
    Closed,
    #[error("the broker stalled: {0}")]
    Stalled(&'static str),
}

impl BrokerError {
    /// Everything but refused credentials, a conflicting topology, an unusable URL list and an
    /// unroutable message
    /// clears up by reconnecting.
    pub fn class(&self) -> ErrorClass {
        match self {
            BrokerError::Unreachable { .. } | BrokerError::Amqp(_) | BrokerError::Closed | BrokerError::Stalled(_) => {
                ErrorClass::Transient
            }
            BrokerError::AccessRefused { .. } | BrokerError::Topology { .. } | BrokerError::NodeList(_) => {
                ErrorClass::Fatal
            }
            BrokerError::Refused { .. } => ErrorClass::Request,
        }
    }

    /// The code a result row records when this error ends a request.
    pub fn code(&self) -> &'static str {
        match self.class() {
            ErrorClass::Request => "unroutable",
            _ => "broker",
        }
    }
}

/// The AMQP reply code of a protocol error, if the broker sent one.
pub(crate) fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Reply codes retrying cannot fix: 403 ACCESS_REFUSED, 530 NOT_ALLOWED (vhost), 406
/// PRECONDITION_FAILED (a queue or exchange declared with other arguments).
pub(crate) fn is_permanent(e: &lapin::Error) -> bool {
    matches!(reply_code(e), Some(403 | 530 | 406))
}
