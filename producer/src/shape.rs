use pdq_protocol::ClusterShape;
use pdq_store::Store;

use crate::ProducerError;

/// A worker whose heartbeat is older than this is not counted (it beats every 2 s).
const LIVE_WITHIN_S: f64 = 10.0;

/// The DP sizes of the cluster serving `namespace`, as its live workers registered them.
pub async fn cluster_shape(store: &Store, namespace: &str) -> Result<ClusterShape, ProducerError> {
    let workers = store.live_workers(namespace, LIVE_WITHIN_S).await?;
    let newest =
        workers.iter().max_by_key(|w| w.started_at).ok_or_else(|| ProducerError::NoCluster(namespace.to_string()))?;
    let shape = newest.shape();
    if workers.iter().any(|w| w.shape() != shape) {
        tracing::warn!(?shape, "live workers disagree on the cluster shape; using the newest worker's");
    }
    Ok(shape)
}
