//! The prefix cache of a [`PagedKv`]: full prompt blocks kept after their sequences end, so a
//! later prompt with the same start reuses their KV instead of computing it again.
//!
//! Invariants (checked by [`PagedKv::check`]):
//! - a block is *registered* when `entries[b]` is set; its key is (its parent's serial, its
//!   `block_size` tokens), the parent being the block before it in the prompt (serial 0 for the
//!   first). Serials are never reused, so the key names the whole token prefix exactly, without
//!   hash collisions, and a child whose parent was evicted can never match again;
//! - only full blocks whose KV a forward already wrote are registered, and a full block is never
//!   written again, so a registered block's rows are fixed for as long as it stays registered;
//! - a registered block is either held by sequences (`refs > 0`) or in the LRU (`refs == 0`),
//!   never on the free list; the free list holds only unregistered blocks, and the LRU is
//!   evicted (oldest first) only when the free list is empty;
//! - the pool belongs to one model and one activation mode (one executor), so the key needs
//!   nothing else to pin what the KV depends on; positions are implied by the chain.
//!
//! Exactness rests on the CPU forward being chunk-invariant (`forward.rs`): a block's KV does not
//! depend on how its prompt was split into steps, so a hit reads the bits a cold run would write.

use std::collections::{BTreeMap, HashMap};

use super::{PagedKv, SeqId};
use crate::error::EngineError;

/// A registered block's identity: the serial of the block before it and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BlockKey {
    parent: u64,
    tokens: Box<[u32]>,
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    key: BlockKey,
    serial: u64,
    /// The block's place in the LRU while no sequence holds it.
    lru_tick: Option<u64>,
}

/// Counters since the pool was made: prompt tokens looked up, tokens found, blocks evicted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    pub queried_tokens: u64,
    pub hit_tokens: u64,
    pub evicted_blocks: u64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct PrefixCache {
    index: HashMap<BlockKey, u32>,
    /// Per block id; `None` when the block is not registered.
    pub(super) entries: Vec<Option<Entry>>,
    /// Registered blocks no sequence holds, oldest first.
    pub(super) lru: BTreeMap<u64, u32>,
    next_serial: u64,
    next_tick: u64,
    stats: PrefixCacheStats,
}

/// What the cache holds of a prompt.
#[derive(Debug, Clone, Default)]
pub(super) struct Lookup {
    /// The cached blocks of the prompt's longest cached prefix, in position order, always
    /// leaving at least one prompt token to compute.
    pub(super) blocks: Vec<u32>,
    /// How many of `blocks` some sequence holds already (the others come out of the LRU).
    pub(super) held: usize,
}

impl PrefixCache {
    pub(super) fn resize(&mut self, n_blocks: usize) {
        self.entries.resize(n_blocks, None);
    }

    fn key(parent: u64, tokens: &[u32]) -> BlockKey {
        BlockKey { parent, tokens: tokens.into() }
    }

    /// Called when a block's last holder lets go: a registered block joins the LRU (true), an
    /// unregistered one goes back to the free list (false).
    pub(super) fn park(&mut self, b: u32) -> bool {
        let Some(e) = self.entries[b as usize].as_mut() else { return false };
        let tick = self.next_tick;
        self.next_tick += 1;
        e.lru_tick = Some(tick);
        self.lru.insert(tick, b);
        true
    }

    /// Takes a cached block out of the LRU because a sequence holds it again.
    fn unpark(&mut self, b: u32) {
        if let Some(tick) = self.entries[b as usize].as_mut().and_then(|e| e.lru_tick.take()) {
            self.lru.remove(&tick);
        }
    }

    /// Forgets the least recently used free block and returns it, unregistered.
    pub(super) fn evict(&mut self) -> Option<u32> {
        let (_, b) = self.lru.pop_first()?;
        let e = self.entries[b as usize].take().expect("an LRU block is registered");
        self.index.remove(&e.key);
        self.stats.evicted_blocks += 1;
        Some(b)
    }

    pub(super) fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// The cached full blocks that start `prompt`, leaving its last token uncached so that a
    /// step still produces the logits the first output token is drawn from.
    pub(super) fn lookup(&self, prompt: &[u32], block_size: usize, refs: &[u32]) -> Lookup {
        let mut found = Lookup::default();
        let mut parent = 0;
        for tokens in prompt[..prompt.len().saturating_sub(1)].chunks_exact(block_size) {
            let Some(&b) = self.index.get(&Self::key(parent, tokens)) else { break };
            found.blocks.push(b);
            found.held += (refs[b as usize] > 0) as usize;
            parent = self.entries[b as usize].as_ref().expect("indexed blocks are registered").serial;
        }
        found
    }

    /// Whether `prompt`'s first uncached full block is `other`'s too, i.e. running both in one
    /// step would compute the same block twice. Both start from their [`PrefixCache::lookup`].
    pub(super) fn next_block_key(&self, prompt: &[u32], cached: &[u32], block_size: usize) -> Option<BlockKey> {
        let start = cached.len() * block_size;
        let tokens = prompt.get(start..start + block_size)?;
        let parent = cached.last().map_or(0, |&b| self.entries[b as usize].as_ref().expect("cached").serial);
        Some(Self::key(parent, tokens))
    }

    fn record(&mut self, queried: usize, hit: usize) {
        self.stats.queried_tokens += queried as u64;
        self.stats.hit_tokens += hit as u64;
    }

    /// Registers `blocks` (a sequence's table) as holding `prompt`'s full blocks, from the first
    /// one not registered yet. Stops at a block whose key another block already has (the same
    /// prefix computed twice in one step): that copy stays private and is freed as usual.
    fn register(&mut self, blocks: &[u32], prompt: &[u32], block_size: usize) {
        let mut parent = 0;
        for (&b, tokens) in blocks.iter().zip(prompt.chunks_exact(block_size)) {
            if let Some(e) = &self.entries[b as usize] {
                debug_assert_eq!(e.key, Self::key(parent, tokens), "block {b} is registered for other tokens");
                parent = e.serial;
                continue;
            }
            let key = Self::key(parent, tokens);
            if self.index.contains_key(&key) {
                return;
            }
            self.next_serial += 1;
            parent = self.next_serial;
            self.index.insert(key.clone(), b);
            self.entries[b as usize] = Some(Entry { key, serial: parent, lru_tick: None });
        }
    }

    /// The cache's own invariants against the pool's reference counts.
    pub(super) fn check(&self, refs: &[u32], free: &[bool]) -> Result<(), String> {
        if self.index.len() != self.entries.iter().flatten().count() {
            return Err(format!(
                "{} keys for {} registered blocks",
                self.index.len(),
                self.entries.iter().flatten().count()
            ));
        }
        for (&tick, &b) in &self.lru {
            let e = self.entries[b as usize].as_ref().ok_or(format!("LRU block {b} is not registered"))?;
            if e.lru_tick != Some(tick) || refs[b as usize] != 0 {
                return Err(format!("LRU block {b}: tick {:?} vs {tick}, refs {}", e.lru_tick, refs[b as usize]));
            }
        }
        for (b, e) in self.entries.iter().enumerate() {
            let Some(e) = e else { continue };
            if self.index.get(&e.key) != Some(&(b as u32)) {
                return Err(format!("block {b} is registered but its key names another block"));
            }
            if free[b] || (refs[b] == 0) != e.lru_tick.is_some() {
                return Err(format!(
                    "registered block {b}: free {}, refs {}, in LRU {}",
                    free[b],
                    refs[b],
                    e.lru_tick.is_some()
                ));
            }
        }
        Ok(())
    }
}

impl PagedKv {
    /// Turns the prefix cache on (keeping nothing yet) or off (forgetting what it kept).
    pub fn set_prefix_cache(&mut self, on: bool) {
        match (on, self.cache.is_some()) {
            (true, false) => {
                let mut cache = PrefixCache::default();
                cache.resize(self.n_blocks);
                self.cache = Some(cache);
            }
            (false, true) => {
                let cache = self.cache.take().expect("checked");
                self.free.extend(cache.lru.into_values());
            }
            _ => {}
        }
    }

    pub fn prefix_cache_enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// The cache's counters; `None` when it is off.
    pub fn prefix_cache_stats(&self) -> Option<PrefixCacheStats> {
        self.cache.as_ref().map(PrefixCache::stats)
    }

    /// Registered blocks no sequence holds (free for admission, evicted only when needed).
    pub fn cached_free_blocks(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.lru.len())
    }

    fn lookup(&self, prompt: &[u32]) -> Lookup {
        match &self.cache {
            Some(c) => c.lookup(prompt, self.layout.block_size, &self.refs),
            None => Lookup::default(),
        }
    }

    /// Blocks [`PagedKv::add_prompt`] would take from the available ones now: those for
    /// `max_len` tokens, less the cached prompt blocks other sequences already hold.
    pub fn prompt_cost(&self, prompt: &[u32], max_len: usize) -> usize {
        self.layout.blocks_for(max_len.max(prompt.len())) - self.lookup(prompt).held
    }

    /// Prompt tokens [`PagedKv::add_prompt`] would find cached now.
    pub fn cached_prefix_len(&self, prompt: &[u32]) -> usize {
        self.lookup(prompt).blocks.len() * self.layout.block_size
    }

    /// Whether running prompts `a` and `b` in the same step would compute one of their uncached
    /// full blocks twice (they share it, and it is not cached): then `b` gains by waiting for
    /// `a`'s blocks to be registered. False when the cache is off.
    pub fn would_share_uncached_block(&self, a: &[u32], b: &[u32]) -> bool {
        let Some(c) = &self.cache else { return false };
        let bs = self.layout.block_size;
        let (la, lb) = (self.lookup(a), self.lookup(b));
        match (c.next_block_key(a, &la.blocks, bs), c.next_block_key(b, &lb.blocks, bs)) {
            // A block already cached is not computed for lack of it (the last-token rule).
            (Some(ka), Some(kb)) => ka == kb && !c.index.contains_key(&ka),
            _ => false,
        }
    }

    /// Starts a sequence for `prompt`, reserved for `max_len` tokens, that already holds the
    /// longest cached prefix of the prompt's full blocks (at most all but its last token).
    /// Returns the sequence and how many prompt tokens it holds: the caller runs only
    /// `prompt[cached..]`. Takes [`PagedKv::prompt_cost`] blocks; on error nothing changed.
    pub fn add_prompt(&mut self, prompt: &[u32], max_len: usize) -> Result<(SeqId, usize), EngineError> {
        let max_len = max_len.max(prompt.len());
        let found = self.lookup(prompt);
        let need = self.layout.blocks_for(max_len) - found.held;
        if need > self.available_blocks() {
            return Err(EngineError::KvCapacity { needed: need, available: self.available_blocks() });
        }
        let cached = found.blocks.len() * self.layout.block_size;
        if let Some(c) = self.cache.as_mut() {
            c.record(prompt.len(), cached);
            for &b in &found.blocks {
                c.unpark(b);
            }
        }
        for &b in &found.blocks {
            self.refs[b as usize] += 1;
        }
        Ok((self.insert_seq(found.blocks, cached, max_len), cached))
    }

    /// Makes the full blocks of `id` that hold `prompt` (its first tokens, already computed)
    /// available to later prompts. Blocks past the sequence's length, and a partly filled last
    /// block, are left alone. Does nothing when the cache is off.
    pub fn register_prompt(&mut self, id: SeqId, prompt: &[u32]) -> Result<(), EngineError> {
        let bs = self.layout.block_size;
        let seq = self.seqs.get(&id).ok_or_else(|| EngineError::KvCache(format!("unknown sequence {id:?}")))?;
        let Some(cache) = self.cache.as_mut() else { return Ok(()) };
        let full = prompt.len().min(seq.len) / bs;
        cache.register(&seq.blocks[..full], &prompt[..full * bs], bs);
        Ok(())
    }
}

#[cfg(test)]
#[path = "prefix_tests.rs"]
mod tests;
