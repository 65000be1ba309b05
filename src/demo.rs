//! `pdq demo`: the README's main job. Starts a cluster in this process, submits a batch that
//! exercises the three input surfaces and the routing pins (`routed_dp_rank`,
//! `disagg_prefill_dp_rank`), waits, and prints the results from SQL.

use std::time::Instant;

use anyhow::Result;
use pdq_engine::Device;
use pdq_producer::feeder::{FeederConfig, DEFAULT_FEEDER_WINDOW};
use pdq_producer::{submit_lines, wait_for_job, BatchSource, Lines, SubmitOptions, WaitMode};
use pdq_protocol::{ClusterShape, Mode};
use pdq_store::JobRow;
use pdq_store::Store;
use pdq_workers::{Cluster, ClusterConfig};
use serde_json::{json, Value};
use sqlx::Row;

use crate::cli::Global;

const PROMPTS: &[&str] = &[
    "The quick brown fox",
    "Once upon a time, in a quiet village by the sea,",
    "The capital of France is",
    "Batch inference works best when",
    "A river runs through the old town and",
    "In the morning the baker",
];

/// A demo batch line: a mix of surfaces, and of pinned and unpinned requests.
pub fn demo_line(i: usize, shape: &ClusterShape, max_tokens: u32) -> Value {
    let prompt = PROMPTS[i % PROMPTS.len()];
    let mut body = match i % 3 {
        0 => json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
        1 => {
            json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0.8, "seed": i})
        }
        _ => json!({"text": prompt, "sampling_params": {"max_new_tokens": max_tokens, "temperature": 0}}),
    };
    let url = ["/v1/completions", "/v1/chat/completions", "/generate"][i % 3];
    // Every other request is pinned, as an external router would: decode rank, and for some a
    // different prefill rank that holds the KV.
    if i.is_multiple_of(2) {
        body["routed_dp_rank"] = json!((i / 2) as u32 % shape.decode_dp);
        if shape.mode == Mode::Disagg && i.is_multiple_of(4) {
            body["disagg_prefill_dp_rank"] = json!((i / 4) as u32 % shape.prefill_dp);
        }
    }
    json!({"custom_id": format!("demo-{i}"), "method": "POST", "url": url, "body": body})
}

pub async fn run(
    g: &Global,
    shape: ClusterShape,
    model: Device,
    requests: usize,
    max_tokens: u32,
    show: usize,
) -> Result<()> {
    let store = Store::connect(&g.database_url).await?;
    eprintln!(
        "cluster: {} on model '{}' ({} prefill x {} decode ranks, namespace '{}')",
        shape.mode,
        model.model().name(),
        shape.prefill_dp,
        shape.decode_dp,
        g.namespace
    );
    let lines: Vec<Value> = (0..requests).map(|i| demo_line(i, &shape, max_tokens)).collect();
    let run = run_batch(&store, g, &g.namespace, shape, model, &lines, WaitMode::Progress).await?;
    let job = &run.job;
    println!(
        "job {} {}: {} completed, {} failed of {} in {:.2}s ({:.1} requests/s)",
        job.id,
        job.status,
        job.completed,
        job.failed,
        job.total,
        run.wall_s,
        job.total as f64 / run.wall_s
    );
    print_table(&store, job.id, show).await
}

/// One batch through a fresh in-process cluster in `namespace`: start, submit, wait, drain.
pub struct BatchRun {
    pub job: JobRow,
    /// From submission to the job's last result (cluster start-up and drain excluded).
    pub wall_s: f64,
}

pub async fn run_batch(
    store: &Store,
    g: &Global,
    namespace: &str,
    shape: ClusterShape,
    model: Device,
    lines: &[Value],
    wait: WaitMode,
) -> Result<BatchRun> {
    let local = LocalCluster::start(store, g, namespace, shape, model, |_| {}).await?;
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    let started = Instant::now();
    let job_id = local.submit(store, &text).await?;
    if wait == WaitMode::Progress {
        println!("{job_id}");
    }
    let job = wait_for_job(store, job_id, wait).await?;
    let wall_s = started.elapsed().as_secs_f64();
    local.stop().await?;
    Ok(BatchRun { job, wall_s })
}

/// A fresh cluster in this process, in a namespace of its own, with its feeder.
pub struct LocalCluster {
    namespace: String,
    shape: ClusterShape,
    cluster: Cluster,
    stop_feeder: tokio::sync::watch::Sender<bool>,
    feeder: tokio::task::JoinHandle<()>,
}

impl LocalCluster {
    /// `tweak` adjusts the workers' configuration (every rank gets the same).
    pub async fn start(
        store: &Store,
        g: &Global,
        namespace: &str,
        shape: ClusterShape,
        model: Device,
        tweak: impl FnOnce(&mut ClusterConfig),
    ) -> Result<LocalCluster> {
        let opts = pdq_broker::BrokerOptions { namespace: namespace.to_string(), ..g.broker() };
        let mut config =
            ClusterConfig { broker: opts.clone(), ..ClusterConfig::new(shape, namespace, &g.amqp_url.to_string()) };
        tweak(&mut config);
        let cluster = Cluster::start(&config, model, store.clone()).await?;
        let (stop_feeder, stop_rx) = tokio::sync::watch::channel(false);
        let cfg = FeederConfig {
            namespace: namespace.to_string(),
            broker: opts,
            window: DEFAULT_FEEDER_WINDOW,
            shape: Some(shape),
        };
        let feeder = pdq_producer::feeder::spawn(store.clone(), cfg, stop_rx);
        Ok(LocalCluster { namespace: namespace.to_string(), shape, cluster, stop_feeder, feeder })
    }

    /// Submits `text` (JSONL) as one job; returns its id.
    pub async fn submit(&self, store: &Store, text: &str) -> Result<uuid::Uuid> {
        let input =
            BatchSource { source: format!("pdq:{}", self.namespace), endpoint: None, job_id: uuid::Uuid::now_v7() };
        let opts = SubmitOptions { name: Some(self.namespace.clone()), ..SubmitOptions::default() };
        Ok(submit_lines(store, &self.namespace, &input, Lines::text(text), &self.shape, &opts).await?.job_id)
    }

    /// Stops the feeder, then drains the cluster.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop_feeder.send(true);
        self.feeder.await.ok();
        self.cluster.shutdown().await?;
        Ok(())
    }
}

async fn print_table(store: &Store, job_id: uuid::Uuid, show: usize) -> Result<()> {
    const QUERY: &str = "SELECT r.custom_id, q.url, q.routed_dp_rank, q.disagg_prefill_dp_rank,
            r.prefill_dp_rank, r.dp_rank, r.prompt_tokens, r.completion_tokens, r.finish_reason, r.text
     FROM results r JOIN requests q ON q.id = r.request_id
     WHERE r.job_id = $1 ORDER BY q.line_no LIMIT $2";
    println!("\n{}\n", QUERY.split_whitespace().collect::<Vec<_>>().join(" "));
    println!(
        "{:<9} {:<21} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:<6} text",
        "custom_id", "url", "routed", "pf_pin", "prefill", "dp_rank", "prompt", "compl", "finish"
    );
    let rows = sqlx::query(QUERY).bind(job_id).bind(show as i64).fetch_all(store.pool()).await?;
    let opt = |v: Option<i32>| v.map_or("-".to_string(), |v| v.to_string());
    for r in rows {
        let text: Option<String> = r.get("text");
        let text: String = text.unwrap_or_default().chars().take(40).collect::<String>().replace('\n', "\\n");
        println!(
            "{:<9} {:<21} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:<6} {}",
            r.get::<Option<String>, _>("custom_id").unwrap_or_default(),
            r.get::<Option<String>, _>("url").unwrap_or_default(),
            opt(r.get("routed_dp_rank")),
            opt(r.get("disagg_prefill_dp_rank")),
            opt(r.get("prefill_dp_rank")),
            opt(r.get("dp_rank")),
            opt(r.get("prompt_tokens")),
            opt(r.get("completion_tokens")),
            r.get::<Option<String>, _>("finish_reason").unwrap_or_default(),
            text
        );
    }
    let check: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE q.routed_dp_rank IS NOT NULL),
                count(*) FILTER (WHERE q.routed_dp_rank IS NOT NULL AND r.dp_rank = q.routed_dp_rank
                                 AND r.prefill_dp_rank = COALESCE(q.disagg_prefill_dp_rank, q.routed_dp_rank))
         FROM results r JOIN requests q ON q.id = r.request_id WHERE r.job_id = $1",
    )
    .bind(job_id)
    .fetch_one(store.pool())
    .await?;
    println!("\nrouting check: {}/{} pinned requests served on the ranks they asked for", check.1, check.0);
    Ok(())
}
