//! Several quantized matmuls on one input (Q, K and V; gate and up) in one parallel region.
//!
//! At batch 1 a fork over the pool costs about what a small matmul does, and K and V alone are
//! below the size worth splitting; one region for the group halves the forks per layer and
//! keeps both threads busy on K and V too. Invariant: each output column is computed by the
//! same per-column kernel as the single matmul ([`super::matmul_quant`], or the int8 path), so
//! the results are those of separate calls, bit for bit; grouping changes only who runs what.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{OutPtr, CHUNKS_PER_THREAD, PARALLEL_MIN_WORK};
use crate::quant::{int8, Activations, QMatrix};

/// One matmul of a group: `y = x · w^T (+ bias)`.
#[derive(Clone, Copy)]
pub struct QLinear<'a, 'b> {
    pub w: QMatrix<'a>,
    pub bias: Option<&'b [f32]>,
}

/// How the whole group runs.
enum Mode {
    Int8(int8::Q8Rows),
    #[cfg(target_arch = "x86_64")]
    Fused,
}

/// `ys[i] = x · ws[i].w^T (+ ws[i].bias)` for every `i`, every `w` with the same `cols`; panics
/// on inconsistent shapes, as [`super::matmul_quant`] does.
pub fn matmul_quant_many(x: &[f32], ws: &[QLinear<'_, '_>], ys: &mut [&mut [f32]], act: Activations) {
    assert_eq!(ws.len(), ys.len(), "matmul_quant_many: {} matrices, {} outputs", ws.len(), ys.len());
    let Some(first) = ws.first() else { return };
    let k = first.w.cols;
    assert!(k > 0 && x.len().is_multiple_of(k), "matmul_quant_many: x.len() {} not whole rows of {k}", x.len());
    let m = x.len() / k;
    for (l, y) in ws.iter().zip(ys.iter()) {
        assert_eq!(l.w.cols, k, "matmul_quant_many: a matrix of {} columns in a group of {k}", l.w.cols);
        assert_eq!(y.len(), m * l.w.rows, "matmul_quant_many: y.len() {} != m {m} * n {}", y.len(), l.w.rows);
        if let Some(b) = l.bias {
            assert_eq!(b.len(), l.w.rows, "matmul_quant_many: bias.len() {} != n {}", b.len(), l.w.rows);
        }
    }
    let all = |f: fn(crate::QuantType) -> bool| ws.iter().all(|l| f(l.w.dtype));
    let mode = if act == Activations::Int8 && all(int8::supported) {
        Some(Mode::Int8(int8::Q8Rows::quantize(x, k)))
    } else {
        #[cfg(target_arch = "x86_64")]
        {
            (m < super::qgemm::FUSED_MAX_M && all(crate::quant::x86::fused_any)).then_some(Mode::Fused)
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    };
    let Some(mode) = mode else {
        // Large batches (each matmul splits well on its own) and mixed groups: one call each.
        for (l, y) in ws.iter().zip(ys.iter_mut()) {
            crate::Backend::cpu().matmul_quant(x, &l.w, l.bias, y, act);
        }
        return;
    };
    let outs: Vec<OutPtr> = ys.iter_mut().map(|y| OutPtr(y.as_mut_ptr())).collect();
    let run = |i: usize, cols: Range<usize>| {
        let l = &ws[i];
        // SAFETY: shapes checked above; each (matrix, column range) task is run once, so no
        // two threads write the same columns of the same output; the mode's features hold.
        unsafe {
            match &mode {
                Mode::Int8(a) => int8::columns(int8::Int8Kernel::detect(), a, &l.w, l.bias, cols, outs[i]),
                #[cfg(target_arch = "x86_64")]
                Mode::Fused => super::qgemm::fused_columns(x, &l.w, l.bias, outs[i], cols),
            }
        }
    };
    let work: usize = ws.iter().map(|l| m * l.w.rows * k).sum();
    let threads = rayon::current_num_threads();
    if threads <= 1 || work < PARALLEL_MIN_WORK {
        return ws.iter().enumerate().for_each(|(i, l)| run(i, 0..l.w.rows));
    }
    let mut tasks = Vec::new();
    for (i, l) in ws.iter().enumerate() {
        let n = l.w.rows;
        let chunk = n.div_ceil(threads * CHUNKS_PER_THREAD).next_multiple_of(4);
        tasks.extend((0..n.div_ceil(chunk)).map(|c| (i, c * chunk..n.min((c + 1) * chunk))));
    }
    tasks.into_par_iter().for_each(|(i, cols)| run(i, cols));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::random::{random_blocks, Lcg};
    use crate::QuantType;

    /// A group gives each matrix's separate result bit for bit, on every path.
    #[test]
    fn a_group_is_its_separate_matmuls() {
        let mut rng = Lcg(31);
        let k = 256;
        for t in [QuantType::Q4_1, QuantType::Q8_0, QuantType::Q6_K] {
            let shapes = [300, 64, 64];
            let bytes: Vec<Vec<u8>> = shapes.iter().map(|&n| random_blocks(t, n * k, &mut rng)).collect();
            let bias: Vec<f32> = (0..64).map(|_| rng.next_f32()).collect();
            let ws: Vec<QLinear> = shapes
                .iter()
                .zip(&bytes)
                .enumerate()
                .map(|(i, (&n, b))| QLinear {
                    w: QMatrix::new(t, n, k, b).unwrap(),
                    bias: (i == 1).then_some(&bias[..]),
                })
                .collect();
            for m in [1, 3, 9] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
                for act in [Activations::Exact, Activations::Int8] {
                    let mut got: Vec<Vec<f32>> = shapes.iter().map(|&n| vec![f32::NAN; m * n]).collect();
                    let mut refs: Vec<&mut [f32]> = got.iter_mut().map(|v| &mut v[..]).collect();
                    matmul_quant_many(&x, &ws, &mut refs, act);
                    for (l, g) in ws.iter().zip(&got) {
                        let mut want = vec![0f32; g.len()];
                        crate::Backend::cpu().matmul_quant(&x, &l.w, l.bias, &mut want, act);
                        let same = g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{t} m {m} {act:?}: grouped differs from separate");
                    }
                }
            }
        }
    }
}
