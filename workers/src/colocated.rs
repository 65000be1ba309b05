//! A colocated rank: prefill and decode on one engine, no KV hop. The baseline that the
//! disaggregated pipeline is compared against, and a mode of its own for small deployments.

use std::sync::Arc;

use pdq_broker::Delivery;
use pdq_protocol::{MetaInfo, Outcome, ResultStatus, Timings};

use crate::convert::{finish_reason, sampling_params, seed_for};
use crate::intake::{intake, now_ms, requeue_later, settle_failure, Accepted, Ctx, Intake};
use crate::writer::Settle;
use crate::WorkerError;

pub(crate) async fn handle(ctx: Arc<Ctx>, delivery: Delivery) {
    let acker = delivery.acker.clone();
    let accepted = match intake(&ctx, delivery).await {
        Ok(Intake::Run(a)) => a,
        Ok(Intake::Done) => return,
        Err(e) => return requeue_later(&acker, &e).await,
    };
    if let Err(e) = run(&ctx, &accepted).await {
        settle_failure(&ctx, &accepted, e).await;
    }
}

async fn run(ctx: &Ctx, a: &Accepted) -> Result<(), WorkerError> {
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
    ctx.writer.write(outcome, Settle::Ack(a.acker.clone())).await
}
