//! Which of the namespace's jobs were cancelled (or expired), so a worker can skip their
//! messages without asking the database about each one. A task re-reads the set every
//! [`POLL`]; handlers read the latest copy without waiting.
//!
//! Skipping is an optimisation, never what keeps a request to one row: cancelling writes every
//! unfinished request's `cancelled` row at once, and a message run anyway in the poll's window
//! (or redelivered after its row was written) ends in an insert that changes nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pdq_store::Store;
use tokio::sync::watch;
use uuid::Uuid;

/// How stale the set may be: the delay before a cancel stops work already queued.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct ClosedJobs {
    rx: watch::Receiver<Arc<HashSet<Uuid>>>,
}

impl ClosedJobs {
    /// Polls until `stop` fires; a failed poll keeps the last set and is retried.
    pub fn spawn(store: Store, namespace: String, mut stop: watch::Receiver<bool>) -> ClosedJobs {
        let (tx, rx) = watch::channel(Arc::new(HashSet::new()));
        tokio::spawn(async move {
            loop {
                match store.closed_jobs(&namespace).await {
                    Ok(ids) => {
                        let ids: HashSet<Uuid> = ids.into_iter().collect();
                        if **tx.borrow() != ids {
                            tx.send_replace(Arc::new(ids));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reading cancelled jobs failed; keeping the last set"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        ClosedJobs { rx }
    }

    pub fn contains(&self, job: Option<Uuid>) -> bool {
        job.is_some_and(|j| self.rx.borrow().contains(&j))
    }
}
