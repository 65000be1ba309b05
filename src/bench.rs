//! `pdq bench`: throughput ratios measured in one run on one machine. pdq against the ceilings
//! of the services it rides on (the broker moving the same messages with confirms and acks, the
//! database taking the same result rows in the same batches), and disaggregated against colocated
//! on the same batch.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use pdq_broker::{Broker, MessageMeta, Outgoing};
use pdq_engine::Model;
use pdq_producer::WaitMode;
use pdq_protocol::{ClusterShape, MetaInfo, Outcome, ResultStatus};
use pdq_store::{NewJob, NewRequest, Store};
use serde_json::Value;
use uuid::Uuid;

use crate::cli::Global;
use crate::demo::{demo_line, run_batch};

/// Result rows per transaction, as the workers' writer batches them.
const DB_BATCH: usize = 256;

pub async fn run(
    g: &Global,
    model: Arc<Model>,
    requests: usize,
    max_tokens: u32,
    prefill_dp: u32,
    decode_dp: u32,
) -> Result<()> {
    let store = Store::connect(&g.database_url).await?;
    let tag = Uuid::new_v4().simple().to_string();
    let disagg = ClusterShape::disagg(prefill_dp, decode_dp);
    let colocated = ClusterShape::colocated(decode_dp);
    // The same batch for both modes, so pins that only disaggregation can honour are left out.
    let lines: Vec<Value> = (0..requests).map(|i| demo_line(i, &colocated, max_tokens)).collect();

    let broker_msgs_s = broker_ceiling(g, &format!("{}-bench-{tag}", g.namespace), &lines).await?;
    let db_rows_s = database_ceiling(&store, &g.namespace, requests).await?;
    let c = run_batch(
        &store,
        g,
        &format!("{}-bench-c-{tag}", g.namespace),
        colocated,
        model.clone(),
        &lines,
        WaitMode::Quiet,
    )
    .await?;
    let d =
        run_batch(&store, g, &format!("{}-bench-d-{tag}", g.namespace), disagg, model.clone(), &lines, WaitMode::Quiet)
            .await?;
    // The bench's namespaces are its own: leave no queues behind.
    for (ns, shape) in
        [(format!("{}-bench-c-{tag}", g.namespace), colocated), (format!("{}-bench-d-{tag}", g.namespace), disagg)]
    {
        let broker = Broker::connect_with(pdq_broker::BrokerOptions { namespace: ns, ..g.broker() }).await?;
        broker.delete_namespace(&shape).await?;
        broker.close().await;
    }
    let rate = |r: &crate::demo::BatchRun| r.job.completed as f64 / r.wall_s;
    let (c_rps, d_rps) = (rate(&c), rate(&d));
    anyhow::ensure!(c.job.failed == 0 && d.job.failed == 0, "bench requests failed");

    // A disaggregated request is two messages through the broker (request, KV handle) and one row.
    let broker_rps = broker_msgs_s / 2.0;
    println!(
        "pdq bench: {requests} requests x {max_tokens} max tokens, model '{}', {} queues, {} cores",
        model.name(),
        g.queue_type.as_str(),
        cores()
    );
    println!("{:<52} {:>12} {:>8}", "", "per second", "ratio");
    println!("{:<52} {:>12.0}", "broker ceiling: persistent messages, confirm + ack", broker_msgs_s);
    println!("{:<52} {:>12.0}", "  as requests (2 messages per request)", broker_rps);
    println!("{:<52} {:>12.0}", format!("database ceiling: result rows, {DB_BATCH} per transaction"), db_rows_s);
    println!("{:<52} {:>12.1}", format!("pdq colocated, {decode_dp} ranks"), c_rps);
    println!("{:<52} {:>12.1}", format!("pdq disaggregated, {prefill_dp} prefill x {decode_dp} decode"), d_rps);
    println!("{:<52} {:>12} {:>8.2}", "disaggregated / colocated", "", d_rps / c_rps);
    println!("{:<52} {:>12} {:>8.3}", "disaggregated / broker ceiling (as requests)", "", d_rps / broker_rps);
    println!("{:<52} {:>12} {:>8.3}", "disaggregated / database ceiling", "", d_rps / db_rows_s);
    println!(
        "generated tokens/s: colocated {:.0}, disaggregated {:.0}",
        tokens(&store, c.job.id).await? as f64 / c.wall_s,
        tokens(&store, d.job.id).await? as f64 / d.wall_s
    );
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

async fn tokens(store: &Store, job: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(sum(completion_tokens), 0)::bigint FROM results WHERE job_id = $1")
        .bind(job)
        .fetch_one(store.pool())
        .await?)
}

/// Messages/s for the same bodies published persistently with confirms, then consumed and acked
/// one by one with the workers' prefetch.
async fn broker_ceiling(g: &Global, queue: &str, lines: &[Value]) -> Result<f64> {
    let broker = Broker::connect_with(pdq_broker::BrokerOptions { namespace: queue.to_string(), ..g.broker() }).await?;
    broker.declare_scratch_queue(queue).await?;
    let msgs: Vec<Outgoing> = lines
        .iter()
        .map(|l| Outgoing {
            exchange: String::new(),
            key: queue.to_string(),
            body: l.to_string().into_bytes(),
            meta: MessageMeta { request_id: Some(Uuid::now_v7()), ..Default::default() },
        })
        .collect();
    let started = Instant::now();
    let publisher = broker.publisher();
    for chunk in msgs.chunks(1000) {
        publisher.publish_all(chunk).await?;
    }
    let mut sub = broker.subscribe(&[queue.to_string()], 64, "ceiling").await?;
    for _ in 0..msgs.len() {
        let msg = sub.next().await.ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
        msg.settlement.ack().await;
    }
    let secs = started.elapsed().as_secs_f64();
    sub.cancel().await;
    broker.delete_queue(queue).await?;
    broker.close().await;
    Ok(msgs.len() as f64 / secs)
}

/// Rows/s for completed results written the way the workers write them.
async fn database_ceiling(store: &Store, namespace: &str, n: usize) -> Result<f64> {
    let job =
        NewJob { id: Uuid::now_v7(), name: Some("bench-db".into()), namespace: namespace.into(), input_file: None };
    let requests: Vec<NewRequest> = (0..n)
        .map(|i| NewRequest {
            id: Uuid::now_v7(),
            job_id: Some(job.id),
            line_no: Some(i as i32 + 1),
            custom_id: Some(format!("b{i}")),
            url: Some("/generate".into()),
            body: Value::Null,
            routed_dp_rank: None,
            disagg_prefill_dp_rank: None,
        })
        .collect();
    store.create_job(&job, &requests, &[]).await?;
    let outcomes: Vec<Outcome> = requests
        .iter()
        .map(|r| Outcome {
            request_id: r.id,
            job_id: r.job_id,
            custom_id: r.custom_id.clone(),
            status: ResultStatus::Completed,
            text: Some("a typical short completion of sixteen tokens or so".into()),
            output_ids: (0..16).collect(),
            meta_info: MetaInfo {
                id: r.id.to_string(),
                dp_rank: Some(0),
                prefill_dp_rank: Some(0),
                ..Default::default()
            },
            error: None,
            logprobs: None,
            choices: Vec::new(),
        })
        .collect();
    let started = Instant::now();
    for chunk in outcomes.chunks(DB_BATCH) {
        store.write_results(chunk).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job.id).execute(store.pool()).await?;
    Ok(n as f64 / secs)
}
