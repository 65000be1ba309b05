//! Writing GGUF version 3 files, for the fixtures tests and `scripts/golden.py` build themselves.
//! The layout is the one [`super::file`] reads: metadata in insertion order, tensor data at
//! 32-byte aligned offsets.

use std::io::Write;
use std::path::Path;

use pdq_kernels::QuantType;

use super::file::{Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::error::EngineError;

#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, QuantType, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            out.extend(items.first().map_or(Value::U8(0).type_id(), Value::type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    pub fn meta(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.push((key.to_string(), v));
        self
    }

    /// A tensor of GGUF dimensions `dims` (`ne[0]`, the contiguous one, first) and its stored bytes.
    pub fn tensor(&mut self, name: &str, dims: &[u64], dtype: QuantType, bytes: Vec<u8>) -> &mut Self {
        let n: u64 = dims.iter().product();
        assert_eq!(dtype.bytes_for(n as usize), Some(bytes.len()), "tensor `{name}`: byte count");
        self.tensors.push((name.to_string(), dims.to_vec(), dtype, bytes));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        let align = DEFAULT_ALIGNMENT as usize;
        let mut offset = 0usize;
        for (name, dims, dtype, bytes) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend((*dtype as u32).to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + bytes.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend(bytes);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<(), EngineError> {
        let mut f = std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?;
        f.write_all(&self.to_bytes()).map_err(|e| EngineError::io(path, e))
    }
}

/// Writes the first `n_layers` blocks of the GGUF model at `src` to `dst`: the same metadata
/// (block count lowered, alignment the writer's own), tokenizer, embeddings, final norm and
/// head, and the tensors of blocks `0..n_layers`, byte for byte. A real checkpoint cut down to
/// what a size limit carries (the GPU check ships SmolLM2 this way); it computes what the whole
/// model's first layers compute, so its logits are not the model's.
pub fn trim_layers(src: &Path, dst: &Path, n_layers: usize) -> Result<(), EngineError> {
    let f = super::file::GgufFile::open(src)?;
    let bad = |message: String| EngineError::Weights { path: src.to_path_buf(), message };
    let arch = f.get("general.architecture").and_then(Value::as_str).ok_or(bad("no `general.architecture`".into()))?;
    let count_key = format!("{arch}.block_count");
    let have = f.get(&count_key).and_then(Value::as_u64).ok_or(bad(format!("no `{count_key}`")))?;
    if n_layers == 0 || n_layers as u64 > have {
        return Err(bad(format!("cannot keep {n_layers} of {have} layers")));
    }
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        match k.as_str() {
            "general.alignment" => {}
            _ if *k == count_key => {
                w.meta(k, Value::U32(n_layers as u32));
            }
            _ => {
                w.meta(k, v.clone());
            }
        }
    }
    for (name, t) in &f.tensors {
        let layer = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
        if layer.is_some_and(|l| l >= n_layers) {
            continue;
        }
        let dtype =
            t.dtype.map_err(|id| bad(format!("tensor `{name}` has ggml type {id}, which pdq does not read")))?;
        w.tensor(name, &t.dims, dtype, f.map[t.range.clone()].to_vec());
    }
    w.write(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;

    /// A trimmed model is the whole model's first layers: with every layer kept it is the same
    /// model, and with fewer it loads with that many and its own (different) logits.
    #[test]
    fn trim_keeps_the_first_layers_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("pdq-gguf-trim-{}", std::process::id()));
        super::super::fixture::write(QuantType::Q4_1, &dir).unwrap();
        let full = Model::load(&dir.join("model.gguf")).unwrap();
        let layers = full.config.num_hidden_layers;
        assert!(layers >= 2, "the fixture has {layers} layers");
        let (same, one) = (dir.join("same.gguf"), dir.join("one.gguf"));
        trim_layers(&dir.join("model.gguf"), &same, layers).unwrap();
        trim_layers(&dir.join("model.gguf"), &one, 1).unwrap();
        let (same, one) = (Model::load(&same).unwrap(), Model::load(&one).unwrap());
        assert_eq!(one.config.num_hidden_layers, 1);
        let prompt = full.encode("trim me").unwrap();
        let logits = |m: &Model| m.prefill(&prompt).unwrap().1;
        assert_eq!(logits(&same), logits(&full));
        assert_ne!(logits(&one), logits(&full));
        let e = trim_layers(&dir.join("model.gguf"), &dir.join("x.gguf"), layers + 1).unwrap_err();
        assert!(e.to_string().contains(&format!("cannot keep {} of {layers} layers", layers + 1)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
