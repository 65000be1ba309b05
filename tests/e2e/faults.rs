//! Faults caused for real (CONTRACT §8): broker connections closed mid-batch, a prefill rank
//! stopped with SIGSTOP, forged KV handles pointing at lying or silent peers, an unauthenticated
//! data-plane client, and a message that kills every worker it reaches. Each test closes or
//! stops only what belongs to its own namespace. (Stopping the whole broker is in
//! `broker_restart.rs`, which runs alone.)

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::procs::{delete_namespace, peak_rss_mib, signal, stderr, stdout, terminate, wait_for_workers, Env, Ranks};
use common::{batch, generate_line, rabbit, Harness};
use pdq_broker::{Broker, BrokerOptions, MessageMeta, Outgoing};
use pdq_producer::Policy;
use pdq_protocol::{validate, ClusterShape, InputLine, KvHandle, RawLine, Timings};
use pdq_store::NewRequest;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Every line has exactly one row and every row is `completed`.
async fn assert_exactly_once(pool: &PgPool, job: Uuid, n: usize) {
    let (rows, distinct, completed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT custom_id), count(*) FILTER (WHERE status = 'completed')
           FROM results WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((rows, distinct, completed), (n as i64, n as i64, n as i64), "one completed row per request");
    let (total, done): (i32, i32) =
        sqlx::query_as("SELECT total, completed FROM jobs WHERE id = $1").bind(job).fetch_one(pool).await.unwrap();
    assert_eq!((total, done), (n as i32, n as i32), "the job's counters count each row once");
}

/// Rows so far; a query that meets a connection the test itself terminated counts as none yet.
async fn results_of(pool: &PgPool, job: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM results WHERE job_id = $1").bind(job).fetch_one(pool).await.unwrap_or(0)
}

async fn wait_results(pool: &PgPool, job: Uuid, at_least: i64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let n = results_of(pool, job).await;
        if n >= at_least {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{n} of {at_least} results after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn closed_connections_mid_batch_delay_the_batch_but_lose_nothing(pool: PgPool) {
    let h = Harness::start(pool.clone(), ClusterShape::disagg(2, 2)).await;
    let n = 2000;
    let job = h.submit(&batch(n, "a", 16), Policy::Shared).await;
    for quarter in 1..=2 {
        wait_results(&pool, job, (n * quarter / 4) as i64, Duration::from_secs(120)).await;
        // Four workers and the test's own producer connection.
        let closed = rabbit::close_connections(&h.ns);
        assert!(closed >= 5, "closed only {closed} connections of namespace {}", h.ns);
    }
    h.wait(job).await;
    assert_exactly_once(&pool, job, n).await;
    // The same cluster, reconnected, takes the next job.
    let job2 = h.submit(&batch(200, "b", 4), Policy::Shared).await;
    h.wait(job2).await;
    assert_exactly_once(&pool, job2, 200).await;
    h.finish().await;
}

/// 2 prefill x 2 decode `pdq worker` processes, registered: prefill 0, 1, then decode 0, 1.
async fn start_2x2(env: &Env, pool: &PgPool, extra: &[&str]) -> Ranks {
    let roles = [("prefill", 0), ("prefill", 1), ("decode", 0), ("decode", 1)];
    let ranks = Ranks(roles.iter().map(|(role, rank)| env.spawn_rank(role, *rank, 2, 2, extra)).collect());
    wait_for_workers(pool, 4).await;
    ranks
}

/// `pdq submit FILE`, as a user runs it; returns the job id.
fn submit_file(env: &Env, lines: &[Value]) -> Uuid {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{}.jsonl", env.namespace, Uuid::new_v4()));
    std::fs::write(&file, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let out = env.run(&["submit", file.to_str().unwrap()]);
    std::fs::remove_file(&file).ok();
    assert!(out.status.success(), "submit: {}", stderr(&out));
    stdout(&out).lines().next().unwrap().trim().parse().unwrap()
}

/// A hung rank (SIGSTOP: connected, doing nothing) as its own process: its broker connection
/// misses heartbeats and its unacked requests go to the other prefill rank; decoders holding
/// handles for its KV time out and send those requests back to prefill.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_stopped_prefill_rank_delays_requests_within_a_bound(pool: PgPool) {
    const BOUND: Duration = Duration::from_secs(60);
    let env = Env::new(&pool).await;
    // A silent peer is handed back for `--kv-unreachable-wait` (it may be a partition), then
    // its requests are prefilled again.
    let fast = [
        "--amqp-heartbeat",
        "2s",
        "--kv-read-timeout",
        "1s",
        "--kv-connect-timeout",
        "1s",
        "--kv-unreachable-wait",
        "5s",
    ];
    let mut ranks = start_2x2(&env, &pool, &fast).await;
    let n = 1500;
    let job = submit_file(&env, &batch(n, "s", 16));

    wait_results(&pool, job, (n / 5) as i64, Duration::from_secs(120)).await;
    signal(&ranks[0], "STOP");
    let took = wait_results(&pool, job, n as i64, BOUND).await;
    eprintln!("with prefill rank 0 stopped, the rest of the batch finished in {took:.1?}");
    signal(&ranks[0], "CONT");
    // The woken rank finds its connection gone, reconnects, and finishes what it held: those
    // duplicates must be absorbed. Give it a few heartbeats to do so, then count.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_exactly_once(&pool, job, n).await;
    for r in ranks.iter_mut() {
        assert!(terminate(r).success(), "every rank drains and exits 0");
    }
    delete_namespace(&env.namespace, ClusterShape::disagg(2, 2)).await;
}

/// `kill -9` of a decode rank, then of a prefill rank, mid-batch: the survivors finish it.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn killed_ranks_lose_nothing(pool: PgPool) {
    let env = Env::new(&pool).await;
    let mut ranks = start_2x2(&env, &pool, &["--kv-read-timeout", "1s", "--kv-connect-timeout", "1s"]).await;
    let n = 1500;
    let job = submit_file(&env, &batch(n, "k", 16));
    wait_results(&pool, job, (n / 5) as i64, Duration::from_secs(120)).await;
    ranks[3].kill().unwrap();
    wait_results(&pool, job, (n / 2) as i64, Duration::from_secs(120)).await;
    ranks[1].kill().unwrap();
    wait_results(&pool, job, n as i64, Duration::from_secs(120)).await;
    assert_exactly_once(&pool, job, n).await;
    for (i, r) in ranks.iter_mut().enumerate() {
        if i == 1 || i == 3 {
            r.wait().ok(); // reaped: killed above
        } else {
            assert!(terminate(r).success(), "the survivors drain and exit 0");
        }
    }
    delete_namespace(&env.namespace, ClusterShape::disagg(2, 2)).await;
}

/// Every PostgreSQL connection of the cluster terminated, three times, mid-batch.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn terminated_database_connections_lose_nothing(pool: PgPool) {
    let h = Harness::start(pool.clone(), ClusterShape::disagg(2, 2)).await;
    let n = 2000;
    let job = h.submit(&batch(n, "d", 16), Policy::Shared).await;
    for quarter in 1..=3 {
        wait_results(&pool, job, (n * quarter / 4) as i64, Duration::from_secs(120)).await;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        assert!(!killed.is_empty(), "the cluster holds database connections");
    }
    wait_results(&pool, job, n as i64, Duration::from_secs(120)).await;
    assert_exactly_once(&pool, job, n).await;
    h.finish().await;
}

/// A fake data-plane peer that says hello, then `answer`, then hangs.
async fn fake_peer(answer: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut hello = b"PDQKV\x00\x02\x00".to_vec();
                hello.push(0);
                hello.extend_from_slice(&[9u8; 32]);
                sock.write_all(&hello).await.ok();
                let mut req = [0u8; 17];
                sock.read_exact(&mut req).await.ok();
                sock.write_all(&answer).await.ok();
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    endpoint
}

const UNREACHABLE_WAIT: Duration = Duration::from_secs(2);

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn forged_handles_end_in_one_row_each_and_cost_no_memory(pool: PgPool) {
    let shape = ClusterShape::disagg(1, 1);
    let h = Harness::start_with(pool.clone(), shape, |c| {
        c.data_plane.connect_timeout = Duration::from_millis(500);
        c.data_plane.read_timeout = Duration::from_millis(500);
        c.data_plane.unreachable_wait = UNREACHABLE_WAIT;
    })
    .await;
    let mut huge = vec![0u8];
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let liar = fake_peer(huge).await;
    let silent = fake_peer(Vec::new()).await;
    let publisher = h.broker.publisher();
    let mut cases = Vec::new();
    // "waited" is a fresh handle (published now) on its last attempt: the silent peer may be a
    // partition, so the decoder hands it back until the wait bound, then fails it.
    let forged = [
        ("liar", &liar, 1),
        ("liar", &liar, 3),
        ("silent", &silent, 1),
        ("silent", &silent, 3),
        ("waited", &silent, 3),
    ];
    let published = chrono::Utc::now().timestamp_millis();
    for (name, endpoint, attempt) in forged {
        let custom_id = format!("{name}-{attempt}");
        let line = generate_line(&custom_id, json!({}));
        let text = line.to_string();
        let parsed = InputLine::parse(&RawLine { line_no: 1, text: &text }).unwrap();
        let request = validate(&parsed, None, &shape).unwrap();
        let request_id = Uuid::now_v7();
        h.store
            .insert_request(&NewRequest {
                id: request_id,
                job_id: None,
                line_no: None,
                custom_id: Some(custom_id.clone()),
                url: Some("/generate".into()),
                body: line["body"].clone(),
                routed_dp_rank: None,
                disagg_prefill_dp_rank: None,
                outbound: None,
            })
            .await
            .unwrap();
        let handle = KvHandle {
            request_id,
            job_id: None,
            request: (&request).into(),
            line,
            attempt,
            decode_rank: None,
            prefill_dp_rank: 0,
            endpoint: endpoint.clone(),
            kv_id: Uuid::new_v4(),
            kv_bytes: 4096,
            prompt_tokens: 3,
            cached_tokens: 0,
            first_token: 1,
            firsts: Vec::new(),
            seed: 0,
            enqueued_at_ms: chrono::Utc::now().timestamp_millis(),
            // 0 is unknown, as from an older prefill: an unreachable peer is not waited for.
            published_at_ms: if name == "waited" { published } else { 0 },
            timings: Timings::default(),
            warnings: Vec::new(),
            shm_host: None,
        };
        let meta = MessageMeta { request_id: Some(request_id), ..Default::default() };
        let msg = Outgoing {
            exchange: format!("{}.kv", h.ns),
            key: "0".into(),
            body: serde_json::to_vec(&handle).unwrap(),
            meta,
        };
        publisher.publish(&msg).await.unwrap();
        cases.push((request_id, name, attempt));
    }
    let ids: Vec<Uuid> = cases.iter().map(|c| c.0).collect();
    h.wait_count(&format!("SELECT count(*) FROM results WHERE request_id IN ('{}')", join(&ids)), 5).await;
    for (id, name, attempt) in cases {
        let (status, error): (String, Option<Value>) =
            sqlx::query_as("SELECT status, error FROM results WHERE request_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        if attempt == 1 {
            // The decoder sent it back to prefill, which ran it for real.
            assert_eq!(status, "completed", "{name}: {error:?}");
        } else {
            let error = error.unwrap();
            assert_eq!((status.as_str(), error["code"].as_str()), ("failed", Some("kv_lost")), "{name}");
            let message = error["message"].as_str().unwrap();
            let expected = if name == "liar" { "announced 1099511627776 bytes" } else { "no answer within" };
            assert!(message.contains(expected), "{name}: {message}");
            if name == "waited" {
                let ended: f64 = sqlx::query_scalar(
                    "SELECT (extract(epoch FROM created_at) * 1000)::float8 FROM results WHERE request_id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
                let waited = Duration::from_millis((ended as i64 - published).max(0) as u64);
                assert!(waited >= UNREACHABLE_WAIT, "failed after {waited:?}, before the wait bound");
                assert!(waited < UNREACHABLE_WAIT * 5, "waited {waited:?}, far past the bound");
            }
        }
    }
    let rss = peak_rss_mib("self");
    assert!(rss < 4096.0, "the test process (decoder included) peaked at {rss:.0} MiB");
    h.finish().await;
}

fn join(ids: &[Uuid]) -> String {
    ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join("','")
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn with_a_secret_strangers_get_no_kv_and_the_cluster_still_works(pool: PgPool) {
    let h = Harness::start_with(pool.clone(), ClusterShape::disagg(1, 2), |c| {
        c.data_plane.secret = Some(b"cluster secret".to_vec());
    })
    .await;
    let results = h.run(&batch(40, "k", 4), Policy::RoundRobin).await;
    assert!(results.values().all(|r| r.status == "completed"), "{results:?}");

    let endpoint: String =
        sqlx::query_scalar("SELECT endpoint FROM workers WHERE role = 'prefill'").fetch_one(&pool).await.unwrap();
    let mut raw = tokio::net::TcpStream::connect(&endpoint).await.unwrap();
    let mut hello = [0u8; 41];
    raw.read_exact(&mut hello).await.unwrap();
    assert_eq!(hello[8] & 1, 1, "the server asks peers to authenticate");
    // A stranger skips the proof and asks for a KV (and pads to the size of a proof).
    let mut ask = vec![1u8];
    ask.extend_from_slice(Uuid::new_v4().as_bytes());
    ask.resize(64, 0);
    raw.write_all(&ask).await.unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "an unauthenticated peer got {} bytes", rest.len());
    h.finish().await;
}

/// Plays a worker that crashes holding a message: publishes `line` with `key`, then takes it
/// from `queue` with pdq's own consumer and drops it unsettled while `again` says so. Returns
/// the delivery counts seen.
async fn crash_while(
    h: &Harness,
    bound: u32,
    key: &str,
    queue: &str,
    line: &Value,
    again: impl Fn(&pdq_broker::Inbound) -> bool,
) -> Vec<u32> {
    let opts = BrokerOptions { max_deliveries: bound, ..BrokerOptions::new(&common::amqp_url(), &h.ns) };
    let crasher = Broker::connect_with(opts.named(format!("pdq:{}:crasher", h.ns))).await.unwrap();
    let mut sub = crasher.subscribe(&[queue.to_string()], 1, "crasher").await.unwrap();
    let msg = Outgoing {
        exchange: format!("{}.prefill", h.ns),
        key: key.into(),
        body: line.to_string().into_bytes(),
        meta: MessageMeta::default(),
    };
    h.broker.publisher().publish(&msg).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next()).await.unwrap().unwrap().unwrap();
        seen.push(m.deliveries);
        let more = again(&m);
        drop(m); // "crash": the message goes back unsettled
        if !more {
            break;
        }
    }
    sub.cancel().await;
    crasher.close().await;
    seen
}

/// A message published with a key that names no prefill queue keeps that verdict after pdq
/// publishes it again (a counted redelivery arrives through the default exchange).
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_redelivered_message_keeps_its_route(pool: PgPool) {
    let mut h = Harness::idle(pool.clone(), ClusterShape::disagg(1, 1)).await;
    let line = generate_line("lost-key", json!({}));
    let queue = format!("{}.unroutable", h.ns);
    let seen = crash_while(&h, 5, "7", &queue, &line, |m| m.deliveries < 2).await;
    assert_eq!(seen, vec![1, 2]);
    h.start_cluster().await;
    h.wait_count("SELECT count(*) FROM results WHERE custom_id = 'lost-key'", 1).await;
    let message: String = sqlx::query_scalar("SELECT error->>'message' FROM results WHERE custom_id = 'lost-key'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(message.contains("'7' names no prefill queue"), "{message}");
    h.finish().await;
}

/// A message that kills every worker it reaches: here the test plays those workers with pdq's
/// own consumer, dropping the message unsettled each time (what a crash looks like to the
/// broker). Past the bound, a real worker records it and dead-letters it.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_poison_message_stops_at_the_delivery_bound(pool: PgPool) {
    const BOUND: u32 = 3;
    let mut h = Harness::idle(pool.clone(), ClusterShape::disagg(1, 1)).await;
    let line = generate_line("poison", json!({}));
    let seen = crash_while(&h, BOUND, "any", &format!("{}.prefill.any", h.ns), &line, |m| !m.poisoned).await;
    assert_eq!(seen, vec![1, 2, 3, 4], "each crash counts once, and the bound is seen");
    h.start_cluster_with(|c| c.broker.max_deliveries = BOUND).await;
    h.wait_count("SELECT count(*) FROM results WHERE custom_id = 'poison'", 1).await;
    let (status, code): (String, Option<String>) =
        sqlx::query_as("SELECT status, error->>'code' FROM results WHERE custom_id = 'poison'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), code.as_deref()), ("failed", Some("delivery_limit")));
    let dead = format!("{}.dead", h.ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.broker.queue_depth(&dead).await.unwrap() < 1 {
        assert!(Instant::now() < deadline, "the poison message never reached {dead}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.finish().await;
}

/// The load run of the closing note: 20,000 requests through 2x2 `pdq worker` processes, every
/// one exactly once, and each process's peak memory. `cargo test --release --test e2e --
/// --ignored faults::load_run --nocapture`.
#[ignore]
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn load_run_20k_requests(pool: PgPool) {
    let env = Env::new(&pool).await;
    let mut ranks = start_2x2(&env, &pool, &[]).await;
    let n = 20_000;
    let lines = batch(n, "l", 16);
    let started = Instant::now();
    let job = submit_file(&env, &lines);
    let took = wait_results(&pool, job, n as i64, Duration::from_secs(1800)).await;
    let secs = started.elapsed().as_secs_f64();
    assert_exactly_once(&pool, job, n).await;
    eprintln!(
        "load run: {n} requests in {secs:.1}s ({:.0} req/s; results done {took:.1?} after submit)",
        n as f64 / secs
    );
    for (name, child) in ["prefill 0", "prefill 1", "decode 0", "decode 1"].iter().zip(ranks.iter()) {
        eprintln!("  {name}: peak RSS {:.0} MiB", peak_rss_mib(&child.id().to_string()));
    }
    for r in ranks.iter_mut() {
        assert!(terminate(r).success());
    }
    delete_namespace(&env.namespace, ClusterShape::disagg(2, 2)).await;
}

/// What the broken rank's executor does once its budget of good steps is spent.
#[derive(Clone, Copy)]
enum Breaks {
    /// `step` returns a device error, as a lost GPU does.
    WithAnError,
    /// `step` panics, as a kernel bug does.
    WithAPanic,
}

/// A CPU executor whose steps fail after `good_steps` of them: the device breaking mid-batch.
struct Breaking {
    inner: Box<dyn pdq_engine::Executor>,
    steps_left: usize,
    breaks: Breaks,
}

impl pdq_engine::Executor for Breaking {
    fn model(&self) -> &std::sync::Arc<pdq_engine::Model> {
        self.inner.model()
    }
    fn device(&self) -> &'static str {
        "breaking-cpu"
    }
    fn pool(&self) -> &pdq_engine::PagedKv {
        self.inner.pool()
    }
    fn add_sequence(&mut self, max_len: usize) -> Result<pdq_engine::SeqId, pdq_engine::EngineError> {
        self.inner.add_sequence(max_len)
    }
    fn add_prompt(
        &mut self,
        prompt: &[u32],
        max_len: usize,
    ) -> Result<(pdq_engine::SeqId, usize), pdq_engine::EngineError> {
        self.inner.add_prompt(prompt, max_len)
    }
    fn register_prompt(&mut self, seq: pdq_engine::SeqId, prompt: &[u32]) -> Result<(), pdq_engine::EngineError> {
        self.inner.register_prompt(seq, prompt)
    }
    fn set_prefix_cache(&mut self, on: bool) -> bool {
        self.inner.set_prefix_cache(on)
    }
    fn release(&mut self, seq: pdq_engine::SeqId) {
        self.inner.release(seq)
    }
    fn fork(&mut self, src: pdq_engine::SeqId, max_len: usize) -> Result<pdq_engine::SeqId, pdq_engine::EngineError> {
        self.inner.fork(src, max_len)
    }
    fn export(&mut self, seq: pdq_engine::SeqId) -> Result<Vec<u8>, pdq_engine::EngineError> {
        self.inner.export(seq)
    }
    fn import(&mut self, pages: &[u8], max_len: usize) -> Result<pdq_engine::SeqId, pdq_engine::EngineError> {
        self.inner.import(pages, max_len)
    }
    fn step(
        &mut self,
        batch: &[pdq_engine::StepItem<'_>],
    ) -> Result<Vec<pdq_engine::StepOut>, pdq_engine::EngineError> {
        if self.steps_left == 0 {
            match self.breaks {
                Breaks::WithAnError => {
                    return Err(pdq_engine::EngineError::Device("injected: CUDA_ERROR_ILLEGAL_ADDRESS".into()))
                }
                Breaks::WithAPanic => panic!("injected: a kernel bug"),
            }
        }
        self.steps_left -= 1;
        self.inner.step(batch)
    }
}

struct BreakingDevice {
    model: std::sync::Arc<pdq_engine::Model>,
    good_steps: usize,
    breaks: Breaks,
}

impl pdq_engine::ExecutorSource for BreakingDevice {
    fn model(&self) -> &std::sync::Arc<pdq_engine::Model> {
        &self.model
    }
    fn name(&self) -> &'static str {
        "breaking-cpu"
    }
    fn executor(&self, pool_bytes: usize) -> Result<Box<dyn pdq_engine::Executor>, pdq_engine::EngineError> {
        let inner = Box::new(pdq_engine::CpuExecutor::new(self.model.clone(), pool_bytes));
        Ok(Box::new(Breaking { inner, steps_left: self.good_steps, breaks: self.breaks }))
    }
}

/// One rank of `shape` breaks after `good_steps` steps (its `role` rank 0); the others are
/// healthy. The broken rank must stop, hand back what it held, and fail nothing: every request
/// ends completed on the healthy ranks.
async fn a_rank_breaks(
    pool: PgPool,
    shape: ClusterShape,
    role: pdq_workers::WorkerRole,
    breaks: Breaks,
    good_steps: usize,
) {
    use pdq_workers::{ClusterConfig, RunningWorker, WorkerRole};
    let h = Harness::idle(pool.clone(), shape).await;
    let cluster = ClusterConfig::new(shape, &h.ns, &common::amqp_url());
    let cfg = |role, rank| cluster.rank(role, rank);
    let broken_device =
        pdq_engine::Device::Custom(std::sync::Arc::new(BreakingDevice { model: common::model(), good_steps, breaks }));
    let broken = RunningWorker::start(cfg(role, 0), broken_device, h.store.clone()).await.expect("broken rank starts");
    let mut healthy = Vec::new();
    let ranks = |role| match role {
        WorkerRole::Decode => shape.decode_dp,
        _ => shape.prefill_dp,
    };
    let roles = match shape.mode {
        pdq_protocol::Mode::Colocated => vec![WorkerRole::Colocated],
        pdq_protocol::Mode::Disagg => vec![WorkerRole::Prefill, WorkerRole::Decode],
    };
    for r in roles {
        for rank in 0..ranks(r) {
            if (r, rank) != (role, 0) {
                healthy.push(RunningWorker::start(cfg(r, rank), common::model(), h.store.clone()).await.unwrap());
            }
        }
    }
    let n = 80;
    let job = h.submit(&batch(n, "broken", 24), Policy::Shared).await;
    // The broken rank stops by itself, with the fault as its error.
    let stopped = tokio::time::timeout(Duration::from_secs(60), broken.join()).await.expect("the broken rank stops");
    let reason = stopped.expect_err("a broken rank ends with its fault").to_string();
    assert!(reason.starts_with("rank fault: ") && reason.contains("injected"), "{reason}");
    h.wait(job).await;
    assert_exactly_once(&pool, job, n).await;
    // The broken rank is rank 0 of its role; the healthy ranks of that role served the rest.
    let column = if role == WorkerRole::Prefill { "prefill_dp_rank" } else { "dp_rank" };
    let on_healthy: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM results WHERE job_id = $1 AND {column} <> 0"))
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(on_healthy > n as i64 / 2, "only {on_healthy} of {n} served by the healthy ranks");
    for w in healthy {
        w.stop().await.expect("healthy ranks drain cleanly");
    }
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_colocated_rank_whose_device_fails_fails_no_request(pool: PgPool) {
    // Mid-generation: a few decode steps run first.
    a_rank_breaks(pool, ClusterShape::colocated(2), pdq_workers::WorkerRole::Colocated, Breaks::WithAnError, 6).await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_decode_rank_whose_kernel_panics_fails_no_request(pool: PgPool) {
    a_rank_breaks(pool, ClusterShape::disagg(1, 2), pdq_workers::WorkerRole::Decode, Breaks::WithAPanic, 6).await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_prefill_rank_whose_device_fails_fails_no_request(pool: PgPool) {
    // At its first step: one prefill step can take most of a small batch, so a later one may
    // never come.
    a_rank_breaks(pool, ClusterShape::disagg(2, 1), pdq_workers::WorkerRole::Prefill, Breaks::WithAnError, 0).await;
}
