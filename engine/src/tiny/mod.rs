//! A tiny deterministic Llama for tests and demos, generated locally, never downloaded.
//!
//! Invariants: `write` produces byte-identical files on every run and machine (weights use only
//! integer RNG output and IEEE additions; the tokenizer is trained with deterministic
//! tie-breaking); `cached` publishes a directory only by an atomic rename, so a directory that
//! exists under the cache is always complete. Bump [`DIR_NAME`] whenever the output changes.

mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::error::EngineError;

/// Subdirectory of the cache holding this version of the tiny model.
pub const DIR_NAME: &str = "tiny-v1";

pub(crate) const HIDDEN: usize = 64;
pub(crate) const LAYERS: usize = 2;
pub(crate) const HEADS: usize = 4;
pub(crate) const KV_HEADS: usize = 2;
pub(crate) const HEAD_DIM: usize = 16;
pub(crate) const INTERMEDIATE: usize = 172;
pub(crate) const MAX_POSITIONS: usize = 1024;

pub(crate) const BOS: &str = "<|begin_of_text|>";
pub(crate) const EOT_TEXT: &str = "<|end_of_text|>";
pub(crate) const START_HEADER: &str = "<|start_header_id|>";
pub(crate) const END_HEADER: &str = "<|end_header_id|>";
pub(crate) const EOT: &str = "<|eot_id|>";

/// Llama-3 style; BOS comes from the template, and `encode_chat` does not add a second one.
pub(crate) const CHAT_TEMPLATE: &str = r#"{{- bos_token }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"#;

pub(crate) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), EngineError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| EngineError::io(path, e))
}

pub(crate) fn pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("JSON value serialises");
    s.push('\n');
    s.into_bytes()
}

/// Special ids of the tiny tokenizer, for a `config.json` written beside it.
pub(crate) struct TextIds {
    pub vocab_size: usize,
    pub bos: u32,
    /// `<|end_of_text|>` and `<|eot_id|>`, as in Llama 3.
    pub eos: [u32; 2],
}

/// Writes the tiny tokenizer with its `tokenizer_config.json` and `generation_config.json`
/// into `dir`; also used by [`crate::random`] beside weights of real shapes.
pub(crate) fn write_text_files(dir: &Path, max_positions: usize) -> Result<TextIds, EngineError> {
    let tok = tokenizer::build()?;
    let id = |t: &str| tok.special_id(t);
    let ids = TextIds { vocab_size: tok.vocab_size, bos: id(BOS), eos: [id(EOT_TEXT), id(EOT)] };
    let tokenizer_config = json!({
        "bos_token": BOS,
        "eos_token": EOT,
        "add_bos_token": true,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "model_max_length": max_positions,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let generation_config = json!({
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "do_sample": false,
    });
    write_file(dir, "tokenizer.json", tok.json.as_bytes())?;
    write_file(dir, "tokenizer_config.json", &pretty(&tokenizer_config))?;
    write_file(dir, "generation_config.json", &pretty(&generation_config))?;
    Ok(ids)
}

/// Writes the tiny model's HF files into `dir` (created if needed).
pub fn write(dir: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let text = write_text_files(dir, MAX_POSITIONS)?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": text.vocab_size,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": text.bos,
        "eos_token_id": text.eos,
        "torch_dtype": "float32",
    });
    write_file(dir, "config.json", &pretty(&config))?;
    write_file(dir, "model.safetensors", &weights::safetensors(text.vocab_size)?)?;
    Ok(())
}

/// The cache root: `$PDQ_CACHE_DIR`, else `$XDG_CACHE_HOME/pdq`, else `$HOME/.cache/pdq`.
pub fn cache_root() -> Result<PathBuf, EngineError> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("PDQ_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("pdq")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("pdq")))
        .ok_or_else(|| EngineError::InvalidInput("no cache directory: set PDQ_CACHE_DIR or HOME".into()))
}

/// The tiny model under [`cache_root`], generated on first use.
pub fn cached() -> Result<PathBuf, EngineError> {
    cached_in(&cache_root()?)
}

/// The tiny model in `root/tiny-v1`, generated on first use. Safe under races between threads
/// and processes: each writer fills a private temp directory and renames it into place; a
/// writer that loses the race discards its copy and uses the winner's.
pub fn cached_in(root: &Path) -> Result<PathBuf, EngineError> {
    let target = root.join(DIR_NAME);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(root).map_err(|e| EngineError::io(root, e))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp = root.join(format!(
        ".{DIR_NAME}.tmp-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write(&tmp).and_then(|()| match std::fs::rename(&tmp, &target) {
        Ok(()) => Ok(()),
        Err(_) if target.is_dir() => Ok(()),
        Err(e) => Err(EngineError::io(&target, e)),
    });
    if tmp.exists() {
        // Best effort: a leftover temp dir is harmless, the published one is complete.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| target)
}
