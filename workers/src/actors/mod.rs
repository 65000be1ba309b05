//! The long-lived parts of a worker that its message handlers talk to: each owns its state and
//! is reached through a handle (channels, not shared locks).

pub mod closed_jobs;
pub mod engine_loop;
pub mod kv_store;
pub mod registry;
pub mod writer;
