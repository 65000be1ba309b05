//! The executor seam: what an engine loop drives, whatever device runs the model.
//!
//! An [`Executor`] owns one KV block pool and runs batched steps over it. The engine loop keeps
//! the policy (admission, continuous batching, stop rules, grammar masks); an executor keeps
//! the mechanism:
//! - a batched forward over the running sequences and their block tables ([`Executor::step`]);
//! - the pool: sequences are added, forked (sharing full blocks) and released through it, and
//!   its block tables ([`Executor::pool`]) are what admission reads;
//! - KV pages out and in for the data plane, in the one page format of `paged/pages.rs`, so a
//!   GPU prefill and a CPU decode (or the reverse) exchange KV freely;
//! - sampling where the logits are: an item that wants a token gets only the token back (on a
//!   GPU, chosen on the device with the host's seeded uniform number), an item that needs the
//!   distribution itself (grammar masks, log-probabilities, several choices) gets its logits.
//!
//! [`Device`] is the model placed on its device once per process (weights uploaded once);
//! every engine of the process opens its own executor, with its own pool, from it.

mod cpu;

use std::sync::Arc;

pub use cpu::CpuExecutor;
use pdq_kernels::{DeviceChoice, KernelError};

use crate::error::EngineError;
use crate::model::Model;
use crate::paged::{PagedKv, SeqId};
use crate::pooling::Pooling;
use crate::sampling::Draw;

/// What one batch item needs back from a step.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// The last position's logits (f32), for callers that mask, score or sample them several
    /// times themselves.
    Logits,
    /// Only the token `draw` picks from the last position's logits ([`Draw::pick`]).
    Token(Draw),
    /// The step's rows, after the final norm, pooled into a unit-length embedding. Mean and
    /// CLS pooling read every row of the input, so the sequence must start empty and the
    /// step hold the whole input. Only for an executor that [`Executor::embeds`].
    Embed(Pooling),
}

/// One sequence's part of a step: its next tokens (a prefill chunk or one decode token), run at
/// positions `len(seq)..`.
#[derive(Debug, Clone, Copy)]
pub struct StepItem<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub want: Want,
}

/// A batch item's result, in the form its [`Want`] asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOut {
    Logits(Vec<f32>),
    Token(u32),
    Embedding(Vec<f32>),
}

impl StepOut {
    /// The logits of an item that asked for them.
    pub fn into_logits(self) -> Result<Vec<f32>, EngineError> {
        match self {
            StepOut::Logits(l) => Ok(l),
            StepOut::Token(_) | StepOut::Embedding(_) => {
                Err(EngineError::InvalidInput("a step returned no logits where logits were asked".into()))
            }
        }
    }
}

/// One engine's compute and KV pool. Owned by one engine thread (`Send`, not shared).
pub trait Executor: Send {
    /// The host model: config, tokenizer, validation.
    fn model(&self) -> &Arc<Model>;

    /// `cpu` or `cuda`, for logs and metrics.
    fn device(&self) -> &'static str;

    /// The pool's bookkeeping (free blocks, reservations, block tables): admission reads it.
    fn pool(&self) -> &PagedKv;

    /// Starts an empty sequence with blocks reserved for `max_len` tokens.
    fn add_sequence(&mut self, max_len: usize) -> Result<SeqId, EngineError>;

    /// Starts a sequence for `prompt`, reserved for `max_len` tokens, that already holds the
    /// longest prefix of it the pool's prefix cache has; returns it and how many prompt tokens
    /// it holds, so the step runs only the rest (never fewer than one token). Without a cache:
    /// an empty sequence and 0.
    fn add_prompt(&mut self, prompt: &[u32], max_len: usize) -> Result<(SeqId, usize), EngineError> {
        Ok((self.add_sequence(max_len.max(prompt.len()))?, 0))
    }

    /// Offers the full blocks of `seq` that hold `prompt` (computed by a step) to later prompts
    /// ([`PagedKv::register_prompt`]). Without a cache, nothing.
    fn register_prompt(&mut self, _seq: SeqId, _prompt: &[u32]) -> Result<(), EngineError> {
        Ok(())
    }

    /// Turns the prefix cache on or off; returns whether this executor has one. The GPU
    /// executor has none: its GEMMs pick kernels by row count, so a prompt's KV there depends
    /// on how it was split into steps, and a hit would not give a cold run's tokens.
    fn set_prefix_cache(&mut self, _on: bool) -> bool {
        false
    }

    /// Whether [`Want::Embed`] works here; a step must not ask for it otherwise.
    fn embeds(&self) -> bool {
        false
    }

    /// Frees the sequence's blocks no other sequence shares; unknown ids are ignored.
    fn release(&mut self, seq: SeqId);

    /// A new sequence with `src`'s tokens, sharing its full blocks (see [`PagedKv::fork`]).
    fn fork(&mut self, src: SeqId, max_len: usize) -> Result<SeqId, EngineError>;

    /// `seq`'s KV as pages.
    fn export(&mut self, seq: SeqId) -> Result<Vec<u8>, EngineError>;

    /// Writes received pages into a new sequence reserved for `max_len` tokens.
    fn import(&mut self, pages: &[u8], max_len: usize) -> Result<SeqId, EngineError>;

    /// Runs every item's tokens in one batched forward, appends their KV, and returns one
    /// [`StepOut`] per item, in batch order. Validates the whole batch first: a rejected step
    /// changes nothing.
    fn step(&mut self, batch: &[StepItem<'_>]) -> Result<Vec<StepOut>, EngineError>;
}

/// The model on the device `--device` chose, shared by every engine of a process.
#[derive(Clone)]
pub enum Device {
    Cpu(Arc<Model>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::cuda::GpuModel>),
    /// Executors the embedder makes: a wrapper around another device's (one that counts, or
    /// that fails on purpose, as the fault tests' does), or a device pdq does not know.
    Custom(Arc<dyn ExecutorSource>),
}

/// Makes the executors of a [`Device::Custom`].
pub trait ExecutorSource: Send + Sync {
    fn model(&self) -> &Arc<Model>;
    /// For logs and metrics.
    fn name(&self) -> &'static str;
    fn executor(&self, pool_bytes: usize) -> Result<Box<dyn Executor>, EngineError>;
}

impl From<Arc<Model>> for Device {
    fn from(model: Arc<Model>) -> Device {
        Device::Cpu(model)
    }
}

impl Device {
    /// Places `model` on the device `choice` names. `cuda` fails with one line when this build
    /// or this machine has none; `auto` takes CUDA exactly when both are there and otherwise
    /// says in one log line that it runs on the CPU.
    pub fn open(model: Arc<Model>, choice: DeviceChoice) -> Result<Device, EngineError> {
        use pdq_kernels::cuda::CudaBackend;
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu(model)),
            DeviceChoice::Cuda => match CudaBackend::new(0) {
                Ok(backend) => Self::on_gpu(model, backend),
                Err(KernelError::NotBuilt) => Err(EngineError::Device(crate::device::NOT_BUILT.into())),
                Err(e) => Err(e.into()),
            },
            DeviceChoice::Auto => match CudaBackend::new(0) {
                Ok(backend) => Self::on_gpu(model, backend),
                Err(e @ (KernelError::NotBuilt | KernelError::NoDevice(_))) => {
                    tracing::info!(reason = %e, "no usable GPU: the engine runs on the CPU");
                    Ok(Device::Cpu(model))
                }
                // A GPU that is there but fails (a kernel that does not compile, no memory) is
                // a fault to fix, not a reason to run slowly.
                Err(e) => Err(e.into()),
            },
        }
    }

    #[cfg(feature = "cuda")]
    fn on_gpu(model: Arc<Model>, backend: pdq_kernels::cuda::CudaBackend) -> Result<Device, EngineError> {
        let started = std::time::Instant::now();
        let gpu = crate::cuda::GpuModel::new(model, backend)?;
        tracing::info!(
            device = %gpu.backend().describe(),
            weights_mb = gpu.weight_bytes() >> 20,
            secs = started.elapsed().as_secs_f64(),
            "model on the GPU"
        );
        Ok(Device::Cuda(Arc::new(gpu)))
    }

    #[cfg(not(feature = "cuda"))]
    fn on_gpu(_model: Arc<Model>, backend: pdq_kernels::cuda::CudaBackend) -> Result<Device, EngineError> {
        match backend {}
    }

    pub fn model(&self) -> &Arc<Model> {
        match self {
            Device::Cpu(m) => m,
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => g.model_arc(),
            Device::Custom(c) => c.model(),
        }
    }

    /// `cpu` or `cuda`.
    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => "cuda",
            Device::Custom(c) => c.name(),
        }
    }

    /// A new executor with a pool of about `pool_bytes` of KV blocks (at least one block).
    pub fn executor(&self, pool_bytes: usize) -> Result<Box<dyn Executor>, EngineError> {
        match self {
            Device::Cpu(m) => Ok(Box::new(CpuExecutor::new(m.clone(), pool_bytes))),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => Ok(Box::new(crate::cuda::GpuExecutor::new(g.clone(), pool_bytes)?)),
            Device::Custom(c) => c.executor(pool_bytes),
        }
    }
}

#[cfg(test)]
mod tests;
