//! Test harness: a real cluster (real RabbitMQ, real PostgreSQL, the real tiny model) in a
//! namespace of its own, on the fresh database `#[sqlx::test]` gives each test.
#![allow(dead_code)]

pub mod netns;
pub mod procs;
pub mod rabbit;
pub mod rabbit_cluster;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pdq_broker::Broker;
use pdq_engine::Model;
use pdq_producer::{submit, wait_for_job, Policy, SubmitOptions, WaitMode};
use pdq_protocol::ClusterShape;
use pdq_store::{JobRow, Store};
use pdq_workers::{Cluster, ClusterConfig};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub const AMQP_URL_DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

pub fn amqp_url() -> String {
    std::env::var("PDQ_AMQP_URL").unwrap_or_else(|_| AMQP_URL_DEFAULT.to_string())
}

/// pdq's logs, captured with each test's output (shown when it fails). `RUST_LOG` overrides.
pub fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,lapin=off,pdq_broker=info".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// The tiny model, generated once per test binary under cargo's target tmpdir.
pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = pdq_engine::tiny::cached_in(Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("tiny model");
            Arc::new(Model::load(&dir).expect("tiny model loads"))
        })
        .clone()
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultRow {
    pub request_id: Uuid,
    pub job_id: Option<Uuid>,
    pub custom_id: Option<String>,
    pub status: String,
    pub text: Option<String>,
    pub output_ids: Option<Vec<i32>>,
    pub meta_info: Option<Value>,
    pub error: Option<Value>,
    pub dp_rank: Option<i32>,
    pub prefill_dp_rank: Option<i32>,
    pub finish_reason: Option<String>,
}

impl ResultRow {
    pub fn code(&self) -> &str {
        self.error.as_ref().and_then(|e| e["code"].as_str()).unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or("")
    }

    pub fn warnings(&self) -> Vec<String> {
        self.meta_info
            .as_ref()
            .and_then(|m| m["warnings"].as_array())
            .map(|w| w.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

pub struct Harness {
    pub ns: String,
    pub store: Store,
    pub broker: Broker,
    /// How every process of this harness reaches the broker (its nodes, the queue type).
    pub broker_opts: pdq_broker::BrokerOptions,
    pub shape: ClusterShape,
    cluster: Option<Cluster>,
    /// The namespace's feeder, as `pdq serve` runs one: it publishes what `submit` accepts.
    feeder: Option<(tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

impl Harness {
    pub async fn start(pool: PgPool, shape: ClusterShape) -> Harness {
        Harness::start_with(pool, shape, |_| {}).await
    }

    /// `tweak` adjusts the worker settings (KV TTL, budgets) before the cluster starts.
    pub async fn start_with(pool: PgPool, shape: ClusterShape, tweak: impl FnOnce(&mut ClusterConfig)) -> Harness {
        Harness::start_model(pool, shape, model(), tweak).await
    }

    pub async fn start_model(
        pool: PgPool,
        shape: ClusterShape,
        model: Arc<Model>,
        tweak: impl FnOnce(&mut ClusterConfig),
    ) -> Harness {
        let mut h = Harness::idle(pool, shape).await;
        h.start_cluster_on(model, tweak).await;
        h
    }

    /// A harness on another broker than `PDQ_AMQP_URL` (a broker cluster, quorum queues):
    /// `base`'s nodes and queue type serve every process, in a namespace of the harness's own.
    pub async fn start_on(
        pool: PgPool,
        shape: ClusterShape,
        base: pdq_broker::BrokerOptions,
        tweak: impl FnOnce(&mut ClusterConfig),
    ) -> Harness {
        let mut h = Harness::declared(pool, shape, base).await;
        h.start_feeder(pdq_producer::feeder::DEFAULT_FEEDER_WINDOW);
        h.start_cluster_on(model(), tweak).await;
        h
    }

    async fn start_cluster_on(&mut self, model: Arc<Model>, tweak: impl FnOnce(&mut ClusterConfig)) {
        let mut cfg =
            ClusterConfig { broker: self.broker_opts.clone(), ..ClusterConfig::new(self.shape, &self.ns, &amqp_url()) };
        tweak(&mut cfg);
        self.cluster = Some(Cluster::start(&cfg, model, self.store.clone()).await.expect("cluster starts"));
    }

    /// The namespace declared and its feeder running, but no workers.
    pub async fn idle(pool: PgPool, shape: ClusterShape) -> Harness {
        let mut h = Harness::without_feeder(pool, shape).await;
        h.start_feeder(pdq_producer::feeder::DEFAULT_FEEDER_WINDOW);
        h
    }

    /// The namespace declared, nothing running: accepted jobs wait for a feeder.
    pub async fn without_feeder(pool: PgPool, shape: ClusterShape) -> Harness {
        Harness::declared(pool, shape, pdq_broker::BrokerOptions::new(&amqp_url(), "")).await
    }

    /// A namespace of its own on `base`'s broker, declared, with nothing running.
    async fn declared(pool: PgPool, shape: ClusterShape, base: pdq_broker::BrokerOptions) -> Harness {
        init_logs();
        let ns = format!("test-{}", Uuid::new_v4().simple());
        let broker_opts =
            pdq_broker::BrokerOptions { namespace: ns.clone(), connection_name: format!("pdq:{ns}"), ..base };
        let broker = Broker::connect_with(broker_opts.clone()).await.expect("RabbitMQ on PDQ_AMQP_URL");
        broker.declare(&shape).await.expect("declare");
        Harness { ns, store: Store::from_pool(pool), broker, broker_opts, shape, cluster: None, feeder: None }
    }

    /// Starts (or restarts) this process's feeder of the namespace with `window`.
    pub fn start_feeder(&mut self, window: u32) {
        assert!(self.feeder.is_none(), "one feeder per harness");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let cfg = pdq_producer::feeder::FeederConfig {
            namespace: self.ns.clone(),
            broker: self.broker_opts.clone(),
            window,
            shape: Some(self.shape),
        };
        self.feeder = Some((stop, pdq_producer::feeder::spawn(self.store.clone(), cfg, rx)));
    }

    pub async fn stop_feeder(&mut self) {
        if let Some((stop, task)) = self.feeder.take() {
            let _ = stop.send(true);
            task.await.ok();
        }
    }

    pub async fn start_cluster(&mut self) {
        self.start_cluster_with(|_| {}).await
    }

    pub async fn start_cluster_with(&mut self, tweak: impl FnOnce(&mut ClusterConfig)) {
        self.start_cluster_on(model(), tweak).await
    }

    pub async fn submit(&self, lines: &[Value], policy: Policy) -> Uuid {
        let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
        self.submit_text(&text, policy).await.expect("submit")
    }

    pub async fn submit_text(&self, text: &str, policy: Policy) -> Result<Uuid, pdq_producer::ProducerError> {
        self.submit_opts(text, &SubmitOptions { name: Some(self.ns.clone()), policy, ..SubmitOptions::default() }).await
    }

    /// Submits JSONL text with `opts` through a file, as `pdq submit` does.
    pub async fn submit_opts(&self, text: &str, opts: &SubmitOptions) -> Result<Uuid, pdq_producer::ProducerError> {
        let path = std::env::temp_dir().join(format!("{}-{}.jsonl", self.ns, Uuid::new_v4().simple()));
        std::fs::write(&path, text).unwrap();
        let report = submit(&self.store, &self.ns, &path.to_string_lossy(), &self.shape, opts).await;
        std::fs::remove_file(&path).ok();
        report.map(|r| r.job_id)
    }

    pub async fn wait(&self, job: Uuid) -> JobRow {
        tokio::time::timeout(JOB_TIMEOUT, wait_for_job(&self.store, job, WaitMode::Quiet))
            .await
            .expect("job finished in time")
            .expect("job row")
    }

    /// Submits, waits for the job to end, and returns its results by `custom_id`.
    pub async fn run(&self, lines: &[Value], policy: Policy) -> HashMap<String, ResultRow> {
        let job = self.submit(lines, policy).await;
        let row = self.wait(job).await;
        assert_eq!(row.total as usize, lines.len());
        assert_eq!(row.done(), row.total, "every line has a result when the job ends");
        self.results(job).await.into_iter().map(|r| (r.custom_id.clone().unwrap_or_default(), r)).collect()
    }

    pub async fn results(&self, job: Uuid) -> Vec<ResultRow> {
        sqlx::query_as::<_, ResultRow>(
            "SELECT request_id, job_id, custom_id, status, text, output_ids, meta_info, error, dp_rank, prefill_dp_rank,
                    finish_reason FROM results WHERE job_id = $1",
        )
        .bind(job)
        .fetch_all(self.store.pool())
        .await
        .unwrap()
    }

    /// Polls until `sql` (a count) reaches `n`.
    pub async fn wait_count(&self, sql: &str, n: i64) {
        let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
        loop {
            let c: i64 = sqlx::query_scalar(sql).fetch_one(self.store.pool()).await.unwrap();
            if c >= n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {sql} to reach {n} (at {c})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `queue` has no ready messages (consumers took them all).
    pub async fn wait_queue_drained(&self, queue: &str) {
        let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
        while self.broker.queue_depth(queue).await.unwrap() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {queue} to drain");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn finish(mut self) {
        self.stop_feeder().await;
        if let Some(c) = self.cluster.take() {
            c.shutdown().await.expect("clean drain");
        }
        self.broker.delete_namespace(&self.shape).await.expect("namespace deleted");
        self.broker.close().await;
    }
}

/// A small deterministic PRNG for picking ranks (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 33) as u32 % n
    }
}

pub fn generate_line(id: &str, body: Value) -> Value {
    let mut b = serde_json::json!({"text": "Hello there", "sampling_params": {"max_new_tokens": 4, "temperature": 0}});
    if let (Some(base), Some(extra)) = (b.as_object_mut(), body.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({"custom_id": id, "method": "POST", "url": "/generate", "body": b})
}

/// `n` `/generate` lines `{prefix}{i}`, each generating exactly `max_new_tokens` greedy tokens.
pub fn batch(n: usize, prefix: &str, max_new_tokens: u32) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let body = serde_json::json!({"text": format!("request {i} of batch {prefix}"),
                "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": true}});
            generate_line(&format!("{prefix}{i}"), body)
        })
        .collect()
}
