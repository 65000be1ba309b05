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
