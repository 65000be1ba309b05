//! What one worker's message tasks share.

use pdq_broker::Publisher;
use pdq_protocol::Topology;
use pdq_store::Store;

use crate::actors::closed_jobs::ClosedJobs;
use crate::actors::engine_loop::EngineHandle;
use crate::actors::writer::ResultWriter;
use crate::data_plane::KvClient;
use crate::fault::Fault;
use crate::metrics::Labels;
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
    /// Raised when this rank is broken; the consume loop stops on it.
    pub fault: Fault,
    /// True once this worker's consumers are cancelled: a message handed back before then
    /// could be delivered to this broken rank again.
    pub consumers_cancelled: tokio::sync::watch::Receiver<bool>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Names the request on the current message's span (see `serve.rs`), once it is known.
pub fn trace_request(request_id: uuid::Uuid, custom_id: Option<&str>) {
    let span = tracing::Span::current();
    span.record("request_id", tracing::field::display(request_id));
    if let Some(custom_id) = custom_id {
        span.record("custom_id", custom_id);
    }
}
