//! `config.json` of a Llama-family checkpoint: `LlamaForCausalLM`, `Qwen2ForCausalLM` or
//! `MistralForCausalLM`, as written by transformers 4.x or 5.x.
//!
//! After deserialisation a [`ModelConfig`] is valid: the architecture is one the engine runs,
//! head counts divide evenly, `head_dim` is set (derived as `hidden_size / num_attention_heads`
//! when absent), `eos_token_id` is a list, the RoPE scaling kind is implemented, and no
//! attention window can change results inside [`ModelConfig::max_context`]. Configurations the
//! engine would compute wrongly (Qwen2 sliding windows, other activations) are rejected.

use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::error::{read_file, EngineError};
use crate::rope::{self, RopeFields, RopeParameters, RopeScaling};

/// The HF model classes the engine implements; they share one decoder and differ in biases,
/// defaults and attention windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Mistral,
}

impl Architecture {
    const ALL: [Architecture; 3] = [Architecture::Llama, Architecture::Qwen2, Architecture::Mistral];

    /// The `architectures` entry in `config.json`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
        }
    }

    /// The `model_type` in `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Mistral => "mistral",
        }
    }

    /// The first entry of `architectures` the engine runs; `model_type` only when the list is
    /// empty (some hand-written configs omit it).
    fn detect(architectures: &[String], model_type: Option<&str>) -> Result<Architecture, String> {
        let by_class = architectures.iter().find_map(|a| Self::ALL.into_iter().find(|x| x.hf_class() == a));
        let by_type = || Self::ALL.into_iter().find(|x| Some(x.model_type()) == model_type);
        match by_class {
            Some(a) => Ok(a),
            None if architectures.is_empty() => by_type().ok_or_else(|| {
                format!("`architectures` is absent and `model_type` {model_type:?} is not one of llama, qwen2, mistral")
            }),
            None => Err(format!(
                "unsupported architecture: `architectures` is {architectures:?}, supported: {}",
                Self::ALL.map(Architecture::hf_class).join(", ")
            )),
        }
    }

    fn default_max_positions(self) -> usize {
        match self {
            Architecture::Llama => 2048,
            Architecture::Qwen2 => 32768,
            Architecture::Mistral => 4096 * 32,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Mistral's attention window when it is shorter than `max_position_embeddings`; the
    /// context is capped to it, inside which windowed and full attention agree.
    pub sliding_window: Option<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub head_dim: usize,
    /// Biases on `q_proj`, `k_proj`, `v_proj` (always for Qwen2, `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on `o_proj` (Llama's `attention_bias`; never for Qwen2 and Mistral).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

/// The file as written; HF leaves many fields optional with documented per-class defaults.
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
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
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
    use_sliding_window: bool,
    /// Absent, `null` and a number mean different things for Mistral (default 4096, none, n).
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(d).map(Some)
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

fn default_eps() -> f64 {
    1e-6
}

/// HF MistralConfig's default when the key is absent.
const MISTRAL_DEFAULT_WINDOW: usize = 4096;

impl TryFrom<RawConfig> for ModelConfig {
    type Error = String;

    fn try_from(r: RawConfig) -> Result<Self, String> {
        let arch = Architecture::detect(&r.architectures, r.model_type.as_deref())?;
        if let Some(act) = r.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(format!("`hidden_act` must be \"silu\", got {act:?}"));
        }
        let max_positions = r.max_position_embeddings.unwrap_or(arch.default_max_positions());
        for (field, v) in [
            ("hidden_size", r.hidden_size),
            ("intermediate_size", r.intermediate_size),
            ("num_hidden_layers", r.num_hidden_layers),
            ("num_attention_heads", r.num_attention_heads),
            ("vocab_size", r.vocab_size),
            ("max_position_embeddings", max_positions),
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
        let sliding_window = match arch {
            Architecture::Qwen2 if r.use_sliding_window => {
                return Err("`use_sliding_window` is true; Qwen2 sliding-window attention is not supported".into())
            }
            Architecture::Mistral => {
                r.sliding_window.unwrap_or(Some(MISTRAL_DEFAULT_WINDOW)).filter(|&w| w < max_positions)
            }
            _ => None,
        };
        if sliding_window == Some(0) {
            return Err("`sliding_window` must be >= 1 or null, got 0".into());
        }
        if let Some(t) = r.layer_types.iter().flatten().find(|t| *t != "full_attention") {
            return Err(format!("`layer_types` contains {t:?}; only \"full_attention\" layers are supported"));
        }
        let (rope_theta, rope_scaling) = rope::resolve(RopeFields {
            rope_theta: r.rope_theta,
            partial_rotary_factor: r.partial_rotary_factor,
            rope_scaling: r.rope_scaling,
            rope_parameters: r.rope_parameters,
        })?;
        let (qkv_bias, o_bias, mlp_bias) = match arch {
            Architecture::Llama => (r.attention_bias, r.attention_bias, r.mlp_bias),
            Architecture::Qwen2 => (true, false, false),
            Architecture::Mistral => (false, false, false),
        };
        Ok(ModelConfig {
            architecture: arch,
            architectures: r.architectures,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            num_key_value_heads: kv,
            vocab_size: r.vocab_size,
            max_position_embeddings: max_positions,
            sliding_window,
            rms_norm_eps: r.rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: r.tie_word_embeddings,
            head_dim,
            qkv_bias,
            o_bias,
            mlp_bias,
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

    /// The longest sequence the engine runs: `max_position_embeddings`, or a shorter Mistral
    /// attention window, beyond which full attention would give different results.
    pub fn max_context(&self) -> usize {
        self.sliding_window.map_or(self.max_position_embeddings, |w| w.min(self.max_position_embeddings))
    }

    /// RoPE inverse frequencies after `rope_scaling`, computed in `f64` as HF does and rounded once.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        rope::inv_freq(self.head_dim, self.rope_theta, self.rope_scaling.as_ref())
    }
}
