//! A three-node RabbitMQ cluster of the test's own (`scripts/rabbit-cluster.sh`), beside the
//! system broker, which it never touches. Stopped and its data removed on drop, also when the
//! test fails. Where no node can be started here the test says skipped, never passed, unless
//! `PDQ_REQUIRE_RABBIT_CLUSTER` is set (CI where it must run): then it fails.
//!
//! What runs while pdq does is async: a `#[sqlx::test]` runs the whole cluster on one thread,
//! and a blocking `rabbitmqctl` call (a second or more; a node start takes several) would stall
//! every rank along with it, which the test would then measure as the node loss's cost.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbit-cluster.sh");

pub struct RabbitCluster {
    dir: PathBuf,
}

impl RabbitCluster {
    /// The cluster started and joined, or `None` after printing `SKIPPED: why`.
    pub fn start_or_skip() -> Option<RabbitCluster> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rabbit-cluster-{}", std::process::id()));
        let cluster = RabbitCluster { dir };
        let out = cluster.script(&["start"]);
        if out.status.success() {
            return Some(cluster);
        }
        let why = format!(
            "no 3-node RabbitMQ cluster on this machine (scripts/rabbit-cluster.sh start: {}{})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::env::var_os("PDQ_REQUIRE_RABBIT_CLUSTER").is_none(), "PDQ_REQUIRE_RABBIT_CLUSTER is set: {why}");
        println!("SKIPPED: {why}");
        None
    }

    /// The nodes' AMQP URLs, comma-separated: what `PDQ_AMQP_URL` takes.
    pub fn urls(&self) -> String {
        String::from_utf8(self.run(&["urls"]).stdout).unwrap().trim().to_string()
    }

    /// Kills node `n`'s Erlang VM (SIGKILL): a broker node that crashes.
    pub async fn kill(&self, n: u32) {
        self.run_async(vec!["node-kill".into(), n.to_string()]).await;
    }

    /// Starts node `n` again; it rejoins the cluster from its data directory.
    pub async fn start_node(&self, n: u32) {
        self.run_async(vec!["node-start".into(), n.to_string()]).await;
    }

    /// The AMQP port of every client connection whose name contains `needle`, as node `via`
    /// (a running one) sees the cluster: node `k` listens on `5680 + k`.
    pub async fn connection_ports(&self, via: u32, needle: &str) -> Vec<u16> {
        let args = ["ctl", &via.to_string(), "list_connections", "port", "client_properties", "--formatter", "json"];
        let out = self.run_async(args.iter().map(|a| a.to_string()).collect()).await;
        let conns: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("rabbitmqctl JSON");
        conns
            .iter()
            .filter(|c| {
                let props = c["client_properties"].as_array().cloned().unwrap_or_default();
                props.iter().any(|p| p[0] == "connection_name" && p[2].as_str().is_some_and(|s| s.contains(needle)))
            })
            .filter_map(|c| c["port"].as_u64().map(|p| p as u16))
            .collect()
    }

    /// [`Self::run`] on a blocking thread, leaving the runtime to pdq.
    async fn run_async(&self, args: Vec<String>) -> Output {
        let dir = self.dir.clone();
        let out =
            tokio::task::spawn_blocking(move || script(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>()));
        let out = out.await.expect("rabbit-cluster.sh ran");
        assert!(out.status.success(), "scripts/rabbit-cluster.sh: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "scripts/rabbit-cluster.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn script(&self, args: &[&str]) -> Output {
        script(&self.dir, args)
    }
}

fn script(dir: &Path, args: &[&str]) -> Output {
    Command::new("bash").arg(SCRIPT).args(args).env("PDQ_RABBIT_CLUSTER_DIR", dir).output().expect("bash runs")
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let out = self.script(&["stop"]);
        if !out.status.success() {
            eprintln!(
                "stopping the RabbitMQ cluster in {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
