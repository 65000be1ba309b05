//! KV pages to and from the device, in the page format of `paged/pages.rs` (f32 values).
//!
//! Export gathers the sequence's blocks of every layer's K and V on the device into one
//! contiguous staging buffer (`[layer][k|v][block][slot][row]`), copies it to the host once,
//! and writes pages. Import re-slots the received rows into this pool's block size on the host,
//! copies once, and scatters the blocks on the device. Both copies go through the executor's
//! staging buffers (`staging.rs`), whose host side is pinned (page-locked) memory, so the copy
//! engine moves it by DMA without the driver's pageable bounce buffer.

use half::bf16;

use super::dev_err;
use super::forward::{GpuKv, GpuModel};
use crate::error::EngineError;
use crate::paged::{KvLayout, PageHeader, SeqId, HEADER_LEN};

impl GpuModel {
    /// `id`'s KV as pages (header and layout as [`crate::PagedKv::export`]).
    pub fn export_pages(&self, kv: &mut GpuKv, id: SeqId) -> Result<Vec<u8>, EngineError> {
        let layout = *kv.tables.layout();
        let len = kv.tables.len(id)?;
        let table: Vec<i32> = kv.tables.block_table(id)?.iter().map(|&b| b as i32).collect();
        let (nb, be) = (table.len(), layout.block_elems());
        let mut out = Vec::with_capacity(PageHeader::byte_len(&layout, len));
        PageHeader { layout, len }.write(&mut out);
        if nb == 0 {
            return Ok(out);
        }
        let cuda = self.backend();
        let ids = cuda.stream().clone_htod(&table).map_err(dev_err)?;
        let n = layout.n_layers * 2 * nb * be;
        let GpuKv { k, v, staging, .. } = kv;
        let dev = staging.device(cuda, n)?;
        for layer in 0..layout.n_layers {
            for (kv_i, cache) in [&k[layer], &v[layer]].into_iter().enumerate() {
                let at = (layer * 2 + kv_i) * nb * be;
                let mut dst = dev.slice_mut(at..at + nb * be);
                cuda.kv_gather_blocks(&cache.as_view(), &ids.as_view(), be, &mut dst)?;
            }
        }
        let host = staging.download(cuda, n)?;
        write_rows(&layout, len, nb, host, &mut out);
        Ok(out)
    }

    /// Writes received pages into a new sequence of `kv` reserved for `max_len` tokens (at least
    /// the pages' length). Validates everything before allocating.
    pub fn import_pages(&self, kv: &mut GpuKv, bytes: &[u8], max_len: usize) -> Result<SeqId, EngineError> {
        let h = PageHeader::parse(bytes)?;
        let (mine, theirs) = (*kv.tables.layout(), h.layout);
        if (mine.n_layers, mine.n_kv_heads, mine.head_dim) != (theirs.n_layers, theirs.n_kv_heads, theirs.head_dim) {
            return Err(EngineError::KvCache(format!(
                "pages have (layers {}, kv heads {}, head_dim {}), this model needs ({}, {}, {})",
                theirs.n_layers, theirs.n_kv_heads, theirs.head_dim, mine.n_layers, mine.n_kv_heads, mine.head_dim
            )));
        }
        let id = kv.tables.add_sequence(max_len.max(h.len))?;
        kv.tables.grow(id, h.len).expect("the reservation covers the pages");
        let table: Vec<i32> = kv.tables.block_table(id)?.iter().map(|&b| b as i32).collect();
        let nb = table.len();
        if nb == 0 {
            return Ok(id);
        }
        let scattered = self.scatter_pages(kv, &mine, &h, bytes, &table);
        if scattered.is_err() {
            kv.tables.release(id);
        }
        scattered.map(|()| id)
    }

    fn scatter_pages(
        &self,
        kv: &mut GpuKv,
        mine: &KvLayout,
        h: &PageHeader,
        bytes: &[u8],
        table: &[i32],
    ) -> Result<(), EngineError> {
        let cuda = self.backend();
        let (nb, be) = (table.len(), mine.block_elems());
        let ids = cuda.stream().clone_htod(table).map_err(dev_err)?;
        let GpuKv { k, v, staging, .. } = kv;
        let staged =
            staging.upload(cuda, mine.n_layers * 2 * nb * be, |host| fill_staging(mine, h, bytes, nb, host))?;
        for layer in 0..mine.n_layers {
            for kv_i in 0..2 {
                let at = (layer * 2 + kv_i) * nb * be;
                let cache = if kv_i == 0 { &mut k[layer] } else { &mut v[layer] };
                cuda.kv_scatter_blocks(&mut cache.as_view_mut(), &staged.slice(at..at + nb * be), &ids.as_view(), be)?;
            }
        }
        Ok(())
    }

    /// Copies block `from` into block `to` in every layer's K and V (a fork's private copy of
    /// its source's partly filled last block).
    pub(crate) fn copy_block(&self, kv: &mut GpuKv, from: u32, to: u32) -> Result<(), EngineError> {
        let cuda = self.backend();
        let layout = *kv.tables.layout();
        let be = layout.block_elems();
        let s = cuda.stream();
        let (src, dst) = (s.clone_htod(&[from as i32]).map_err(dev_err)?, s.clone_htod(&[to as i32]).map_err(dev_err)?);
        let GpuKv { k, v, staging, .. } = kv;
        let tmp = staging.device(cuda, be)?;
        for cache in k.iter_mut().chain(v.iter_mut()) {
            cuda.kv_gather_blocks(&cache.as_view(), &src.as_view(), be, &mut tmp.slice_mut(..be))?;
            cuda.kv_scatter_blocks(&mut cache.as_view_mut(), &tmp.slice(..be), &dst.as_view(), be)?;
        }
        Ok(())
    }
}

/// Appends the filled rows of a staging copy (`[layer][k|v][block][slot][row]`, `nb` blocks) to
/// `out` in page order: per block, per layer, K rows then V rows.
pub(crate) fn write_rows(layout: &KvLayout, len: usize, nb: usize, host: &[bf16], out: &mut Vec<u8>) {
    let (row, bs) = (layout.row(), layout.block_size);
    let be = bs * row;
    for b in 0..nb {
        let rows = bs.min(len - b * bs);
        for layer in 0..layout.n_layers {
            for kv_i in 0..2 {
                let at = ((layer * 2 + kv_i) * nb + b) * be;
                for x in &host[at..at + rows * row] {
                    out.extend_from_slice(&x.to_f32().to_le_bytes());
                }
            }
        }
    }
}

/// Fills `host`, the staging copy for `nb` blocks of `mine` (block size included), with
/// validated pages `bytes` (header `h`, any sender block size): position `p` goes to block
/// `p / bs`, slot `p % bs`; unfilled slots are zero.
pub(crate) fn fill_staging(mine: &KvLayout, h: &PageHeader, bytes: &[u8], nb: usize, host: &mut [bf16]) {
    let (row, bs) = (mine.row(), mine.block_size);
    let be = bs * row;
    let theirs = h.layout;
    assert_eq!(host.len(), mine.n_layers * 2 * nb * be, "staging sized for {nb} blocks");
    host.fill(bf16::ZERO);
    let mut floats =
        bytes[HEADER_LEN..].chunks_exact(4).map(|c| bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    for tb in 0..theirs.blocks_for(h.len) {
        let first = tb * theirs.block_size;
        let rows = theirs.block_size.min(h.len - first);
        for layer in 0..mine.n_layers {
            for kv_i in 0..2 {
                for pos in first..first + rows {
                    let at = ((layer * 2 + kv_i) * nb + pos / bs) * be + (pos % bs) * row;
                    for (d, x) in host[at..at + row].iter_mut().zip(floats.by_ref().take(row)) {
                        *d = x;
                    }
                }
            }
        }
    }
}
