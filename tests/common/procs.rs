//! `pdq` as a user runs it: ranks as separate processes with their own environment.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::amqp_url;

pub struct Env {
    pub database_url: String,
    pub namespace: String,
}

impl Env {
    pub async fn new(pool: &PgPool) -> Env {
        let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(pool).await.unwrap();
        let base =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let server = base.rsplit_once('/').map(|(s, _)| s.to_string()).unwrap();
        Env { database_url: format!("{server}/{db}"), namespace: format!("cli-{}", Uuid::new_v4().simple()) }
    }

    pub fn pdq(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pdq"));
        c.args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("PDQ_AMQP_URL", amqp_url())
            .env("PDQ_NAMESPACE", &self.namespace)
            .env("PDQ_CACHE_DIR", env!("CARGO_TARGET_TMPDIR"))
            .env("RUST_LOG", "warn");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.pdq(args).stdin(Stdio::null()).output().expect("pdq runs")
    }

    /// One rank as its own process; `extra` are further flags (timeouts, secrets).
    pub fn spawn_rank(&self, role: &str, rank: u32, prefill_dp: u32, decode_dp: u32, extra: &[&str]) -> Child {
        let (rank, p, d) = (rank.to_string(), prefill_dp.to_string(), decode_dp.to_string());
        let mut args = vec!["worker", "--role", role, "--dp-rank", &rank, "--prefill-dp", &p, "--decode-dp", &d];
        args.extend_from_slice(extra);
        self.pdq(&args).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("worker starts")
    }
}

/// Ranks started by a test; whatever still runs when the test ends (or panics) is killed, so a
/// failed test leaves no worker behind holding its database.
pub struct Ranks(pub Vec<Child>);

impl Drop for Ranks {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                c.kill().ok();
                c.wait().ok();
            }
        }
    }
}

impl std::ops::Deref for Ranks {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Ranks {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn signal(child: &Child, sig: &str) {
    Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().expect("kill");
}

/// SIGTERM, then waits for the graceful drain.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "worker did not drain in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak resident memory of a live process (a pid, or `self`), in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn wait_for_workers(pool: &PgPool, n: i64) {
    let started = Instant::now();
    loop {
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM workers").fetch_one(pool).await.unwrap_or(0);
        if live >= n {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "workers did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn delete_namespace(ns: &str, shape: pdq_protocol::ClusterShape) {
    let broker = pdq_broker::Broker::connect(&amqp_url(), ns).await.unwrap();
    broker.delete_namespace(&shape).await.unwrap();
    broker.close().await;
}
