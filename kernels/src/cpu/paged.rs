//! CPU references for the paged-cache kernels: KV writes by slot, block gathers and scatters,
//! decode attention over block tables and causal prefill attention. Attention gathers each
//! sequence's rows into a contiguous buffer and runs [`attention`], so the paged ops compute
//! exactly what the contiguous op does on the same rows. Layout: see [`crate::paged`].

use super::attention::{attention, AttnShape};
use crate::paged::BlockTables;

/// `cache[slot] = row` for every token whose slot is not negative.
pub fn kv_write(k_cache: &mut [f32], v_cache: &mut [f32], k: &[f32], v: &[f32], slots: &[i64], row: usize) {
    assert_eq!(k.len(), slots.len() * row, "kv_write: k shape");
    assert_eq!(v.len(), k.len(), "kv_write: v shape");
    for (t, &s) in slots.iter().enumerate() {
        if s < 0 {
            continue;
        }
        let dst = s as usize * row;
        k_cache[dst..dst + row].copy_from_slice(&k[t * row..(t + 1) * row]);
        v_cache[dst..dst + row].copy_from_slice(&v[t * row..(t + 1) * row]);
    }
}

/// `pages[i] = cache[block_ids[i]]`, whole blocks of `block_elems` values.
pub fn kv_gather_blocks(cache: &[f32], block_ids: &[i32], block_elems: usize, pages: &mut [f32]) {
    assert_eq!(pages.len(), block_ids.len() * block_elems, "kv_gather_blocks: pages shape");
    for (dst, &b) in pages.chunks_exact_mut(block_elems).zip(block_ids) {
        let src = b as usize * block_elems;
        dst.copy_from_slice(&cache[src..src + block_elems]);
    }
}

/// `cache[block_ids[i]] = pages[i]`.
pub fn kv_scatter_blocks(cache: &mut [f32], pages: &[f32], block_ids: &[i32], block_elems: usize) {
    assert_eq!(pages.len(), block_ids.len() * block_elems, "kv_scatter_blocks: pages shape");
    for (src, &b) in pages.chunks_exact(block_elems).zip(block_ids) {
        let dst = b as usize * block_elems;
        cache[dst..dst + block_elems].copy_from_slice(src);
    }
}

/// The first `len` token rows of sequence `seq`, copied out of the paged cache.
fn gather_rows(cache: &[f32], tables: &BlockTables, seq: usize, len: usize, block_size: usize, row: usize) -> Vec<f32> {
    let table = tables.row(seq);
    let mut out = Vec::with_capacity(len * row);
    for t in 0..len {
        let slot = table[t / block_size] as usize * block_size + t % block_size;
        out.extend_from_slice(&cache[slot * row..(slot + 1) * row]);
    }
    out
}

/// Decode: `q[num_seqs, n_heads, head_dim]`, sequence `s` attends to its first
/// `context_lens[s]` cached tokens; a length of 0 gives zeros.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_decode(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    tables: &BlockTables,
    context_lens: &[i32],
    shape: AttnShape,
    block_size: usize,
    out: &mut [f32],
) {
    let qd = shape.n_heads * shape.head_dim;
    let row = shape.n_kv_heads * shape.head_dim;
    assert_eq!(context_lens.len(), tables.num_seqs, "paged_attention_decode: context_lens length");
    assert_eq!(q.len(), tables.num_seqs * qd, "paged_attention_decode: q shape");
    assert_eq!(out.len(), q.len(), "paged_attention_decode: out shape");
    for (s, &len) in context_lens.iter().enumerate() {
        let o = &mut out[s * qd..(s + 1) * qd];
        if len == 0 {
            o.fill(0.0);
            continue;
        }
        let k = gather_rows(k_cache, tables, s, len as usize, block_size, row);
        let v = gather_rows(v_cache, tables, s, len as usize, block_size, row);
        attention(&q[s * qd..(s + 1) * qd], &k, &v, shape, o);
    }
}

/// Causal prefill over a packed batch: sequence `s` owns query rows
/// `cu_q_lens[s]..cu_q_lens[s + 1]`; row `i` sits at position `context_lens[s] - q_len + i` and
/// attends to cached tokens `0..=position`.
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    cu_q_lens: &[i32],
    context_lens: &[i32],
    tables: &BlockTables,
    shape: AttnShape,
    block_size: usize,
    out: &mut [f32],
) {
    let qd = shape.n_heads * shape.head_dim;
    let row = shape.n_kv_heads * shape.head_dim;
    assert_eq!(cu_q_lens.len(), tables.num_seqs + 1, "prefill_attention: cu_q_lens length");
    assert_eq!(q.len(), *cu_q_lens.last().unwrap() as usize * qd, "prefill_attention: q shape");
    assert_eq!(out.len(), q.len(), "prefill_attention: out shape");
    for s in 0..tables.num_seqs {
        let (start, end) = (cu_q_lens[s] as usize, cu_q_lens[s + 1] as usize);
        let ctx = context_lens[s] as usize;
        assert!(ctx >= end - start, "prefill_attention: context {ctx} shorter than chunk {}", end - start);
        let k = gather_rows(k_cache, tables, s, ctx, block_size, row);
        let v = gather_rows(v_cache, tables, s, ctx, block_size, row);
        for i in 0..end - start {
            let visible = ctx - (end - start) + i + 1;
            let r = start + i;
            attention(
                &q[r * qd..(r + 1) * qd],
                &k[..visible * row],
                &v[..visible * row],
                shape,
                &mut out[r * qd..(r + 1) * qd],
            );
        }
    }
}
