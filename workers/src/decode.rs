//! A decode rank: consumes KV handles for the prefill ranks it serves, fetches the KV over the
//! data plane, generates, and writes the result. The prefill rank is resolved as CONTRACT §3 says:
//! the request's `disagg_prefill_dp_rank`, else the rank the handle names; a handle that disagrees
//! with an explicit `disagg_prefill_dp_rank` fails the request rather than being used.

use std::sync::Arc;
use std::time::Instant;

use lapin::Acker;
use pdq_broker::{Delivery, MessageMeta, Outgoing};
use pdq_protocol::{ErrorBody, KvHandle, MetaInfo, Outcome, ResultStatus, Timings, Topology};
use serde_json::Value;

use crate::config::MAX_PREFILL_ATTEMPTS;
use crate::convert::{finish_reason, sampling_params};
use crate::data_plane;
use crate::intake::{now_ms, requeue_later, Ctx};
use crate::writer::Settle;
use crate::WorkerError;

pub async fn handle(ctx: Arc<Ctx>, delivery: Delivery) {
    let acker = delivery.acker.clone();
    let handle: KvHandle = match serde_json::from_slice(&delivery.data) {
        Ok(h) => h,
        Err(e) => return unreadable_handle(&ctx, &delivery.data, acker, e).await,
    };
    match run(&ctx, &handle, &acker, delivery.data).await {
        Ok(()) => {}
        Err(e) if e.error_type() == "unavailable" => requeue_later(&acker, &e).await,
        Err(e) => {
            let error = ErrorBody::new(e.error_type(), e.to_string());
            fail(&ctx, &handle, error, acker).await;
            data_plane::free(&handle.endpoint, handle.kv_id).await;
        }
    }
}

async fn run(ctx: &Ctx, h: &KvHandle, acker: &Acker, body: Vec<u8>) -> Result<(), WorkerError> {
    let rank = ctx.cfg.rank;
    if let Some(d) = h.decode_rank.filter(|&d| d != rank) {
        let key = Topology::kv_key(h.prefill_dp_rank, Some(d));
        let meta = MessageMeta { request_id: Some(h.request_id), job_id: h.job_id, ..Default::default() };
        ctx.publisher.publish(&Outgoing { exchange: ctx.topology.kv_exchange(), key, body, meta }).await?;
        acker.ack(Default::default()).await.map_err(pdq_broker::BrokerError::from)?;
        return Ok(());
    }
    if let Some(p) = h.request.routing.disagg_prefill_dp_rank {
        if p != h.prefill_dp_rank as i64 {
            let message = format!(
                "KV handle names prefill rank {} but the request pins disagg_prefill_dp_rank={p}",
                h.prefill_dp_rank
            );
            fail(ctx, h, ErrorBody::new("prefill_rank_mismatch", message), acker.clone()).await;
            data_plane::free(&h.endpoint, h.kv_id).await;
            return Ok(());
        }
    }
    if ctx.store.has_result(h.request_id).await? {
        acker.ack(Default::default()).await.map_err(pdq_broker::BrokerError::from)?;
        data_plane::free(&h.endpoint, h.kv_id).await;
        return Ok(());
    }
    let fetch_started = Instant::now();
    let bytes = match data_plane::fetch(&h.endpoint, h.kv_id).await {
        Ok(b) => b,
        Err(e) if e.error_type() == "kv_lost" => return kv_lost(ctx, h, acker, e).await,
        Err(e) => return Err(e),
    };
    let kv_transfer_time = fetch_started.elapsed().as_secs_f64();
    let params = sampling_params(&h.request.sampling, h.seed);
    // The engine validates the pages and writes them straight into blocks of its own pool.
    let out = ctx.engine.decode(bytes, h.first_token, params).await?;
    let meta_info = MetaInfo {
        dp_rank: Some(rank),
        prefill_dp_rank: Some(h.prefill_dp_rank),
        completion_tokens: out.output_ids.len() as u32,
        finish_reason: Some(finish_reason(&out.finish)),
        e2e_latency: (now_ms() - h.enqueued_at_ms).max(0) as f64 / 1000.0,
        timings: Timings { kv_transfer_time, decode_time: out.elapsed.as_secs_f64(), ..h.timings },
        kv_bytes: h.kv_bytes,
        ..base_meta(h)
    };
    let outcome = Outcome {
        request_id: h.request_id,
        job_id: h.job_id,
        custom_id: h.request.custom_id.clone(),
        status: ResultStatus::Completed,
        text: Some(out.text),
        output_ids: out.output_ids,
        meta_info,
        error: None,
    };
    ctx.writer.write(outcome, Settle::Ack(acker.clone())).await?;
    data_plane::free(&h.endpoint, h.kv_id).await;
    Ok(())
}

fn base_meta(h: &KvHandle) -> MetaInfo {
    MetaInfo {
        id: h.request_id.to_string(),
        prompt_tokens: h.prompt_tokens,
        warnings: h.warnings.clone(),
        seed: Some(h.seed),
        attempts: h.attempt,
        ..MetaInfo::default()
    }
}

/// The KV is gone (prefill crashed, restarted, or expired it): prefill again, up to a bound.
async fn kv_lost(ctx: &Ctx, h: &KvHandle, acker: &Acker, e: WorkerError) -> Result<(), WorkerError> {
    if h.attempt >= MAX_PREFILL_ATTEMPTS {
        let message = format!("{e}; gave up after {} prefill attempts", h.attempt);
        fail(ctx, h, ErrorBody::new("kv_lost", message), acker.clone()).await;
        return Ok(());
    }
    tracing::warn!(request_id = %h.request_id, attempt = h.attempt, error = %e, "KV lost; prefilling again");
    let pins = h.request.pins;
    let meta = MessageMeta {
        request_id: Some(h.request_id),
        job_id: h.job_id,
        attempt: h.attempt,
        enqueued_at_ms: Some(h.enqueued_at_ms),
        // Keep the decode rank the request was headed for; let any live prefill rank redo the
        // prompt unless the request pins one.
        dispatch_decode: h.decode_rank,
        rank_header: h.request.routing.routed_dp_rank.map(Value::from),
        ..Default::default()
    };
    let key = pins.prefill.map(|p| p.to_string()).unwrap_or_else(|| Topology::ANY.to_string());
    let body = serde_json::to_vec(&h.line).expect("a JSON value serializes");
    ctx.publisher.publish(&Outgoing { exchange: ctx.topology.prefill_exchange(), key, body, meta }).await?;
    ctx.store.set_attempts(h.request_id, h.attempt + 1).await?;
    acker.ack(Default::default()).await.map_err(pdq_broker::BrokerError::from)?;
    Ok(())
}

async fn fail(ctx: &Ctx, h: &KvHandle, error: ErrorBody, acker: Acker) {
    let outcome = Outcome::failed(h.request_id, h.job_id, h.request.custom_id.clone(), error, base_meta(h));
    if let Err(e) = ctx.writer.write(outcome, Settle::Ack(acker)).await {
        tracing::error!(error = %e, "could not record a failed request");
    }
}

/// A handle no decoder can read. If it still names its request, that request gets a failed row;
/// either way the message goes to the dead-letter queue for inspection.
async fn unreadable_handle(ctx: &Ctx, data: &[u8], acker: Acker, e: serde_json::Error) {
    tracing::error!(error = %e, "unreadable KV handle");
    let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let id = |k: &str| v.get(k).and_then(Value::as_str).and_then(|s| uuid::Uuid::parse_str(s).ok());
    match id("request_id") {
        Some(request_id) => {
            let meta = MetaInfo { id: request_id.to_string(), ..MetaInfo::default() };
            let custom_id = v.pointer("/request/custom_id").and_then(Value::as_str).map(str::to_string);
            let outcome = Outcome::failed(
                request_id,
                id("job_id"),
                custom_id,
                ErrorBody::new("invalid_handle", format!("unreadable KV handle: {e}")),
                meta,
            );
            if let Err(e) = ctx.writer.write(outcome, Settle::DeadLetter(acker)).await {
                tracing::error!(error = %e, "could not record an unreadable handle");
            }
        }
        None => {
            let _ = acker.nack(lapin::options::BasicNackOptions { requeue: false, multiple: false }).await;
        }
    }
}
