//! KV memory by need (`EngineLoopConfig::kv_by_need`), a part of the engine loop.
//!
//! A colocated prompt reserves blocks for itself only; its sequences take a block whenever they
//! cross into one as they decode. When the next step needs more blocks than the pool has free,
//! the latest admitted sequences are preempted: their blocks go back to the pool, their tokens
//! (every token their KV held, and the sampled one not yet fed) and generation state stay.
//! They resume, oldest preemption first and before any new prompt is admitted, by prefilling
//! those tokens again (the prompt's blocks mostly from the prefix cache), then decode on.
//!
//! Invariants: only a sequence that knows its tokens (`Running::kv_tokens`) is preempted; a lone
//! running sequence is never preempted, since admission checked its whole generation fits the
//! pool; a resumed sequence continues with exactly the tokens it would have had, because the
//! CPU forward does not depend on how the tokens were split into steps and sampling depends
//! only on the seed and the step.

use pdq_engine::{Executor, StepItem, Want};

use super::{Decoding, EngineError, EngineLoopConfig};

/// Preempts the latest admitted sequences until one step for every running sequence fits.
pub(super) fn make_room(cfg: &EngineLoopConfig, exec: &mut dyn Executor, dec: &mut Decoding) {
    if !cfg.kv_by_need {
        return;
    }
    while dec.running.len() > 1 {
        let pool = exec.pool();
        let grow: Result<Vec<_>, _> = dec.running.iter().map(|r| Ok((r.seq, pool.len(r.seq)? + 1))).collect();
        // An unknown sequence fails in the step itself, where failures are handled.
        let Ok(need) = grow.and_then(|g: Vec<_>| pool.extra_blocks(&g)) else { return };
        if need <= pool.available_blocks() {
            return;
        }
        let victim =
            dec.running.iter().enumerate().filter(|(_, r)| r.kv_tokens.is_some()).max_by_key(|(_, r)| r.admitted);
        let Some((i, _)) = victim else { return };
        let r = dec.running.swap_remove(i);
        exec.release(r.seq);
        cfg.metrics.preempted();
        tracing::debug!(group = r.group, choice = r.choice, tokens = r.gen.output_ids().len(), "preempted");
        dec.preempted.push_back(r);
    }
}

/// Recomputes the KV of preempted sequences while the pool has room for them (and a block of
/// headroom per running sequence), in one batched step; returns whether any left the queue
/// (resumed or failed). Fails only when the step itself does (the rank's fault).
pub(super) fn resume(exec: &mut dyn Executor, dec: &mut Decoding) -> Result<bool, EngineError> {
    let mut batch = Vec::new();
    let mut failed = false;
    while let Some(r) = dec.preempted.front() {
        let tokens = r.kv_tokens.as_deref().expect("only sequences that keep their tokens are preempted");
        let pool = exec.pool();
        let headroom = dec.running.len() + batch.len();
        // With nothing running the pool is all free, and admission checked the whole
        // generation fits it.
        if headroom > 0 && pool.prompt_cost(tokens, tokens.len() + 1) + headroom > pool.available_blocks() {
            break;
        }
        let r = dec.preempted.pop_front().expect("front exists");
        let tokens = r.kv_tokens.as_deref().expect("checked");
        match exec.add_prompt(tokens, tokens.len() + 1) {
            Ok((seq, cached)) => batch.push((seq, cached, r)),
            Err(e) => {
                dec.fail(r.group, e);
                failed = true;
            }
        }
    }
    if batch.is_empty() {
        dec.sweep(exec);
        return Ok(failed);
    }
    let items: Vec<StepItem> = batch
        .iter()
        .map(|(seq, cached, r)| {
            let tokens = r.kv_tokens.as_deref().expect("checked");
            // The step's output is not used: the sampled next token is `r.last` already.
            StepItem { seq: *seq, tokens: &tokens[*cached..], want: Want::Token(r.gen.params().draw(r.gen.step())) }
        })
        .collect();
    exec.step(&items)?;
    for (seq, _, mut r) in batch {
        let prompt = &r.kv_tokens.as_deref().expect("checked")[..r.gen.prompt_len()];
        if let Err(e) = exec.register_prompt(seq, prompt) {
            tracing::warn!(error = %e, "a resumed prompt's blocks could not be offered to the prefix cache");
        }
        r.seq = seq;
        dec.running.push(r);
    }
    dec.sweep(exec);
    Ok(true)
}
