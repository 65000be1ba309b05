//! A loaded Llama-family model and its forward pass on the CPU backend.
//!
//! Invariants: a `Model` is immutable after `load` (hence `Send + Sync`, shared by `Arc`); every
//! weight has the shape `config.json` implies. The forward pass lives in `forward.rs`; this file
//! keeps the single-sequence API ([`Model::prefill`], [`Model::decode_step`]) on top of it.

use std::path::Path;

use pdq_kernels::{Activations, Backend};

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::gguf;
use crate::kv::KvCache;
use crate::pooling::Pooling;
use crate::text::TextCodec;
use crate::weights::{self, Weights};

pub struct Model {
    pub config: ModelConfig,
    pub(crate) name: String,
    pub(crate) backend: Backend,
    pub(crate) weights: Weights,
    pub(crate) inv_freq: Vec<f32>,
    pub(crate) text: TextCodec,
    /// How an input's hidden states become its embedding (`pooling.rs`).
    pub(crate) pooling: Pooling,
}

impl Model {
    /// Loads an HF model directory: `config.json`, `model.safetensors` (or a sharded index),
    /// `tokenizer.json`, and optionally `chat_template.jinja`, `tokenizer_config.json` and
    /// `generation_config.json`; or a `.gguf` file ([`Model::load_gguf`]).
    pub fn load(dir: &Path) -> Result<Model, EngineError> {
        if gguf::is_gguf(dir) {
            return Model::load_gguf(dir);
        }
        if !dir.is_dir() {
            return Err(EngineError::MissingFile { path: dir.to_path_buf() });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let text = TextCodec::load(dir, &config)?;
        let weights = weights::load(dir, &config)?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let inv_freq = config.rope_inv_freq();
        let pooling = Pooling::from_hf_dir(dir)?.unwrap_or_default();
        tracing::debug!(model = %name, layers = config.num_hidden_layers, vocab = config.vocab_size, "model loaded");
        Ok(Model { config, name, backend: Backend::cpu(), weights, inv_freq, text, pooling })
    }

    /// Loads a `.gguf` file: metadata, tokenizer and chat template, and quantized weights kept
    /// in their blocks, memory-mapped.
    pub fn load_gguf(path: &Path) -> Result<Model, EngineError> {
        let f = gguf::file::GgufFile::open(path)?;
        let config = gguf::model::config(&f)?;
        let (tokenizer, spec) = gguf::tokenizer::build(&f)?;
        let text = TextCodec::new(tokenizer, spec)?;
        let weights = gguf::model::weights(&f, &config)?;
        let mut inv_freq = config.rope_inv_freq();
        if let Some(factors) = gguf::model::rope_factors(&f, config.head_dim)? {
            // llama.cpp divides each frequency by its factor (Llama 3.1's scaling, precomputed).
            inv_freq.iter_mut().zip(&factors).for_each(|(f, s)| *f = (*f as f64 / *s as f64) as f32);
        }
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let pooling = Pooling::from_gguf(gguf::model::pooling_type(&f)).unwrap_or_default();
        tracing::debug!(model = %name, version = f.version, layers = config.num_hidden_layers,
            embed = %weights.embed.dtype_name(), weight_bytes = weights.stored_bytes(), "GGUF model loaded");
        Ok(Model { config, name, backend: Backend::cpu(), weights, inv_freq, text, pooling })
    }

    /// Chooses how matmuls on quantized weights treat activations (before the model is shared):
    /// [`Activations::Int8`] is the opt-in path that quantizes them per block (not exact; see
    /// `pdq_kernels::quant::int8`). It changes only Q4_0, Q4_1 and Q8_0 matrices; the count of
    /// those it changes is returned beside the model, so a caller can say when it changed none.
    pub fn with_activations(mut self, activations: Activations) -> (Model, usize) {
        let w = &self.weights;
        let layer = |l: &crate::weights::LayerWeights| {
            [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().filter(|m| m.weight.takes_int8()).count()
        };
        let changed = if activations == Activations::Exact {
            0
        } else {
            w.layers.iter().map(layer).sum::<usize>() + usize::from(w.lm_head().takes_int8())
        };
        self.weights.activations = activations;
        (self, changed)
    }

    /// How quantized matmuls treat activations ([`Model::with_activations`]).
    pub fn activations(&self) -> Activations {
        self.weights.activations
    }

    /// The directory's file name; the `model` field of OpenAI responses.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How this model's embeddings pool an input (from its files; last token by default).
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The length of this model's embeddings: its hidden size.
    pub fn embedding_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn max_context(&self) -> usize {
        self.config.max_context()
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.text.eos_ids
    }

    /// Tokenizer vocabulary including added tokens (may be below `config.vocab_size`).
    pub fn tokenizer_vocab_size(&self) -> usize {
        self.text.vocab_size()
    }

    /// Encodes text, adding BOS when the tokenizer does; never yields a doubled BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.text.encode(text)
    }

    /// Renders an OpenAI `messages` array and encodes it with exactly one BOS.
    pub fn encode_chat(&self, messages: &serde_json::Value) -> Result<Vec<u32>, EngineError> {
        self.text.encode_chat(messages)
    }

    /// Decodes ids, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.text.decode(ids)
    }

    /// The chat template applied with `add_generation_prompt = true`.
    pub fn render_chat(&self, messages: &serde_json::Value) -> Result<String, EngineError> {
        self.text.render_chat(messages)
    }

    /// An empty single-sequence cache shaped for this model.
    pub fn new_kv_cache(&self) -> KvCache {
        KvCache::new(self.kv_layout(crate::paged::DEFAULT_BLOCK_SIZE))
    }

    /// Runs the prompt; returns its KV and the logits of its last position.
    pub fn prefill(&self, tokens: &[u32]) -> Result<(KvCache, Vec<f32>), EngineError> {
        let mut kv = self.new_kv_cache();
        let logits = self.forward(&mut kv, tokens)?;
        Ok((kv, logits))
    }

    /// Appends `token` at position `kv.len()` and returns its logits.
    pub fn decode_step(&self, kv: &mut KvCache, token: u32) -> Result<Vec<f32>, EngineError> {
        self.forward(kv, &[token])
    }

    /// One sequence through [`Model::forward_batch`]; validates before touching `kv`, so a
    /// rejected call leaves the cache unchanged.
    fn forward(&self, kv: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.check_tokens(kv.len(), tokens)?;
        let (pool, seq) = kv.reserve(tokens.len())?;
        let mut logits = self.forward_batch(pool, &[(seq, tokens)])?;
        Ok(logits.pop().expect("one logits row per batch item"))
    }
}
