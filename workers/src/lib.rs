//! The workers: prefill, decode and colocated ranks, the engine loop they drive, the KV store and
//! the TCP data plane KV travels over, and the result writer.
//!
//! A request's path: `prefill.rs` (consume, validate, forward if pinned elsewhere, prefill, keep
//! the KV in `kv_store.rs`, publish a handle) -> `decode.rs` (consume the handle, fetch the KV over
//! `data_plane.rs`, generate, hand the result to `writer.rs`, ack after commit, free the KV).
//! `colocated.rs` does both on one rank without the hop.

mod config;
mod convert;
mod data_plane;
mod decode;
mod engine_loop;
mod error;
mod intake;
mod kv_store;
mod prefill;
mod registry;
mod serve;
mod writer;

pub mod colocated;

pub use config::{WorkerConfig, DEFAULT_KV_BUDGET_BYTES};
pub use error::WorkerError;
pub use pdq_store::WorkerRole;
pub use serve::{run_worker, serve, Cluster, ClusterConfig, RunningWorker};
