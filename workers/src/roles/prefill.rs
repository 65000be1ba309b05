//! A prefill rank: runs prompts, holds their KV under a lease in the store, and publishes a KV
//! handle to `{ns}.kv` under `{p}` (any decoder) or `{p}.{d}` (pinned decoder). The request
//! message is acked only after the broker confirmed the handle, so a crash in between re-runs
//! the prefill; a handle that cannot be published frees its KV with the lease.

use std::sync::Arc;

use pdq_broker::{Inbound, Outgoing};
use pdq_protocol::{route, At, KvHandle, Route, Timings};
use uuid::Uuid;

use crate::actors::kv_store::KvStore;
use crate::context::Ctx;
use crate::convert::{compile_constraint, sampling_params, seed_for, wire_firsts};
use crate::data_plane::{shm_host_id, KvBytes};
use crate::decision::{execute, Decision};
use crate::roles::intake::{intake, Accepted, Intake};
use crate::WorkerError;

/// The prefill side's extra state: its KV store and the endpoint decoders fetch from.
pub struct PrefillState {
    pub kv: KvStore,
    pub endpoint: String,
    /// Where KVs are kept for decoders on this host; `None` when unset or unusable.
    pub shm_dir: Option<std::path::PathBuf>,
}

pub async fn handle(ctx: Arc<Ctx>, state: Arc<PrefillState>, msg: Inbound) {
    let decision = match intake(&ctx, &msg).await {
        Ok(Intake::Run(a)) => run(&ctx, &state, &a).await.unwrap_or_else(|e| Decision::from_error(e, a.failed_row())),
        Ok(Intake::Decided(d)) => d,
        Err(e) => Decision::Requeue(e),
    };
    execute(&ctx, msg.settlement, decision).await;
}

async fn run(ctx: &Ctx, state: &PrefillState, a: &Accepted) -> Result<Decision, WorkerError> {
    if !a.req.endpoint.generates() {
        return crate::roles::embed::run(ctx, a).await;
    }
    let seed = seed_for(&a.req.sampling, a.request_id);
    let params = sampling_params(&a.req.sampling, seed);
    let grammar = match compile_constraint(&ctx.engine, &a.req.sampling, a.req.endpoint) {
        Ok(g) => g,
        Err(e) => return Ok(a.failed_row().write(e.to_body())),
    };
    let out = ctx.engine.prefill(a.tokens.clone(), params, a.req.sampling.n as usize, grammar).await?;
    let kv_bytes = out.pages.len() as u64;
    // Random, not time-ordered: a KV id is a capability on the data plane.
    let kv_id = Uuid::new_v4();
    let bytes = KvBytes::store(state.shm_dir.as_deref(), kv_id, out.pages);
    let shm_host = if bytes.in_shm() { shm_host_id().map(str::to_string) } else { None };
    let lease = state.kv.lease(kv_id, bytes).await?;
    let rank = ctx.cfg.rank;
    let handle = KvHandle {
        request_id: a.request_id,
        job_id: a.job_id,
        request: (&a.req).into(),
        line: a.line.clone(),
        attempt: a.meta.attempt + 1,
        decode_rank: a.target.decode(),
        prefill_dp_rank: rank,
        endpoint: state.endpoint.clone(),
        kv_id,
        kv_bytes,
        prompt_tokens: a.tokens.len() as u32,
        cached_tokens: out.cached_tokens as u32,
        first_token: out.firsts[0].token,
        firsts: wire_firsts(&out.firsts),
        seed,
        enqueued_at_ms: a.enqueued_at_ms,
        published_at_ms: crate::context::now_ms(),
        timings: Timings { queue_time: a.queue_time, prefill_time: out.elapsed.as_secs_f64(), ..Timings::default() },
        warnings: a.req.warnings.clone(),
        shm_host,
    };
    let key = match route(At::Prefilled { prefill: rank }, &a.target) {
        Route::Kv(key) => key,
        other => unreachable!("a prefilled request's handle goes to a KV key, not {other:?}"),
    };
    let msg = Outgoing {
        exchange: ctx.topology.kv_exchange(),
        key,
        body: serde_json::to_vec(&handle).expect("a KV handle serializes"),
        meta: pdq_broker::MessageMeta { request_id: Some(a.request_id), job_id: a.job_id, ..Default::default() },
    };
    Ok(Decision::Publish { msgs: vec![msg], lease: Some(lease), failed: Some(a.failed_row()) })
}
