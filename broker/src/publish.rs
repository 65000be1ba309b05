//! Confirmed publishing. `mandatory` makes a message that matches no queue come back instead of
//! vanishing, so "published" always means "in a queue someone reads".

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::{BrokerError, MessageMeta};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub key: String,
    pub body: Vec<u8>,
    pub meta: MessageMeta,
}

/// A confirm-mode channel. Clone-free by design: one publisher per task that publishes.
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub(crate) async fn new(channel: Channel) -> Result<Publisher, BrokerError> {
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    pub async fn publish(&self, msg: &Outgoing) -> Result<(), BrokerError> {
        self.publish_all(std::slice::from_ref(msg)).await
    }

    /// Sends every message before waiting for any confirm: a window of in-flight publishes
    /// instead of one round trip per message.
    pub async fn publish_all(&self, msgs: &[Outgoing]) -> Result<(), BrokerError> {
        let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
        let mut pending = Vec::with_capacity(msgs.len());
        for m in msgs {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(m.meta.to_headers());
            let confirm = self
                .channel
                .basic_publish(m.exchange.as_str().into(), m.key.as_str().into(), opts, &m.body, props)
                .await?;
            pending.push((m, confirm));
        }
        for (m, confirm) in pending {
            let refused = |reason| BrokerError::Refused { exchange: m.exchange.clone(), key: m.key.clone(), reason };
            match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(_)) => return Err(refused("no queue is bound to this key")),
                Confirmation::Nack(_) => return Err(refused("nacked")),
            }
        }
        Ok(())
    }
}
