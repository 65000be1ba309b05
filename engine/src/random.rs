//! Random-weight checkpoints in the shapes of real models, for benchmarks and memory planning
//! where the real weights cannot be downloaded.
//!
//! Invariants: the output is a loadable HF directory (`config.json`, `model.safetensors` in
//! bf16, and the tiny model's tokenizer files); the same preset and seed give byte-identical
//! files; tensors are generated and written one chunk at a time, so memory stays a few MB
//! whatever the model size; `model.safetensors` appears only by rename once complete.
//! `vocab_size` is the real model's: rows above the tokenizer's vocabulary are valid embedding
//! rows that encoding never produces.

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::config::Architecture;
use crate::error::EngineError;
use crate::tiny::{pretty, write_file, write_text_files};

/// Llama 3 RoPE scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// The shape of a real model. Qwen2 presets get q/k/v biases, as the architecture requires.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub llama3_rope: Option<Llama3Rope>,
}

static PRESETS: [Preset; 3] = [
    Preset {
        name: "llama-3.2-1b",
        architecture: Architecture::Llama,
        hidden_size: 2048,
        num_hidden_layers: 16,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 64,
        intermediate_size: 8192,
        vocab_size: 128256,
        max_position_embeddings: 131072,
        tie_word_embeddings: true,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        llama3_rope: Some(Llama3Rope {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
    },
    Preset {
        name: "qwen2.5-0.5b",
        architecture: Architecture::Qwen2,
        hidden_size: 896,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        head_dim: 64,
        intermediate_size: 4864,
        vocab_size: 151936,
        max_position_embeddings: 32768,
        tie_word_embeddings: true,
        rms_norm_eps: 1e-6,
        rope_theta: 1000000.0,
        llama3_rope: None,
    },
    // Not a released model: a Llama-2-style ~125M shape sized for CPU benchmarks.
    Preset {
        name: "llama-100m",
        architecture: Architecture::Llama,
        hidden_size: 768,
        num_hidden_layers: 12,
        num_attention_heads: 12,
        num_key_value_heads: 4,
        head_dim: 64,
        intermediate_size: 2048,
        vocab_size: 32000,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        llama3_rope: None,
    },
];

/// Every preset, in the order `pdq model random --help` should list them.
pub fn presets() -> &'static [Preset] {
    &PRESETS
}

/// The preset called `name`; the error lists the valid names.
pub fn preset(name: &str) -> Result<&'static Preset, EngineError> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        EngineError::InvalidInput(format!("unknown preset {name:?}; presets: {}", names.join(", ")))
    })
}

/// Writes a random-weight checkpoint of preset `name` into `dir` (created if needed).
pub fn write(name: &str, dir: &Path, seed: u64) -> Result<(), EngineError> {
    write_preset(preset(name)?, dir, seed)
}

/// HF's `initializer_range`: the std of every random matrix and bias.
const INIT_STD: f32 = 0.02;
/// Values generated and converted per write call.
const CHUNK: usize = 1 << 16;

/// One tensor of the checkpoint; `ones` marks an RMSNorm weight.
struct Spec {
    name: String,
    shape: Vec<usize>,
    ones: bool,
}

impl Preset {
    fn specs(&self) -> Vec<Spec> {
        let (h, hd, i) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let t = |name: String, shape: Vec<usize>| Spec { name, shape, ones: false };
        let norm = |name: String| Spec { name, shape: vec![h], ones: true };
        let mut v =
            vec![t("model.embed_tokens.weight".into(), vec![self.vocab_size, h]), norm("model.norm.weight".into())];
        if !self.tie_word_embeddings {
            v.push(t("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        let qkv_bias = self.architecture == Architecture::Qwen2;
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            v.push(norm(format!("{p}.input_layernorm.weight")));
            v.push(norm(format!("{p}.post_attention_layernorm.weight")));
            for (m, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                v.push(t(format!("{p}.self_attn.{m}.weight"), vec![out, h]));
                if qkv_bias {
                    v.push(t(format!("{p}.self_attn.{m}.bias"), vec![out]));
                }
            }
            v.push(t(format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            v.push(t(format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            v.push(t(format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            v.push(t(format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        // Sorted so offsets and the RNG stream follow one documented order.
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Parameter count, embeddings included (tied ones once).
    pub fn num_parameters(&self) -> usize {
        self.specs().iter().map(|s| s.shape.iter().product::<usize>()).sum()
    }

    fn config_json(&self, bos: u32, eos: [u32; 2]) -> serde_json::Value {
        let mut c = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.llama3_rope.map(|r| json!({
                "rope_type": "llama3",
                "factor": r.factor,
                "low_freq_factor": r.low_freq_factor,
                "high_freq_factor": r.high_freq_factor,
                "original_max_position_embeddings": r.original_max_position_embeddings,
            })),
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": INIT_STD,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "bfloat16",
        });
        let extra = match self.architecture {
            Architecture::Llama => json!({"attention_bias": false, "mlp_bias": false}),
            Architecture::Qwen2 => json!({"use_sliding_window": false, "sliding_window": null,
                "max_window_layers": self.num_hidden_layers}),
            Architecture::Mistral => json!({"sliding_window": null}),
        };
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    }
}

/// Writes `preset` (possibly a modified copy of one of [`presets`]) into `dir`.
pub fn write_preset(preset: &Preset, dir: &Path, seed: u64) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let text = write_text_files(dir, preset.max_position_embeddings)?;
    if text.vocab_size > preset.vocab_size {
        return Err(EngineError::InvalidInput(format!(
            "preset `vocab_size` {} is below the tokenizer's {}",
            preset.vocab_size, text.vocab_size
        )));
    }
    write_file(dir, "config.json", &pretty(&preset.config_json(text.bos, text.eos)))?;
    let path = dir.join("model.safetensors");
    let partial = dir.join("model.safetensors.partial");
    write_safetensors(&preset.specs(), &partial, seed)?;
    std::fs::rename(&partial, &path).map_err(|e| EngineError::io(&path, e))
}

/// The safetensors layout: u64 header length, JSON header padded with spaces to 8 bytes, then
/// the tensors back to back in header order.
fn write_safetensors(specs: &[Spec], path: &Path, seed: u64) -> Result<(), EngineError> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for s in specs {
        let bytes = s.shape.iter().product::<usize>() * 2;
        header.insert(
            s.name.clone(),
            json!({"dtype": "BF16", "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header).expect("JSON value serialises");
    header.resize(header.len().next_multiple_of(8), b' ');

    let io = |e| EngineError::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&header).map_err(io)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Uniform on [-a, a) with a = std * sqrt(3) has the HF init's std at one RNG draw per value.
    let scale = INIT_STD * 3f32.sqrt() / (1u32 << 31) as f32;
    let mut buf = Vec::with_capacity(CHUNK * 2);
    for s in specs {
        let mut left: usize = s.shape.iter().product();
        while left > 0 {
            let n = left.min(CHUNK);
            buf.clear();
            for _ in 0..n {
                let x = if s.ones { 1.0 } else { (rng.next_u32() as i32) as f32 * scale };
                buf.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
            }
            out.write_all(&buf).map_err(io)?;
            left -= n;
        }
    }
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
}
