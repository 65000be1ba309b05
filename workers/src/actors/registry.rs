//! Registers a worker in `workers` and keeps its heartbeat fresh, so producers know the
//! cluster's DP sizes and operators can see who is alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pdq_store::{Store, WorkerInfo};
use tokio::sync::watch;

use crate::config::HEARTBEAT_EVERY;
use crate::metrics::Labels;
use crate::WorkerConfig;

pub async fn register(
    store: &Store,
    cfg: &WorkerConfig,
    endpoint: Option<String>,
    model: &str,
) -> Result<(), pdq_store::StoreError> {
    let now = chrono::Utc::now();
    store
        .register_worker(&WorkerInfo {
            namespace: cfg.namespace().to_string(),
            role: cfg.role,
            dp_rank: cfg.rank as i32,
            prefill_dp: cfg.cluster.shape.prefill_dp as i32,
            decode_dp: cfg.cluster.shape.decode_dp as i32,
            mode: cfg.cluster.shape.mode,
            endpoint,
            host: cfg.cluster.advertise_host.clone(),
            pid: std::process::id() as i32,
            model: model.to_string(),
            started_at: now,
            heartbeat_at: now,
        })
        .await
}

/// Beats until `stop` fires, then removes the row.
/// Also carries the broker's reconnect count into the metrics.
pub fn spawn_heartbeat(
    store: Store,
    cfg: WorkerConfig,
    mut stop: watch::Receiver<bool>,
    reconnects: Arc<AtomicU64>,
    metrics: Labels,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        let mut counted = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    let now = reconnects.load(Ordering::Relaxed);
                    metrics.reconnects(now - counted);
                    counted = now;
                    if let Err(e) = store.heartbeat(cfg.namespace(), cfg.role, cfg.rank).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
            }
        }
        if let Err(e) = store.deregister_worker(cfg.namespace(), cfg.role, cfg.rank).await {
            tracing::warn!(error = %e, "deregistering failed");
        }
    })
}
