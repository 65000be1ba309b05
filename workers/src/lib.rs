//! The workers: prefill, decode and colocated ranks, the engine loop they drive, the KV store and
//! the TCP data plane KV travels over, and the result writer.
//!
//! The layout is the pipeline:
//! - `roles/`: what each kind of rank does with a message. A request's path: `prefill.rs`
//!   (consume; `intake.rs` validates and forwards it if pinned elsewhere; prefill; keep the KV
//!   under a lease in the KV store; publish a handle) -> `decode.rs` (consume the handle, take
//!   the KV over `data_plane/`, generate, hand the result to the writer, ack after commit).
//!   `colocated.rs` does both on one rank without the hop.
//! - `actors/`: the long-lived tasks and threads the roles talk to over channels: the engine
//!   loop (one thread owning the executor), the KV store, the result writer, the registry
//!   heartbeat and the cancelled-jobs poller.
//! - `data_plane/`: KV bytes between ranks (TCP with HMAC, or shared memory on one host).
//! - Glue: `serve.rs` starts a worker and owns its consume loop; every handler returns a
//!   `decision.rs` Decision, which one executor carries out; `error.rs` and `fault.rs` say whose
//!   fault a failure is; `convert.rs` maps wire types to the engine's.

mod actors;
mod config;
mod context;
mod convert;
mod data_plane;
mod decision;
mod error;
mod fault;
mod metrics;
mod roles;
mod serve;

pub use actors::engine_loop::{ChoiceOut, DecodeOut, EngineHandle, EngineLoopConfig, First, PrefillOut, Prefilled};
pub use actors::writer::RESULT_BATCH;
pub use config::{
    ClusterConfig, WorkerConfig, DEFAULT_KV_BUDGET_BYTES, DEFAULT_KV_BY_NEED, DEFAULT_KV_POOL_BYTES, DEFAULT_KV_TTL,
    DEFAULT_MAX_PROMPT_BYTES, DEFAULT_MAX_RUNNING, DEFAULT_PREFETCH,
};
pub use data_plane::{
    shm_usable, DataPlaneConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_UNREACHABLE_WAIT,
};
pub use error::WorkerError;
pub use fault::Fault;
pub use metrics::Labels as MetricLabels;
pub use pdq_protocol::WorkerRole;
pub use serve::{run_worker, serve, Cluster, RunningWorker};
