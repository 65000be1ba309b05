//! Steps 2 and 3 of the engine loop: decode jobs admitted as groups of choices (the first takes
//! the KV, the others fork it), and one batched decode step for every running sequence.

use std::collections::VecDeque;
use std::time::Instant;

use pdq_engine::{
    Constrained, EngineError, Executor, Generation, Model, SamplingParams, SeqId, StepItem, StepOut, Want,
};
use tokio::sync::oneshot;

use super::{by_need, DecodeJob, DecodeOut, Decoding, EngineLoopConfig, First, Group, Running};

/// Tokens a generation can reach: prompt plus `max_new_tokens`, capped at the context. Every
/// sequence of a job is reserved for this, so growth within it never fails.
pub(super) fn generation_len(model: &Model, prompt_len: usize, params: &SamplingParams) -> usize {
    prompt_len.saturating_add(params.max_new_tokens).min(model.max_context())
}

/// A choice's generation per first token, each already holding its first token (which may
/// finish it).
pub(super) fn choices(
    model: &Model,
    prompt_len: usize,
    params: &SamplingParams,
    grammar: &Option<Constrained>,
    firsts: &[First],
) -> Vec<Generation> {
    firsts
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut gen = Generation::new(prompt_len, params.for_choice(i), model.eos_token_ids(), model.max_context())
                .with_grammar(grammar.clone());
            gen.push_scored(model, f.token, f.logprob.clone());
            gen
        })
        .collect()
}

/// Where a starting group's KV comes from.
pub(super) enum Source<'a> {
    /// Received pages, imported by the first live choice.
    Pages(&'a [u8]),
    /// A prompt prefilled in this pool (reserved for the whole generation), which the first
    /// live choice takes over; released when no choice lives.
    Kept(SeqId),
}

pub(super) struct Start<'a> {
    pub(super) firsts: &'a [First],
    pub(super) started: Instant,
    pub(super) reply: oneshot::Sender<Result<DecodeOut, EngineError>>,
    /// The longest choice's length: what every sequence is reserved for.
    pub(super) max_len: usize,
    /// The prompt, for sequences that may be preempted and recomputed (`kv_by_need`).
    pub(super) prompt: Option<&'a [u32]>,
}

/// Registers a job's choices as a group and starts its live ones: the first takes the KV from
/// `source`, the others fork it (sharing its full blocks).
pub(super) fn start_group(
    model: &Model,
    exec: &mut dyn Executor,
    dec: &mut Decoding,
    job: Start<'_>,
    gens: Vec<Generation>,
    source: Source<'_>,
) {
    let group = dec.next_group;
    dec.next_group += 1;
    let outs = (0..gens.len()).map(|_| None).collect();
    dec.groups.insert(group, Group { outs, left: gens.len(), started: job.started, reply: job.reply });
    let (mut source, mut root) = (Some(source), None);
    for (choice, (gen, first)) in gens.into_iter().zip(job.firsts).enumerate() {
        if gen.is_finished() {
            dec.complete(model, group, choice, &gen);
            continue;
        }
        let seq = match (root, source.take()) {
            (Some(root), _) => exec.fork(root, job.max_len),
            (None, Some(Source::Pages(pages))) => exec.import(pages, job.max_len),
            (None, Some(Source::Kept(seq))) => Ok(seq),
            (None, None) => unreachable!("the first live choice takes the source"),
        };
        match seq {
            Ok(seq) => {
                root.get_or_insert(seq);
                let kv_tokens = job.prompt.map(<[u32]>::to_vec);
                let admitted = dec.next_admitted;
                dec.next_admitted += 1;
                dec.running.push(Running { seq, gen, last: first.token, group, choice, kv_tokens, admitted });
            }
            Err(e) => {
                dec.fail(group, e);
                break;
            }
        }
    }
    // No choice lived (or the first failed before taking it): the kept prompt goes back.
    if let Some(Source::Kept(seq)) = source {
        exec.release(seq);
    }
    dec.sweep(exec);
}

/// Step 2 of the loop; returns whether any job left the queue.
pub(super) fn admit_decodes(
    model: &Model,
    cfg: &EngineLoopConfig,
    exec: &mut dyn Executor,
    waiting: &mut VecDeque<Box<DecodeJob>>,
    dec: &mut Decoding,
) -> bool {
    let mut admitted = false;
    // Preempted sequences go first, as in the prefill step: a new job would take their room.
    while dec.running.len() < cfg.max_running && dec.preempted.is_empty() {
        let Some(job) = waiting.front() else { break };
        // The first tokens came from prefill; they may already end some choices, needing no blocks.
        let gens = choices(model, job.prompt_len, &job.params, &job.grammar, &job.firsts);
        let live = gens.iter().filter(|g| !g.is_finished()).count();
        // A job with more choices than `max_running` runs alone rather than never.
        if live > 0 && !dec.running.is_empty() && dec.running.len() + live > cfg.max_running {
            break;
        }
        // Reserve for the longest generation, so growth never fails and nothing is preempted:
        // the first live choice imports the pages, the others fork them. By need, a job that
        // knows its prompt reserves the prompt alone plus a block of headroom per running
        // sequence, and grows; but work that could never fit whole still fails here.
        let whole = generation_len(model, job.prompt_len, &job.params);
        let by_need = cfg.kv_by_need && job.prompt.is_some();
        let max_len = if by_need { job.prompt_len } else { whole };
        let pool = exec.pool();
        let blocks = |len| match live {
            0 => 0,
            n => pool.layout().blocks_for(len) + (n - 1) * pool.fork_cost(job.prompt_len, len),
        };
        let cold = blocks(whole);
        if cold > pool.n_blocks() {
            let available = pool.n_blocks();
            let job = waiting.pop_front().expect("front exists");
            let _ = job.reply.send(Err(EngineError::KvCapacity { needed: cold, available }));
            admitted = true;
            continue;
        }
        let headroom = if by_need { dec.running.len() } else { 0 };
        if blocks(max_len) + headroom > pool.available_blocks() {
            break;
        }
        let job = waiting.pop_front().expect("front exists");
        admitted = true;
        let DecodeJob { pages, prompt, firsts, started, reply, .. } = *job;
        let prompt = prompt.as_deref().filter(|_| by_need);
        let start = Start { firsts: &firsts, started, reply, max_len, prompt };
        start_group(model, exec, dec, start, gens, Source::Pages(&pages));
    }
    admitted
}

/// Step 3: one token for every running sequence, in one batched forward. Fails only when the
/// forward itself does (the rank's fault); a sequence's own error fails its request.
pub(super) fn decode_step(
    model: &Model,
    cfg: &EngineLoopConfig,
    exec: &mut dyn Executor,
    dec: &mut Decoding,
) -> Result<(), EngineError> {
    by_need::make_room(cfg, exec, dec);
    // A sequence that cannot take its next token fails its request rather than the batch.
    for i in 0..dec.running.len() {
        let r = &dec.running[i];
        if let Err(e) = exec.pool().len(r.seq).and_then(|len| model.check_tokens(len, &[r.last])) {
            let group = r.group;
            dec.fail(group, e);
        }
    }
    dec.sweep(exec);
    if dec.running.is_empty() {
        return Ok(());
    }
    let tokens: Vec<[u32; 1]> = dec.running.iter().map(|r| [r.last]).collect();
    // Logits come back only for what needs the distribution itself: a grammar's mask or scores.
    let items: Vec<StepItem> = dec
        .running
        .iter()
        .zip(&tokens)
        .map(|(r, t)| {
            let g = &r.gen;
            let want = if g.is_constrained() || g.params().logprobs.is_some() {
                Want::Logits
            } else {
                Want::Token(g.params().draw(g.step()))
            };
            StepItem { seq: r.seq, tokens: &t[..], want }
        })
        .collect();
    // Grammar masks depend on the tokens so far, not on the logits: they are computed on a
    // thread of their own while the batch's forward pass runs.
    let (outs, mask_time) = std::thread::scope(|s| {
        let constrained: Vec<&mut Generation> =
            dec.running.iter_mut().map(|r| &mut r.gen).filter(|g| g.is_constrained()).collect();
        let masks = (!constrained.is_empty()).then(|| {
            s.spawn(move || {
                let started = Instant::now();
                constrained.into_iter().for_each(Generation::prepare_grammar);
                started.elapsed()
            })
        });
        let started = Instant::now();
        let outs = exec.step(&items);
        let forward_time = started.elapsed();
        (outs, masks.map(|h| (h.join().unwrap_or_default(), forward_time)))
    });
    if let Some((masks, forward)) = mask_time {
        tracing::trace!(
            mask_us = masks.as_micros() as u64,
            forward_us = forward.as_micros() as u64,
            batch = items.len(),
            "grammar masks beside the forward pass"
        );
    }
    let outs = outs?;
    let mut done = Vec::new();
    for (i, (r, out)) in dec.running.iter_mut().zip(outs).enumerate() {
        let next = match out {
            StepOut::Token(token) => Ok((token, None)),
            StepOut::Logits(logits) => r.gen.sample_next(&logits),
            StepOut::Embedding(_) => unreachable!("a decode step wants no embedding"),
        };
        match next {
            Ok((token, logprob)) => {
                if let Some(kv) = r.kv_tokens.as_mut() {
                    kv.push(r.last);
                }
                r.last = token;
                if r.gen.push_scored(model, token, logprob).is_some() {
                    done.push(i);
                }
            }
            Err(e) => {
                r.gen.abort(e.to_string());
                done.push(i);
            }
        }
    }
    for i in done.into_iter().rev() {
        let r = dec.running.swap_remove(i);
        exec.release(r.seq);
        dec.complete(model, r.group, r.choice, &r.gen);
    }
    dec.sweep(exec);
    Ok(())
}
