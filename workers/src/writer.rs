//! The result writer: one task per worker batches result rows into one transaction, then settles
//! each row's message (ack, or reject to the dead-letter queue). A message is never acked before
//! its row is committed, so a crash in between means a redelivery, which the results primary key
//! turns into a no-op.

use std::time::Duration;

use pdq_broker::Settlement;
use pdq_protocol::{ErrorBody, ErrorClass, Outcome};
use pdq_store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::WorkerError;

/// Rows per transaction; more only lengthens the wait of the first row in a batch.
const MAX_BATCH: usize = 256;
/// How long a batch waits to fill once its first row arrives.
const LINGER: Duration = Duration::from_millis(5);
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

struct Pending {
    outcome: Outcome,
    settlement: Settlement,
    /// Reject without requeue once written: RabbitMQ moves it to `{ns}.dead`.
    dead_letter: bool,
    done: oneshot::Sender<()>,
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
    pub async fn write(&self, outcome: Outcome, settlement: Settlement, dead_letter: bool) -> Result<(), WorkerError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Pending { outcome, settlement, dead_letter, done }).map_err(|_| WorkerError::WriterStopped)?;
        rx.await.map_err(|_| WorkerError::WriterStopped)
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        let outcomes: Vec<Outcome> = batch.iter().map(|p| p.outcome.clone()).collect();
        let rejected = write(&store, &outcomes).await;
        for (i, p) in batch.drain(..).enumerate() {
            if p.dead_letter || rejected.contains(&i) {
                p.settlement.dead_letter().await;
            } else {
                p.settlement.ack().await;
            }
            let _ = p.done.send(());
        }
    }
}

/// Writes a batch; returns the indexes of rows the database refused for good. A transient error
/// is retried until the database is back: a row is never dropped for want of a connection, and the
/// messages stay unacked meanwhile, so the broker keeps them if this process dies. A permanent
/// error (a row breaking a constraint) is isolated by writing the rows one by one.
async fn write(store: &Store, outcomes: &[Outcome]) -> Vec<usize> {
    loop {
        match store.write_results(outcomes).await {
            Ok(_) => return Vec::new(),
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
    let mut rejected = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        loop {
            match store.write_results(std::slice::from_ref(o)).await {
                Ok(_) => break,
                Err(e) if e.class() == ErrorClass::Transient => tokio::time::sleep(RETRY_BACKOFF).await,
                Err(e) => {
                    // Record the request as failed rather than leave its job one row short.
                    let error = ErrorBody::new("result_rejected", format!("the database refused the result: {e}"));
                    let fallback =
                        Outcome::failed(o.request_id, o.job_id, o.custom_id.clone(), error, o.meta_info.clone());
                    if let Err(e) = store.write_results(std::slice::from_ref(&fallback)).await {
                        tracing::error!(error = %e, request_id = %o.request_id, "result row refused; dead-lettering its message");
                        rejected.push(i);
                    }
                    break;
                }
            }
        }
    }
    rejected
}
