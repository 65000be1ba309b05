//! An inbound message and its one settlement. The handler reads the message; whoever carries
//! out the handler's decision consumes the [`Settlement`] exactly once: ack, dead-letter, or
//! requeue after a pause. A settlement dropped unused puts the message back (and says so), so a
//! bug can delay a request but never lose it.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Acker, Channel};

use crate::options::OP_TIMEOUT;
use crate::{MessageMeta, Outgoing, Publisher};

/// A message as a worker sees it: its body, pdq's metadata, and where it came from.
pub struct Inbound {
    pub body: Arc<[u8]>,
    pub meta: MessageMeta,
    /// The exchange and routing key it was first published with (kept by an alternate exchange,
    /// and across pdq's own requeues).
    pub exchange: String,
    pub routing_key: String,
    /// The queue it was consumed from.
    pub queue: String,
    /// Deliveries so far, this one included (redeliveries after a consumer died holding it).
    pub deliveries: u32,
    /// Past the delivery bound: end it as a failed row and a dead letter, do not run it again.
    pub poisoned: bool,
    pub settlement: Settlement,
}

/// The right, and the duty, to settle one delivery.
pub struct Settlement {
    acker: Option<Acker>,
    /// Keeps the channel open until the delivery is settled (lapin closes a channel when its
    /// last handle goes).
    _channel: Channel,
    queue: String,
    body: Arc<[u8]>,
    meta: MessageMeta,
    republisher: Arc<Publisher>,
}

impl Settlement {
    pub(crate) fn new(
        acker: Acker,
        channel: Channel,
        queue: String,
        body: Arc<[u8]>,
        meta: MessageMeta,
        republisher: Arc<Publisher>,
    ) -> Settlement {
        Settlement { acker: Some(acker), _channel: channel, queue, body, meta, republisher }
    }

    /// Done with it. On a channel that died meanwhile the ack is lost and the broker redelivers
    /// the message; its result row is already written, so the redelivery is a no-op.
    pub async fn ack(mut self) {
        if let Some(acker) = self.acker.take() {
            match tokio::time::timeout(OP_TIMEOUT, acker.ack(BasicAckOptions::default())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "ack lost with its channel; the broker will redeliver"),
                Err(_) => tracing::warn!("ack timed out; the broker will redeliver"),
            }
        }
    }

    /// Rejects without requeue: RabbitMQ moves it to `{ns}.dead`.
    pub async fn dead_letter(mut self) {
        if let Some(acker) = self.acker.take() {
            let nack = acker.nack(BasicNackOptions { requeue: false, multiple: false });
            match tokio::time::timeout(OP_TIMEOUT, nack).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "dead-letter lost with its channel; the broker will redeliver")
                }
                Err(_) => tracing::warn!("dead-letter timed out; the broker will redeliver"),
            }
        }
    }

    /// Back to its queue at once, for another consumer, when this one cannot serve it (its
    /// rank is broken). A plain nack with requeue: the broker marks it redelivered, so it counts
    /// toward the poison bound, which is what stops a request that breaks every rank it meets.
    pub async fn hand_back(mut self) {
        if let Some(acker) = self.acker.take() {
            let nack = acker.nack(BasicNackOptions { requeue: true, multiple: false });
            match tokio::time::timeout(OP_TIMEOUT, nack).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "hand-back lost with its channel; the broker requeues it"),
                Err(_) => tracing::warn!("hand-back timed out; the broker requeues it when the channel closes"),
            }
        }
    }

    /// Back to the tail of its queue after `delay`, for a transient failure. It is published
    /// again rather than nacked, so the pause does not count as a delivery toward the poison
    /// bound; the original is acked once the copy is confirmed.
    pub async fn requeue_after(mut self, delay: Duration) {
        tokio::time::sleep(delay).await;
        let copy = Outgoing {
            exchange: String::new(),
            key: self.queue.clone(),
            body: self.body.to_vec(),
            meta: self.meta.clone(),
        };
        match self.republisher.publish(&copy).await {
            Ok(()) => self.ack().await,
            Err(e) => {
                // Left unacked: the broker requeues it when the channel closes.
                tracing::warn!(error = %e, queue = %self.queue, "could not requeue a message; leaving it to the broker");
                self.acker.take();
            }
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else { return };
        tracing::warn!(queue = %self.queue, "a message was dropped unsettled; requeueing it");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let nack = acker.nack(BasicNackOptions { requeue: true, multiple: false });
                let _ = tokio::time::timeout(OP_TIMEOUT, nack).await;
            });
        }
    }
}
