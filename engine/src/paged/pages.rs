//! The KV page format: how a sequence's blocks travel between a prefill and a decode engine.
//!
//! Self-describing little-endian bytes; the first 28 bytes keep the v1 (contiguous) layout:
//!
//! ```text
//! magic "PDQK" | version u32 = 2 | n_layers u32 | n_kv_heads u32 | head_dim u32 | len u64
//!   | block_size u32 | dtype u32 (1 = f32)
//! then for each block of the sequence, in position order, for each layer:
//!   K rows, then V rows, each row n_kv_heads * head_dim values of `dtype`;
//!   a block carries min(block_size, len - block * block_size) rows (the filled ones only).
//! ```
//! Invariants: [`PageHeader::parse`] accepts only a payload of exactly the size its header
//! announces (a truncated transfer is an error, never a shorter cache), with every size checked
//! for overflow; the receiving pool may use another block size, since rows are re-slotted one
//! by one on import.

use super::{KvLayout, PagedKv, SeqId};
use crate::error::EngineError;

const MAGIC: &[u8; 4] = b"PDQK";
const VERSION: u32 = 2;
const DTYPE_F32: u32 = 1;
pub(crate) const HEADER_LEN: usize = 4 + 4 * 4 + 8 + 4 + 4;

/// A validated page header; `layout.block_size` is the sender's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub layout: KvLayout,
    /// Tokens in the sequence.
    pub len: usize,
}

impl PageHeader {
    /// Exact byte length of pages for `len` tokens of `layout` (header included).
    pub fn byte_len(layout: &KvLayout, len: usize) -> usize {
        HEADER_LEN + layout.n_layers * 2 * len * layout.row() * 4
    }

    /// Checks magic, version, dtype, sizes and that the payload is exactly the announced size.
    pub fn parse(b: &[u8]) -> Result<PageHeader, EngineError> {
        let err = |m: String| EngineError::KvCache(m);
        if b.len() < HEADER_LEN {
            return Err(err(format!("{} bytes is shorter than the {HEADER_LEN}-byte header", b.len())));
        }
        if &b[..4] != MAGIC {
            return Err(err(format!("bad magic {:?}, expected {MAGIC:?}", &b[..4])));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
        let version = u32_at(4) as u32;
        if version != VERSION {
            return Err(err(format!("unsupported version {version}, expected {VERSION}")));
        }
        let (n_layers, n_kv_heads, head_dim) = (u32_at(8), u32_at(12), u32_at(16));
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&b[20..28]);
        let len = u64::from_le_bytes(len8);
        let (block_size, dtype) = (u32_at(28), u32_at(32) as u32);
        if dtype != DTYPE_F32 {
            return Err(err(format!("unsupported dtype {dtype}, expected {DTYPE_F32} (f32)")));
        }
        if n_layers == 0 || n_kv_heads == 0 || head_dim == 0 || block_size == 0 {
            return Err(err(format!(
                "header has zero size (layers {n_layers}, kv heads {n_kv_heads}, head_dim {head_dim}, block size {block_size})"
            )));
        }
        // Checked so a hostile header cannot overflow into a small allocation.
        let payload = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_mul(n_kv_heads))
            .and_then(|x| x.checked_mul(head_dim))
            .and_then(|x| x.checked_mul(n_layers))
            .and_then(|x| x.checked_mul(2 * 4));
        let Some(payload) = payload else {
            return Err(err(format!("header size overflows (len {len})")));
        };
        if b.len() - HEADER_LEN != payload {
            return Err(err(format!(
                "payload is {} bytes, header announces {payload} (layers {n_layers}, kv heads {n_kv_heads}, head_dim {head_dim}, len {len})",
                b.len() - HEADER_LEN
            )));
        }
        let layout = KvLayout { n_layers, n_kv_heads, head_dim, block_size };
        Ok(PageHeader { layout, len: len as usize })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let l = &self.layout;
        out.extend_from_slice(MAGIC);
        for v in [VERSION, l.n_layers as u32, l.n_kv_heads as u32, l.head_dim as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.len as u64).to_le_bytes());
        out.extend_from_slice(&(l.block_size as u32).to_le_bytes());
        out.extend_from_slice(&DTYPE_F32.to_le_bytes());
    }
}

impl PagedKv {
    /// Serializes `id`'s blocks as pages (see the module note).
    pub fn export(&self, id: SeqId) -> Result<Vec<u8>, EngineError> {
        let len = self.len(id)?;
        if !self.host_data {
            return Err(EngineError::KvCache("export from a tables-only pool: its rows live on the device".into()));
        }
        let layout = self.layout;
        let mut out = Vec::with_capacity(PageHeader::byte_len(&layout, len));
        PageHeader { layout, len }.write(&mut out);
        let row = layout.row();
        for (b, &block) in self.seq(id)?.blocks.iter().enumerate() {
            let rows = layout.block_size.min(len - b * layout.block_size);
            for layer in 0..layout.n_layers {
                for v in [false, true] {
                    let at = self.offset(block, layer, v, 0);
                    for x in &self.data[at..at + rows * row] {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Writes received pages straight into blocks of a new sequence reserved for `max_len`
    /// tokens (at least the pages' own length). Validates everything before allocating.
    pub fn import(&mut self, bytes: &[u8], max_len: usize) -> Result<SeqId, EngineError> {
        let h = PageHeader::parse(bytes)?;
        if !self.host_data {
            return Err(EngineError::KvCache("import into a tables-only pool: its rows live on the device".into()));
        }
        let (mine, theirs) = (self.layout, h.layout);
        if (mine.n_layers, mine.n_kv_heads, mine.head_dim) != (theirs.n_layers, theirs.n_kv_heads, theirs.head_dim) {
            return Err(EngineError::KvCache(format!(
                "pages have (layers {}, kv heads {}, head_dim {}), this model needs ({}, {}, {})",
                theirs.n_layers, theirs.n_kv_heads, theirs.head_dim, mine.n_layers, mine.n_kv_heads, mine.head_dim
            )));
        }
        let id = self.add_sequence(max_len.max(h.len))?;
        self.grow(id, h.len).expect("the reservation covers the pages");
        let row = mine.row();
        let mut floats = bytes[HEADER_LEN..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        for b in 0..theirs.blocks_for(h.len) {
            let first = b * theirs.block_size;
            let rows = theirs.block_size.min(h.len - first);
            for layer in 0..mine.n_layers {
                for v in [false, true] {
                    for p in first..first + rows {
                        let (k_row, v_row) = self.row_mut(id, layer, p);
                        let dst = if v { v_row } else { k_row };
                        for (d, x) in dst.iter_mut().zip(floats.by_ref().take(row)) {
                            *d = x;
                        }
                    }
                }
            }
        }
        Ok(id)
    }
}
