//! pdq's model engine: a Llama-family model on the CPU reference backend, its tokenizer and
//! chat template, KV caches that can be shipped between processes, reproducible sampling and
//! the per-sequence stop logic.
//!
//! The split between prefill and decode is explicit in the API: [`Model::prefill`] returns a
//! [`KvCache`] and the first logits; [`KvCache::to_bytes`] / [`KvCache::from_bytes`] move the
//! cache as KV pages; [`Model::decode_step`] and [`sample`] (keyed by seed and step) continue
//! elsewhere with the same result as [`generate`] in one process.
//!
//! Engines batch instead: one [`PagedKv`] block pool holds every sequence, and
//! [`Model::forward_batch`] runs prefill chunks and decode tokens of many sequences in one pass,
//! with each request's result independent of its batch ([`PagedKv::export`] / [`PagedKv::import`]
//! move a sequence's pages). An engine loop drives them through the [`Executor`] seam, which the
//! CPU ([`CpuExecutor`]) and the GPU (`cuda::GpuExecutor`) implement; [`Device`] picks one.

mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod error;
mod executor;
mod forward;
mod generation;
pub mod gguf;
mod grammar;
mod kv;
mod matrix;
mod model;
mod paged;
mod pooling;
mod rope;
mod sampling;
mod template;
mod text;
mod weights;

pub mod random;
pub mod tiny;

pub use config::{Architecture, ModelConfig};
pub use device::{cuda_built, DeviceChoice};
pub use error::EngineError;
pub use executor::{CpuExecutor, Device, Executor, ExecutorSource, StepItem, StepOut, Want};
pub use generation::{generate, FinishReason, Generation, Matched};
pub use grammar::{Constrained, GrammarSpec, Grammars};
pub use kv::KvCache;
pub use model::Model;
pub use paged::{KvLayout, PageHeader, PagedKv, PrefixCacheStats, SeqId, DEFAULT_BLOCK_SIZE};
pub use pdq_kernels::Activations;
pub use pooling::Pooling;
pub use rope::RopeScaling;
pub use sampling::{
    logprobs, sample, Draw, Logprob, SamplingParams, DEFAULT_MAX_NEW_TOKENS, MAX_TOP_LOGPROBS, MIN_LOGPROB,
};
