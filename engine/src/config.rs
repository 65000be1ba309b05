//! `config.json` of a Llama-family checkpoint.
//!
//! After deserialisation a [`ModelConfig`] is valid: head counts divide evenly, `head_dim` is
//! set (derived as `hidden_size / num_attention_heads` when absent), `eos_token_id` is a list,
//! and the RoPE scaling kind is one the engine implements.

use std::path::Path;

use serde::Deserialize;

use crate::error::{read_file, EngineError};

/// RoPE frequency scaling (`rope_scaling` in `config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct ModelConfig {
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub head_dim: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

/// The file as written; HF leaves many fields optional with documented defaults.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
}

/// `eos_token_id` is an int in some configs and a list in others.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl TryFrom<RawConfig> for ModelConfig {
    type Error = String;

    fn try_from(r: RawConfig) -> Result<Self, String> {
        let is_llama = r.architectures.iter().any(|a| a == "LlamaForCausalLM")
            || (r.architectures.is_empty() && r.model_type.as_deref() == Some("llama"));
        if !is_llama {
            return Err(format!(
                "`architectures` must contain \"LlamaForCausalLM\", got {:?} (model_type {:?})",
                r.architectures, r.model_type
            ));
        }
        if let Some(act) = r.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(format!("`hidden_act` must be \"silu\", got {act:?}"));
        }
        for (field, v) in [
            ("hidden_size", r.hidden_size),
            ("intermediate_size", r.intermediate_size),
            ("num_hidden_layers", r.num_hidden_layers),
            ("num_attention_heads", r.num_attention_heads),
            ("vocab_size", r.vocab_size),
            ("max_position_embeddings", r.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("`{field}` must be >= 1, got 0"));
            }
        }
        let kv = r.num_key_value_heads.unwrap_or(r.num_attention_heads);
        if kv == 0 || !r.num_attention_heads.is_multiple_of(kv) {
            return Err(format!(
                "`num_key_value_heads` ({kv}) must divide `num_attention_heads` ({})",
                r.num_attention_heads
            ));
        }
        let head_dim = match r.head_dim {
            Some(d) => d,
            None if r.hidden_size.is_multiple_of(r.num_attention_heads) => r.hidden_size / r.num_attention_heads,
            None => {
                return Err(format!(
                    "`hidden_size` ({}) is not a multiple of `num_attention_heads` ({}) and `head_dim` is absent",
                    r.hidden_size, r.num_attention_heads
                ))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!("`head_dim` must be even and >= 2, got {head_dim}"));
        }
        if let Some(s) = &r.rope_scaling {
            match s.rope_type.as_str() {
                "default" | "linear" => {}
                "llama3" => {
                    if s.low_freq_factor.is_none()
                        || s.high_freq_factor.is_none()
                        || s.original_max_position_embeddings.is_none()
                    {
                        return Err("`rope_scaling` of type llama3 needs `low_freq_factor`, `high_freq_factor` and `original_max_position_embeddings`".into());
                    }
                }
                other => return Err(format!("`rope_scaling.rope_type` {other:?} is not supported")),
            }
        }
        Ok(ModelConfig {
            architectures: r.architectures,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            num_key_value_heads: kv,
            vocab_size: r.vocab_size,
            max_position_embeddings: r.max_position_embeddings,
            rms_norm_eps: r.rms_norm_eps,
            rope_theta: r.rope_theta,
            rope_scaling: r.rope_scaling,
            tie_word_embeddings: r.tie_word_embeddings,
            head_dim,
            attention_bias: r.attention_bias,
            mlp_bias: r.mlp_bias,
            bos_token_id: r.bos_token_id,
            eos_token_id: r.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
        })
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<ModelConfig, EngineError> {
        let bytes = read_file(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Config { path: path.to_path_buf(), message: e.to_string() })
    }

    /// RoPE inverse frequencies after `rope_scaling`, computed in `f64` as HF does and rounded once.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        let base = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d));
        let Some(s) = &self.rope_scaling else {
            return base.map(|f| f as f32).collect();
        };
        match s.rope_type.as_str() {
            "linear" => base.map(|f| (f / s.factor) as f32).collect(),
            "llama3" => {
                // HF `_compute_llama3_parameters`: long wavelengths are divided by `factor`,
                // short ones kept, the band between interpolated smoothly.
                let (lo, hi) = (s.low_freq_factor.unwrap_or(1.0), s.high_freq_factor.unwrap_or(4.0));
                let old = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                let (lo_wl, hi_wl) = (old / lo, old / hi);
                base.map(|f| {
                    let wl = 2.0 * std::f64::consts::PI / f;
                    let v = if wl < hi_wl {
                        f
                    } else if wl > lo_wl {
                        f / s.factor
                    } else {
                        let smooth = (old / wl - lo) / (hi - lo);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    };
                    v as f32
                })
                .collect()
            }
            _ => base.map(|f| f as f32).collect(),
        }
    }
}
