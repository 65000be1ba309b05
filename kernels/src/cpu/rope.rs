//! Rotary position embedding, HF "rotate_half" convention (LlamaForCausalLM): within a head of
//! size `d`, element `i` is rotated with element `i + d/2` by angle `pos * inv_freq[i]`, for
//! `i < d/2`. Position 0 is the identity; every rotation preserves the pair's norm.

/// `inv_freq[i] = 1 / theta^(2i / head_dim)` for `i < head_dim / 2`, as HF computes it.
/// Computed in `f64` and rounded once, so it is the same on every platform with IEEE `powf`.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    assert!(head_dim.is_multiple_of(2) && head_dim > 0, "rope: head_dim {head_dim} must be even");
    (0..head_dim / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32).collect()
}

/// Llama 3 frequency scaling (`rope_scaling` with `rope_type: "llama3"` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// [`rope_inv_freq`] with HF `_compute_llama3_parameters` applied: long wavelengths are divided by
/// `factor`, short ones kept, the band between interpolated smoothly. The same table serves the
/// CPU and CUDA kernels, so scaling never lives in a kernel.
pub fn rope_inv_freq_llama3(head_dim: usize, theta: f64, s: Llama3RopeScaling) -> Vec<f32> {
    let d = head_dim as f64;
    let old = s.original_max_position_embeddings as f64;
    let (lo, hi) = (s.low_freq_factor, s.high_freq_factor);
    let (lo_wl, hi_wl) = (old / lo, old / hi);
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / d);
            let wl = 2.0 * std::f64::consts::PI / f;
            let v = if wl < hi_wl {
                f
            } else if wl > lo_wl {
                f / s.factor
            } else {
                let smooth = (old / wl - lo) / (hi - lo);
                (1.0 - smooth) * f / s.factor + smooth * f
            };
            v as f32
        })
        .collect()
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
