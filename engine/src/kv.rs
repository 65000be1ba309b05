//! A single sequence's KV cache: one sequence in a private [`PagedKv`] that grows on demand, for
//! callers that run one request at a time ([`crate::generate`], tests, tools). Engines that
//! batch share one fixed [`PagedKv`] instead.
//!
//! Invariants: the private pool holds exactly this one sequence; its bytes are the page format
//! of `paged/pages.rs`, so a `KvCache` and a shared pool exchange KV freely.

use std::fmt;

use crate::error::EngineError;
use crate::paged::{KvLayout, PageHeader, PagedKv, SeqId};

#[derive(Clone)]
pub struct KvCache {
    pool: PagedKv,
    seq: SeqId,
}

impl KvCache {
    pub(crate) fn new(layout: KvLayout) -> KvCache {
        let mut pool = PagedKv::new(layout, 0);
        let seq = pool.add_sequence(0).expect("a zero-token reservation always fits");
        KvCache { pool, seq }
    }

    /// Number of tokens cached (the position the next token will take).
    pub fn len(&self) -> usize {
        self.pool.len(self.seq).expect("the cache's own sequence exists")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn n_layers(&self) -> usize {
        self.pool.layout().n_layers
    }

    pub fn n_kv_heads(&self) -> usize {
        self.pool.layout().n_kv_heads
    }

    pub fn head_dim(&self) -> usize {
        self.pool.layout().head_dim
    }

    pub fn layout(&self) -> &KvLayout {
        self.pool.layout()
    }

    /// Exact length of [`KvCache::to_bytes`]'s output (header included).
    pub fn byte_len(&self) -> usize {
        PageHeader::byte_len(self.pool.layout(), self.len())
    }

    /// The sequence as KV pages.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.pool.export(self.seq).expect("the cache's own sequence exists")
    }

    /// Reads pages into a fresh cache with the sender's block size.
    pub fn from_bytes(b: &[u8]) -> Result<KvCache, EngineError> {
        let h = PageHeader::parse(b)?;
        let mut pool = PagedKv::new(h.layout, h.layout.blocks_for(h.len));
        let seq = pool.import(b, 0)?;
        Ok(KvCache { pool, seq })
    }

    /// Makes room for `extra` more tokens and returns the pool and sequence to run them on.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<(&mut PagedKv, SeqId), EngineError> {
        let need = self.pool.extra_blocks(&[(self.seq, self.len() + extra)])?;
        let short = need.saturating_sub(self.pool.available_blocks());
        self.pool.add_blocks(short);
        Ok((&mut self.pool, self.seq))
    }
}

/// Equal when the geometry, block size and every cached row are equal.
impl PartialEq for KvCache {
    fn eq(&self, other: &KvCache) -> bool {
        self.layout() == other.layout() && self.to_bytes() == other.to_bytes()
    }
}

impl fmt::Debug for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache").field("layout", self.layout()).field("len", &self.len()).finish()
    }
}
