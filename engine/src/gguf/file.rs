//! The GGUF container (versions 2 and 3): header, metadata, tensor infos, aligned data section.
//!
//! Invariants after [`GgufFile::open`]: every tensor's bytes lie inside the memory map, start at
//! a multiple of `general.alignment` from the data section, and have exactly the size its type
//! and dimensions imply; a tensor whose type pdq does not implement is kept (its name and ggml
//! type id) so the error can name it if, and only if, the model uses it. Every length read from
//! the file is checked against the bytes left before anything is allocated for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use pdq_kernels::QuantType;

use crate::error::EngineError;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value (ggml's `gguf_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The `gguf_type` id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any integer type that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry: dimensions as GGUF lists them (`ne[0]` first: the contiguous one).
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dims: Vec<u64>,
    /// `Err(id)` for a ggml type pdq does not implement.
    pub dtype: Result<QuantType, u32>,
    /// Absolute byte range in the file (only for implemented types).
    pub range: std::ops::Range<usize>,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub map: Arc<Mmap>,
}

/// A bounds-checked reader over the mapped bytes.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err(format!("truncated at byte {} (wanted {n} more)", self.at));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count of items of at least `min_item` bytes each, refused when the file cannot hold them.
    fn count(&mut self, min_item: usize) -> Result<usize, String> {
        let n = self.u64()?;
        let left = (self.b.len() - self.at) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > left {
            return Err(format!("count {n} at byte {} exceeds the file", self.at - 8));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.count(1)?;
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("string at byte {at} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        let v = match ty {
            0 => Value::U8(self.take(1)?[0]),
            1 => Value::I8(self.take(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(self.take(2)?.try_into().expect("2"))),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::String(self.string()?),
            9 if depth == 0 => {
                let ety = self.u32()?;
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(ety, depth + 1)?);
                }
                Value::Array(items)
            }
            9 => return Err("nested arrays are not supported".into()),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        };
        Ok(v)
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, EngineError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::MissingFile { path: path.to_path_buf() },
            _ => EngineError::io(path, e),
        })?;
        // SAFETY: the map is read-only and lives as long as the model; a file truncated by another
        // process while mapped is outside what any mmap-based loader (llama.cpp's too) can defend.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        let bad = |message: String| EngineError::Weights { path: path.to_path_buf(), message };
        let (version, metadata, tensors) = parse(&map).map_err(bad)?;
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, map: Arc::new(map) })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}

type Parsed = (u32, BTreeMap<String, Value>, BTreeMap<String, TensorInfo>);

fn parse(b: &[u8]) -> Result<Parsed, String> {
    let mut c = Cursor { b, at: 0 };
    if c.take(4).map_err(|_| "not a GGUF file (shorter than its magic)".to_string())? != MAGIC {
        return Err("not a GGUF file (magic is not `GGUF`)".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
    }
    let n_tensors = c.count(24)?;
    let n_kv = c.count(12)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let v = c.value(ty, 0).map_err(|e| format!("metadata `{key}`: {e}"))?;
        metadata.insert(key, v);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or("`general.alignment` must be a power of two")?,
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
        let ty = c.u32()?;
        let offset = c.u64()?;
        infos.push((name, dims, ty, offset));
    }
    let data_start = (c.at as u64).next_multiple_of(alignment);
    let mut tensors = BTreeMap::new();
    for (name, dims, ty, offset) in infos {
        if offset % alignment != 0 {
            return Err(format!("tensor `{name}` offset {offset} is not a multiple of the alignment {alignment}"));
        }
        let dtype = QuantType::from_ggml(ty).ok_or(ty);
        let mut range = 0..0;
        if let Ok(t) = dtype {
            let n =
                dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or(format!("tensor `{name}` is too large"))?;
            let bytes = t.bytes_for(n as usize).ok_or_else(|| {
                format!("tensor `{name}` of {n} {t} values is not a whole number of blocks of {}", t.block_len())
            })?;
            let start = data_start.checked_add(offset).ok_or(format!("tensor `{name}` offset overflows"))?;
            let end = start + bytes as u64;
            if end > b.len() as u64 {
                return Err(format!("tensor `{name}` ends at byte {end}, past the end of the file ({})", b.len()));
            }
            range = start as usize..end as usize;
        }
        if tensors.insert(name.clone(), TensorInfo { dims, dtype, range }).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
    }
    Ok((version, metadata, tensors))
}
