//! `completion_window`: a batch still running when its window passes is expired; what it had
//! finished stays in its output file, the rest is in its error file as `batch_expired`.

use std::time::Duration;

use pdq_store::Store;

pub(crate) async fn sweep(store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.expire_batches().await {
            Ok(ids) => ids.iter().for_each(|id| tracing::info!(batch = %id, "batch expired")),
            // The database away: the next sweep tries again.
            Err(e) => tracing::warn!(error = %e, "expiring batches"),
        }
    }
}
