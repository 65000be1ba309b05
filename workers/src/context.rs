//! What one worker's message tasks share.

use pdq_broker::Publisher;
use pdq_protocol::Topology;
use pdq_store::Store;

use crate::closed_jobs::ClosedJobs;
use crate::data_plane::KvClient;
use crate::engine_loop::EngineHandle;
use crate::metrics::Labels;
use crate::writer::ResultWriter;
use crate::WorkerConfig;

pub struct Ctx {
    pub cfg: WorkerConfig,
    pub store: Store,
    pub publisher: Publisher,
    pub topology: Topology,
    pub engine: EngineHandle,
    pub writer: ResultWriter,
    /// Decoders' connections to the prefill ranks' data planes.
    pub kv: KvClient,
    pub metrics: Labels,
    /// Cancelled jobs, whose messages are acked without running.
    pub closed: ClosedJobs,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
