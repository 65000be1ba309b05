//! Matrix multiply in the HF `nn.Linear` layout: the weight is `[out_features, in_features]`,
//! so every output element is a dot product of two contiguous rows. That keeps the weight read
//! row-major with no transpose.

/// Dot product with eight independent accumulators combined in a fixed tree.
///
/// Eight lanes let the compiler vectorise without `-ffast-math`; the combination order is fixed,
/// so the result is identical for identical inputs on every call.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let mut acc = [0f32; 8];
    let ac = a.chunks_exact(8);
    let bc = b.chunks_exact(8);
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y[m, n] = x[m, k] · w[n, k]^T (+ bias[n])`.
///
/// Panics when the slice lengths are not multiples of `k` or `y` is not `m * n` long: shapes are
/// the caller's invariant, and a silent mis-shape would produce plausible garbage.
pub fn matmul(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, y: &mut [f32]) {
    assert!(k > 0, "matmul: k must be > 0");
    assert_eq!(x.len() % k, 0, "matmul: x.len() {} not a multiple of k {k}", x.len());
    assert_eq!(w.len() % k, 0, "matmul: w.len() {} not a multiple of k {k}", w.len());
    let (m, n) = (x.len() / k, w.len() / k);
    assert_eq!(y.len(), m * n, "matmul: y.len() {} != m {m} * n {n}", y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul: bias.len() {} != n {n}", b.len());
    }
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (j, (wr, out)) in w.chunks_exact(k).zip(yr.iter_mut()).enumerate() {
            let b = bias.map_or(0.0, |b| b[j]);
            *out = dot(xr, wr) + b;
        }
    }
}
