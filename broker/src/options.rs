//! How a process talks to RabbitMQ: the broker's nodes, a connection name operators (and fault
//! tests) can find it by, the heartbeat that lets the broker notice a hung process, and the
//! queue type.

use std::time::Duration;

use crate::nodes::{BrokerNodes, NodeListError};

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
    /// The nodes of one RabbitMQ cluster (often just one broker); see [`BrokerNodes`].
    pub nodes: BrokerNodes,
    pub namespace: String,
    /// Shown by `rabbitmqctl list_connections name client_properties`.
    pub connection_name: String,
    pub heartbeat: Duration,
    pub queue_type: QueueType,
    pub consumer_timeout: Duration,
    pub max_deliveries: u32,
}

impl BrokerOptions {
    /// The defaults for `namespace` on the broker at `url`: one AMQP URL, or several nodes of one
    /// cluster, comma-separated.
    ///
    /// # Panics
    /// When `url` is not such a list (an empty entry). Text from a user is parsed into
    /// [`BrokerNodes`] first, which names the mistake (the command line does, and
    /// [`crate::Broker::connect`]); this is for URLs a program already holds.
    pub fn new(url: &str, namespace: &str) -> BrokerOptions {
        let nodes = url.parse().unwrap_or_else(|e: NodeListError| panic!("{e}"));
        BrokerOptions::on(nodes, namespace)
    }

    /// The defaults for `namespace` on these nodes.
    pub fn on(nodes: BrokerNodes, namespace: &str) -> BrokerOptions {
        BrokerOptions {
            nodes,
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

    /// Node `i`'s URL with the heartbeat as a query parameter, unless the user's URL sets one.
    pub(crate) fn url_with_heartbeat(&self, node: usize) -> String {
        let url = self.nodes.url(node);
        if url.contains("heartbeat=") {
            return url.to_string();
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}heartbeat={}", self.heartbeat.as_secs().max(1))
    }
}
