//! Rotary position embedding, HF "rotate_half" convention (LlamaForCausalLM): within a head of
//! size `d`, element `i` is rotated with element `i + d/2` by angle `pos * inv_freq[i]`, for
//! `i < d/2`. Position 0 is the identity; every rotation preserves the pair's norm.

/// `inv_freq[i] = 1 / theta^(2i / head_dim)` for `i < head_dim / 2`, as HF computes it.
/// Computed in `f64` and rounded once, so it is the same on every platform with IEEE `powf`.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    assert!(head_dim.is_multiple_of(2) && head_dim > 0, "rope: head_dim {head_dim} must be even");
    (0..head_dim / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32).collect()
}

/// Rotates `x[tokens, n_heads, head_dim]` in place; `head_dim = 2 * inv_freq.len()` and token `t`
/// sits at `positions[t]`. The angle is `pos * inv_freq` in `f32`, like HF's `float32` path.
pub fn rope_inplace(x: &mut [f32], n_heads: usize, positions: &[usize], inv_freq: &[f32]) {
    let half = inv_freq.len();
    let hd = 2 * half;
    assert!(half > 0, "rope: empty inv_freq");
    assert_eq!(x.len(), positions.len() * n_heads * hd, "rope: x shape mismatch");
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    for (tok, &pos) in x.chunks_exact_mut(n_heads * hd).zip(positions) {
        for i in 0..half {
            let angle = pos as f32 * inv_freq[i];
            cos[i] = angle.cos();
            sin[i] = angle.sin();
        }
        for head in tok.chunks_exact_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                // rotate_half(x) = [-x1, x0]; out = x * cos + rotate_half(x) * sin
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}
