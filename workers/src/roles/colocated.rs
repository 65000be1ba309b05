//! A colocated rank: prefill and decode on one engine, no KV hop (the prompt's KV never leaves
//! the engine's pool). The baseline that the
//! disaggregated pipeline is compared against, and a mode of its own for small deployments.

use std::sync::Arc;

use pdq_broker::Inbound;
use pdq_protocol::{MetaInfo, Timings};

use crate::context::{now_ms, Ctx};
use crate::convert::{answer, compile_constraint, sampling_params, seed_for};
use crate::decision::{execute, Decision};
use crate::roles::intake::{intake, Accepted, Intake};
use crate::WorkerError;

pub(crate) async fn handle(ctx: Arc<Ctx>, msg: Inbound) {
    let decision = match intake(&ctx, &msg).await {
        Ok(Intake::Run(a)) => run(&ctx, &a).await.unwrap_or_else(|e| Decision::from_error(e, a.failed_row())),
        Ok(Intake::Decided(d)) => d,
        Err(e) => Decision::Requeue(e),
    };
    execute(&ctx, msg.settlement, decision).await;
}

async fn run(ctx: &Ctx, a: &Accepted) -> Result<Decision, WorkerError> {
    if !a.req.endpoint.generates() {
        return crate::roles::embed::run(ctx, a).await;
    }
    let seed = seed_for(&a.req.sampling, a.request_id);
    let params = sampling_params(&a.req.sampling, seed);
    let grammar = match compile_constraint(&ctx.engine, &a.req.sampling, a.req.endpoint) {
        Ok(g) => g,
        Err(e) => return Ok(a.failed_row().write(e.to_body())),
    };
    // Prefill and decode on this rank's engine, the KV staying in its pool.
    let (prefilled, out) = ctx.engine.generate(a.tokens.clone(), params, a.req.sampling.n as usize, grammar).await?;
    let decode_time = out.elapsed.as_secs_f64();
    let answer = answer(ctx.engine.model(), out, a.req.sampling.logprobs.is_some());
    let rank = ctx.cfg.rank;
    let meta_info = MetaInfo {
        dp_rank: Some(rank),
        prefill_dp_rank: Some(rank),
        cached_tokens: prefilled.cached_tokens as u32,
        e2e_latency: (now_ms() - a.enqueued_at_ms).max(0) as f64 / 1000.0,
        timings: Timings {
            queue_time: a.queue_time,
            prefill_time: prefilled.elapsed.as_secs_f64(),
            kv_transfer_time: 0.0,
            decode_time,
        },
        seed: Some(seed),
        ..a.meta_info()
    };
    let outcome = answer.completed(a.request_id, a.job_id, a.req.custom_id.clone(), meta_info);
    Ok(Decision::Write { outcome, dead_letter: false })
}
