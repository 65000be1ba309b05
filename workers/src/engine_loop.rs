//! The engine loop: one OS thread per worker owns the compute, so the async side never blocks on
//! a forward pass. Work arrives as jobs on a channel and replies go back on oneshots.
//!
//! Each iteration admits waiting prefills up to the prompt-token budget, then runs one decode step
//! for every running sequence (continuous batching: sequences join and leave at every step).
//! Running sequences are capped at `max_running`; further decode jobs wait their turn in arrival order.
//! A sequence's tokens depend only on its own inputs and seed, never on what it is batched with.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdq_engine::{sample, EngineError, FinishReason, Generation, KvCache, Model, SamplingParams};
use tokio::sync::{mpsc, oneshot};

use crate::WorkerError;

pub struct PrefillOut {
    pub kv: KvCache,
    pub first_token: u32,
    pub elapsed: Duration,
}

pub struct DecodeOut {
    pub output_ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub elapsed: Duration,
}

enum Job {
    Prefill { tokens: Vec<u32>, params: SamplingParams, reply: oneshot::Sender<Result<PrefillOut, EngineError>> },
    Decode { seq: Box<Sequence> },
}

struct Sequence {
    kv: KvCache,
    gen: Generation,
    last: u32,
    params: SamplingParams,
    started: Instant,
    reply: oneshot::Sender<Result<DecodeOut, EngineError>>,
}

#[derive(Debug, Clone, Copy)]
pub struct EngineLoopConfig {
    pub max_running: usize,
    pub prefill_token_budget: usize,
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

    /// Computes the prompt's KV and samples the first output token (step 0).
    pub async fn prefill(&self, tokens: Vec<u32>, params: SamplingParams) -> Result<PrefillOut, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Prefill { tokens, params, reply }).map_err(|_| WorkerError::EngineStopped)?;
        Ok(rx.await.map_err(|_| WorkerError::EngineStopped)??)
    }

    /// Generates from a prefilled KV whose first token was already sampled.
    pub async fn decode(
        &self,
        kv: KvCache,
        first_token: u32,
        params: SamplingParams,
    ) -> Result<DecodeOut, WorkerError> {
        let (reply, rx) = oneshot::channel();
        let gen = Generation::new(kv.len(), params.clone(), self.model.eos_token_ids(), self.model.max_context());
        let seq = Box::new(Sequence { kv, gen, last: first_token, params, started: Instant::now(), reply });
        self.tx.send(Job::Decode { seq }).map_err(|_| WorkerError::EngineStopped)?;
        Ok(rx.await.map_err(|_| WorkerError::EngineStopped)??)
    }
}

fn run(model: Arc<Model>, cfg: EngineLoopConfig, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut prefills: VecDeque<Job> = VecDeque::new();
    let mut waiting: VecDeque<Box<Sequence>> = VecDeque::new();
    let mut running: Vec<Box<Sequence>> = Vec::new();
    loop {
        if prefills.is_empty() && waiting.is_empty() && running.is_empty() {
            match rx.blocking_recv() {
                Some(job) => enqueue(job, &mut prefills, &mut waiting),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            enqueue(job, &mut prefills, &mut waiting);
        }
        let mut budget = cfg.prefill_token_budget;
        while let Some(Job::Prefill { tokens, .. }) = prefills.front() {
            // Always admit one prefill per iteration, even a prompt longer than the budget.
            if tokens.len() > budget && budget < cfg.prefill_token_budget {
                break;
            }
            budget = budget.saturating_sub(tokens.len());
            if let Some(Job::Prefill { tokens, params, reply }) = prefills.pop_front() {
                let _ = reply.send(run_prefill(&model, &tokens, &params));
            }
        }
        while running.len() < cfg.max_running {
            let Some(mut seq) = waiting.pop_front() else { break };
            // The first token came from prefill; it may already end the sequence.
            if seq.gen.push(&model, seq.last).is_some() {
                finish(&model, seq);
            } else {
                running.push(seq);
            }
        }
        let mut i = 0;
        while i < running.len() {
            match decode_step(&model, &mut running[i]) {
                Ok(false) => i += 1,
                Ok(true) => finish(&model, running.swap_remove(i)),
                Err(e) => {
                    let seq = running.swap_remove(i);
                    let _ = seq.reply.send(Err(e));
                }
            }
        }
    }
}

fn enqueue(job: Job, prefills: &mut VecDeque<Job>, waiting: &mut VecDeque<Box<Sequence>>) {
    match job {
        Job::Decode { seq } => waiting.push_back(seq),
        prefill => prefills.push_back(prefill),
    }
}

fn run_prefill(model: &Model, tokens: &[u32], params: &SamplingParams) -> Result<PrefillOut, EngineError> {
    let started = Instant::now();
    let (kv, logits) = model.prefill(tokens)?;
    let first_token = sample(&logits, params, 0);
    Ok(PrefillOut { kv, first_token, elapsed: started.elapsed() })
}

/// One token for one sequence; true when it finished.
fn decode_step(model: &Model, seq: &mut Sequence) -> Result<bool, EngineError> {
    let logits = model.decode_step(&mut seq.kv, seq.last)?;
    let token = sample(&logits, &seq.params, seq.gen.step());
    seq.last = token;
    Ok(seq.gen.push(model, token).is_some())
}

fn finish(model: &Model, seq: Box<Sequence>) {
    let out = seq.gen.text(model).map(|text| DecodeOut {
        output_ids: seq.gen.output_ids().to_vec(),
        text,
        finish: seq.gen.finish_reason().cloned().unwrap_or(FinishReason::Length { length: seq.gen.output_ids().len() }),
        elapsed: seq.started.elapsed(),
    });
    let _ = seq.reply.send(out);
}
