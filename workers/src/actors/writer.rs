//! The result writer: one task per worker batches result rows into one transaction, then settles
//! each row's message (ack, or reject to the dead-letter queue). A message is never acked before
//! its row is committed, so a crash in between means a redelivery, which the results primary key
//! turns into a no-op.
//!
//! Batching is group commit: while one transaction is in flight the rows that arrive queue up,
//! and the next transaction takes all of them (up to [`RESULT_BATCH`]). An idle writer commits a
//! lone row at once instead of lingering for company, and a busy one writes big batches.

use std::collections::HashSet;
use std::time::Duration;

use pdq_broker::Settlement;
use pdq_protocol::{ErrorBody, ErrorClass, Outcome};
use pdq_store::Store;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::WorkerError;

/// Rows per transaction at most; more only lengthens the wait of the first row in a batch.
pub const RESULT_BATCH: usize = 1000;
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

struct Pending {
    outcome: Outcome,
    settlement: Settlement,
    /// Reject without requeue once written: RabbitMQ moves it to `{ns}.dead`.
    dead_letter: bool,
    done: oneshot::Sender<Written>,
}

/// What became of a row handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Committed now, and its message settled.
    New,
    /// The request already had its row (a redelivery, or its job was cancelled meanwhile);
    /// nothing changed, and the message is settled.
    Duplicate,
}

#[derive(Clone)]
pub struct ResultWriter {
    tx: mpsc::UnboundedSender<Pending>,
}

impl ResultWriter {
    /// The task ends when every handle is dropped, after writing what it was given.
    pub fn spawn(store: Store) -> (ResultWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(store, rx));
        (ResultWriter { tx }, task)
    }

    /// Queues a row; resolves once it is committed and its message settled.
    pub async fn write(
        &self,
        outcome: Outcome,
        settlement: Settlement,
        dead_letter: bool,
    ) -> Result<Written, WorkerError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Pending { outcome, settlement, dead_letter, done }).map_err(|_| WorkerError::WriterStopped)?;
        rx.await.map_err(|_| WorkerError::WriterStopped)
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(RESULT_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Whatever queued while the last transaction ran joins this one.
        while batch.len() < RESULT_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let outcomes: Vec<Outcome> = batch.iter().map(|p| p.outcome.clone()).collect();
        let (new, rejected) = write(&store, &outcomes).await;
        // Settled together: each ack is a frame on the channel, not a round trip, so there is
        // nothing to wait for one by one.
        let settled = batch.drain(..).enumerate().map(|(i, p)| {
            let written = if new.contains(&p.outcome.request_id) { Written::New } else { Written::Duplicate };
            let dead = p.dead_letter || rejected.contains(&i);
            async move {
                if dead {
                    p.settlement.dead_letter().await;
                } else {
                    p.settlement.ack().await;
                }
                let _ = p.done.send(written);
            }
        });
        futures_util::future::join_all(settled).await;
    }
}

/// Writes a batch; returns the ids of the rows that were new, and the indexes of rows the
/// database refused for good. A transient error is retried until the database is back: a row is
/// never dropped for want of a connection, and the messages stay unacked meanwhile, so the broker
/// keeps them if this process dies. A permanent error (a row breaking a constraint) is isolated
/// by writing the rows one by one.
async fn write(store: &Store, outcomes: &[Outcome]) -> (HashSet<Uuid>, Vec<usize>) {
    loop {
        match store.write_results(outcomes).await {
            Ok(w) => return (w.inserted.into_iter().collect(), Vec::new()),
            Err(e) if e.class() == ErrorClass::Transient => {
                tracing::error!(error = %e, rows = outcomes.len(), "writing results failed; retrying");
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = outcomes.len(), "a result batch was refused; writing rows one by one");
                break;
            }
        }
    }
    let mut new = HashSet::new();
    let mut rejected = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        loop {
            match store.write_results(std::slice::from_ref(o)).await {
                Ok(w) => {
                    new.extend(w.inserted);
                    break;
                }
                Err(e) if e.class() == ErrorClass::Transient => tokio::time::sleep(RETRY_BACKOFF).await,
                Err(e) => {
                    // Record the request as failed rather than leave its job one row short.
                    let error = ErrorBody::new("result_rejected", format!("the database refused the result: {e}"));
                    let fallback =
                        Outcome::failed(o.request_id, o.job_id, o.custom_id.clone(), error, o.meta_info.clone());
                    match store.write_results(std::slice::from_ref(&fallback)).await {
                        Ok(w) => new.extend(w.inserted),
                        Err(e) => {
                            tracing::error!(error = %e, request_id = %o.request_id, "result row refused; dead-lettering its message");
                            rejected.push(i);
                        }
                    }
                    break;
                }
            }
        }
    }
    (new, rejected)
}
