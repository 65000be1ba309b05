//! The workers: prefill, decode and colocated ranks, the engine loop they drive, the KV store and
//! the TCP data plane KV travels over, and the result writer.
//!
//! A request's path: `prefill.rs` (consume, `intake.rs` validates and forwards if pinned
//! elsewhere, prefill, keep the KV under a lease in `kv_store.rs`, publish a handle) ->
//! `decode.rs` (consume the handle, take the KV over `data_plane/`, generate, hand the result to
//! `writer.rs`, ack after commit). `colocated.rs` does both on one rank without the hop.
//! Each handler returns a `decision.rs` Decision; one executor settles every message.

mod closed_jobs;
mod config;
mod context;
mod convert;
mod data_plane;
mod decision;
mod decode;
mod engine_loop;
mod error;
mod fault;
mod intake;
mod kv_store;
mod metrics;
mod prefill;
mod registry;
mod serve;
mod writer;

pub mod colocated;

pub use config::{
    WorkerConfig, DEFAULT_KV_BUDGET_BYTES, DEFAULT_KV_POOL_BYTES, DEFAULT_KV_TTL, DEFAULT_MAX_PROMPT_BYTES,
    DEFAULT_MAX_RUNNING, DEFAULT_PREFETCH,
};
pub use data_plane::{
    shm_usable, DataPlaneConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_UNREACHABLE_WAIT,
};
pub use engine_loop::{ChoiceOut, DecodeOut, EngineHandle, EngineLoopConfig, First, PrefillOut, Prefilled};
pub use error::WorkerError;
pub use fault::Fault;
pub use metrics::Labels as MetricLabels;
pub use pdq_protocol::WorkerRole;
pub use serve::{run_worker, serve, Cluster, ClusterConfig, RunningWorker};
pub use writer::RESULT_BATCH;
