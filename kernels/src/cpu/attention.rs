//! Single-query scaled dot-product attention over a K/V cache with grouped-query attention.
//!
//! The query attends to *every* row of the cache slice it is given; causality is the caller's
//! job (pass the prefix up to and including the query's own position). Query head `h` reads
//! KV head `h / (n_heads / n_kv_heads)`, as HF's `repeat_kv` does.

use super::elementwise::softmax_inplace;
use super::matmul::dot;

/// Head layout of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// `q[n_heads, head_dim]`, `k`/`v` `[len, n_kv_heads, head_dim]`, `out[n_heads, head_dim]`.
/// Scores are scaled by `1/sqrt(head_dim)`; the weighted sum over cache rows runs in row order.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, out: &mut [f32]) {
    let row = shape.n_kv_heads * shape.head_dim;
    assert!(row > 0 && k.len().is_multiple_of(row), "attention: k shape");
    assert_eq!(k.len(), v.len(), "attention: k and v lengths differ");
    let len = k.len() / row;
    attention_paged(q, &[(k, v)], len, len.max(1), shape, out);
}

/// [`attention`] over a paged cache: row `t` of the sequence is row `t % block_size` of
/// `blocks[t / block_size]`, whose `k` and `v` are `[block_size, n_kv_heads, head_dim]` (the last
/// block may be shorter). The first `len` rows are attended, in row order, with the same float
/// operations as a contiguous cache, so paging never changes a result.
pub fn attention_paged(
    q: &[f32],
    blocks: &[(&[f32], &[f32])],
    len: usize,
    block_size: usize,
    shape: AttnShape,
    out: &mut [f32],
) {
    let AttnShape { n_heads, n_kv_heads, head_dim: hd } = shape;
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: bad GQA {shape:?}");
    assert_eq!(q.len(), n_heads * hd, "attention: q shape");
    assert_eq!(out.len(), n_heads * hd, "attention: out shape");
    assert!(len > 0, "attention: empty cache");
    assert!(block_size > 0, "attention: zero block size");
    let row = n_kv_heads * hd;
    assert!(blocks.len() * block_size >= len, "attention: {} blocks cannot hold {len} rows", blocks.len());
    for (t, (k, v)) in blocks.iter().enumerate().take(len.div_ceil(block_size)) {
        let rows = block_size.min(len - t * block_size);
        assert!(k.len() >= rows * row && v.len() >= rows * row, "attention: block {t} is too short");
    }
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_blocks = len.div_ceil(block_size);
    // Rows of block `b` that are attended, walked block by block: no division per row, and the
    // same operations in the same row order as a contiguous cache.
    let rows_in = |b: usize| block_size.min(len - b * block_size);
    let mut scores = vec![0f32; len];
    for h in 0..n_heads {
        let kvh = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let mut t = 0;
        for (b, (k, _)) in blocks[..n_blocks].iter().enumerate() {
            for r in 0..rows_in(b) {
                let off = r * row + kvh * hd;
                scores[t] = dot(qh, &k[off..off + hd]) * scale;
                t += 1;
            }
        }
        softmax_inplace(&mut scores);
        let oh = &mut out[h * hd..(h + 1) * hd];
        oh.fill(0.0);
        let mut t = 0;
        for (b, (_, v)) in blocks[..n_blocks].iter().enumerate() {
            for r in 0..rows_in(b) {
                let off = r * row + kvh * hd;
                let p = scores[t];
                for (o, x) in oh.iter_mut().zip(&v[off..off + hd]) {
                    *o += p * x;
                }
                t += 1;
            }
        }
    }
}
