//! Ranks on separate network hosts (network namespaces on one bridge, `common/netns.rs`):
//! prefill ranks 0 and 1 on hosts 0 and 1, decode ranks 0 and 1 on hosts 2 and 3, each a
//! `pdq worker` process that reaches RabbitMQ and PostgreSQL through the bridge and serves
//! or fetches KV across it. Faults are caused on the links:
//! - a partition between decode host 3 and prefill host 0 mid-batch, healed after 10 s:
//!   every request ends as one completed row, at most 10% are prefilled twice, and the
//!   prefill ranks hold no KV at the end;
//! - prefill host 0 off the network for good mid-batch: every request one completed row;
//! - every path to prefill host 0 slow (200 ms added to each round trip) and lossy (1% of
//!   segments stall the stream as a retransmission would): every request one completed row,
//!   none prefilled twice, and the KV hop's cost through that path beside the direct one.
//!
//! They need root and `ip`; elsewhere they print `SKIPPED` and return (or fail, with
//! `PDQ_REQUIRE_NETNS` set, for a CI that must run them). They run one at a time (each is four
//! processes on the machine's cores).

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::netns::{rehost, Impair, Net};
use common::procs::wait_for_workers;
use common::{amqp_url, generate_line, Harness};
use pdq_producer::Policy;
use pdq_protocol::ClusterShape;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const DATA_PLANE_PORT: u16 = 7400;
const METRICS_PORT: u16 = 9400;
fn shape() -> ClusterShape {
    ClusterShape::disagg(2, 2)
}
/// The whole batch, faults included, ends within this.
const JOB_BOUND: Duration = Duration::from_secs(300);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Four hosts with a rank each, meeting through the root namespace's broker and database.
struct Cluster {
    net: Net,
    h: Harness,
}

impl Cluster {
    /// `None` (after saying so) where hosts cannot be made. With `slow`, decoders reach prefill
    /// host 0's data plane only through a forwarder on the bridge that impairs the path: the
    /// rank advertises the forwarder's address.
    async fn start(pool: &PgPool, test: &str, extra: &[&str], slow: Option<Impair>) -> Option<Cluster> {
        let mut net = match Net::new(test, 4) {
            Ok(net) => net,
            Err(why) if std::env::var_os("PDQ_REQUIRE_NETNS").is_some() => {
                panic!("{test}: PDQ_REQUIRE_NETNS is set but network namespaces cannot be made: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED: {test}: cannot make network namespaces here: {why}");
                return None;
            }
        };
        let h = Harness::idle(pool.clone(), shape()).await;
        let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(pool).await.unwrap();
        let base =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let server = base.rsplit_once('/').map(|(s, _)| s.to_string()).unwrap();
        let (pg, pg_url) = rehost(&format!("{server}/{db}"), net.gateway, 5432);
        // One forwarder per service: with several broker nodes listed, the hosts use the first.
        let nodes: pdq_broker::BrokerNodes = amqp_url().parse().expect("PDQ_AMQP_URL lists broker nodes");
        let (amqp, amqp_url) = rehost(nodes.url(0), net.gateway, 5672);
        net.forward(&[(amqp.port(), amqp), (pg.port(), pg)]);
        let mut advertised: Vec<_> = net.hosts.iter().map(|h| h.addr).collect();
        if slow.is_some() {
            let prefill0 = SocketAddr::new(net.hosts[0].addr.into(), DATA_PLANE_PORT);
            net.forward_impaired(&[(DATA_PLANE_PORT, prefill0)], slow);
            advertised[0] = net.gateway;
        }
        let envs = [
            ("DATABASE_URL", pg_url),
            ("PDQ_AMQP_URL", amqp_url),
            ("PDQ_NAMESPACE", h.ns.clone()),
            ("PDQ_CACHE_DIR", env!("CARGO_TARGET_TMPDIR").to_string()),
            ("RUST_LOG", std::env::var("PDQ_TEST_LOG").unwrap_or_else(|_| "warn".into())),
        ];
        for (i, (role, rank)) in [("prefill", 0), ("prefill", 1), ("decode", 0), ("decode", 1)].into_iter().enumerate()
        {
            let mut args: Vec<String> = ["worker", "--role", role, "--dp-rank", &rank.to_string(), "--prefill-dp", "2"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(["--decode-dp", "2", "--feeder", "off"].map(String::from));
            args.extend(["--advertise-host".into(), advertised[i].to_string()]);
            args.extend(["--data-plane-addr".into(), format!("0.0.0.0:{DATA_PLANE_PORT}")]);
            args.extend(["--metrics-addr".into(), format!("0.0.0.0:{METRICS_PORT}")]);
            args.extend(extra.iter().map(|s| s.to_string()));
            net.spawn(i, env!("CARGO_BIN_EXE_pdq"), &args, &envs);
        }
        wait_for_workers(pool, 4).await;
        Some(Cluster { net, h })
    }

    fn data_plane(&self, host: usize) -> SocketAddr {
        SocketAddr::new(self.net.hosts[host].addr.into(), DATA_PLANE_PORT)
    }

    /// The sum of a metric's series on `host`, read from its `/metrics` across the bridge.
    async fn metric(&self, host: usize, name: &str) -> f64 {
        let addr = SocketAddr::new(self.net.hosts[host].addr.into(), METRICS_PORT);
        let text = match http_get(addr).await {
            Ok(t) => t,
            Err(e) => panic!("scraping {addr}: {e}"),
        };
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn sum_metric(&self, hosts: &[usize], name: &str) -> f64 {
        let mut total = 0.0;
        for &h in hosts {
            total += self.metric(h, name).await;
        }
        total
    }

    /// Waits until the prefill ranks (hosts 0 and 1, those in `hosts`) hold no KV; returns how
    /// long that took, or what they still held at the bound.
    async fn kv_left(&self, hosts: &[usize], within: Duration) -> Result<Duration, f64> {
        let started = Instant::now();
        loop {
            let held = self.sum_metric(hosts, "pdq_kv_store_entries").await;
            if held == 0.0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(held);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGTERM to every rank, a few seconds to drain, then the net goes (killing what is left).
    async fn finish(mut self) {
        for i in 0..4 {
            let child = self.net.child(i);
            if matches!(child.try_wait(), Ok(None)) {
                common::procs::signal(child, "TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && (0..4).any(|i| matches!(self.net.child(i).try_wait(), Ok(None))) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(self.net);
        self.h.finish().await;
    }
}

async fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// `n` requests; every tenth pinned to decode rank 1 with its KV on prefill rank `p`, the rest
/// unpinned.
fn lines(n: usize, p: u32) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut body = json!({"text": format!("request {i} across hosts"),
                "sampling_params": {"max_new_tokens": 64, "temperature": 0, "ignore_eos": true}});
            if i % 10 == 0 {
                body["routed_dp_rank"] = json!(1);
                body["disagg_prefill_dp_rank"] = json!(p);
            }
            generate_line(&format!("q{i}"), body)
        })
        .collect()
}

async fn results(pool: &PgPool, job: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM results WHERE job_id = $1").bind(job).fetch_one(pool).await.unwrap_or(0)
}

async fn wait_results(pool: &PgPool, job: Uuid, at_least: i64, within: Duration) {
    let started = Instant::now();
    loop {
        let n = results(pool, job).await;
        if n >= at_least {
            return;
        }
        assert!(started.elapsed() < within, "{n} of {at_least} results after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows, distinct requests with a row, failed rows and requests prefilled more than once.
async fn tally(pool: &PgPool, job: Uuid) -> (i64, i64, i64, i64) {
    let (rows, distinct, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status <> 'completed')
           FROM results WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(pool)
    .await
    .unwrap();
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM requests WHERE job_id = $1 AND attempts >= 2")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap();
    (rows, distinct, failed, twice)
}

/// The median and 99th percentile of the KV hop (`kv_transfer_time`), in ms.
const HOP_PERCENTILES: &str =
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY (meta_info->>'kv_transfer_time')::float8) * 1000,
     percentile_cont(0.99) WITHIN GROUP (ORDER BY (meta_info->>'kv_transfer_time')::float8) * 1000";

/// The KV hop across the bridge (median and 99th percentile of `kv_transfer_time`, ms) and
/// the longest end-to-end time of the pinned requests (s).
async fn timings(pool: &PgPool, job: Uuid) -> (f64, f64, f64) {
    let (p50, p99): (Option<f64>, Option<f64>) =
        sqlx::query_as(&format!("SELECT {HOP_PERCENTILES} FROM results WHERE job_id = $1 AND status = 'completed'"))
            .bind(job)
            .fetch_one(pool)
            .await
            .unwrap();
    let pinned: Option<f64> = sqlx::query_scalar(
        "SELECT max((r.meta_info->>'e2e_latency')::float8) FROM results r JOIN requests q ON q.id = r.request_id
          WHERE r.job_id = $1 AND q.disagg_prefill_dp_rank IS NOT NULL",
    )
    .bind(job)
    .fetch_one(pool)
    .await
    .unwrap();
    (p50.unwrap_or(0.0), p99.unwrap_or(0.0), pinned.unwrap_or(0.0))
}

async fn failures(pool: &PgPool, job: Uuid) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT custom_id, error FROM results WHERE job_id = $1 AND status <> 'completed' LIMIT 5")
        .bind(job)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_partition_between_a_decode_and_a_prefill_host_costs_no_request(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    let Some(c) = Cluster::start(&pool, "partition", &[], None).await else { return };
    let (prefill0, decode1) = (0, 3);
    assert!(c.net.can_connect(decode1, c.data_plane(prefill0), Duration::from_secs(2)), "hosts reach each other");
    let n = 2000;
    let started = Instant::now();
    // The pinned tenth is the pair the partition cuts: decode rank 1, prefill rank 0.
    let job = c.h.submit(&lines(n, 0), Policy::Shared).await;
    wait_results(&pool, job, (n / 10) as i64, JOB_BOUND).await;
    let cut_at = started.elapsed();
    c.net.isolate(prefill0, decode1, true);
    assert!(!c.net.can_connect(decode1, c.data_plane(prefill0), Duration::from_secs(1)), "the partition holds");
    assert!(c.net.can_connect(2, c.data_plane(prefill0), Duration::from_secs(1)), "decode host 2 still reaches it");
    let done_at_cut = results(&pool, job).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.net.isolate(prefill0, decode1, false);
    let healed_at = started.elapsed();
    let done_at_heal = results(&pool, job).await;
    wait_results(&pool, job, n as i64, JOB_BOUND).await;
    let row = c.h.wait(job).await;
    let took = started.elapsed();
    let (rows, distinct, failed, twice) = tally(&pool, job).await;
    let handbacks = c.sum_metric(&[2, 3], "pdq_kv_handbacks_total").await;
    let reprefills = c.sum_metric(&[2, 3], "pdq_kv_reprefills_total").await;
    let kv = c.kv_left(&[0, 1], Duration::from_secs(30)).await;
    let (p50, p99, pinned) = timings(&pool, job).await;
    eprintln!(
        "partition: {n} requests in {took:.1?}; cut decode host {decode1} from prefill host {prefill0} at \
         {cut_at:.1?} ({done_at_cut} done), healed at {healed_at:.1?} ({done_at_heal} done); {failed} failed, \
         {twice} prefilled more than once, {handbacks} handles handed back, {reprefills} re-prefills; \
         KV left on the prefill ranks: {kv:?}; KV hop p50 {p50:.2} ms, p99 {p99:.2} ms; the cut pair's \
         pinned requests took at most {pinned:.1} s"
    );
    assert_eq!((rows, distinct), (n as i64, n as i64), "one row per request");
    assert_eq!(failed, 0, "no request failed: {:?}", failures(&pool, job).await);
    assert_eq!(row.completed as usize, n);
    assert!(twice as usize <= n / 10, "{twice} of {n} prefilled more than once");
    assert!(kv.is_ok(), "the prefill ranks still hold {kv:?} KVs");
    c.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_prefill_host_that_leaves_the_network_loses_no_request(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    // The lost host's handles are waited for this long, then prefilled again elsewhere.
    let extra = ["--kv-unreachable-wait", "10s", "--amqp-heartbeat", "5s"];
    let Some(c) = Cluster::start(&pool, "hostloss", &extra, None).await else { return };
    let n = 2000;
    let started = Instant::now();
    // A request pinned to the lost prefill rank would wait for it to come back: pins go to rank 1.
    let job = c.h.submit(&lines(n, 1), Policy::Shared).await;
    wait_results(&pool, job, (n / 10) as i64, JOB_BOUND).await;
    let lost_at = started.elapsed();
    let done_at_loss = results(&pool, job).await;
    c.net.link_down(0);
    wait_results(&pool, job, n as i64, JOB_BOUND).await;
    let row = c.h.wait(job).await;
    let took = started.elapsed();
    let (rows, distinct, failed, twice) = tally(&pool, job).await;
    let handbacks = c.sum_metric(&[2, 3], "pdq_kv_handbacks_total").await;
    let reprefills = c.sum_metric(&[2, 3], "pdq_kv_reprefills_total").await;
    let kv = c.kv_left(&[1], Duration::from_secs(30)).await;
    let (p50, p99, _) = timings(&pool, job).await;
    eprintln!(
        "host loss: {n} requests in {took:.1?}; prefill host 0 left the network at {lost_at:.1?} \
         ({done_at_loss} done); {failed} failed, {twice} prefilled more than once, {handbacks} handles handed \
         back, {reprefills} re-prefills; KV left on prefill rank 1: {kv:?}; KV hop p50 {p50:.2} ms, p99 \
         {p99:.2} ms"
    );
    assert_eq!((rows, distinct), (n as i64, n as i64), "one row per request, none twice");
    assert_eq!(failed, 0, "no request failed: {:?}", failures(&pool, job).await);
    assert_eq!(row.completed as usize, n);
    assert!(kv.is_ok(), "prefill rank 1 still holds {kv:?} KVs");
    c.finish().await;
}

/// KV hop (median and 99th percentile of `kv_transfer_time`, ms) and requests, per prefill rank.
async fn hops_by_prefill(pool: &PgPool, job: Uuid) -> Vec<(i32, f64, f64, i64)> {
    sqlx::query_as(&format!(
        "SELECT prefill_dp_rank, {HOP_PERCENTILES}, count(*)
           FROM results WHERE job_id = $1 AND status = 'completed' GROUP BY 1 ORDER BY 1"
    ))
    .bind(job)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_slow_lossy_path_to_a_prefill_host_costs_time_not_requests(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    // 100 ms each way (200 ms added to every round trip) and 1% of segments lost, each costing
    // a retransmission timeout's stall, on every path to prefill host 0; host 1 is direct.
    let slow = Impair { one_way: Duration::from_millis(100), loss: 0.01, retransmit: Duration::from_millis(400) };
    let Some(c) = Cluster::start(&pool, "slowpath", &[], Some(slow)).await else { return };
    let n = 1000;
    let started = Instant::now();
    let job = c.h.submit(&lines(n, 0), Policy::Shared).await;
    wait_results(&pool, job, n as i64, JOB_BOUND).await;
    let row = c.h.wait(job).await;
    let took = started.elapsed();
    let (rows, distinct, failed, twice) = tally(&pool, job).await;
    let handbacks = c.sum_metric(&[2, 3], "pdq_kv_handbacks_total").await;
    let kv = c.kv_left(&[0, 1], Duration::from_secs(30)).await;
    let hops = hops_by_prefill(&pool, job).await;
    eprintln!(
        "slow path: {n} requests in {took:.1?}; {failed} failed, {twice} prefilled more than once, {handbacks} \
         handles handed back; KV left: {kv:?}; KV hop per prefill rank (rank, p50 ms, p99 ms, requests), \
         rank 0 behind {slow:?}: {hops:?}"
    );
    assert_eq!((rows, distinct), (n as i64, n as i64), "one row per request");
    assert_eq!(failed, 0, "no request failed: {:?}", failures(&pool, job).await);
    assert_eq!(row.completed as usize, n);
    assert_eq!(twice, 0, "a slow path is no reason to prefill again");
    assert!(kv.is_ok(), "the prefill ranks still hold {kv:?} KVs");
    let hop = |rank: i32| hops.iter().find(|h| h.0 == rank).map(|h| h.1).expect("both prefill ranks served");
    assert!(hop(0) >= 200.0, "a take through the slow path pays its round trip: p50 {} ms", hop(0));
    assert!(hop(1) < hop(0), "the direct path is the faster: {hops:?}");
    c.finish().await;
}
