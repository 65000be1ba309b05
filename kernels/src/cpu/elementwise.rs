//! Row-wise normalisation and element-wise activations.

/// RMS norm as in HF `LlamaRMSNorm`: `y = x / sqrt(mean(x^2) + eps) * weight`, row by row, where
/// a row is `weight.len()` values. The mean is accumulated in `f32` sequentially.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let d = weight.len();
    assert!(d > 0, "rms_norm: empty weight");
    assert_eq!(x.len() % d, 0, "rms_norm: x.len() {} not a multiple of {d}", x.len());
    assert_eq!(x.len(), y.len(), "rms_norm: x and y lengths differ");
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mut ss = 0f32;
        for v in xr {
            ss += v * v;
        }
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, v), w) in yr.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// Softmax of one row in place; subtracts the max first so large logits do not overflow.
/// An empty row is left as is.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `out = silu(gate) * up` with `silu(g) = g / (1 + e^-g)`, the Llama MLP gate.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: gate and up lengths differ");
    assert_eq!(gate.len(), out.len(), "silu_mul: out length differs");
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}
