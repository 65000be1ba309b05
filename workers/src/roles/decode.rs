//! A decode rank: consumes KV handles for the prefill ranks it serves, takes the KV over the
//! data plane, generates, and writes the result. The prefill rank is resolved as CONTRACT §3 says:
//! the request's `disagg_prefill_dp_rank`, else the rank the handle names; a handle that disagrees
//! with an explicit `disagg_prefill_dp_rank` fails the request rather than being used.
//! A KV that cannot be had (gone, the peer dead or lying) sends the request back to prefill, up
//! to a bound. A KV on a prefill rank this decoder cannot reach (partitioned, silent; the
//! endpoint is then in backoff) is left there and its handle handed back, for another decoder or
//! for a later try, until `unreachable_wait` after the handle was published; then it too is
//! prefilled again, so no request waits without bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pdq_broker::{Inbound, MessageMeta, Outgoing};
use pdq_protocol::{
    route, validate, At, ErrorBody, ErrorClass, InputLine, KvHandle, MetaInfo, Pins, Route, Target, Timings,
};
use serde_json::Value;

use crate::config::MAX_PREFILL_ATTEMPTS;
use crate::context::{now_ms, trace_request, Ctx};
use crate::convert::{answer, compile_constraint, engine_firsts, sampling_params};
use crate::data_plane::{is_unreachable, RemoteKv};
use crate::decision::{execute, Decision, FailedRow};
use crate::roles::intake::tokenize;
use crate::WorkerError;

/// A handed-back handle is held at least this long (so a decoder that cannot reach a rank does
/// not spin on its queue) and at most this long (so one that can gets it soon).
const MIN_HAND_BACK: Duration = Duration::from_millis(250);
const MAX_HAND_BACK: Duration = Duration::from_secs(2);

pub async fn handle(ctx: Arc<Ctx>, msg: Inbound) {
    let decision = match KvHandle::decode(&msg.body) {
        Err(e) => unreadable_handle(&msg.body, e),
        Ok(h) if msg.poisoned => {
            trace_request(h.request_id, h.request.custom_id.as_deref());
            drop(ctx.kv.lease(&h.endpoint, h.kv_id, h.kv_bytes));
            failed_row(&h).poisoned(msg.deliveries)
        }
        Ok(h) => {
            trace_request(h.request_id, h.request.custom_id.as_deref());
            decide(&ctx, &h, &msg.body).await.unwrap_or_else(|e| Decision::from_error(e, failed_row(&h)))
        }
    };
    execute(&ctx, msg.settlement, decision).await;
}

async fn decide(ctx: &Ctx, h: &KvHandle, body: &[u8]) -> Result<Decision, WorkerError> {
    let rank = ctx.cfg.rank;
    let refused = match route(At::Decode { rank, prefill: h.prefill_dp_rank }, &target(h)) {
        Route::Here => None,
        Route::Kv(key) => {
            // Pinned elsewhere: the KV stays for the decoder it is meant for.
            let meta = MessageMeta { request_id: Some(h.request_id), job_id: h.job_id, ..Default::default() };
            let msg = Outgoing { exchange: ctx.topology.kv_exchange(), key, body: body.to_vec(), meta };
            return Ok(Decision::Publish { msgs: vec![msg], lease: None, failed: Some(failed_row(h)) });
        }
        Route::Refuse(e) => Some(e),
        other => unreachable!("a KV handle is decoded here, moved to a KV key or refused, never {other:?}"),
    };
    // From here on the KV is this decoder's to take or to free (the lease frees it on drop).
    let mut kv = ctx.kv.lease(&h.endpoint, h.kv_id, h.kv_bytes);
    if let Some(e) = refused {
        return Ok(failed_row(h).write(e));
    }
    if ctx.closed.contains(h.job_id) {
        // Cancelled: its row is written, and the lease frees the KV.
        return Ok(Decision::Ack);
    }
    let fetch_started = Instant::now();
    let bytes = match same_host_kv(ctx, h) {
        // Read from shared memory; dropping the claim frees the KV there in the background.
        Some(bytes) => {
            drop(kv);
            bytes
        }
        None => match kv.take().await {
            Ok(b) => b,
            Err(e) if is_unreachable(&e) => return defer_unreachable(ctx, h, kv, e).await,
            // The lease, dropped, frees the KV (retrying while the peer is out of reach).
            Err(e) if e.class() == ErrorClass::KvLost => return reprefill(ctx, h, e).await,
            Err(e) => return Err(e),
        },
    };
    let kv_transfer_time = fetch_started.elapsed().as_secs_f64();
    let params = sampling_params(&h.request.sampling, h.seed);
    // The engine validates the pages and writes them straight into blocks of its own pool.
    // Prefill compiled the same constraint, so it compiles here too; a failure is the engine's.
    let grammar = compile_constraint(&ctx.engine, &h.request.sampling, h.request.endpoint)
        .map_err(|e| WorkerError::Engine(pdq_engine::EngineError::Grammar(e.to_string())))?;
    let prompt = prompt_tokens(ctx, h);
    let out = ctx.engine.decode(bytes, prompt, engine_firsts(&h.first_tokens()), params, grammar).await?;
    let decode_time = out.elapsed.as_secs_f64();
    let meta_info = MetaInfo {
        dp_rank: Some(rank),
        prefill_dp_rank: Some(h.prefill_dp_rank),
        e2e_latency: (now_ms() - h.enqueued_at_ms).max(0) as f64 / 1000.0,
        timings: Timings { kv_transfer_time, decode_time, ..h.timings },
        kv_bytes: h.kv_bytes,
        ..base_meta(h)
    };
    let answer = answer(ctx.engine.model(), out, h.request.sampling.logprobs.is_some());
    let outcome = answer.completed(h.request_id, h.job_id, h.request.custom_id.clone(), meta_info);
    Ok(Decision::Write { outcome, dead_letter: false })
}

/// The KV from shared memory, when the handle's prefill worker runs on this host and this
/// decoder shares its directory; `None` means TCP.
fn same_host_kv(ctx: &Ctx, h: &KvHandle) -> Option<Vec<u8>> {
    let dir = ctx.cfg.cluster.data_plane.shm_dir.as_deref()?;
    if h.shm_host.as_deref()? != crate::data_plane::shm_host_id()?
        || h.kv_bytes > ctx.cfg.cluster.data_plane.max_kv_bytes
    {
        return None;
    }
    crate::data_plane::shm_read(dir, h.kv_id, h.kv_bytes)
}

/// The prompt's tokens, for an engine that grows KV by need, so it can preempt the sequence and
/// recompute it: the handle's line tokenized again, as intake did on the prefill rank (the same
/// model and template). `None` when the engine does not grow by need (off, or not the CPU) or
/// the line no longer reads; the engine then reserves the whole generation.
fn prompt_tokens(ctx: &Ctx, h: &KvHandle) -> Option<Vec<u32>> {
    if !ctx.engine.kv_by_need() {
        return None;
    }
    let Value::Object(object) = &h.line else { return None };
    let line = InputLine { object: object.clone() };
    let req = validate(&line, None, &ctx.cfg.cluster.shape).ok()?;
    tokenize(ctx.engine.model(), &req, ctx.cfg.cluster.max_prompt_bytes).ok()
}

/// The handle's request as routing sees it: its pins, the decode rank prefill chose for it, and
/// the prefill rank it names explicitly.
fn target(h: &KvHandle) -> Target {
    Target {
        pins: h.request.pins,
        dispatch: Pins { prefill: None, decode: h.decode_rank },
        explicit_prefill: h.request.routing.disagg_prefill_dp_rank,
    }
}

fn base_meta(h: &KvHandle) -> MetaInfo {
    MetaInfo {
        id: h.request_id.to_string(),
        prompt_tokens: h.prompt_tokens,
        cached_tokens: h.cached_tokens,
        warnings: h.warnings.clone(),
        seed: Some(h.seed),
        attempts: h.attempt,
        ..MetaInfo::default()
    }
}

fn failed_row(h: &KvHandle) -> FailedRow {
    FailedRow {
        request_id: h.request_id,
        job_id: h.job_id,
        custom_id: h.request.custom_id.clone(),
        meta_info: base_meta(h),
    }
}

/// The prefill rank is out of reach: leave the KV there and the handle to whoever can take it,
/// spaced by the endpoint's backoff, until the wait bound; past it, prefill again.
async fn defer_unreachable(ctx: &Ctx, h: &KvHandle, kv: RemoteKv, e: WorkerError) -> Result<Decision, WorkerError> {
    let waited = Duration::from_millis((now_ms() - h.published_at_ms).max(0) as u64);
    if h.published_at_ms == 0 || waited >= ctx.cfg.cluster.data_plane.unreachable_wait {
        drop(kv);
        return reprefill(ctx, h, e).await;
    }
    kv.keep();
    let after = ctx.kv.backoff_left(&h.endpoint).unwrap_or(MIN_HAND_BACK).clamp(MIN_HAND_BACK, MAX_HAND_BACK);
    tracing::debug!(request_id = %h.request_id, endpoint = %h.endpoint, ?waited, error = %e, "handing the KV handle back");
    ctx.metrics.handed_back();
    Ok(Decision::Defer { after })
}

/// The KV is gone or out of reach (prefill crashed, restarted, hung, or expired it): prefill
/// again, up to a bound.
async fn reprefill(ctx: &Ctx, h: &KvHandle, e: WorkerError) -> Result<Decision, WorkerError> {
    if h.attempt >= MAX_PREFILL_ATTEMPTS {
        let message = format!("{e}; gave up after {} prefill attempts", h.attempt);
        return Ok(failed_row(h).write(ErrorBody::new("kv_lost", message)));
    }
    tracing::warn!(request_id = %h.request_id, attempt = h.attempt, error = %e, "KV lost; prefilling again");
    ctx.metrics.reprefilled();
    let meta = MessageMeta {
        request_id: Some(h.request_id),
        job_id: h.job_id,
        attempt: h.attempt,
        enqueued_at_ms: Some(h.enqueued_at_ms),
        // Keep the decode rank the request was headed for.
        dispatch_decode: h.decode_rank,
        rank_header: h.request.routing.routed_dp_rank.map(Value::from),
        ..Default::default()
    };
    // Any live prefill rank may redo the prompt unless the request pins one.
    let request_pins = Target { pins: h.request.pins, ..Target::default() };
    let Route::Prefill(key) = route(At::Publish, &request_pins) else { unreachable!("a publish goes to prefill") };
    let body = serde_json::to_vec(&h.line).expect("a JSON value serializes");
    ctx.store.set_attempts(h.request_id, h.attempt + 1).await?;
    let msg = Outgoing { exchange: ctx.topology.prefill_exchange(), key, body, meta };
    Ok(Decision::Publish { msgs: vec![msg], lease: None, failed: Some(failed_row(h)) })
}

/// A handle no decoder can read. If it still names its request, that request gets a failed row;
/// either way the message goes to the dead-letter queue for inspection.
fn unreadable_handle(data: &[u8], e: String) -> Decision {
    let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let id = |k: &str| v.get(k).and_then(Value::as_str).and_then(|s| uuid::Uuid::parse_str(s).ok());
    let Some(request_id) = id("request_id") else {
        return Decision::DeadLetter(format!("unreadable KV handle naming no request: {e}"));
    };
    let row = FailedRow {
        request_id,
        job_id: id("job_id"),
        custom_id: v.pointer("/request/custom_id").and_then(Value::as_str).map(str::to_string),
        meta_info: MetaInfo { id: request_id.to_string(), ..MetaInfo::default() },
    };
    let outcome = row.outcome(ErrorBody::new("invalid_handle", format!("unreadable KV handle: {e}")));
    Decision::Write { outcome, dead_letter: true }
}
