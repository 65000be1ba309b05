//! RabbitMQ, and the only crate that knows it: the topology of a namespace (CONTRACT §4), a link
//! that reconnects (moving on to the next node of a broker cluster), confirmed publishing that publishes again what was not confirmed, consuming
//! across reconnects with a bound on deliveries, and inbound messages that each carry exactly
//! one settlement. pdq's per-message metadata travels in AMQP headers beside the unchanged
//! input line.

mod broker;
mod ceiling;
mod consume;
mod error;
mod inbound;
mod link;
mod meta;
mod nodes;
mod options;
mod publish;
mod topology;

pub use broker::Broker;
pub use ceiling::{broker_ceiling, CeilingOptions};
pub use consume::Subscription;
pub use error::BrokerError;
pub use inbound::{Inbound, Settlement};
pub use meta::MessageMeta;
pub use nodes::{BrokerNodes, NodeListError};
pub use options::{BrokerOptions, QueueType, DEFAULT_CONSUMER_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_MAX_DELIVERIES};
pub use publish::{Outgoing, Publisher};
