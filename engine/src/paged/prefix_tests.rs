//! The prefix cache's bookkeeping: hits, the last-token rule, LRU eviction under pressure, forks,
//! duplicates computed in one step, and a random workload whose hits must read exactly the rows
//! a cold run writes.

use super::super::{KvLayout, PagedKv, SeqId};

fn pool(block_size: usize, n_blocks: usize) -> PagedKv {
    let mut kv = PagedKv::new(KvLayout { n_layers: 2, n_kv_heads: 1, head_dim: 2, block_size }, n_blocks);
    kv.set_prefix_cache(true);
    kv
}

/// What a forward would write at position `p` of a sequence holding `tokens`: a value of the
/// whole prefix `tokens[..=p]`, so a row read under a different prefix shows.
fn row_value(tokens: &[u32], p: usize, layer: usize) -> f32 {
    let h = tokens[..=p].iter().fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64));
    ((h % 100_003) * 2 + layer as u64) as f32
}

/// Runs a prompt as the engine loop does: takes its cached prefix, checks the cached rows are
/// the cold ones, computes the rest, registers it. Returns the sequence and its cached tokens.
fn prefill(kv: &mut PagedKv, prompt: &[u32], max_len: usize) -> (SeqId, usize) {
    let (id, cached) = kv.add_prompt(prompt, max_len).unwrap();
    assert!(cached < prompt.len(), "at least one token is computed");
    assert_eq!(kv.len(id).unwrap(), cached);
    for p in 0..cached {
        for layer in 0..2 {
            let (k, v) = kv.row_mut(id, layer, p);
            assert_eq!((k[0], v[1]), (row_value(prompt, p, layer), -row_value(prompt, p, layer)), "row {p}");
        }
    }
    kv.grow(id, prompt.len()).unwrap();
    for p in cached..prompt.len() {
        for layer in 0..2 {
            let (k, v) = kv.row_mut(id, layer, p);
            k.fill(row_value(prompt, p, layer));
            v.fill(-row_value(prompt, p, layer));
        }
    }
    kv.register_prompt(id, prompt).unwrap();
    kv.check().unwrap();
    (id, cached)
}

fn tokens(start: u32, n: usize) -> Vec<u32> {
    (start..start + n as u32).collect()
}

#[test]
fn a_released_prompt_is_found_again_up_to_its_last_token() {
    let mut kv = pool(4, 12);
    let prompt = tokens(100, 10); // blocks of 4, 4 and 2 tokens: two full ones are kept
    let (a, cached) = prefill(&mut kv, &prompt, 10);
    assert_eq!(cached, 0);
    kv.release(a);
    kv.check().unwrap();
    assert_eq!((kv.cached_free_blocks(), kv.available_blocks()), (2, 12));
    assert_eq!(prefill(&mut kv, &prompt, 10).1, 8);
    // Exactly two blocks long: the second is computed again for the last token's logits.
    assert_eq!(kv.cached_prefix_len(&prompt[..8]), 4);
    // A prompt that leaves the cached path after the first block finds that block only.
    let mut fork = prompt.clone();
    fork[5] = 7;
    assert_eq!(kv.cached_prefix_len(&fork), 4);
    fork[0] = 7;
    assert_eq!(kv.cached_prefix_len(&fork), 0, "a block is found only under its own prefix");
    let stats = kv.prefix_cache_stats().unwrap();
    assert_eq!((stats.queried_tokens, stats.hit_tokens, stats.evicted_blocks), (20, 8, 0));
}

#[test]
fn held_hits_are_shared_and_cost_no_blocks() {
    let mut kv = pool(4, 12);
    let prompt = tokens(0, 9);
    let (a, _) = prefill(&mut kv, &prompt, 12);
    // 3 blocks for 12 tokens, 2 of them cached and held by `a`: 1 block taken.
    assert_eq!(kv.prompt_cost(&prompt, 12), 1);
    let before = kv.available_blocks();
    let (b, cached) = prefill(&mut kv, &prompt, 12);
    assert_eq!((cached, kv.available_blocks()), (8, before - 1));
    assert_eq!(kv.block_table(a).unwrap()[..2], kv.block_table(b).unwrap()[..2]);
    assert_ne!(kv.block_table(a).unwrap()[2], kv.block_table(b).unwrap()[2], "the partial block is each one's own");
    kv.release(a);
    kv.check().unwrap();
    assert_eq!(kv.cached_free_blocks(), 0, "b still holds the shared blocks");
    kv.release(b);
    kv.check().unwrap();
    assert_eq!((kv.cached_free_blocks(), kv.available_blocks()), (2, 12));
}

#[test]
fn cached_blocks_are_evicted_only_when_the_free_list_is_empty_tail_first() {
    let mut kv = pool(4, 4);
    let prompt = tokens(0, 9); // 2 full blocks registered, the partial one freed
    let (a, _) = prefill(&mut kv, &prompt, 9);
    kv.release(a);
    assert_eq!((kv.cached_free_blocks(), kv.available_blocks()), (2, 4));
    // 2 free blocks serve a 2-block prompt without touching the cache.
    let (b, _) = prefill(&mut kv, &tokens(50, 8), 8);
    assert_eq!(kv.cached_free_blocks(), 2);
    assert_eq!(kv.cached_prefix_len(&prompt), 8);
    // One more block must come from the cache: its oldest, the prompt's tail.
    let (c, _) = prefill(&mut kv, &tokens(90, 3), 3);
    assert_eq!(kv.cached_prefix_len(&prompt), 4, "the head block stays");
    assert_eq!(kv.prefix_cache_stats().unwrap().evicted_blocks, 1);
    kv.release(b);
    kv.release(c);
    kv.check().unwrap();
    assert_eq!(prefill(&mut kv, &prompt, 9).1, 4);
}

#[test]
fn forks_and_duplicates_keep_one_registered_copy() {
    let mut kv = pool(4, 16);
    let prompt = tokens(7, 10);
    // Two sequences compute the same prompt in one step: the second copy stays private.
    let (a, _) = kv.add_prompt(&prompt, 12).unwrap();
    let (b, _) = kv.add_prompt(&prompt, 12).unwrap();
    for id in [a, b] {
        kv.grow(id, 10).unwrap();
    }
    kv.register_prompt(a, &prompt).unwrap();
    kv.register_prompt(b, &prompt).unwrap();
    kv.check().unwrap();
    let c = kv.fork(a, 14).unwrap();
    kv.check().unwrap();
    for id in [a, b, c] {
        kv.release(id);
        kv.check().unwrap();
    }
    assert_eq!((kv.cached_free_blocks(), kv.available_blocks()), (2, 16));
    // Off: the cached blocks go back to the free list and nothing is found.
    kv.set_prefix_cache(false);
    kv.check().unwrap();
    assert_eq!((kv.cached_free_blocks(), kv.available_blocks(), kv.cached_prefix_len(&prompt)), (0, 16, 0));
    assert_eq!(kv.add_prompt(&prompt, 10).unwrap().1, 0);
}

#[test]
fn prompts_that_would_compute_one_block_twice_are_told_apart() {
    let mut kv = pool(4, 16);
    let (a, b) = (tokens(0, 9), [&tokens(0, 8)[..], &[99, 98]].concat());
    assert!(kv.would_share_uncached_block(&a, &b));
    assert!(!kv.would_share_uncached_block(&a, &tokens(1, 9)));
    assert!(!kv.would_share_uncached_block(&a, &a[..3]), "a partial block is never registered");
    let (s, _) = prefill(&mut kv, &a, 9);
    assert!(!kv.would_share_uncached_block(&a, &b), "cached now: both take it");
    kv.release(s);
}

/// Many prompts over a few shared prefixes through a pool too small to keep them all: every hit
/// reads the rows a cold run writes (checked in `prefill`), and the invariants hold throughout.
#[test]
fn random_workload_under_pressure_reads_only_its_own_prefix() {
    let mut kv = pool(4, 24);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let prefixes: Vec<Vec<u32>> = (0..5).map(|i| tokens(i * 1000, 4 * (1 + i as usize))).collect();
    let mut live: Vec<SeqId> = Vec::new();
    let mut hits = 0;
    for _ in 0..400 {
        if !live.is_empty() && (next(3) == 0 || kv.available_blocks() < 8) {
            let i = next(live.len() as u64) as usize;
            kv.release(live.swap_remove(i));
            kv.check().unwrap();
            continue;
        }
        let mut prompt = prefixes[next(5) as usize].clone();
        prompt.extend((0..1 + next(9)).map(|_| next(3) as u32));
        let (id, cached) = prefill(&mut kv, &prompt, prompt.len() + next(5) as usize);
        hits += (cached > 0) as usize;
        if next(4) == 0 {
            live.push(kv.fork(id, prompt.len() + 2).unwrap());
            kv.check().unwrap();
        }
        live.push(id);
    }
    for id in live {
        kv.release(id);
    }
    kv.check().unwrap();
    assert_eq!(kv.available_blocks(), 24);
    let stats = kv.prefix_cache_stats().unwrap();
    assert!(hits > 100 && stats.evicted_blocks > 0, "hits {hits}, {stats:?}");
}
