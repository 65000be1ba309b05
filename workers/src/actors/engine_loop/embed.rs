//! Embedding jobs (`/v1/embeddings`): each input runs as a sequence of its own through one
//! batched forward, is pooled by the model's rule (`pdq_engine::Pooling`) and released at
//! once; nothing is decoded. Inputs share the prefill token budget and take their blocks
//! from the pool like prompts, so a job of many inputs spreads over several iterations. A
//! job is answered when its last input ran, or at its first input that cannot run.
//!
//! Last-token pooling reads only the last row, so an input with a cached prefix computes the
//! rest and gets the same vector (the CPU forward is chunk-invariant); mean and CLS pooling
//! read every row, so those inputs run whole.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pdq_engine::{EngineError, Executor, Model, Pooling, SeqId, StepItem, StepOut, Want};
use tokio::sync::oneshot;

use super::EngineLoopConfig;

pub struct EmbedOut {
    /// One unit-length vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Input tokens found in the pool's prefix cache, not computed again.
    pub cached_tokens: usize,
    /// From the job's first step to its last.
    pub elapsed: Duration,
}

pub(super) struct EmbedJob {
    pub(super) inputs: Vec<Vec<u32>>,
    pub(super) reply: oneshot::Sender<Result<EmbedOut, EngineError>>,
    /// The vectors so far; the next input to run is `done.len()`.
    done: Vec<Vec<f32>>,
    cached_tokens: usize,
    started: Option<Instant>,
    /// Why an input cannot run: the job is answered with it.
    failed: Option<EngineError>,
}

impl EmbedJob {
    pub(super) fn new(inputs: Vec<Vec<u32>>, reply: oneshot::Sender<Result<EmbedOut, EngineError>>) -> EmbedJob {
        let done = Vec::with_capacity(inputs.len());
        EmbedJob { inputs, reply, done, cached_tokens: 0, started: None, failed: None }
    }
}

/// Runs the inputs at the front of `queue` that fit the budget and the pool as one step;
/// returns whether any ran. Fails only when the step itself does (the rank's fault).
pub(super) fn embed_batch(
    model: &Model,
    cfg: &EngineLoopConfig,
    exec: &mut dyn Executor,
    queue: &mut VecDeque<EmbedJob>,
) -> Result<bool, EngineError> {
    if queue.is_empty() {
        return Ok(false);
    }
    if !exec.embeds() {
        let why = format!("embeddings are not computed on this rank's device ({})", exec.device());
        for job in queue.drain(..) {
            let _ = job.reply.send(Err(EngineError::Unsupported(why.clone())));
        }
        return Ok(false);
    }
    let pooling = model.pooling();
    let mut budget = cfg.prefill_token_budget;
    // (job, input, sequence, cached tokens), in queue order.
    let mut picked: Vec<(usize, usize, SeqId, usize)> = Vec::new();
    'jobs: for (j, job) in queue.iter_mut().enumerate() {
        for i in job.done.len()..job.inputs.len() {
            let tokens = &job.inputs[i];
            if let Err(e) = model.check_tokens(0, tokens) {
                job.failed = Some(e);
                continue 'jobs;
            }
            let pool = exec.pool();
            let cached = if pooling == Pooling::Last { pool.cached_prefix_len(tokens) } else { 0 };
            // Always one input per iteration, even one longer than the budget.
            if tokens.len() - cached > budget && !picked.is_empty() {
                break 'jobs;
            }
            let whole = pool.layout().blocks_for(tokens.len());
            if whole > pool.n_blocks() {
                job.failed = Some(EngineError::KvCapacity { needed: whole, available: pool.n_blocks() });
                continue 'jobs;
            }
            let need = if pooling == Pooling::Last { pool.prompt_cost(tokens, tokens.len()) } else { whole };
            if need > pool.available_blocks() {
                break 'jobs;
            }
            let (seq, cached) = match pooling {
                Pooling::Last => exec.add_prompt(tokens, tokens.len()),
                Pooling::Mean | Pooling::Cls => exec.add_sequence(tokens.len()).map(|seq| (seq, 0)),
            }
            .expect("admission was checked");
            budget = budget.saturating_sub(tokens.len() - cached);
            picked.push((j, i, seq, cached));
        }
    }
    let ran = !picked.is_empty();
    if ran {
        let items: Vec<StepItem> = picked
            .iter()
            .map(|&(j, i, seq, cached)| StepItem {
                seq,
                tokens: &queue[j].inputs[i][cached..],
                want: Want::Embed(pooling),
            })
            .collect();
        let started = Instant::now();
        let outs = exec.step(&items);
        for &(j, i, seq, _) in &picked {
            if pooling == Pooling::Last && outs.is_ok() {
                if let Err(e) = exec.register_prompt(seq, &queue[j].inputs[i]) {
                    tracing::warn!(error = %e, "an input's blocks could not be offered to the prefix cache");
                }
            }
            exec.release(seq);
        }
        for (&(j, _, _, cached), out) in picked.iter().zip(outs?) {
            let StepOut::Embedding(vector) = out else { unreachable!("an embedding step returns embeddings") };
            let job = &mut queue[j];
            job.started.get_or_insert(started);
            job.done.push(vector);
            job.cached_tokens += cached;
        }
    }
    // Answer the jobs that failed or finished; the rest keep their place.
    let mut kept = VecDeque::with_capacity(queue.len());
    for mut job in queue.drain(..) {
        if let Some(e) = job.failed.take() {
            let _ = job.reply.send(Err(e));
        } else if job.done.len() == job.inputs.len() {
            let elapsed = job.started.map_or(Duration::ZERO, |t| t.elapsed());
            let out = EmbedOut { embeddings: job.done, cached_tokens: job.cached_tokens, elapsed };
            let _ = job.reply.send(Ok(out));
        } else {
            kept.push_back(job);
        }
    }
    *queue = kept;
    Ok(ran)
}
