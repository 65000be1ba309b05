//! The paged KV cache: one pool of fixed-size blocks shared by every sequence of an engine.
//!
//! Invariants (checked by [`PagedKv::check`]):
//! - every block id in `0..n_blocks` is either on the free list (held by no table) or held by one
//!   or more sequences' tables, `refs[b]` counting them: forks share a prompt's full blocks
//!   ([`PagedKv::fork`]); a shared block is never written, since only slots at or past a
//!   sequence's `len` are, and a fork copies the partly filled last block it would write to;
//! - a sequence's table holds exactly `ceil(len / block_size)` blocks, in position order: position
//!   `p` lives in `table[p / block_size]`, slot `p % block_size`; slots at or past `len` are never read;
//! - `reserved = Σ max(0, ceil(max_len / block_size) − table.len())` over sequences never exceeds
//!   the free list plus the prefix cache's unheld blocks, so a sequence grows to its `max_len`
//!   without ever failing; admission only sees the unreserved ones ([`PagedKv::available_blocks`]);
//! - with the prefix cache on (`prefix.rs`), a block no table holds is either on the free list
//!   or registered in the cache's LRU, which gives blocks up only when the free list is empty.
//!
//! A block holds `block_size` token rows of K and V for every layer, laid out
//! `[layer][k|v][slot][kv_head][head_dim]`, so one block id serves all layers (as in vLLM).

mod pages;
mod prefix;

use std::collections::HashMap;

pub use pages::PageHeader;
#[cfg(feature = "cuda")] // the GPU path parses pages itself
pub(crate) use pages::HEADER_LEN;
pub use prefix::PrefixCacheStats;

use crate::error::EngineError;

pub use pdq_kernels::paged::{KvLayout, DEFAULT_BLOCK_SIZE};

/// A sequence in a [`PagedKv`]; only meaningful for the pool that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(u64);

#[derive(Debug, Clone)]
struct Seq {
    blocks: Vec<u32>,
    len: usize,
    max_len: usize,
}

impl Seq {
    fn reserved(&self, layout: &KvLayout) -> usize {
        layout.blocks_for(self.max_len).saturating_sub(self.blocks.len())
    }
}

/// The block pool, the free list and every sequence's block table. Owned by one engine thread.
#[derive(Debug, Clone)]
pub struct PagedKv {
    layout: KvLayout,
    /// Empty in a tables-only pool (its rows live on a device); see [`PagedKv::tables_only`].
    data: Vec<f32>,
    host_data: bool,
    n_blocks: usize,
    free: Vec<u32>,
    /// Tables holding each block.
    refs: Vec<u32>,
    seqs: HashMap<SeqId, Seq>,
    reserved: usize,
    next_id: u64,
    /// Off unless [`PagedKv::set_prefix_cache`] turned it on.
    cache: Option<prefix::PrefixCache>,
}

impl PagedKv {
    /// A pool of `n_blocks` zeroed blocks.
    pub fn new(layout: KvLayout, n_blocks: usize) -> PagedKv {
        assert!(layout.block_size > 0 && layout.row() > 0 && layout.n_layers > 0, "empty KV layout {layout:?}");
        Self::with_storage(layout, n_blocks, true)
    }

    /// A pool that keeps only the bookkeeping (free list, block tables, reservations) for
    /// `n_blocks` blocks whose rows live elsewhere (the CUDA KV cache). Row access, export and
    /// import panic on it; `forward_batch` on the CPU must not be given one.
    pub fn tables_only(layout: KvLayout, n_blocks: usize) -> PagedKv {
        Self::with_storage(layout, n_blocks, false)
    }

    fn with_storage(layout: KvLayout, n_blocks: usize, host_data: bool) -> PagedKv {
        assert!(layout.block_size > 0 && layout.row() > 0 && layout.n_layers > 0, "empty KV layout {layout:?}");
        let mut kv = PagedKv {
            layout,
            data: Vec::new(),
            host_data,
            n_blocks: 0,
            free: Vec::new(),
            refs: Vec::new(),
            seqs: HashMap::new(),
            reserved: 0,
            next_id: 0,
            cache: None,
        };
        kv.add_blocks(n_blocks);
        kv
    }

    /// Whether the rows live in this pool (false for [`PagedKv::tables_only`]).
    pub fn has_host_data(&self) -> bool {
        self.host_data
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Free blocks not promised to a running sequence: what admission may hand out.
    pub fn available_blocks(&self) -> usize {
        self.free.len() + self.cached_free_blocks() - self.reserved
    }

    /// Whether a new sequence of up to `max_len` tokens fits now.
    pub fn can_admit(&self, max_len: usize) -> bool {
        self.layout.blocks_for(max_len) <= self.available_blocks()
    }

    /// Grows the pool (a private, single-sequence cache grows on demand; engine pools do not).
    pub(crate) fn add_blocks(&mut self, n: usize) {
        let first = self.n_blocks() as u32;
        self.n_blocks += n;
        self.refs.resize(self.n_blocks, 0);
        if let Some(c) = self.cache.as_mut() {
            c.resize(self.n_blocks);
        }
        if !self.host_data {
            // Bookkeeping only.
        } else if self.data.is_empty() {
            // Zeroed allocation: the OS commits a big pool's pages only as blocks are written.
            self.data = vec![0f32; n * self.layout.block_floats()];
        } else {
            self.data.resize(self.data.len() + n * self.layout.block_floats(), 0.0);
        }
        // Pop order hands out low ids first, which keeps a young pool's touched memory compact.
        self.free.extend((first..first + n as u32).rev());
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Starts an empty sequence and reserves blocks for `max_len` tokens.
    pub fn add_sequence(&mut self, max_len: usize) -> Result<SeqId, EngineError> {
        let need = self.layout.blocks_for(max_len);
        if need > self.available_blocks() {
            return Err(EngineError::KvCapacity { needed: need, available: self.available_blocks() });
        }
        Ok(self.insert_seq(Vec::new(), 0, max_len))
    }

    /// Adds a sequence holding `blocks` (their references already taken) and its reservation,
    /// which the caller checked fits.
    fn insert_seq(&mut self, blocks: Vec<u32>, len: usize, max_len: usize) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let seq = Seq { blocks, len, max_len: max_len.max(len) };
        self.reserved += seq.reserved(&self.layout);
        self.seqs.insert(id, seq);
        id
    }

    /// A block for a growing sequence: a free one, else the least recently used cached one.
    /// Callers checked the capacity first.
    fn take_block(&mut self) -> u32 {
        let b = match self.free.pop() {
            Some(b) => b,
            None => self.cache.as_mut().and_then(|c| c.evict()).expect("capacity was checked"),
        };
        self.refs[b as usize] = 1;
        b
    }

    /// Returns the sequence's blocks no other sequence holds, and its unused reservation, to the
    /// pool. Unknown ids are ignored.
    pub fn release(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.remove(&id) {
            self.reserved -= seq.reserved(&self.layout);
            // Last block first, so a cached prompt's tail leaves the LRU before its head.
            for &b in seq.blocks.iter().rev() {
                self.refs[b as usize] -= 1;
                if self.refs[b as usize] == 0 && !self.cache.as_mut().is_some_and(|c| c.park(b)) {
                    self.free.push(b);
                }
            }
        }
    }

    /// Blocks a fork of a `len`-token sequence reserved for `max_len` tokens takes from the
    /// pool: all but the full blocks it shares.
    pub fn fork_cost(&self, len: usize, max_len: usize) -> usize {
        self.layout.blocks_for(max_len.max(len)) - len / self.layout.block_size
    }

    /// A new sequence with `src`'s tokens, reserved for `max_len` tokens, that shares `src`'s
    /// full blocks and gets a copy of its partly filled last block (the one both would write
    /// next). Takes [`PagedKv::fork_cost`] blocks; on error nothing changed. A tables-only pool
    /// cannot copy rows: its owner forks with [`PagedKv::fork_tables`] and copies the block.
    pub fn fork(&mut self, src: SeqId, max_len: usize) -> Result<SeqId, EngineError> {
        if !self.host_data && self.seq(src)?.len % self.layout.block_size != 0 {
            return Err(EngineError::KvCache("fork of a partly filled block in a tables-only pool".into()));
        }
        let (id, copy) = self.fork_tables(src, max_len)?;
        if let Some((from, to)) = copy {
            let floats = self.layout.block_floats();
            let (from, to) = (from as usize * floats, to as usize * floats);
            self.data.copy_within(from..from + floats, to);
        }
        Ok(id)
    }

    /// [`PagedKv::fork`]'s bookkeeping alone: returns the new sequence and, when `src`'s last
    /// block is partly filled, `(from, to)`: the block whose rows the caller must copy into
    /// the fork's fresh block before either sequence runs again.
    pub fn fork_tables(&mut self, src: SeqId, max_len: usize) -> Result<(SeqId, Option<(u32, u32)>), EngineError> {
        let (len, blocks) = {
            let s = self.seq(src)?;
            (s.len, s.blocks.clone())
        };
        let need = self.fork_cost(len, max_len);
        if need > self.available_blocks() {
            return Err(EngineError::KvCapacity { needed: need, available: self.available_blocks() });
        }
        let full = len / self.layout.block_size;
        let mut table = blocks[..full].to_vec();
        for &b in &table {
            self.refs[b as usize] += 1;
        }
        let copy = (full < blocks.len()).then(|| {
            let to = self.take_block();
            table.push(to);
            (blocks[full], to)
        });
        Ok((self.insert_seq(table, len, max_len), copy))
    }

    /// Tokens held for `id` (the position its next token takes).
    pub fn len(&self, id: SeqId) -> Result<usize, EngineError> {
        Ok(self.seq(id)?.len)
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    pub fn n_sequences(&self) -> usize {
        self.seqs.len()
    }

    fn seq(&self, id: SeqId) -> Result<&Seq, EngineError> {
        self.seqs.get(&id).ok_or_else(|| EngineError::KvCache(format!("unknown sequence {id:?}")))
    }

    /// Blocks that growing each `(sequence, new_len)` would take beyond its own reservation.
    pub fn extra_blocks(&self, grow: &[(SeqId, usize)]) -> Result<usize, EngineError> {
        let mut extra = 0;
        for &(id, new_len) in grow {
            let s = self.seq(id)?;
            extra += self.layout.blocks_for(new_len).saturating_sub(self.layout.blocks_for(s.max_len.max(s.len)));
        }
        Ok(extra)
    }

    /// Extends `id` to `new_len` tokens, taking blocks from its reservation first, then from the
    /// unreserved free blocks. All-or-nothing: on error nothing changed.
    pub(crate) fn grow(&mut self, id: SeqId, new_len: usize) -> Result<(), EngineError> {
        let extra = self.extra_blocks(&[(id, new_len)])?;
        if extra > self.available_blocks() {
            return Err(EngineError::KvCapacity { needed: extra, available: self.available_blocks() });
        }
        let layout = self.layout;
        let (before, have) = {
            let seq = &self.seqs[&id];
            (seq.reserved(&layout), seq.blocks.len())
        };
        let new: Vec<u32> = (have..layout.blocks_for(new_len)).map(|_| self.take_block()).collect();
        let seq = self.seqs.get_mut(&id).expect("checked by extra_blocks");
        seq.blocks.extend(new);
        seq.len = seq.len.max(new_len);
        self.reserved -= before - seq.reserved(&layout);
        Ok(())
    }

    /// The block ids of `id`, in position order.
    pub fn block_table(&self, id: SeqId) -> Result<&[u32], EngineError> {
        Ok(&self.seq(id)?.blocks)
    }

    /// Offset of (block, layer, k or v, slot) in `data`.
    fn offset(&self, block: u32, layer: usize, v: bool, slot: usize) -> usize {
        let l = &self.layout;
        let row = l.row();
        block as usize * l.block_floats() + ((layer * 2 + v as usize) * l.block_size + slot) * row
    }

    /// The K and V rows of `position` in `layer`, for writing. The position must be below `len`.
    pub(crate) fn row_mut(&mut self, id: SeqId, layer: usize, position: usize) -> (&mut [f32], &mut [f32]) {
        assert!(self.host_data, "row access on a tables-only pool");
        let seq = &self.seqs[&id];
        debug_assert!(position < seq.len, "row {position} past the sequence's {} tokens", seq.len);
        let bs = self.layout.block_size;
        let block = seq.blocks[position / bs];
        let (k, v) = (self.offset(block, layer, false, position % bs), self.offset(block, layer, true, position % bs));
        let row = self.layout.row();
        let (lo, hi) = self.data.split_at_mut(v);
        (&mut lo[k..k + row], &mut hi[..row])
    }

    /// Per block of `id`, its K and V rows for `layer`, in position order (for attention).
    pub(crate) fn layer_blocks(&self, id: SeqId, layer: usize) -> Vec<(&[f32], &[f32])> {
        let span = self.layout.block_size * self.layout.row();
        self.seqs[&id]
            .blocks
            .iter()
            .map(|&b| {
                let (k, v) = (self.offset(b, layer, false, 0), self.offset(b, layer, true, 0));
                (&self.data[k..k + span], &self.data[v..v + span])
            })
            .collect()
    }

    /// Verifies the invariants in the module note; for tests and debug assertions.
    pub fn check(&self) -> Result<(), String> {
        let mut held = vec![0u32; self.n_blocks()];
        let mut free = vec![false; self.n_blocks()];
        for &b in &self.free {
            match free.get_mut(b as usize) {
                None => return Err(format!("block {b} is out of range")),
                Some(true) => return Err(format!("block {b} is free twice")),
                Some(f) => *f = true,
            }
        }
        let mut reserved = 0;
        for (&id, s) in &self.seqs {
            if s.blocks.len() != self.layout.blocks_for(s.len) {
                return Err(format!("{id:?} holds {} blocks for {} tokens", s.blocks.len(), s.len));
            }
            reserved += s.reserved(&self.layout);
            for &b in &s.blocks {
                let Some(h) = held.get_mut(b as usize) else { return Err(format!("block {b} is out of range")) };
                *h += 1;
            }
        }
        for (&id, s) in &self.seqs {
            // Only full blocks are shared: a partly filled one is written next.
            if let Some(&last) = s.blocks.last().filter(|_| s.len % self.layout.block_size != 0) {
                if held[last as usize] > 1 {
                    return Err(format!("block {last} is shared but partly filled in {id:?}"));
                }
            }
        }
        let cached = |b: usize| self.cache.as_ref().is_some_and(|c| c.entries[b].as_ref().is_some());
        for b in 0..self.n_blocks() {
            match (free[b], held[b], self.refs[b]) {
                (true, 0, 0) => {}
                // Held by no table and not free: parked in the prefix cache's LRU.
                (false, 0, 0) if cached(b) => {}
                (false, h, r) if h > 0 && h == r => {}
                (f, h, r) => return Err(format!("block {b}: free {f}, held by {h} tables, refs {r}")),
            }
        }
        if let Some(c) = &self.cache {
            c.check(&self.refs, &free)?;
        }
        let spare = self.free.len() + self.cached_free_blocks();
        if reserved != self.reserved || reserved > spare {
            return Err(format!("reserved {} (recount {reserved}) vs {spare} free or cached", self.reserved));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
