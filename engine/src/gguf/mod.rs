//! GGUF checkpoints (llama.cpp's format): the container ([`file`]), the model it describes
//! ([`model`]: config and weights, which stay in their block format), its tokenizer
//! ([`tokenizer`]), and a writer with random fixtures for tests ([`write`], [`fixture`]).
//!
//! The parser is our own rather than a crate: the format is a few hundred bytes of header over
//! a memory map, and owning it keeps tensors zero-copy views into that map. The `gguf` crates on
//! crates.io copy tensors out or are unmaintained, and candle's reader drags in a whole tensor
//! framework.

pub mod file;
pub mod fixture;
mod model;
mod tokenizer;
pub mod write;

use std::path::Path;

use pdq_kernels::Backend;

use crate::error::EngineError;
use crate::model::Model;
use crate::text::TextCodec;

/// Whether `path` names a GGUF file: a file ending in `.gguf` (a bad magic is then reported on
/// open), or any file starting with the GGUF magic (Ollama's blobs have no extension).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == file::MAGIC
}

impl Model {
    /// Loads a `.gguf` file: metadata, tokenizer and chat template, and quantized weights kept
    /// in their blocks, memory-mapped.
    pub fn load_gguf(path: &Path) -> Result<Model, EngineError> {
        let f = file::GgufFile::open(path)?;
        let config = model::config(&f)?;
        let (tokenizer, spec) = tokenizer::build(&f)?;
        let text = TextCodec::new(tokenizer, spec)?;
        let weights = model::weights(&f, &config)?;
        let mut inv_freq = config.rope_inv_freq();
        if let Some(factors) = model::rope_factors(&f, config.head_dim)? {
            // llama.cpp divides each frequency by its factor (Llama 3.1's scaling, precomputed).
            inv_freq.iter_mut().zip(&factors).for_each(|(f, s)| *f = (*f as f64 / *s as f64) as f32);
        }
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        tracing::debug!(model = %name, version = f.version, layers = config.num_hidden_layers,
            embed = %weights.embed.dtype_name(), weight_bytes = weights.stored_bytes(), "GGUF model loaded");
        Ok(Model { config, name, backend: Backend::cpu(), weights, inv_freq, text })
    }
}
