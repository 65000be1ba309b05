//! Per-sequence KV cache and its wire format.
//!
//! Invariants: every layer holds exactly `len * n_kv_heads * head_dim` keys and as many values,
//! laid out `[tokens, n_kv_heads, head_dim]`, with RoPE already applied to the keys; row `t` is
//! the token at position `t`. The byte format is self-describing little-endian:
//!
//! ```text
//! magic "PDQK" | version u32 | n_layers u32 | n_kv_heads u32 | head_dim u32 | len u64
//! then for each layer: K (len*n_kv_heads*head_dim f32) followed by V (same size)
//! ```
//! `from_bytes` checks the magic, the version and that the payload is exactly the size the
//! header announces, so a truncated transfer is an error, never a shorter cache.

use crate::error::EngineError;

const MAGIC: &[u8; 4] = b"PDQK";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 4 + 4 * 4 + 8;

#[derive(Debug, Clone, PartialEq)]
pub struct KvCache {
    n_kv_heads: usize,
    head_dim: usize,
    len: usize,
    layers: Vec<LayerKv>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub(crate) fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize) -> KvCache {
        let layers = (0..n_layers).map(|_| LayerKv { k: Vec::new(), v: Vec::new() }).collect();
        KvCache { n_kv_heads, head_dim, len: 0, layers }
    }

    /// Number of tokens cached (the position the next token will take).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Exact length of [`KvCache::to_bytes`]'s output (header included), for budgets and
    /// preallocation.
    pub fn byte_len(&self) -> usize {
        HEADER_LEN + self.layers.len() * 2 * self.len * self.n_kv_heads * self.head_dim * 4
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.byte_len());
        b.extend_from_slice(MAGIC);
        for v in [VERSION, self.layers.len() as u32, self.n_kv_heads as u32, self.head_dim as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.len as u64).to_le_bytes());
        for l in &self.layers {
            for x in l.k.iter().chain(&l.v) {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<KvCache, EngineError> {
        let err = |m: String| EngineError::KvCache(m);
        if b.len() < HEADER_LEN {
            return Err(err(format!("{} bytes is shorter than the {HEADER_LEN}-byte header", b.len())));
        }
        if &b[..4] != MAGIC {
            return Err(err(format!("bad magic {:?}, expected {MAGIC:?}", &b[..4])));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32_at(4);
        if version != VERSION {
            return Err(err(format!("unsupported version {version}, expected {VERSION}")));
        }
        let (n_layers, n_kv_heads, head_dim) = (u32_at(8) as usize, u32_at(12) as usize, u32_at(16) as usize);
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&b[20..28]);
        let len = u64::from_le_bytes(len8);
        if n_layers == 0 || n_kv_heads == 0 || head_dim == 0 {
            return Err(err(format!(
                "header has zero size (layers {n_layers}, kv heads {n_kv_heads}, head_dim {head_dim})"
            )));
        }
        // Checked so a hostile header cannot overflow into a small allocation.
        let per_layer =
            usize::try_from(len).ok().and_then(|l| l.checked_mul(n_kv_heads)).and_then(|x| x.checked_mul(head_dim));
        let payload = per_layer.and_then(|x| x.checked_mul(n_layers * 2 * 4));
        let (Some(per_layer), Some(payload)) = (per_layer, payload) else {
            return Err(err(format!("header size overflows (len {len})")));
        };
        if b.len() - HEADER_LEN != payload {
            return Err(err(format!(
                "payload is {} bytes, header announces {payload} (layers {n_layers}, kv heads {n_kv_heads}, head_dim {head_dim}, len {len})",
                b.len() - HEADER_LEN
            )));
        }
        let mut floats = b[HEADER_LEN..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let layers = (0..n_layers)
            .map(|_| LayerKv {
                k: floats.by_ref().take(per_layer).collect(),
                v: floats.by_ref().take(per_layer).collect(),
            })
            .collect();
        Ok(KvCache { n_kv_heads, head_dim, len: len as usize, layers })
    }

    pub(crate) fn layer_mut(&mut self, l: usize) -> &mut LayerKv {
        &mut self.layers[l]
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Checks the cache was built for a model with this geometry.
    pub(crate) fn check_shape(&self, n_layers: usize, n_kv_heads: usize, head_dim: usize) -> Result<(), EngineError> {
        if (self.layers.len(), self.n_kv_heads, self.head_dim) != (n_layers, n_kv_heads, head_dim) {
            return Err(EngineError::KvCache(format!(
                "cache has (layers {}, kv heads {}, head_dim {}), model needs ({n_layers}, {n_kv_heads}, {head_dim})",
                self.layers.len(),
                self.n_kv_heads,
                self.head_dim
            )));
        }
        Ok(())
    }
}
