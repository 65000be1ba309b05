//! One owner for each message's life. A role's handler reads a message and returns a
//! [`Decision`]; [`execute`] carries it out and settles the message exactly once. Nothing else
//! in the workers acks, rejects or requeues, and no handler touches the transport.

use std::time::Duration;

use pdq_broker::{Outgoing, Settlement};
use pdq_protocol::{ErrorBody, ErrorClass, MetaInfo, Outcome};
use uuid::Uuid;

use crate::actors::kv_store::KvLease;
use crate::actors::writer::Written;
use crate::context::Ctx;
use crate::WorkerError;

/// How long to hold a message before requeueing it after a transient failure, so a broker or
/// database outage does not turn into a redelivery storm.
const REQUEUE_DELAY: Duration = Duration::from_secs(1);

pub enum Decision {
    /// Already answered (a redelivery after its row was written, or a cancelled job): ack.
    Ack,
    /// Publish these, then ack: a forward to the rank a pin names, a KV handle, a re-prefill.
    /// The KV lease is handed off once the handle is confirmed; if the broker refuses the
    /// messages for good, `failed` is written instead (or the message dead-lettered).
    Publish { msgs: Vec<Outgoing>, lease: Option<KvLease>, failed: Option<FailedRow> },
    /// Record the row, then ack; or dead-letter the message (unreadable, or poison).
    Write { outcome: Outcome, dead_letter: bool },
    /// Back to its queue after a pause: the broker, the database or an actor is away for now.
    Requeue(WorkerError),
    /// Back to its queue now, for another rank: this rank is broken (see `fault.rs`). Counted
    /// as a delivery, so a request that breaks every rank it meets ends as a poison message
    /// instead of breaking ranks forever.
    HandBack(WorkerError),
    /// A KV handle whose prefill rank this decoder cannot reach: back to the tail of its queue
    /// after `after` (unacked meanwhile), for a decoder that can reach it, or for this one
    /// once the link is back. Not a delivery toward the poison bound.
    Defer { after: Duration },
    /// Nothing names a request to record a row for: dead-letter it for inspection.
    DeadLetter(String),
}

/// Who a failed row is for, ready before the outcome is known.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub request_id: Uuid,
    pub job_id: Option<Uuid>,
    pub custom_id: Option<String>,
    pub meta_info: MetaInfo,
}

impl FailedRow {
    pub fn outcome(self, error: ErrorBody) -> Outcome {
        Outcome::failed(self.request_id, self.job_id, self.custom_id, error, self.meta_info)
    }

    pub fn write(self, error: ErrorBody) -> Decision {
        Decision::Write { outcome: self.outcome(error), dead_letter: false }
    }

    /// A poison message: its row says why, and the message goes to `{ns}.dead`.
    pub fn poisoned(self, deliveries: u32) -> Decision {
        let message =
            format!("delivered {deliveries} times, each time to a worker that died or hung holding it; not run again");
        Decision::Write { outcome: self.outcome(ErrorBody::new("delivery_limit", message)), dead_letter: true }
    }
}

impl Decision {
    /// What a failure of an accepted request means for its message: transient ones are retried
    /// later, anything else ends the request with its failed row.
    pub fn from_error(e: WorkerError, failed: FailedRow) -> Decision {
        match e.class() {
            ErrorClass::Transient | ErrorClass::Fatal => Decision::Requeue(e),
            ErrorClass::Rank => Decision::HandBack(e),
            ErrorClass::KvLost | ErrorClass::Request => {
                tracing::warn!(request_id = %failed.request_id, error = %e, "request failed");
                failed.write(ErrorBody::new(e.code(), e.to_string()))
            }
        }
    }
}

/// Carries out `decision` and settles the message once.
pub async fn execute(ctx: &Ctx, settlement: Settlement, decision: Decision) {
    match decision {
        Decision::Ack => settlement.ack().await,
        Decision::Publish { msgs, lease, failed } => match ctx.publisher.publish_all(&msgs).await {
            Ok(()) => {
                for m in &msgs {
                    tracing::debug!(exchange = %m.exchange, key = %m.key, "published");
                }
                if let Some(lease) = lease {
                    lease.hand_off();
                }
                settlement.ack().await;
            }
            Err(e) if e.class() == ErrorClass::Request => match failed {
                Some(f) => write(ctx, settlement, f.outcome(ErrorBody::new(e.code(), e.to_string())), false).await,
                None => {
                    tracing::error!(error = %e, "a message could not be forwarded; dead-lettering it");
                    settlement.dead_letter().await;
                }
            },
            // The link is closing or refused for good: the process is going down, and the
            // settlement, dropped, hands the message back to the broker.
            Err(e) => tracing::warn!(error = %e, "publishing failed; the message goes back to its queue"),
        },
        Decision::Write { outcome, dead_letter } => write(ctx, settlement, outcome, dead_letter).await,
        Decision::Requeue(e) => {
            tracing::warn!(error = %e, "transient failure; requeueing");
            settlement.requeue_after(REQUEUE_DELAY).await;
        }
        Decision::HandBack(e) => {
            // The fault was logged once where it was raised; the worker stops on it.
            ctx.fault.raise(e.to_string());
            let _ = ctx.consumers_cancelled.clone().wait_for(|cancelled| *cancelled).await;
            tracing::debug!(error = %e, "handing a message back for another rank");
            settlement.hand_back().await;
        }
        Decision::Defer { after } => settlement.requeue_after(after).await,
        Decision::DeadLetter(reason) => {
            tracing::error!(%reason, "dead-lettering a message no row can be written for");
            settlement.dead_letter().await;
        }
    }
}

async fn write(ctx: &Ctx, settlement: Settlement, outcome: Outcome, dead_letter: bool) {
    let observed = outcome.clone();
    match ctx.writer.write(outcome, settlement, dead_letter).await {
        // Only a new row counts: a duplicate was counted when it was first written.
        Ok(Written::New) => {
            tracing::debug!(status = ?observed.status, "result recorded");
            ctx.metrics.outcome(&observed)
        }
        Ok(Written::Duplicate) => tracing::debug!(request_id = %observed.request_id, "result already written"),
        Err(e) => tracing::error!(error = %e, "could not record a result; the message goes back to its queue"),
    }
}
