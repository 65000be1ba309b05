//! The end-to-end tests: real RabbitMQ, real PostgreSQL, real models, each test in a namespace and
//! a fresh database of its own, in one test binary (the harness compiled once, one schedule for
//! every file's tests); `cargo test --test e2e MODULE::` runs one file's tests, e.g.
//! `cargo test --test e2e routing::`. Three are binaries of their own: the broker restart stops
//! the whole broker and the broker cluster test kills nodes (`tests/broker_restart.rs`,
//! `tests/broker_cluster.rs`, each run alone after these), and the scrape test reads the
//! process's metrics registry, which every test in a binary shares (`tests/metrics.rs`).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod cli;
mod embeddings;
mod errors;
mod faults;
mod features;
mod jobs;
mod models;
mod partition;
mod pipeline;
mod prefix_cache;
mod responses;
mod routing;
