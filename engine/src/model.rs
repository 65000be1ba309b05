//! A loaded Llama-family model and its forward pass on the CPU backend.
//!
//! Invariants: a `Model` is immutable after `load` (hence `Send + Sync`, shared by `Arc`); every
//! weight has the shape `config.json` implies; the forward pass computes each token's row with
//! the same kernels in the same order whether it arrives in a prefill batch or alone in a
//! decode step, so prefill logits equal incremental logits bit for bit.

use std::path::Path;

use pdq_kernels::{AttnShape, Backend};

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv::KvCache;
use crate::text::TextCodec;
use crate::weights::{self, Linear, Weights};

pub struct Model {
    pub config: ModelConfig,
    name: String,
    backend: Backend,
    weights: Weights,
    inv_freq: Vec<f32>,
    text: TextCodec,
}

impl Model {
    /// Loads an HF model directory: `config.json`, `model.safetensors` (or a sharded index),
    /// `tokenizer.json`, and optionally `tokenizer_config.json` and `generation_config.json`.
    pub fn load(dir: &Path) -> Result<Model, EngineError> {
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
        tracing::debug!(model = %name, layers = config.num_hidden_layers, vocab = config.vocab_size, "model loaded");
        Ok(Model { config, name, backend: Backend::cpu(), weights, inv_freq, text })
    }

    /// The directory's file name; the `model` field of OpenAI responses.
    pub fn name(&self) -> &str {
        &self.name
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

    /// An empty cache shaped for this model.
    pub fn new_kv_cache(&self) -> KvCache {
        let c = &self.config;
        KvCache::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim)
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

    /// Validates before touching `kv`, so a rejected call leaves the cache unchanged.
    fn check(&self, kv: &KvCache, tokens: &[u32]) -> Result<(), EngineError> {
        let c = &self.config;
        kv.check_shape(c.num_hidden_layers, c.num_key_value_heads, c.head_dim)?;
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput("no tokens to run".into()));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(EngineError::InvalidInput(format!("token id {t} >= `vocab_size` {}", c.vocab_size)));
        }
        let len = kv.len() + tokens.len();
        if len > self.max_context() {
            return Err(EngineError::ContextLength { len, max: self.max_context() });
        }
        Ok(())
    }

    fn linear(&self, x: &[f32], l: &Linear, k: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize(x.len() / k * (l.weight.len() / k), 0.0);
        self.backend.matmul(x, &l.weight, l.bias.as_deref(), k, out);
    }

    /// Runs `tokens` at positions `kv.len()..`, appends their KV, returns the last row's logits.
    fn forward(&self, kv: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.check(kv, tokens)?;
        let c = &self.config;
        let (h, hd, n) = (c.hidden_size, c.head_dim, tokens.len());
        let shape = AttnShape { n_heads: c.num_attention_heads, n_kv_heads: c.num_key_value_heads, head_dim: hd };
        let (q_dim, kv_dim) = (shape.n_heads * hd, shape.n_kv_heads * hd);
        let start = kv.len();
        let positions: Vec<usize> = (start..start + n).collect();
        let eps = c.rms_norm_eps as f32;
        let b = &self.backend;

        let mut x = Vec::with_capacity(n * h);
        for &t in tokens {
            x.extend_from_slice(&self.weights.embed[t as usize * h..(t as usize + 1) * h]);
        }
        let mut normed = vec![0f32; n * h];
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let (mut attn, mut proj) = (vec![0f32; n * q_dim], Vec::new());
        let (mut gate, mut up) = (Vec::new(), Vec::new());
        for (li, lw) in self.weights.layers.iter().enumerate() {
            b.rms_norm(&x, &lw.input_norm, eps, &mut normed);
            self.linear(&normed, &lw.q, h, &mut q);
            self.linear(&normed, &lw.k, h, &mut k);
            self.linear(&normed, &lw.v, h, &mut v);
            b.rope(&mut q, shape.n_heads, &positions, &self.inv_freq);
            b.rope(&mut k, shape.n_kv_heads, &positions, &self.inv_freq);
            let layer = kv.layer_mut(li);
            layer.k.extend_from_slice(&k);
            layer.v.extend_from_slice(&v);
            for t in 0..n {
                // Causal: token at position p sees cache rows 0..=p.
                let end = (start + t + 1) * kv_dim;
                b.attention(
                    &q[t * q_dim..(t + 1) * q_dim],
                    &layer.k[..end],
                    &layer.v[..end],
                    shape,
                    &mut attn[t * q_dim..(t + 1) * q_dim],
                );
            }
            self.linear(&attn, &lw.o, q_dim, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);

            b.rms_norm(&x, &lw.post_norm, eps, &mut normed);
            self.linear(&normed, &lw.gate, h, &mut gate);
            self.linear(&normed, &lw.up, h, &mut up);
            let mut act = vec![0f32; gate.len()];
            b.silu_mul(&gate, &up, &mut act);
            self.linear(&act, &lw.down, c.intermediate_size, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);
        }
        kv.set_len(start + n);

        // Only the last position's logits are needed: one row through the norm and lm_head.
        let last = &x[(n - 1) * h..];
        let mut last_normed = vec![0f32; h];
        b.rms_norm(last, &self.weights.norm, eps, &mut last_normed);
        let mut logits = vec![0f32; c.vocab_size];
        b.matmul(&last_normed, self.weights.lm_head(), None, h, &mut logits);
        Ok(logits)
    }
}
