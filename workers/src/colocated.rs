//! A colocated rank: prefill and decode on one engine, no KV hop. The baseline that the
//! disaggregated pipeline is compared against, and a mode of its own for small deployments.

use std::sync::Arc;

use pdq_broker::Inbound;
use pdq_protocol::{MetaInfo, Outcome, ResultStatus, Timings};

use crate::context::{now_ms, Ctx};
use crate::convert::{finish_reason, sampling_params, seed_for};
use crate::decision::{execute, Decision};
use crate::intake::{intake, Accepted, Intake};
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
    let seed = seed_for(&a.req.sampling, a.request_id);
    let params = sampling_params(&a.req.sampling, seed);
    let pre = ctx.engine.prefill(a.tokens.clone(), params.clone()).await?;
    let out = ctx.engine.decode(pre.pages, pre.first_token, params).await?;
    let rank = ctx.cfg.rank;
    let meta_info = MetaInfo {
        dp_rank: Some(rank),
        prefill_dp_rank: Some(rank),
        completion_tokens: out.output_ids.len() as u32,
        finish_reason: Some(finish_reason(&out.finish)),
        e2e_latency: (now_ms() - a.enqueued_at_ms).max(0) as f64 / 1000.0,
        timings: Timings {
            queue_time: a.queue_time,
            prefill_time: pre.elapsed.as_secs_f64(),
            kv_transfer_time: 0.0,
            decode_time: out.elapsed.as_secs_f64(),
        },
        seed: Some(seed),
        ..a.meta_info()
    };
    let outcome = Outcome {
        request_id: a.request_id,
        job_id: a.job_id,
        custom_id: a.req.custom_id.clone(),
        status: ResultStatus::Completed,
        text: Some(out.text),
        output_ids: out.output_ids,
        meta_info,
        error: None,
    };
    Ok(Decision::Write { outcome, dead_letter: false })
}
