//! The ceilings pdq is held against, measured in the same run as pdq itself: the broker moving
//! the messages pdq sends (a request line, a KV handle), and the database taking result rows by
//! COPY. Each is the best of a few short runs, since one run on a busy 2-core machine can land
//! on a bad moment, and a low ceiling flatters every ratio printed against it.

use anyhow::Result;
use pdq_broker::{broker_ceiling, Broker, CeilingOptions};
use pdq_protocol::{
    validate, ClusterShape, FinishReason, InputLine, KvHandle, MetaInfo, Outcome, RawLine, ResultStatus, Timings,
};
use pdq_store::{NewJob, NewRequest, Store};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::cli::Global;

const RUNS: usize = 3;
/// Rows per COPY in the database ceiling.
pub const COPY_BATCH: usize = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct BrokerCeiling {
    /// The message, as published.
    pub body_bytes: usize,
    /// Best of the runs, messages/s through publish, confirm, deliver and ack.
    pub msgs_per_s: f64,
    pub runs: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseCeiling {
    pub rows: usize,
    pub batch: usize,
    pub rows_per_s: f64,
    pub runs: Vec<f64>,
}

pub async fn broker(g: &Global, tag: &str, body: &[u8], messages: usize) -> Result<BrokerCeiling> {
    let namespace = format!("{}-ceiling-{tag}", g.namespace);
    let broker = Broker::connect_with(pdq_broker::BrokerOptions {
        namespace: namespace.clone(),
        ..g.broker().named(format!("pdq:{namespace}:ceiling"))
    })
    .await?;
    let opts = CeilingOptions { messages, ..CeilingOptions::default() };
    let mut runs = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        runs.push(broker_ceiling(&broker, &format!("{namespace}.{i}"), body, opts).await?);
    }
    broker.close().await;
    Ok(BrokerCeiling { body_bytes: body.len(), msgs_per_s: best(&runs), runs })
}

/// Result rows by COPY, shaped like the rows `sample` would produce.
pub async fn database(store: &Store, rows: usize, sample: &Outcome) -> Result<DatabaseCeiling> {
    let outcomes: Vec<Outcome> = (0..rows).map(|_| Outcome { request_id: Uuid::now_v7(), ..sample.clone() }).collect();
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(store.copy_ceiling(&outcomes, COPY_BATCH).await?);
    }
    Ok(DatabaseCeiling { rows, batch: COPY_BATCH, rows_per_s: best(&runs), runs })
}

/// Rows/s of the workers' own result write (`Store::write_results`: the idempotent insert, the
/// request's status and the job's counters in one statement), `batch` rows per transaction,
/// into a real job.
pub async fn writer(store: &Store, namespace: &str, rows: usize, batch: usize, sample: &Outcome) -> Result<f64> {
    let job = NewJob { name: Some("bench-writer".into()), ..NewJob::new(Uuid::now_v7(), namespace) };
    let requests: Vec<NewRequest> = (0..rows)
        .map(|i| NewRequest {
            id: Uuid::now_v7(),
            job_id: Some(job.id),
            line_no: Some(i as i32 + 1),
            custom_id: Some(format!("w{i}")),
            url: Some("/v1/completions".into()),
            body: Value::Null,
            routed_dp_rank: None,
            disagg_prefill_dp_rank: None,
            // Rows only for the write: no feeder publishes them.
            outbound: None,
        })
        .collect();
    store.create_job(&job, &requests, &[]).await?;
    let outcomes: Vec<Outcome> = requests
        .iter()
        .map(|r| Outcome { request_id: r.id, job_id: r.job_id, custom_id: r.custom_id.clone(), ..sample.clone() })
        .collect();
    let started = std::time::Instant::now();
    for chunk in outcomes.chunks(batch) {
        store.write_results(chunk).await?;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job.id).execute(store.pool()).await?;
    Ok(rate)
}

/// The KV handle prefill would publish for `line`.
pub fn handle_body(line: &Value, shape: &ClusterShape, prompt_tokens: u32, kv_bytes: u64) -> Result<Vec<u8>> {
    let text = line.to_string();
    let parsed = InputLine::parse(&RawLine { line_no: 1, text: &text })?;
    let request = validate(&parsed, None, shape)?;
    let handle = KvHandle {
        request_id: Uuid::now_v7(),
        job_id: Some(Uuid::now_v7()),
        request: (&request).into(),
        line: line.clone(),
        attempt: 1,
        decode_rank: Some(0),
        prefill_dp_rank: 0,
        endpoint: "127.0.0.1:40000".into(),
        kv_id: Uuid::new_v4(),
        kv_bytes,
        prompt_tokens,
        cached_tokens: 0,
        first_token: 42,
        firsts: Vec::new(),
        seed: 7,
        enqueued_at_ms: 1_764_590_000_000,
        published_at_ms: 0,
        timings: Timings { queue_time: 0.1, prefill_time: 0.01, ..Timings::default() },
        warnings: Vec::new(),
        shm_host: None,
    };
    Ok(serde_json::to_vec(&handle)?)
}

/// A completed row as decode writes it, for `completion_tokens` generated tokens.
pub fn sample_outcome(prompt_tokens: u32, completion_tokens: u32) -> Outcome {
    let id = Uuid::now_v7();
    Outcome {
        request_id: id,
        job_id: None,
        custom_id: Some("bench-0".into()),
        status: ResultStatus::Completed,
        text: Some(" a completion".repeat(completion_tokens as usize)),
        output_ids: (0..completion_tokens).map(|t| 100 + t).collect(),
        meta_info: MetaInfo {
            id: id.to_string(),
            dp_rank: Some(1),
            prefill_dp_rank: Some(0),
            prompt_tokens,
            completion_tokens,
            finish_reason: Some(FinishReason::Length { length: completion_tokens }),
            e2e_latency: 0.5,
            timings: Timings { queue_time: 0.3, prefill_time: 0.01, kv_transfer_time: 0.0001, decode_time: 0.1 },
            kv_bytes: 8192,
            seed: Some(7),
            attempts: 1,
            ..MetaInfo::default()
        },
        error: None,
        logprobs: None,
        choices: Vec::new(),
        embeddings: Vec::new(),
    }
}

fn best(runs: &[f64]) -> f64 {
    runs.iter().copied().fold(0.0, f64::max)
}
