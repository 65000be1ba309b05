//! The engine loop: one OS thread per worker owns an executor (the compute and its KV block pool,
//! on the CPU or a GPU: `pdq_engine::Executor`), so the async side never blocks on a forward
//! pass. Work arrives as jobs on a channel; replies go back on oneshots. The loop holds the
//! policy (admission, batching, stop rules, grammar masks) and asks the executor only for the
//! logits a sequence needs: an unconstrained sequence without log-probabilities gets its next
//! token back, sampled where its logits are.
//!
//! Each iteration (continuous batching):
//! 0. with `kv_by_need`, resumes preempted sequences first (`by_need.rs`);
//! 1. admits waiting prompts while they fit the prefill token budget (always at least one) and
//!    the pool has blocks for them, and prefills them as one batch (`prefill.rs`). Each
//!    takes the longest prefix of it the pool's prefix cache holds and computes only the rest;
//!    its full blocks are offered to the cache afterwards. A prefill rank's prompt has its
//!    pages exported and its blocks released at once (the KV store holds the bytes); a
//!    colocated rank's prompt ([`EngineHandle::generate`]) was admitted with blocks for its
//!    whole generation (by need: for itself) and goes straight on to decoding in the pool;
//!    Embedding jobs (`/v1/embeddings`) run next, in a step of their own under a budget of the
//!    same size, each input pooled into a vector and released at once (`embed.rs`);
//! 2. admits waiting decode jobs in arrival order while fewer than `max_running` run and the pool
//!    can reserve blocks for their whole generation (prompt + `max_new_tokens`, capped at the
//!    context), writing their received pages straight into those blocks; a job with `n` choices
//!    runs as `n` sequences forked from the one prompt KV, sharing its full blocks;
//! 3. runs one decode step for every running sequence as one batched forward.
//!
//! A step that fails is the rank's fault, not its requests': the loop raises the worker's
//! [`Fault`] with the reason and stops, and every job it held is answered with the fault, so the
//! worker hands their messages back for other ranks instead of writing failed rows. A panic in
//! the loop does the same.
//!
//! Work that does not fit waits at the front of its queue for blocks to free; only work that
//! could never fit in the whole pool fails (`kv_capacity`). Growth within a reservation never
//! fails; only a sequence admitted by need is ever preempted, and it resumes with the same
//! tokens. A sequence's tokens depend only on its own inputs and seed, never on what it is
//! batched with or on what the cache held (see `pdq_engine::forward`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdq_engine::{
    Constrained, EngineError, Executor, FinishReason, Generation, Grammars, Logprob, Model, PageHeader, PagedKv,
    PrefixCacheStats, SamplingParams, SeqId,
};
use tokio::sync::{mpsc, oneshot};

use crate::fault::Fault;
use crate::WorkerError;

pub struct PrefillOut {
    /// The prompt's KV as pages (`pdq_engine::PageHeader` describes them).
    pub pages: Vec<u8>,
    /// Each choice's first token (step 0), choice i sampled with `seed + i`.
    pub firsts: Vec<First>,
    pub elapsed: Duration,
    /// Prompt tokens found in the pool's prefix cache, not computed again.
    pub cached_tokens: usize,
}

/// A colocated prompt's prefill, reported before its decoding ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefilled {
    pub elapsed: Duration,
    /// Prompt tokens found in the pool's prefix cache, not computed again.
    pub cached_tokens: usize,
}

/// A choice's first token, with its log-probability when the params ask for it.
#[derive(Debug, Clone)]
pub struct First {
    pub token: u32,
    pub logprob: Option<Logprob>,
}

pub struct ChoiceOut {
    pub output_ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    /// One per output id when the params ask for log-probabilities.
    pub logprobs: Vec<Logprob>,
}

pub struct DecodeOut {
    /// In choice order.
    pub choices: Vec<ChoiceOut>,
    pub elapsed: Duration,
}

struct PrefillJob {
    tokens: Vec<u32>,
    params: SamplingParams,
    n: usize,
    grammar: Option<Constrained>,
    reply: PrefillReply,
}

/// Where a prefilled prompt goes.
enum PrefillReply {
    /// Out as pages (a prefill rank): the KV leaves the pool.
    Pages(oneshot::Sender<Result<PrefillOut, EngineError>>),
    /// On to decoding in this pool (a colocated rank): the prefill once it ran, then the
    /// choices.
    Decode { prefilled: oneshot::Sender<Prefilled>, reply: oneshot::Sender<Result<DecodeOut, EngineError>> },
}

impl PrefillReply {
    fn fail(self, e: EngineError) {
        match self {
            PrefillReply::Pages(tx) => drop(tx.send(Err(e))),
            PrefillReply::Decode { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// A decode job waiting for blocks; its pages were validated when it was queued.
struct DecodeJob {
    pages: Vec<u8>,
    prompt_len: usize,
    /// The prompt's tokens, when the caller had them: by need, they let the job reserve its
    /// prompt alone and be preempted and recomputed like a colocated sequence.
    prompt: Option<Vec<u32>>,
    firsts: Vec<First>,
    params: SamplingParams,
    grammar: Option<Constrained>,
    started: Instant,
    reply: oneshot::Sender<Result<DecodeOut, EngineError>>,
}

enum Job {
    Prefill(Box<PrefillJob>),
    Decode(Box<DecodeJob>),
    Embed(Box<EmbedJob>),
}

struct Running {
    seq: SeqId,
    gen: Generation,
    last: u32,
    group: u64,
    choice: usize,
    /// Every token in the sequence's KV, kept for a sequence that may be preempted and
    /// recomputed (`kv_by_need`); `None` for one reserved for its whole generation.
    kv_tokens: Option<Vec<u32>>,
    /// Admission order: the latest admitted is preempted first.
    admitted: u64,
}

/// A decode job's choices: answered once every one finished, or at the first failure.
struct Group {
    outs: Vec<Option<ChoiceOut>>,
    left: usize,
    started: Instant,
    reply: oneshot::Sender<Result<DecodeOut, EngineError>>,
}

/// The engine thread's decode state.
#[derive(Default)]
struct Decoding {
    running: Vec<Running>,
    groups: HashMap<u64, Group>,
    next_group: u64,
    /// Sequences whose blocks were freed for room, oldest preemption first; they resume
    /// before any new prompt is admitted.
    preempted: VecDeque<Running>,
    next_admitted: u64,
}

impl Decoding {
    /// Records a finished choice; answers its group when it was the last.
    fn complete(&mut self, model: &Model, group: u64, choice: usize, gen: &Generation) {
        let Some(g) = self.groups.get_mut(&group) else { return };
        match choice_out(model, gen) {
            Ok(out) => {
                g.outs[choice] = Some(out);
                g.left -= 1;
                if g.left == 0 {
                    let g = self.groups.remove(&group).expect("present");
                    let choices = g.outs.into_iter().map(|o| o.expect("every choice finished")).collect();
                    let _ = g.reply.send(Ok(DecodeOut { choices, elapsed: g.started.elapsed() }));
                }
            }
            Err(e) => self.fail(group, e),
        }
    }

    /// Answers a group with an error; its other sequences are dropped by [`Decoding::sweep`].
    fn fail(&mut self, group: u64, e: EngineError) {
        if let Some(g) = self.groups.remove(&group) {
            let _ = g.reply.send(Err(e));
        }
    }

    /// Releases the sequences of groups that were answered.
    fn sweep(&mut self, exec: &mut dyn Executor) {
        let groups = &self.groups;
        self.preempted.retain(|r| groups.contains_key(&r.group));
        self.running.retain(|r| {
            let keep = groups.contains_key(&r.group);
            if !keep {
                exec.release(r.seq);
            }
            keep
        });
    }
}

fn choice_out(model: &Model, gen: &Generation) -> Result<ChoiceOut, EngineError> {
    Ok(ChoiceOut {
        text: gen.text(model)?,
        output_ids: gen.output_ids().to_vec(),
        finish: gen.finish_reason().cloned().unwrap_or(FinishReason::Length { length: gen.output_ids().len() }),
        logprobs: gen.logprobs().to_vec(),
    })
}

#[derive(Debug, Clone)]
pub struct EngineLoopConfig {
    pub max_running: usize,
    pub prefill_token_budget: usize,
    /// Whose gauges (running, waiting, KV usage) this loop keeps.
    pub metrics: crate::metrics::Labels,
    /// Colocated prompts, and decode jobs that come with their prompt's tokens, reserve blocks
    /// for the prompt only and grow as they decode, with preemption when the pool runs short
    /// (`by_need.rs`); otherwise each reserves its whole generation at admission.
    pub kv_by_need: bool,
}

/// Cloneable handle to a worker's engine thread; the thread exits when every handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Job>,
    model: Arc<Model>,
    /// Built on the first constrained request: the trie of a large vocabulary takes a while.
    grammars: Arc<std::sync::OnceLock<Result<Arc<Grammars>, String>>>,
    /// Raised by the engine thread when a step fails or the thread panics.
    fault: Fault,
    /// `EngineLoopConfig::kv_by_need`: whether a decode job's prompt tokens are used at all.
    kv_by_need: bool,
}

impl EngineHandle {
    /// Starts the engine thread, which owns `exec` from now on.
    pub fn spawn(exec: Box<dyn Executor>, cfg: EngineLoopConfig, name: String) -> EngineHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let model = exec.model().clone();
        let kv_by_need = cfg.kv_by_need;
        let fault = Fault::default();
        let thread_fault = fault.clone();
        let thread = move || {
            let device = exec.device();
            // The jobs live out here, so a panic raises the fault before their replies drop:
            // every waiter then learns the reason. The executor is dropped with the thread:
            // nothing touches it after a panic.
            let mut jobs = Jobs {
                rx,
                prefills: VecDeque::new(),
                embeds: VecDeque::new(),
                waiting: VecDeque::new(),
                dec: Decoding::default(),
            };
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(exec, cfg, &mut jobs, &thread_fault)));
            if let Err(panic) = ran {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                broken(&thread_fault, device, format!("the engine thread panicked: {what}"));
            }
        };
        std::thread::Builder::new().name(name).spawn(thread).expect("spawning the engine thread");
        EngineHandle { tx, model, grammars: Arc::default(), fault, kv_by_need }
    }

    /// Whether decode jobs grow by need: only then does [`EngineHandle::decode`] use the
    /// prompt's tokens, so a caller need not compute them otherwise.
    pub fn kv_by_need(&self) -> bool {
        self.kv_by_need
    }

    /// Raised when this engine can no longer run anything (see the module docs).
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    /// Why a job got no answer: the fault that stopped the engine, if it is known yet.
    fn stopped(&self) -> WorkerError {
        match self.fault.reason() {
            Some(reason) => WorkerError::RankFault(reason),
            None => WorkerError::EngineStopped,
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The model's vocabulary for structured output, or why it has none.
    pub fn grammars(&self) -> Result<Arc<Grammars>, EngineError> {
        self.grammars
            .get_or_init(|| Grammars::new(&self.model).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(EngineError::Grammar)
    }

    /// Computes the prompt's KV pages and samples the first output token (step 0) of each of
    /// `n` choices, among the tokens `grammar` (fresh) allows.
    pub async fn prefill(
        &self,
        tokens: Vec<u32>,
        params: SamplingParams,
        n: usize,
        grammar: Option<Constrained>,
    ) -> Result<PrefillOut, WorkerError> {
        let (reply, rx) = oneshot::channel();
        let job = PrefillJob { tokens, params, n: n.max(1), grammar, reply: PrefillReply::Pages(reply) };
        self.tx.send(Job::Prefill(Box::new(job))).map_err(|_| self.stopped())?;
        Ok(rx.await.map_err(|_| self.stopped())??)
    }

    /// Embeds each input alone (`/v1/embeddings`): its rows pooled by the model's rule and
    /// normalized, one vector per input, in order. Nothing is decoded and no KV is kept.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<EmbedOut, WorkerError> {
        if inputs.is_empty() {
            return Err(EngineError::InvalidInput("an embedding job needs at least one input".into()).into());
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Embed(Box::new(EmbedJob::new(inputs, reply)))).map_err(|_| self.stopped())?;
        Ok(rx.await.map_err(|_| self.stopped())??)
    }

    /// Prefill and decode on this engine, the KV staying in its pool (a colocated rank): the
    /// same tokens as [`EngineHandle::prefill`] then [`EngineHandle::decode`], without the
    /// pages' export and import. Returns the prefill beside the choices, whose `elapsed` is
    /// the decoding alone.
    pub async fn generate(
        &self,
        tokens: Vec<u32>,
        params: SamplingParams,
        n: usize,
        grammar: Option<Constrained>,
    ) -> Result<(Prefilled, DecodeOut), WorkerError> {
        let ((prefilled, prefill_rx), (reply, rx)) = (oneshot::channel(), oneshot::channel());
        let job = PrefillJob { tokens, params, n: n.max(1), grammar, reply: PrefillReply::Decode { prefilled, reply } };
        self.tx.send(Job::Prefill(Box::new(job))).map_err(|_| self.stopped())?;
        let out = rx.await.map_err(|_| self.stopped())??;
        // Sent before any choice could finish; absent only when the prompt failed first.
        Ok((prefill_rx.await.unwrap_or_default(), out))
    }

    /// Generates every choice from prefilled KV pages whose first tokens were already sampled
    /// (one per choice), under `grammar` (fresh: it consumes the first tokens too). Malformed
    /// pages fail here, before the job waits for blocks. `prompt`, the tokens the pages hold,
    /// lets the job grow by need (`kv_by_need`); tokens of another length are not used.
    pub async fn decode(
        &self,
        pages: Vec<u8>,
        prompt: Option<Vec<u32>>,
        firsts: Vec<First>,
        params: SamplingParams,
        grammar: Option<Constrained>,
    ) -> Result<DecodeOut, WorkerError> {
        let header = PageHeader::parse(&pages)?;
        if firsts.is_empty() {
            return Err(EngineError::KvCache("a decode job needs at least one first token".into()).into());
        }
        let prompt = prompt.filter(|p| p.len() == header.len);
        let (reply, rx) = oneshot::channel();
        let job = DecodeJob {
            pages,
            prompt_len: header.len,
            prompt,
            firsts,
            params,
            grammar,
            started: Instant::now(),
            reply,
        };
        self.tx.send(Job::Decode(Box::new(job))).map_err(|_| self.stopped())?;
        Ok(rx.await.map_err(|_| self.stopped())??)
    }
}

/// Logs a rank fault once and raises it.
fn broken(fault: &Fault, device: &str, reason: String) {
    if fault.raise(reason.clone()) {
        tracing::error!(device, %reason, "the engine is broken: this rank stops taking work and hands its messages back");
    }
}

/// What the engine thread holds for its callers: the incoming channel and every job not yet
/// answered.
struct Jobs {
    rx: mpsc::UnboundedReceiver<Job>,
    prefills: VecDeque<PrefillJob>,
    embeds: VecDeque<EmbedJob>,
    waiting: VecDeque<Box<DecodeJob>>,
    dec: Decoding,
}

fn run(mut exec: Box<dyn Executor>, cfg: EngineLoopConfig, jobs: &mut Jobs, fault: &Fault) {
    let Jobs { rx, prefills, embeds, waiting, dec } = jobs;
    let model = exec.model().clone();
    let exec = &mut *exec;
    tracing::debug!(device = exec.device(), blocks = exec.pool().n_blocks(), "engine KV pool ready");
    // Gauges are set after every step and before every wait, so an idle engine reads idle.
    let mut cache_reported = PrefixCacheStats::default();
    let mut report = |kv: &PagedKv, dec: &Decoding, queued: usize| {
        // Cached blocks no sequence holds are free to take: they do not count as used.
        let used = 1.0 - kv.available_blocks() as f64 / kv.n_blocks() as f64;
        cfg.metrics.engine(dec.running.len(), queued, used);
        if let Some(now) = kv.prefix_cache_stats() {
            cfg.metrics.prefix_cache(&cache_reported, &now);
            cache_reported = now;
        }
    };
    loop {
        // Preempted sequences are work too: the loop never sleeps while one waits to resume.
        let idle = prefills.is_empty() && embeds.is_empty() && waiting.is_empty();
        if idle && dec.running.is_empty() && dec.preempted.is_empty() {
            report(exec.pool(), dec, 0);
            match rx.blocking_recv() {
                Some(job) => enqueue(job, prefills, embeds, waiting),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            enqueue(job, prefills, embeds, waiting);
        }
        // A failed step is the rank's fault: raised before the queued jobs' replies drop, so
        // every waiter learns the reason.
        let device = exec.device();
        let resumed = match by_need::resume(exec, dec) {
            Ok(resumed) => resumed,
            Err(e) => return broken(fault, device, format!("resuming preempted sequences failed: {e}")),
        };
        // Preempted sequences go first: a new prompt would only take their room again.
        let prefilled = match dec.preempted.is_empty() {
            false => false,
            true => match prefill::prefill_batch(&model, &cfg, exec, prefills, dec) {
                Ok(prefilled) => prefilled,
                Err(e) => return broken(fault, device, format!("a prefill step failed: {e}")),
            },
        };
        let embedded = match dec.preempted.is_empty() {
            false => false,
            true => match embed::embed_batch(&model, &cfg, exec, embeds) {
                Ok(embedded) => embedded,
                Err(e) => return broken(fault, device, format!("an embedding step failed: {e}")),
            },
        };
        let admitted = admit_decodes(&model, &cfg, exec, waiting, dec);

        if !resumed && !prefilled && !embedded && !admitted && dec.running.is_empty() {
            // Every queued job waits for blocks nobody holds; only a new job can change that.
            report(exec.pool(), dec, prefills.len() + embeds.len() + waiting.len() + dec.preempted.len());
            match rx.blocking_recv() {
                Some(job) => enqueue(job, prefills, embeds, waiting),
                None => return,
            }
            continue;
        }
        if let Err(e) = decode_step(&model, &cfg, exec, dec) {
            return broken(fault, device, format!("a decode step failed: {e}"));
        }
        report(exec.pool(), dec, prefills.len() + embeds.len() + waiting.len() + dec.preempted.len());
    }
}

fn enqueue(
    job: Job,
    prefills: &mut VecDeque<PrefillJob>,
    embeds: &mut VecDeque<EmbedJob>,
    waiting: &mut VecDeque<Box<DecodeJob>>,
) {
    match job {
        Job::Decode(d) => waiting.push_back(d),
        Job::Prefill(p) => prefills.push_back(*p),
        Job::Embed(e) => embeds.push_back(*e),
    }
}

mod by_need;
mod decode;
mod embed;
mod prefill;

use embed::EmbedJob;
pub use embed::EmbedOut;

use decode::{admit_decodes, choices, decode_step, generation_len, start_group, Source, Start};

#[cfg(test)]
mod tests;
