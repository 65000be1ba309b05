//! How a process talks to RabbitMQ: the URL, a connection name operators (and fault tests) can
//! find it by, the heartbeat that lets the broker notice a hung process, and the queue type.

use std::time::Duration;

/// Short enough that a hung worker's unacked messages go back to the queue within seconds.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// A delivery unacked this long makes the broker close the consumer's channel and requeue it
/// (RabbitMQ 3.12+ honours the per-queue argument; older brokers use their global
/// `consumer_timeout`). A backstop behind heartbeats, so it is generous.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Deliveries of one message (counting redeliveries after a consumer died holding it) before it
/// is taken for poison: a failed row and a dead letter instead of another round.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// Every broker operation has a deadline, so a connection that died without lapin noticing yet
/// costs a retry, never a stuck task. A confirm can legitimately take a while (the broker
/// throttles publishers under memory pressure); an unconfirmed message is published again, and
/// the duplicate absorbed.
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// RabbitMQ's queue types: classic (one node) or quorum (Raft-replicated over the cluster's
/// nodes, for clusters that must survive losing a broker node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!("queue type must be 'classic' or 'quorum', got '{other}'")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub url: String,
    pub namespace: String,
    /// Shown by `rabbitmqctl list_connections name client_properties`.
    pub connection_name: String,
    pub heartbeat: Duration,
    pub queue_type: QueueType,
    pub consumer_timeout: Duration,
    pub max_deliveries: u32,
}

impl BrokerOptions {
    pub fn new(url: &str, namespace: &str) -> BrokerOptions {
        BrokerOptions {
            url: url.to_string(),
            namespace: namespace.to_string(),
            connection_name: format!("pdq:{namespace}"),
            heartbeat: DEFAULT_HEARTBEAT,
            queue_type: QueueType::default(),
            consumer_timeout: DEFAULT_CONSUMER_TIMEOUT,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
        }
    }

    pub fn named(mut self, name: impl Into<String>) -> BrokerOptions {
        self.connection_name = name.into();
        self
    }

    /// The URL with the heartbeat as a query parameter, unless the user's URL sets one itself.
    pub(crate) fn url_with_heartbeat(&self) -> String {
        if self.url.contains("heartbeat=") {
            return self.url.clone();
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}heartbeat={}", self.url, self.heartbeat.as_secs().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_joins_the_url_unless_it_names_one() {
        let o = BrokerOptions::new("amqp://h:5672/%2f", "ns");
        assert_eq!(o.url_with_heartbeat(), "amqp://h:5672/%2f?heartbeat=10");
        let o = BrokerOptions::new("amqp://h/%2f?frame_max=8192", "ns");
        assert_eq!(o.url_with_heartbeat(), "amqp://h/%2f?frame_max=8192&heartbeat=10");
        let o = BrokerOptions::new("amqp://h/%2f?heartbeat=3", "ns");
        assert_eq!(o.url_with_heartbeat(), "amqp://h/%2f?heartbeat=3");
    }
}
