//! `pdq bench`: pdq against the ceilings of the services it rides on, and disaggregated against
//! colocated, every figure measured in one run on one machine.
//!
//! 1. Ceilings ([`ceilings`]): the bare broker moving pdq's two messages (a request line, a KV
//!    handle) at its best, the database taking result rows by COPY, and the workers' own result
//!    write alone.
//! 2. Scenarios ([`scenario`]): 16-token and ~1k-token prompts, 1 and 32 output tokens, each
//!    through a fresh disaggregated cluster and a fresh colocated one.
//! 3. The report ([`report`]): a table, the aims met or missed, `--json`, and a chart ([`chart`]).

mod ceilings;
mod chart;
mod report;
mod scenario;

use std::path::PathBuf;

use anyhow::Result;
use pdq_broker::Broker;
use pdq_engine::{Device, Model};
use pdq_protocol::ClusterShape;
use pdq_store::Store;
use serde::Serialize;
use uuid::Uuid;

use crate::cli::Global;
pub use scenario::Shape;

/// What `pdq bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Requests in each short-prompt scenario.
    pub requests: usize,
    /// Requests in each long-prompt scenario.
    pub long_requests: usize,
    /// Long-prompt requests sent one at a time in the latency runs (0 skips them).
    pub latency_requests: usize,
    /// Tokens in a long prompt (kept inside the model's context with 32 output tokens).
    pub long_prompt: usize,
    pub prefill_dp: u32,
    pub decode_dp: u32,
    /// Scenario keys to run (`16x1`, ...); empty for all.
    pub scenarios: Vec<String>,
    /// Measure the ceilings (off only to profile a scenario alone).
    pub ceilings: bool,
    pub json: Option<PathBuf>,
    pub chart: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    pub request_msg: ceilings::BrokerCeiling,
    pub handle_msg: ceilings::BrokerCeiling,
    /// Requests/s the broker could carry through both hops of a disaggregated request: the
    /// broker's time per request is the sum of its time per message of each kind.
    pub two_hop_requests_per_s: f64,
    pub database_copy: ceilings::DatabaseCeiling,
    /// `Store::write_results` alone, in the writer's largest batches.
    pub writer_rows_per_s: f64,
    pub writer_batch: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub cores: usize,
    pub model: String,
    pub queue_type: String,
    pub ceilings: Option<Ceilings>,
    pub scenarios: Vec<scenario::ScenarioRun>,
    /// Long prompts one at a time, disaggregated and colocated: the KV hop's cost to TTFT.
    pub latency: Vec<scenario::LatencyRun>,
    pub aims: Vec<report::Aim>,
}

pub async fn run(g: &Global, model: Device, plan: BenchPlan) -> Result<()> {
    let store = Store::connect(&g.database_url).await?;
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    let disagg = ClusterShape::disagg(plan.prefill_dp, plan.decode_dp);
    let colocated = ClusterShape::colocated(plan.decode_dp);
    let long = plan.long_prompt.min(model.model().max_context().saturating_sub(32)).max(16);
    let short = |max_tokens| Shape { prompt_tokens: 16, max_tokens, requests: plan.requests, shared_prefix_tokens: 0 };
    let long_shape =
        |max_tokens| Shape { prompt_tokens: long, max_tokens, requests: plan.long_requests, shared_prefix_tokens: 0 };
    let all = [
        ("16x1", "16 in, 1 out", short(1)),
        ("16x32", "16 in, 32 out", short(32)),
        ("1kx1", "1k in, 1 out", long_shape(1)),
        ("1kx32", "1k in, 32 out", long_shape(32)),
        // The long prompts again, all but their last 16 tokens shared: the prefix cache's case.
        ("1kx32s", "1k shared, 32", Shape { shared_prefix_tokens: long.saturating_sub(16), ..long_shape(32) }),
    ];
    if let Some(bad) = plan.scenarios.iter().find(|k| !all.iter().any(|(key, ..)| key == k)) {
        anyhow::bail!("no bench scenario '{bad}': use 16x1, 16x32, 1kx1, 1kx32 or 1kx32s");
    }
    let shapes: Vec<(&str, Shape)> = all
        .iter()
        .filter(|(key, ..)| plan.scenarios.is_empty() || plan.scenarios.iter().any(|k| k == key))
        .map(|&(_, name, shape)| (name, shape))
        .collect();
    let ceilings = if plan.ceilings {
        Some(measure_ceilings(g, &store, model.model(), &tag, &disagg, plan.requests).await?)
    } else {
        None
    };

    let mut scenarios = Vec::new();
    for (name, shape) in shapes {
        for cluster in [disagg, colocated] {
            let ns = format!("{}-bench-{tag}-{}", g.namespace, scenarios.len());
            eprintln!("pdq bench: {name}, {} ({} requests)", cluster.mode, shape.requests);
            let run = scenario::run(&store, g, &ns, name, cluster, model.clone(), shape).await;
            drop_namespace(g, ns, &cluster).await?;
            scenarios.push(run?);
        }
    }
    anyhow::ensure!(scenarios.iter().all(|s| s.failed == 0), "bench requests failed");
    let mut latency = Vec::new();
    if plan.latency_requests > 0 {
        // Disaggregated over TCP and, where this machine has it, over shared memory.
        let shm = pdq_workers::shm_usable(std::path::Path::new(scenario::SHM_DIR));
        let runs = [(disagg, false), (disagg, true), (colocated, false)];
        for (cluster, shm) in runs.into_iter().filter(|&(_, s)| shm || !s) {
            let ns = format!("{}-bench-{tag}-lat-{}", g.namespace, latency.len());
            let how = if shm { " over shared memory" } else { "" };
            eprintln!("pdq bench: {long}-token prompts one at a time, {}{how}", cluster.mode);
            let n = plan.latency_requests;
            let run = scenario::one_at_a_time(&store, g, &ns, cluster, model.clone(), long, n, shm).await;
            drop_namespace(g, ns, &cluster).await?;
            latency.push(run?);
        }
    }

    let report = BenchReport {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        model: model.model().name().to_string(),
        queue_type: g.queue_type.as_str().to_string(),
        aims: report::aims(ceilings.as_ref(), &scenarios, &latency),
        ceilings,
        scenarios,
        latency,
    };
    report::print(&report);
    if let Some(path) = &plan.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
        eprintln!("pdq bench: wrote {}", path.display());
    }
    if let Some(path) = &plan.chart {
        chart::draw(&report, path)?;
        eprintln!("pdq bench: drew {}", path.display());
    }
    Ok(())
}

/// The bench's namespaces are its own: it leaves no queues behind, even after a failed run.
async fn drop_namespace(g: &Global, namespace: String, shape: &ClusterShape) -> Result<()> {
    let broker = Broker::connect_with(pdq_broker::BrokerOptions { namespace, ..g.broker() }).await?;
    broker.delete_namespace(shape).await?;
    broker.close().await;
    Ok(())
}

async fn measure_ceilings(
    g: &Global,
    store: &Store,
    model: &Model,
    tag: &str,
    disagg: &ClusterShape,
    requests: usize,
) -> Result<Ceilings> {
    eprintln!("pdq bench: measuring the ceilings");
    let vocab = model.config.vocab_size;
    let shape = Shape { prompt_tokens: 16, max_tokens: 1, requests: 1, shared_prefix_tokens: 0 };
    let short_line = &scenario::lines(shape, vocab)[0];
    let request_body = short_line.to_string().into_bytes();
    let handle_body = ceilings::handle_body(short_line, disagg, 16, 16 * 512)?;
    let msgs = requests.clamp(1_000, 10_000);
    let request_msg = ceilings::broker(g, &format!("{tag}-req"), &request_body, msgs).await?;
    let handle_msg = ceilings::broker(g, &format!("{tag}-kv"), &handle_body, msgs).await?;
    let sample = ceilings::sample_outcome(16, 32);
    let rows = (requests * 4).clamp(2_000, 20_000);
    let database_copy = ceilings::database(store, rows, &sample).await?;
    let writer_batch = pdq_workers::RESULT_BATCH;
    let writer_rows_per_s = ceilings::writer(store, &g.namespace, rows, writer_batch, &sample).await?;
    Ok(Ceilings {
        two_hop_requests_per_s: 1.0 / (1.0 / request_msg.msgs_per_s + 1.0 / handle_msg.msgs_per_s),
        request_msg,
        handle_msg,
        database_copy,
        writer_rows_per_s,
        writer_batch,
    })
}
