//! The engine loop: one OS thread per worker owns the compute and the KV block pool, so the async
//! side never blocks on a forward pass. Work arrives as jobs on a channel; replies go back on
//! oneshots.
//!
//! Each iteration (continuous batching):
//! 1. admits waiting prompts while they fit the prefill token budget (always at least one) and
//!    the pool has blocks for them, and prefills them as one batch; each prompt's pages are
//!    exported and its blocks released at once (the KV store holds the bytes, not the pool);
//! 2. admits waiting decode jobs in arrival order while fewer than `max_running` run and the pool
//!    can reserve blocks for their whole generation (prompt + `max_new_tokens`, capped at the
//!    context), writing their received pages straight into those blocks;
//! 3. runs one decode step for every running sequence as one batched forward.
//!
//! Work that does not fit waits at the front of its queue for blocks to free; only work that
//! could never fit in the whole pool fails (`kv_capacity`). Growth within a reservation never
//! fails, so a running sequence is never preempted. A sequence's tokens depend only on its own
//! inputs and seed, never on what it is batched with (see `pdq_engine::forward`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdq_engine::{sample, EngineError, FinishReason, Generation, Model, PageHeader, PagedKv, SamplingParams, SeqId};
use tokio::sync::{mpsc, oneshot};

use crate::WorkerError;

pub struct PrefillOut {
    /// The prompt's KV as pages (`pdq_engine::PageHeader` describes them).
    pub pages: Vec<u8>,
    pub first_token: u32,
    pub elapsed: Duration,
}

pub struct DecodeOut {
    pub output_ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub elapsed: Duration,
}

struct PrefillJob {
    tokens: Vec<u32>,
    params: SamplingParams,
    reply: oneshot::Sender<Result<PrefillOut, EngineError>>,
}

/// A decode job waiting for blocks; its pages were validated when it was queued.
struct DecodeJob {
    pages: Vec<u8>,
    gen: Generation,
    first_token: u32,
    params: SamplingParams,
    started: Instant,
    reply: oneshot::Sender<Result<DecodeOut, EngineError>>,
}

enum Job {
    Prefill(PrefillJob),
    Decode(Box<DecodeJob>),
}

struct Running {
    seq: SeqId,
    gen: Generation,
    last: u32,
    params: SamplingParams,
    started: Instant,
    reply: oneshot::Sender<Result<DecodeOut, EngineError>>,
}

#[derive(Debug, Clone)]
pub struct EngineLoopConfig {
    pub max_running: usize,
    pub prefill_token_budget: usize,
    /// Bytes of KV blocks the pool preallocates (lazily committed by the OS).
    pub kv_pool_bytes: usize,
    /// Whose gauges (running, waiting, KV usage) this loop keeps.
    pub metrics: crate::metrics::Labels,
}

/// Cloneable handle to a worker's engine thread; the thread exits when every handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Job>,
    model: Arc<Model>,
}

impl EngineHandle {
    pub fn spawn(model: Arc<Model>, cfg: EngineLoopConfig, name: String) -> EngineHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let m = model.clone();
        std::thread::Builder::new().name(name).spawn(move || run(m, cfg, rx)).expect("spawning the engine thread");
        EngineHandle { tx, model }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Computes the prompt's KV pages and samples the first output token (step 0).
    pub async fn prefill(&self, tokens: Vec<u32>, params: SamplingParams) -> Result<PrefillOut, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Prefill(PrefillJob { tokens, params, reply })).map_err(|_| WorkerError::EngineStopped)?;
        Ok(rx.await.map_err(|_| WorkerError::EngineStopped)??)
    }

    /// Generates from prefilled KV pages whose first token was already sampled. Malformed pages
    /// fail here, before the job waits for blocks.
    pub async fn decode(
        &self,
        pages: Vec<u8>,
        first_token: u32,
        params: SamplingParams,
    ) -> Result<DecodeOut, WorkerError> {
        let header = PageHeader::parse(&pages)?;
        let (reply, rx) = oneshot::channel();
        let gen = Generation::new(header.len, params.clone(), self.model.eos_token_ids(), self.model.max_context());
        let job = DecodeJob { pages, gen, first_token, params, started: Instant::now(), reply };
        self.tx.send(Job::Decode(Box::new(job))).map_err(|_| WorkerError::EngineStopped)?;
        Ok(rx.await.map_err(|_| WorkerError::EngineStopped)??)
    }
}

fn run(model: Arc<Model>, cfg: EngineLoopConfig, mut rx: mpsc::UnboundedReceiver<Job>) {
    let block_bytes = model.kv_layout(pdq_engine::DEFAULT_BLOCK_SIZE).block_floats() * 4;
    let mut kv = model.new_paged_kv((cfg.kv_pool_bytes / block_bytes).max(1));
    tracing::debug!(blocks = kv.n_blocks(), "engine KV pool ready");
    let mut prefills: VecDeque<PrefillJob> = VecDeque::new();
    let mut waiting: VecDeque<Box<DecodeJob>> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    // Gauges are set after every step and before every wait, so an idle engine reads idle.
    let report = |kv: &PagedKv, running: &[Running], queued: usize| {
        let used = 1.0 - kv.available_blocks() as f64 / kv.n_blocks() as f64;
        cfg.metrics.engine(running.len(), queued, used);
    };
    loop {
        if prefills.is_empty() && waiting.is_empty() && running.is_empty() {
            report(&kv, &running, 0);
            match rx.blocking_recv() {
                Some(job) => enqueue(job, &mut prefills, &mut waiting),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            enqueue(job, &mut prefills, &mut waiting);
        }
        let prefilled = prefill_batch(&model, &cfg, &mut kv, &mut prefills);
        let admitted = admit_decodes(&model, &cfg, &mut kv, &mut waiting, &mut running);

        if !prefilled && !admitted && running.is_empty() {
            // Every queued job waits for blocks nobody holds; only a new job can change that.
            report(&kv, &running, prefills.len() + waiting.len());
            match rx.blocking_recv() {
                Some(job) => enqueue(job, &mut prefills, &mut waiting),
                None => return,
            }
            continue;
        }
        decode_step(&model, &mut kv, &mut running);
        report(&kv, &running, prefills.len() + waiting.len());
    }
}

fn enqueue(job: Job, prefills: &mut VecDeque<PrefillJob>, waiting: &mut VecDeque<Box<DecodeJob>>) {
    match job {
        Job::Decode(d) => waiting.push_back(d),
        Job::Prefill(p) => prefills.push_back(p),
    }
}

/// The error for work needing more blocks than the whole pool: it would wait forever.
fn never_fits(kv: &PagedKv, tokens: usize) -> Option<EngineError> {
    let needed = kv.layout().blocks_for(tokens);
    (needed > kv.n_blocks()).then_some(EngineError::KvCapacity { needed, available: kv.n_blocks() })
}

/// Step 1 of the loop; returns whether any prompt ran.
fn prefill_batch(model: &Model, cfg: &EngineLoopConfig, kv: &mut PagedKv, queue: &mut VecDeque<PrefillJob>) -> bool {
    let started = Instant::now();
    let mut batch: Vec<(SeqId, PrefillJob)> = Vec::new();
    let mut budget = cfg.prefill_token_budget;
    while let Some(job) = queue.front() {
        let n = job.tokens.len();
        // Always admit one prompt per iteration, even one longer than the budget.
        if n > budget && !batch.is_empty() {
            break;
        }
        if let Err(e) = model.check_tokens(0, &job.tokens) {
            let job = queue.pop_front().expect("front exists");
            let _ = job.reply.send(Err(e));
            continue;
        }
        if let Some(e) = never_fits(kv, n) {
            let job = queue.pop_front().expect("front exists");
            let _ = job.reply.send(Err(e));
            continue;
        }
        if !kv.can_admit(n) {
            break;
        }
        let seq = kv.add_sequence(n).expect("admission was checked");
        budget = budget.saturating_sub(n);
        batch.push((seq, queue.pop_front().expect("front exists")));
    }
    if batch.is_empty() {
        return false;
    }
    let items: Vec<(SeqId, &[u32])> = batch.iter().map(|(s, j)| (*s, &j.tokens[..])).collect();
    let result = model.forward_batch(kv, &items);
    let elapsed = started.elapsed();
    match result {
        Ok(logits) => {
            for ((seq, job), logits) in batch.into_iter().zip(logits) {
                let out = kv.export(seq).map(|pages| PrefillOut {
                    pages,
                    first_token: sample(&logits, &job.params, 0),
                    elapsed,
                });
                kv.release(seq);
                let _ = job.reply.send(out);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "prefill batch failed");
            for (seq, job) in batch {
                kv.release(seq);
                let _ = job.reply.send(Err(EngineError::KvCache(format!("prefill batch failed: {e}"))));
            }
        }
    }
    true
}

/// Step 2 of the loop; returns whether any job left the queue.
fn admit_decodes(
    model: &Model,
    cfg: &EngineLoopConfig,
    kv: &mut PagedKv,
    waiting: &mut VecDeque<Box<DecodeJob>>,
    running: &mut Vec<Running>,
) -> bool {
    let mut admitted = false;
    while running.len() < cfg.max_running {
        let Some(job) = waiting.front() else { break };
        // The first token came from prefill; it may already end the sequence, needing no blocks.
        let mut gen = job.gen.clone();
        if gen.push(model, job.first_token).is_some() {
            let job = waiting.pop_front().expect("front exists");
            finish(model, gen, job.started, job.reply);
            admitted = true;
            continue;
        }
        // Reserve for the longest generation, so growth never fails and nothing is preempted.
        let max_len = gen.prompt_len().saturating_add(job.params.max_new_tokens).min(model.max_context());
        if let Some(e) = never_fits(kv, max_len) {
            let job = waiting.pop_front().expect("front exists");
            let _ = job.reply.send(Err(e));
            admitted = true;
            continue;
        }
        if !kv.can_admit(max_len) {
            break;
        }
        let job = waiting.pop_front().expect("front exists");
        admitted = true;
        match kv.import(&job.pages, max_len) {
            Ok(seq) => running.push(Running {
                seq,
                gen,
                last: job.first_token,
                params: job.params,
                started: job.started,
                reply: job.reply,
            }),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    admitted
}

/// Step 3: one token for every running sequence, in one batched forward.
fn decode_step(model: &Model, kv: &mut PagedKv, running: &mut Vec<Running>) {
    // A sequence that cannot take its next token fails alone rather than failing the batch.
    let mut i = 0;
    while i < running.len() {
        let r = &running[i];
        match kv.len(r.seq).and_then(|len| model.check_tokens(len, &[r.last])) {
            Ok(()) => i += 1,
            Err(e) => {
                let r = running.swap_remove(i);
                kv.release(r.seq);
                let _ = r.reply.send(Err(e));
            }
        }
    }
    if running.is_empty() {
        return;
    }
    let tokens: Vec<[u32; 1]> = running.iter().map(|r| [r.last]).collect();
    let items: Vec<(SeqId, &[u32])> = running.iter().zip(&tokens).map(|(r, t)| (r.seq, &t[..])).collect();
    let logits = match model.forward_batch(kv, &items) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "decode step failed");
            for r in running.drain(..) {
                kv.release(r.seq);
                let _ = r.reply.send(Err(EngineError::KvCache(format!("decode step failed: {e}"))));
            }
            return;
        }
    };
    let mut done = Vec::new();
    for (i, (r, logits)) in running.iter_mut().zip(logits).enumerate() {
        let token = sample(&logits, &r.params, r.gen.step());
        r.last = token;
        if r.gen.push(model, token).is_some() {
            done.push(i);
        }
    }
    for i in done.into_iter().rev() {
        let r = running.swap_remove(i);
        kv.release(r.seq);
        finish(model, r.gen, r.started, r.reply);
    }
}

fn finish(model: &Model, gen: Generation, started: Instant, reply: oneshot::Sender<Result<DecodeOut, EngineError>>) {
    let out = gen.text(model).map(|text| DecodeOut {
        output_ids: gen.output_ids().to_vec(),
        text,
        finish: gen.finish_reason().cloned().unwrap_or(FinishReason::Length { length: gen.output_ids().len() }),
        elapsed: started.elapsed(),
    });
    let _ = reply.send(out);
}

#[cfg(test)]
#[path = "engine_loop_tests.rs"]
mod tests;
