//! A GGUF file's metadata as a [`ModelConfig`], and its tensors as the engine's [`Weights`].
//!
//! The config goes through the same validation as a `config.json` (it is built as one), so a
//! GGUF model obeys every `ModelConfig` invariant. Weights keep their block format and point
//! into the memory map; only F32 tensors are copied, and llama's `attn_q`/`attn_k`, whose rows
//! llama.cpp's converter permuted for its RoPE layout, are un-permuted row by row (a row is
//! whole blocks, so this needs no dequantization), exactly as transformers' GGUF loader does.

use pdq_kernels::QuantType;
use serde_json::json;

use super::file::{GgufFile, TensorInfo, Value};
use crate::config::{Architecture, ModelConfig};
use crate::error::EngineError;
use crate::matrix::{Bytes, Matrix};
use crate::weights::{LayerWeights, Linear, Weights};

fn arch_of(f: &GgufFile) -> Result<(Architecture, &str), EngineError> {
    let name = f.get("general.architecture").and_then(Value::as_str).unwrap_or("(none)");
    let arch = match name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "mistral" => Architecture::Mistral,
        other => {
            return Err(EngineError::Config {
                path: f.path.clone(),
                message: format!("unsupported GGUF architecture `{other}` (supported: llama, qwen2, mistral)"),
            })
        }
    };
    Ok((arch, name))
}

/// `{arch}.pooling_type`: how an embedding model pools (`crate::Pooling::from_gguf`).
pub(crate) fn pooling_type(f: &GgufFile) -> Option<u64> {
    let arch = f.get("general.architecture").and_then(Value::as_str)?;
    f.get(&format!("{arch}.pooling_type")).and_then(Value::as_u64)
}

/// `config.json` as the metadata describes it, then validated as one.
pub(crate) fn config(f: &GgufFile) -> Result<ModelConfig, EngineError> {
    let (arch, a) = arch_of(f)?;
    let bad = |message: String| EngineError::Config { path: f.path.clone(), message };
    let int = |key: &str| f.get(&format!("{a}.{key}")).and_then(Value::as_u64);
    let need = |key: &str| int(key).ok_or_else(|| bad(format!("metadata `{a}.{key}` is missing")));
    let float = |key: &str| f.get(&format!("{a}.{key}")).and_then(Value::as_f64);
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    let vocab = match int("vocab_size") {
        Some(v) => v,
        None => f.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|t| t.len() as u64).unwrap_or(0),
    };
    let head_dim = int("attention.key_length").unwrap_or(hidden.checked_div(heads).unwrap_or(0));
    if let Some(rot) = int("rope.dimension_count").filter(|&r| r != head_dim) {
        return Err(bad(format!(
            "`{a}.rope.dimension_count` {rot} != head dim {head_dim}: partial RoPE is not supported"
        )));
    }
    let scaling = match f.get(&format!("{a}.rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => None,
        Some("linear") => Some(json!({"type": "linear", "factor": float("rope.scaling.factor").unwrap_or(1.0)})),
        Some(other) => return Err(bad(format!("`{a}.rope.scaling.type` `{other}` is not supported (none, linear)"))),
    };
    let id = |key: &str| f.get(key).and_then(Value::as_u64);
    let mut c = json!({
        "architectures": [arch.hf_class()],
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": int("attention.head_count_kv").unwrap_or(heads),
        "vocab_size": vocab,
        "max_position_embeddings": need("context_length")?,
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": float("rope.freq_base").unwrap_or(10000.0),
        "rope_scaling": scaling,
        "head_dim": head_dim,
        "tie_word_embeddings": !f.tensors.contains_key("output.weight"),
        "attention_bias": f.tensors.contains_key("blk.0.attn_q.bias"),
        "bos_token_id": id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": id("tokenizer.ggml.eos_token_id"),
    });
    if arch == Architecture::Mistral {
        c["sliding_window"] = json!(int("attention.sliding_window"));
    }
    serde_json::from_value(c).map_err(|e| bad(e.to_string()))
}

/// Loads every tensor the model uses, checking shapes against `c`.
pub(crate) fn weights(f: &GgufFile, c: &ModelConfig) -> Result<Weights, EngineError> {
    let l = Loader { f, permute: c.architecture == Architecture::Llama };
    let (h, hd, i, v) = (c.hidden_size, c.head_dim, c.intermediate_size, c.vocab_size);
    let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let linear =
        |name: &str, rows: usize, cols: usize, bias: bool, heads: Option<usize>| -> Result<Linear, EngineError> {
            let weight = l.matrix(&format!("{name}.weight"), rows, cols, heads)?;
            let bias = if bias { Some(l.vector(&format!("{name}.bias"), rows, heads)?) } else { None };
            Ok(Linear { weight, bias })
        };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for n in 0..c.num_hidden_layers {
        let p = format!("blk.{n}");
        let (ab, ob, mb) = (c.qkv_bias, c.o_bias, c.mlp_bias);
        layers.push(LayerWeights {
            input_norm: l.vector(&format!("{p}.attn_norm.weight"), h, None)?,
            q: linear(&format!("{p}.attn_q"), q_out, h, ab, Some(c.num_attention_heads))?,
            k: linear(&format!("{p}.attn_k"), kv_out, h, ab, Some(c.num_key_value_heads))?,
            v: linear(&format!("{p}.attn_v"), kv_out, h, ab, None)?,
            o: linear(&format!("{p}.attn_output"), h, q_out, ob, None)?,
            post_norm: l.vector(&format!("{p}.ffn_norm.weight"), h, None)?,
            gate: linear(&format!("{p}.ffn_gate"), i, h, mb, None)?,
            up: linear(&format!("{p}.ffn_up"), i, h, mb, None)?,
            down: linear(&format!("{p}.ffn_down"), h, i, mb, None)?,
        });
    }
    let embed = l.matrix("token_embd.weight", v, h, None)?;
    let norm = l.vector("output_norm.weight", h, None)?;
    let lm_head = if c.tie_word_embeddings { None } else { Some(l.matrix("output.weight", v, h, None)?) };
    Ok(Weights { embed, layers, norm, lm_head, activations: pdq_kernels::Activations::Exact })
}

/// llama.cpp's RoPE-layout RoPE factors (`rope_freqs.weight`, Llama 3.1+), when present.
pub(crate) fn rope_factors(f: &GgufFile, head_dim: usize) -> Result<Option<Vec<f32>>, EngineError> {
    if !f.tensors.contains_key("rope_freqs.weight") {
        return Ok(None);
    }
    let l = Loader { f, permute: false };
    l.vector("rope_freqs.weight", head_dim / 2, None).map(Some)
}

struct Loader<'a> {
    f: &'a GgufFile,
    /// Whether `attn_q`/`attn_k` rows are stored in llama.cpp's permuted order.
    permute: bool,
}

impl Loader<'_> {
    fn bad(&self, message: String) -> EngineError {
        EngineError::Weights { path: self.f.path.clone(), message }
    }

    fn info(&self, name: &str, dims: &[usize]) -> Result<(&TensorInfo, QuantType), EngineError> {
        let t = self.f.tensors.get(name).ok_or_else(|| self.bad(format!("tensor `{name}` is missing")))?;
        let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        if got != dims {
            return Err(self.bad(format!("tensor `{name}` has GGUF dims {got:?}, the metadata implies {dims:?}")));
        }
        let dtype = t.dtype.map_err(|id| {
            self.bad(format!(
                "tensor `{name}` has type {}, which pdq does not implement (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                QuantType::ggml_name(id)
            ))
        })?;
        Ok((t, dtype))
    }

    /// The HF row order of a permuted Q/K matrix with `heads` heads: HF row `(h, half, i)` is
    /// stored at `(h, i, half)`, i.e. row `h * hd + 2 * i + half`.
    fn source_rows(&self, rows: usize, heads: Option<usize>) -> Option<Vec<usize>> {
        let heads = heads.filter(|_| self.permute)?;
        let hd = rows / heads;
        Some(
            (0..rows)
                .map(|r| {
                    let (h, within) = (r / hd, r % hd);
                    let (half, i) = (within / (hd / 2), within % (hd / 2));
                    h * hd + 2 * i + half
                })
                .collect(),
        )
    }

    /// A `[rows, cols]` weight (GGUF dims `[cols, rows]`).
    fn matrix(&self, name: &str, rows: usize, cols: usize, heads: Option<usize>) -> Result<Matrix, EngineError> {
        let (t, dtype) = self.info(name, &[cols, rows])?;
        let bytes = &self.f.map[t.range.clone()];
        let order = self.source_rows(rows, heads);
        if dtype == QuantType::F32 {
            let mut data = vec![0f32; rows * cols];
            dtype.dequantize(bytes, &mut data);
            if let Some(order) = order {
                let src = data.clone();
                for (dst, &s) in data.chunks_exact_mut(cols).zip(&order) {
                    dst.copy_from_slice(&src[s * cols..(s + 1) * cols]);
                }
            }
            return Ok(Matrix::dense(data, cols));
        }
        let stored = match order {
            None => Bytes::Mapped { map: self.f.map.clone(), range: t.range.clone() },
            Some(order) => {
                let rb = bytes.len() / rows;
                Bytes::Owned(order.iter().flat_map(|&s| &bytes[s * rb..(s + 1) * rb]).copied().collect())
            }
        };
        Matrix::quant(dtype, rows, cols, stored).map_err(|e| self.bad(format!("tensor `{name}`: {e}")))
    }

    /// A 1-D tensor (norm weight, bias) widened to f32; a Q/K bias is un-permuted like its rows.
    fn vector(&self, name: &str, n: usize, heads: Option<usize>) -> Result<Vec<f32>, EngineError> {
        let (t, dtype) = self.info(name, &[n])?;
        let mut v = vec![0f32; n];
        dtype.dequantize(&self.f.map[t.range.clone()], &mut v);
        Ok(match self.source_rows(n, heads) {
            Some(order) => order.iter().map(|&s| v[s]).collect(),
            None => v,
        })
    }
}
