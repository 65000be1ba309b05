//! Confirmed publishing that survives the broker going away. `mandatory` makes a message that
//! matches no queue come back instead of vanishing, so "published" always means "in a queue
//! someone reads". A message whose confirm never came (the connection died first) is published
//! again on the next connection; consumers absorb the duplicate, since every result row is
//! written once.

use std::sync::Mutex;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::error::is_permanent;
use crate::link::Link;
use crate::options::{CONFIRM_TIMEOUT, OP_TIMEOUT};
use crate::{BrokerError, MessageMeta};

/// Before publishing again what the broker nacked: a queue without a leader for the moment nacks
/// every publish, and sending them straight back would only spin.
const NACK_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub key: String,
    pub body: Vec<u8>,
    pub meta: MessageMeta,
}

/// A confirm-mode channel, shared by the tasks of one process and replaced after a reconnect.
pub struct Publisher {
    link: Link,
    /// The channel and the connection generation it was opened on; never held across `.await`.
    channel: Mutex<Option<(u64, Channel)>>,
}

impl Publisher {
    pub(crate) fn new(link: Link) -> Publisher {
        Publisher { link, channel: Mutex::new(None) }
    }

    pub async fn publish(&self, msg: &Outgoing) -> Result<(), BrokerError> {
        self.publish_all(std::slice::from_ref(msg)).await
    }

    /// Sends every message before waiting for any confirm (a window of in-flight publishes
    /// instead of one round trip each), and publishes again whatever the broker did not confirm
    /// until all are confirmed. Returns early only for what retrying cannot fix: a message no
    /// queue takes, a closed link, or the broker refusing pdq for good.
    pub async fn publish_all(&self, msgs: &[Outgoing]) -> Result<(), BrokerError> {
        let mut pending: Vec<&Outgoing> = msgs.iter().collect();
        let mut stale = None;
        loop {
            let (generation, ch) = match self.channel(stale).await {
                Ok(c) => c,
                Err(e) if e.class() == pdq_protocol::ErrorClass::Transient && !self.link.is_closed() => {
                    tracing::warn!(error = %e, "no channel to publish on; retrying");
                    stale = None;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
            let mut confirms = Vec::with_capacity(pending.len());
            let mut retry = Vec::new();
            // Whether the channel failed (an error, a confirm that never came), as opposed to the
            // broker nacking some messages on a working channel.
            let mut broken = false;
            for m in pending {
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_headers(m.meta.to_headers());
                match ch.basic_publish(m.exchange.as_str().into(), m.key.as_str().into(), opts, &m.body, props).await {
                    Ok(confirm) => confirms.push((m, confirm)),
                    Err(e) if is_permanent(&e) => return Err(refused(m, "the broker closed the channel")),
                    Err(_) => {
                        broken = true;
                        retry.push(m)
                    }
                }
            }
            // One deadline for the whole window: confirms arrive in order, so a healthy broker
            // answers them all together.
            let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
            for (m, confirm) in confirms {
                match tokio::time::timeout_at(deadline, confirm).await {
                    Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {}
                    Ok(Ok(Confirmation::Ack(Some(_)))) => return Err(refused(m, "no queue is bound to this key")),
                    // A nack means the broker could not take it this time (a quorum queue
                    // electing a leader after a node was lost): send it again, on this channel.
                    Ok(Ok(Confirmation::Nack(_))) => retry.push(m),
                    Ok(Err(_)) | Err(_) => {
                        broken = true;
                        retry.push(m)
                    }
                }
            }
            if retry.is_empty() {
                return Ok(());
            }
            if self.link.is_closed() {
                return Err(BrokerError::Closed);
            }
            tracing::warn!(messages = retry.len(), broken, "publishing again what the broker did not confirm");
            pending = retry;
            // Only a failed channel asks the link for a new connection: a nack on a working one
            // used to, and each such reconnect left the old connection open beside the new. A
            // nack gets a new channel on the same connection: a channel that published to a
            // quorum queue whose leader was lost kept being nacked for seconds after a new
            // leader was elected, while a new channel finds the new leader.
            if broken || !ch.status().connected() {
                stale = Some(generation);
            } else {
                stale = None;
                self.channel.lock().expect("channel lock").take();
                tokio::time::sleep(NACK_PAUSE).await;
            }
        }
    }

    /// The cached channel, or a new one when it is missing, broken, or from generation `stale`.
    async fn channel(&self, stale: Option<u64>) -> Result<(u64, Channel), BrokerError> {
        if let Some((g, ch)) = self.channel.lock().expect("channel lock").clone() {
            if Some(g) != stale && ch.status().connected() {
                return Ok((g, ch));
            }
        }
        let mut stale = stale;
        loop {
            let conn = self.link.get(stale).await?;
            let opened = async {
                let ch = conn.connection.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                Ok::<_, lapin::Error>(ch)
            };
            match tokio::time::timeout(OP_TIMEOUT, opened).await {
                Ok(Ok(ch)) => {
                    *self.channel.lock().expect("channel lock") = Some((conn.generation, ch.clone()));
                    return Ok((conn.generation, ch));
                }
                // The connection died under us: ask for the next one.
                Ok(Err(_)) | Err(_) => stale = Some(conn.generation),
            }
        }
    }
}

fn refused(m: &Outgoing, reason: &'static str) -> BrokerError {
    BrokerError::Refused { exchange: m.exchange.clone(), key: m.key.clone(), reason }
}
