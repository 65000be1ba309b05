//! One bench scenario: a batch of same-shaped requests through a fresh in-process cluster, and
//! the figures read back from the rows it wrote (`meta_info`).

use anyhow::Result;
use pdq_engine::Device;
use pdq_producer::WaitMode;
use pdq_protocol::{ClusterShape, Mode};
use pdq_store::Store;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::Global;
use crate::demo::{run_batch, LocalCluster};

/// What a scenario sends.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    pub prompt_tokens: usize,
    pub max_tokens: u32,
    pub requests: usize,
    /// Leading prompt tokens every request shares (a system prompt), found in the ranks'
    /// prefix caches after the first request; 0 for prompts drawn whole per request.
    pub shared_prefix_tokens: usize,
}

/// p50 and p99 in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRun {
    pub name: String,
    pub mode: String,
    pub prefill_dp: u32,
    pub decode_dp: u32,
    #[serde(flatten)]
    pub shape: Shape,
    pub completed: i32,
    pub failed: i32,
    pub wall_s: f64,
    pub requests_per_s: f64,
    /// Generated tokens per second.
    pub tokens_per_s: f64,
    pub queue_time: Quantiles,
    /// From enqueue until the first token is in the decoder's hands: queue, prefill and, when
    /// disaggregated, the KV hop.
    pub ttft: Quantiles,
    /// The data-plane fetch alone.
    pub kv_transfer: Quantiles,
    /// Prefill done to decode started: the handle's publish and queue wait plus the fetch.
    pub kv_hop: Quantiles,
    pub e2e: Quantiles,
    /// Prompt tokens the ranks found in their prefix caches, over all prompt tokens.
    pub cached_share: f64,
}

/// Request lines of `shape`: `/v1/completions` with token-id prompts, so every prompt has exactly
/// the length asked for; ids drawn from a fixed seed, so two runs send the same batch.
pub fn lines(shape: Shape, vocab: usize) -> Vec<Value> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(shape.prompt_tokens as u64);
    // The tiny model's first ids are its special tokens; keep to ordinary ones.
    let low = 16.min(vocab.saturating_sub(1)) as u32;
    let shared: Vec<u32> = (0..shape.shared_prefix_tokens).map(|_| rng.gen_range(low..vocab as u32)).collect();
    (0..shape.requests)
        .map(|i| {
            let own = shape.prompt_tokens.saturating_sub(shared.len());
            let prompt: Vec<u32> =
                shared.iter().copied().chain((0..own).map(|_| rng.gen_range(low..vocab as u32))).collect();
            let body = json!({"prompt": prompt, "max_tokens": shape.max_tokens, "temperature": 0, "ignore_eos": true});
            json!({"custom_id": format!("bench-{i}"), "method": "POST", "url": "/v1/completions", "body": body})
        })
        .collect()
}

pub async fn run(
    store: &Store,
    g: &Global,
    namespace: &str,
    name: &str,
    cluster: ClusterShape,
    model: Device,
    shape: Shape,
) -> Result<ScenarioRun> {
    let lines = lines(shape, model.model().config.vocab_size);
    let batch = run_batch(store, g, namespace, cluster, model, &lines, WaitMode::Quiet).await?;
    let job = batch.job.id;
    let (tokens, prompt, cached): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(completion_tokens), 0)::bigint, COALESCE(sum(prompt_tokens), 0)::bigint,
                COALESCE(sum(cached_tokens), 0)::bigint FROM results WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(store.pool())
    .await?;
    let jobs = [job];
    let q = |expr: &'static str| quantiles(store, &jobs, expr);
    Ok(ScenarioRun {
        name: name.to_string(),
        mode: if cluster.mode == Mode::Disagg { "disaggregated" } else { "colocated" }.to_string(),
        prefill_dp: if cluster.mode == Mode::Disagg { cluster.prefill_dp } else { 0 },
        decode_dp: cluster.decode_dp,
        shape,
        completed: batch.job.completed,
        failed: batch.job.failed,
        wall_s: batch.wall_s,
        requests_per_s: batch.job.completed as f64 / batch.wall_s,
        tokens_per_s: tokens as f64 / batch.wall_s,
        queue_time: q("m.queue_time").await?,
        ttft: q("m.e2e_latency - m.decode_time").await?,
        kv_transfer: q("m.kv_transfer_time").await?,
        kv_hop: q("m.e2e_latency - m.decode_time - m.queue_time - m.prefill_time").await?,
        e2e: q("m.e2e_latency").await?,
        cached_share: cached as f64 / prompt.max(1) as f64,
    })
}

/// Where the latency run keeps KVs when it measures the shared-memory data plane.
pub const SHM_DIR: &str = "/dev/shm";

/// The KV hop without queueing: requests sent one at a time, each job waited for before the
/// next, so TTFT holds only the work itself (and, disaggregated, the hop).
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    pub mode: String,
    pub prompt_tokens: usize,
    pub requests: usize,
    pub ttft: Quantiles,
    pub prefill: Quantiles,
    pub kv_transfer: Quantiles,
    pub kv_hop: Quantiles,
}

#[allow(clippy::too_many_arguments)]
pub async fn one_at_a_time(
    store: &Store,
    g: &Global,
    namespace: &str,
    cluster: ClusterShape,
    model: Device,
    prompt_tokens: usize,
    requests: usize,
    shm: bool,
) -> Result<LatencyRun> {
    let shape = Shape { prompt_tokens, max_tokens: 1, requests, shared_prefix_tokens: 0 };
    let lines = lines(shape, model.model().config.vocab_size);
    let shm_dir = shm.then(|| std::path::PathBuf::from(SHM_DIR));
    let local = LocalCluster::start(store, g, namespace, cluster, model, |c| c.data_plane.shm_dir = shm_dir).await?;
    let mut jobs = Vec::with_capacity(requests);
    for line in &lines {
        let job = local.submit(store, &line.to_string()).await?;
        pdq_producer::wait_for_job(store, job, WaitMode::Quiet).await?;
        jobs.push(job);
    }
    local.stop().await?;
    let q = |expr: &'static str| quantiles(store, &jobs, expr);
    Ok(LatencyRun {
        mode: match (cluster.mode, shm) {
            (Mode::Disagg, true) => "disaggregated, shm",
            (Mode::Disagg, false) => "disaggregated",
            _ => "colocated",
        }
        .to_string(),
        prompt_tokens,
        requests,
        ttft: q("m.e2e_latency - m.decode_time").await?,
        prefill: q("m.prefill_time").await?,
        kv_transfer: q("m.kv_transfer_time").await?,
        kv_hop: q("m.e2e_latency - m.decode_time - m.queue_time - m.prefill_time").await?,
    })
}

/// p50/p99 of `expr` over the jobs' completed rows, `m` being the row's timings.
async fn quantiles(store: &Store, jobs: &[uuid::Uuid], expr: &str) -> Result<Quantiles> {
    let sql = format!(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v), percentile_cont(0.99) WITHIN GROUP (ORDER BY v)
         FROM (SELECT greatest({expr}, 0) AS v FROM results r,
               jsonb_to_record(r.meta_info) AS m(queue_time float8, prefill_time float8, kv_transfer_time float8,
                                                decode_time float8, e2e_latency float8)
               WHERE r.job_id = ANY($1) AND r.status = 'completed') t"
    );
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(&sql).bind(jobs).fetch_one(store.pool()).await?;
    Ok(Quantiles { p50: p50.unwrap_or(0.0), p99: p99.unwrap_or(0.0) })
}
