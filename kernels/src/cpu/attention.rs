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
    let AttnShape { n_heads, n_kv_heads, head_dim: hd } = shape;
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: bad GQA {shape:?}");
    assert_eq!(q.len(), n_heads * hd, "attention: q shape");
    assert_eq!(out.len(), n_heads * hd, "attention: out shape");
    let row = n_kv_heads * hd;
    assert_eq!(k.len() % row, 0, "attention: k shape");
    assert_eq!(k.len(), v.len(), "attention: k and v lengths differ");
    let len = k.len() / row;
    assert!(len > 0, "attention: empty cache");
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; len];
    for h in 0..n_heads {
        let kvh = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        for (t, s) in scores.iter_mut().enumerate() {
            let off = t * row + kvh * hd;
            *s = dot(qh, &k[off..off + hd]) * scale;
        }
        softmax_inplace(&mut scores);
        let oh = &mut out[h * hd..(h + 1) * hd];
        oh.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let off = t * row + kvh * hd;
            for (o, x) in oh.iter_mut().zip(&v[off..off + hd]) {
                *o += p * x;
            }
        }
    }
}
