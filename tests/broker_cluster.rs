//! A RabbitMQ cluster of three nodes, with quorum queues, loses the node every pdq connection is
//! on, mid-batch (its Erlang VM killed), and gets it back later: every process moves on to the
//! next node it was given, and every request still ends as exactly one row. It starts a broker
//! cluster of its own (`scripts/rabbit-cluster.sh`, beside the system broker), so it is ignored
//! in the parallel run and `scripts/test.sh` runs it alone, after the rest:
//! `cargo test --test broker_cluster -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::rabbit_cluster::RabbitCluster;
use common::{batch, Harness};
use pdq_broker::{BrokerOptions, QueueType};
use pdq_producer::Policy;
use pdq_protocol::ClusterShape;
use prometheus_parse::{Scrape, Value};
use sqlx::PgPool;

/// The whole batch, node loss included; about 3x what this machine needs (see docs/multi-host.md).
const BOUND: Duration = Duration::from_secs(120);
/// How long the node stays down at least: long enough that every connection has moved and the
/// quorum queues have elected new leaders before it starts again.
const DOWN: Duration = Duration::from_secs(5);
/// From the node's death to every busy process on another node.
const MOVE_BOUND: Duration = Duration::from_secs(30);
/// Node 1's AMQP port (scripts/rabbit-cluster.sh).
const FIRST_PORT: u16 = 5681;

/// The sum of a metric's samples in this process's registry.
async fn metric(name: &str) -> f64 {
    let addr = pdq_api::serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[ignore = "starts a 3-node RabbitMQ cluster: run alone (scripts/test.sh does)"]
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_broker_cluster_losing_a_node_mid_batch_loses_nothing(pool: PgPool) {
    let Some(rabbits) = RabbitCluster::start_or_skip() else { return };
    let base = BrokerOptions { queue_type: QueueType::Quorum, ..BrokerOptions::new(&rabbits.urls(), "") };
    let h = Harness::start_on(pool.clone(), ClusterShape::disagg(2, 2), base, |_| {}).await;
    // Every process tried the first node first, and it answered.
    let ports = rabbits.connection_ports(1, &h.ns).await;
    assert!(ports.len() >= 6, "the harness, its feeder and four ranks connect (found {ports:?})");
    assert!(ports.iter().all(|&p| p == FIRST_PORT), "every connection is on node 1: {ports:?}");

    let n = 2000usize;
    let lines = batch(n, "c", 16);
    let started = Instant::now();
    let job = h.submit(&lines, Policy::Shared).await;
    h.wait_count(&format!("SELECT count(*) FROM results WHERE job_id = '{job}'"), (n / 4) as i64).await;
    let killed_at = started.elapsed();
    rabbits.kill(1).await;
    // The four ranks, consuming, move at once. The feeder published the whole batch before
    // (its window is larger) and the harness's own link is idle: each moves when next used.
    let moved = loop {
        let mut now = rabbits.connection_ports(2, &format!("{}:prefill-", h.ns)).await;
        now.extend(rabbits.connection_ports(2, &format!("{}:decode-", h.ns)).await);
        if now.len() >= 4 || started.elapsed() - killed_at > MOVE_BOUND {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let moved_after = started.elapsed() - killed_at;
    assert_eq!(moved.len(), 4, "every rank reconnected within {MOVE_BOUND:?}: {moved:?}");
    assert!(moved.iter().all(|&p| p != FIRST_PORT), "to the surviving nodes: {moved:?}");
    // The node comes back while the batch goes on (or after it ended: a node takes seconds to
    // start); the batch's time is its own.
    let batch = async {
        let row = tokio::time::timeout(BOUND.saturating_sub(started.elapsed()), h.wait(job))
            .await
            .unwrap_or_else(|_| panic!("the batch did not finish within {BOUND:?} of its start"));
        (row, started.elapsed())
    };
    let back = async {
        tokio::time::sleep(DOWN.saturating_sub(moved_after)).await;
        rabbits.start_node(1).await;
        started.elapsed()
    };
    let ((row, took), back_at) = tokio::join!(batch, back);

    assert_eq!((row.total, row.completed, row.failed), (n as i32, n as i32, 0));
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT custom_id) FROM results WHERE job_id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (n as i64, n as i64), "one row per request");
    let published = metric("pdq_feeder_published_total").await;
    let reconnects = metric("pdq_broker_reconnects_total").await;
    let reprefills = metric("pdq_kv_reprefills_total").await;
    println!(
        "broker cluster: {n} requests in {:.1}s; node 1 killed at {:.1}s, back at {:.1}s; \
         {} connections on node 1 before, the {} ranks' on nodes 2-3 {:.1}s after; \
         {reconnects} rank reconnects; {published} publishes by the feeder ({} again); \
         {reprefills} requests prefilled again (their KV handle delivered twice)",
        took.as_secs_f64(),
        killed_at.as_secs_f64(),
        back_at.as_secs_f64(),
        ports.len(),
        moved.len(),
        moved_after.as_secs_f64(),
        published - n as f64,
    );
    // The same processes, on the surviving nodes, take a new job.
    let results = h.run(&lines[..100], Policy::Shared).await;
    assert!(results.values().all(|r| r.status == "completed"));
    h.finish().await;
}
