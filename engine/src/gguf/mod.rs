//! GGUF checkpoints (llama.cpp's format): the container ([`file`](mod@file)), the model it
//! describes (`model`: config and weights, which stay in their block format), its tokenizer
//! (`tokenizer`), and a writer with random fixtures for tests ([`write`](mod@write),
//! [`fixture`]).
//! [`crate::Model::load_gguf`] puts the parts together into a model.
//!
//! The parser is our own rather than a crate: the format is a few hundred bytes of header over
//! a memory map, and owning it keeps tensors zero-copy views into that map. The `gguf` crates on
//! crates.io copy tensors out or are unmaintained, and candle's reader drags in a whole tensor
//! framework.

pub mod file;
pub mod fixture;
pub(crate) mod model;
pub(crate) mod tokenizer;
pub mod write;

use std::path::Path;

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
