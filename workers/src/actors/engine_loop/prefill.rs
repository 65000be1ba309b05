//! Step 1 of the engine loop: admits waiting prompts into one prefill step, taking what the
//! prefix cache holds of each and computing only the rest, then sends each prompt's KV out as
//! pages (a prefill rank) or on to decoding in the pool (a colocated rank).

use std::collections::VecDeque;
use std::time::Instant;

use pdq_engine::{logprobs, sample, EngineError, Executor, Model, SeqId, StepItem, StepOut, Want};

use super::{
    choices, generation_len, start_group, Decoding, EngineLoopConfig, First, PrefillJob, PrefillOut, PrefillReply,
    Prefilled, Source, Start,
};

/// Step 1 of the loop; returns whether any prompt ran. Fails only when the step itself does
/// (the rank's fault); a prompt's own error fails its request.
pub(super) fn prefill_batch(
    model: &Model,
    cfg: &EngineLoopConfig,
    exec: &mut dyn Executor,
    queue: &mut VecDeque<PrefillJob>,
    dec: &mut Decoding,
) -> Result<bool, EngineError> {
    let started = Instant::now();
    // Each admitted prompt with the number of its tokens the prefix cache already held.
    let mut batch: Vec<(SeqId, usize, PrefillJob)> = Vec::new();
    let mut budget = cfg.prefill_token_budget;
    // Blocks the batch's kept prompts will fork into after the step (not reserved in the pool
    // until then), and the sequences they will add to the running batch.
    let (mut promised, mut joining) = (0usize, 0usize);
    while let Some(job) = queue.front() {
        let n = job.tokens.len();
        // Cached tokens are not computed, so they do not count against the budget.
        let compute = n - exec.pool().cached_prefix_len(&job.tokens);
        // Always admit one prompt per iteration, even one longer than the budget.
        if compute > budget && !batch.is_empty() {
            break;
        }
        // A prompt whose next uncached block a prompt of this batch computes waits one
        // iteration and finds it cached, rather than computing it a second time.
        if batch.iter().any(|(_, _, b)| exec.pool().would_share_uncached_block(&b.tokens, &job.tokens)) {
            break;
        }
        if let Err(e) = model.check_tokens(0, &job.tokens) {
            queue.pop_front().expect("front exists").reply.fail(e);
            continue;
        }
        // A kept prompt reserves its whole generation now, so decoding never waits for blocks
        // (and never deadlocks holding a prompt's): the longest choice's blocks, plus the
        // blocks each other choice's fork takes. By need, it reserves its prompt alone and
        // leaves a block of headroom per running sequence; but work that could never fit
        // whole still fails here.
        let keep = matches!(job.reply, PrefillReply::Decode { .. });
        let whole = if keep { generation_len(model, n, &job.params) } else { n };
        let max_len = if keep && cfg.kv_by_need { n } else { whole };
        let pool = exec.pool();
        let forks = |len| if keep { (job.n - 1) * pool.fork_cost(n, len) } else { 0 };
        let cold = pool.layout().blocks_for(whole) + forks(whole);
        if cold > pool.n_blocks() {
            let available = pool.n_blocks();
            queue.pop_front().expect("front exists").reply.fail(EngineError::KvCapacity { needed: cold, available });
            continue;
        }
        let headroom = if cfg.kv_by_need { dec.running.len() + joining } else { 0 };
        // Cached blocks that running sequences hold are shared, not taken.
        let need = pool.prompt_cost(&job.tokens, max_len) + forks(max_len) + headroom;
        if need > pool.available_blocks().saturating_sub(promised) {
            break;
        }
        let forks = forks(max_len);
        // As in step 2: a job with more choices than `max_running` runs alone rather than never.
        let running = dec.running.len() + joining;
        if keep && running > 0 && running + job.n > cfg.max_running {
            break;
        }
        let (seq, cached) = exec.add_prompt(&job.tokens, max_len).expect("admission was checked");
        budget = budget.saturating_sub(n - cached);
        if keep {
            (promised, joining) = (promised + forks, joining + job.n);
        }
        batch.push((seq, cached, queue.pop_front().expect("front exists")));
    }
    if batch.is_empty() {
        return Ok(false);
    }
    let items: Vec<StepItem> = batch
        .iter()
        .map(|(seq, cached, job)| StepItem { seq: *seq, tokens: &job.tokens[*cached..], want: first_want(job) })
        .collect();
    let outs = exec.step(&items)?;
    let elapsed = started.elapsed();
    for ((seq, cached_tokens, job), out) in batch.into_iter().zip(outs) {
        // The prompt's KV is computed now: its full blocks serve later prompts.
        if let Err(e) = exec.register_prompt(seq, &job.tokens) {
            tracing::warn!(error = %e, "a prompt's blocks could not be offered to the prefix cache");
        }
        let firsts = first_tokens(out, &job);
        match job.reply {
            PrefillReply::Pages(tx) => {
                let out = firsts.and_then(|firsts| {
                    exec.export(seq).map(|pages| PrefillOut { pages, firsts, elapsed, cached_tokens })
                });
                exec.release(seq);
                let _ = tx.send(out);
            }
            PrefillReply::Decode { prefilled, reply } => match firsts {
                Err(e) => {
                    exec.release(seq);
                    let _ = reply.send(Err(e));
                }
                Ok(firsts) => {
                    let _ = prefilled.send(Prefilled { elapsed, cached_tokens });
                    let gens = choices(model, job.tokens.len(), &job.params, &job.grammar, &firsts);
                    let (max_len, prompt) = match cfg.kv_by_need {
                        true => (job.tokens.len(), Some(&job.tokens[..])),
                        false => (generation_len(model, job.tokens.len(), &job.params), None),
                    };
                    let group = Start { firsts: &firsts, started: Instant::now(), reply, max_len, prompt };
                    start_group(model, exec, dec, group, gens, Source::Kept(seq));
                }
            },
        }
    }
    Ok(true)
}

/// What a prompt needs back: its first token alone, unless a grammar masks it, it is scored,
/// or several choices sample it.
fn first_want(job: &PrefillJob) -> Want {
    if job.n == 1 && job.grammar.is_none() && job.params.logprobs.is_none() {
        // Choice 0's seed is the request's own (`for_choice(0)` changes nothing).
        Want::Token(job.params.draw(0))
    } else {
        Want::Logits
    }
}

/// Each choice's first token, sampled with its own seed among the tokens the grammar allows.
fn first_tokens(out: StepOut, job: &PrefillJob) -> Result<Vec<First>, EngineError> {
    let logits = match out {
        StepOut::Token(token) => return Ok(vec![First { token, logprob: None }]),
        StepOut::Logits(logits) => logits,
        StepOut::Embedding(_) => unreachable!("a prompt wants no embedding"),
    };
    let logits = &logits[..];
    let masked = match &job.grammar {
        None => None,
        Some(g) => {
            let mut masked = logits.to_vec();
            g.clone().apply(&mut masked)?;
            Some(masked)
        }
    };
    Ok((0..job.n)
        .map(|i| {
            let params = job.params.for_choice(i);
            let token = sample(masked.as_deref().unwrap_or(logits), &params, 0);
            First { token, logprob: params.logprobs.map(|k| logprobs(logits, token, k)) }
        })
        .collect())
}
