//! The end-to-end tests: real RabbitMQ, real PostgreSQL, real models, each test in a namespace and
//! a fresh database of its own. One test binary, so the heavy dependencies and the harness are
//! compiled and linked once instead of once per file; `cargo test --test e2e MODULE::` runs one
//! file's tests, e.g. `cargo test --test e2e routing::`. Two are binaries of their own: the
//! broker restart stops the whole broker (`tests/broker_restart.rs`, run alone after these), and
//! the scrape test reads the process's metrics registry, which every test in a binary shares
//! (`tests/metrics.rs`).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod cli;
mod errors;
mod faults;
mod features;
mod jobs;
mod models;
mod partition;
mod pipeline;
mod prefix_cache;
mod routing;
