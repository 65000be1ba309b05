//! An embeddings request on the rank that took it off the prefill queue (a prefill or a
//! colocated rank): its inputs run through the engine and are pooled there, and this rank
//! writes the result row itself. There is no decode stage and no KV handle, so `dp_rank` and
//! `prefill_dp_rank` both name this rank.

use pdq_protocol::{MetaInfo, Outcome, ResultStatus, Timings};

use crate::context::{now_ms, Ctx};
use crate::decision::Decision;
use crate::roles::intake::Accepted;
use crate::WorkerError;

pub(crate) async fn run(ctx: &Ctx, a: &Accepted) -> Result<Decision, WorkerError> {
    let out = ctx.engine.embed(a.inputs.clone()).await?;
    let rank = ctx.cfg.rank;
    let meta_info = MetaInfo {
        dp_rank: Some(rank),
        prefill_dp_rank: Some(rank),
        cached_tokens: out.cached_tokens as u32,
        e2e_latency: (now_ms() - a.enqueued_at_ms).max(0) as f64 / 1000.0,
        timings: Timings { queue_time: a.queue_time, prefill_time: out.elapsed.as_secs_f64(), ..Timings::default() },
        ..a.meta_info()
    };
    let outcome = Outcome {
        request_id: a.request_id,
        job_id: a.job_id,
        custom_id: a.req.custom_id.clone(),
        status: ResultStatus::Completed,
        text: None,
        output_ids: Vec::new(),
        meta_info,
        error: None,
        logprobs: None,
        choices: Vec::new(),
        embeddings: out.embeddings,
    };
    Ok(Decision::Write { outcome, dead_letter: false })
}
