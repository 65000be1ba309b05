//! The dot product every reduction in this backend is defined by. Matrix multiply uses the HF
//! `nn.Linear` layout (the weight is `[out_features, in_features]`), so every output element is a
//! dot product of two contiguous rows; [`super::gemm`] computes exactly these dots, only faster.

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
