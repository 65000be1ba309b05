//! How a long-lived process (`serve`, `worker`, `api`) ends: on SIGINT or SIGTERM, its feeder
//! first gives up its lease, then the caller drains.

use pdq_protocol::ClusterShape;
use pdq_store::Store;

use crate::cli::{FeederArgs, Global};

/// Runs this process's feeder (when `--feeder on`) until SIGINT or SIGTERM, then stops it,
/// giving its lease to another process, before the workers drain.
pub fn feeding_until_shutdown(
    g: &Global,
    feeder: &FeederArgs,
    store: &Store,
    shape: Option<ClusterShape>,
) -> impl std::future::Future<Output = ()> + use<> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = feeder.spawn(g, store, shape, stop_rx);
    async move {
        shutdown_signal().await;
        let _ = stop.send(true);
        if let Some(task) = task {
            task.await.ok();
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
