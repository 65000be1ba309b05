//! pdq's model engine: a Llama-family model on the CPU reference backend, its tokenizer and
//! chat template, KV caches that can be shipped between processes, reproducible sampling and
//! the per-sequence stop logic.
//!
//! The split between prefill and decode is explicit in the API: [`Model::prefill`] returns a
//! [`KvCache`] and the first logits; [`KvCache::to_bytes`] / [`KvCache::from_bytes`] move the
//! cache; [`Model::decode_step`] and [`sample`] (keyed by seed and step) continue elsewhere
//! with the same result as [`generate`] in one process.

mod config;
mod error;
mod generation;
mod kv;
mod model;
mod rope;
mod sampling;
mod template;
mod text;
mod weights;

pub mod random;
pub mod tiny;

pub use config::{Architecture, ModelConfig};
pub use error::EngineError;
pub use generation::{generate, FinishReason, Generation, Matched};
pub use kv::KvCache;
pub use model::Model;
pub use rope::RopeScaling;
pub use sampling::{sample, SamplingParams, DEFAULT_MAX_NEW_TOKENS};
