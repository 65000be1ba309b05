//! RabbitMQ: the topology of a namespace (CONTRACT §4), confirmed publishing, consuming, and the
//! AMQP headers that carry pdq's per-message metadata beside the unchanged input line.

mod error;
mod meta;
mod publish;
mod topology;

pub use error::BrokerError;
pub use lapin::message::Delivery;
pub use lapin::Consumer;
pub use meta::MessageMeta;
pub use publish::{Outgoing, Publisher};
pub use topology::Broker;
