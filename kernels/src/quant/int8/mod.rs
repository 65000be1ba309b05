//! The int8-activation matmul (opt-in, not exact): each row of `x` is quantized per 32-value
//! block as ggml's `quantize_row_q8_0` does (`d1 = max|x| / 127`, `q1 = round(x / d1)`), and
//! dotted with Q4_0 / Q4_1 / Q8_0 weight blocks in integers, as ggml's `vec_dot_q4_1_q8_1` and
//! friends. Unlike ggml, each value keeps 7 more bits as a second int8 digit: `Q = round(x / s)`
//! with `s = d1 / 128`, stored as `q1 = round(Q / 128)` (ggml's digit, give or take a tie) and
//! `q2 = Q - 128 q1` (in -64..64), so `x ~ s * (128 q1 + q2)` to 2^-15 of the block's largest
//! value instead of 2^-8. One Q8 digit flips greedy tokens within a few steps on the random
//! fixtures (near ties everywhere; 3 of 24 tokens kept on one prompt); two keep them. The second
//! digit costs one more `vpdpbusd` on the weights already unpacked, and a shift: the two integer
//! dots combine exactly as `128 * dot(w, q1) + dot(w, q2) = dot(w, Q)`.
//!
//! Invariants:
//! - a block's integer dot is exact, and the floats are combined in one fixed order (below), so
//!   the VNNI, AVX2 and portable paths agree bit for bit;
//! - each row of `x` is quantized and reduced on its own, so a row's result does not depend on
//!   what it is batched with (batch invariance), whatever the tile or thread that computes it.
//!
//! The float order, for one weight row and one activation row: block `b`'s integer dot with `Q`
//! is kept as eight partial sums `sumi[l]` (values `4l..4l + 4`, what one `vpdpbusd` lane
//! holds); lane `l` of accumulator `b % 2` takes `acc = fma(sumi[l], d_w * s, acc)`; Q4_1's min
//! adds `mc[b % 2] += m_w * ms` with `ms = s * sum(Q)`. Rows with an odd block count are padded with one zero
//! block (so the SIMD paths always take blocks in pairs). The result is
//! `(tree(acc[0]) + tree(acc[1])) + (mc[0] + mc[1])`, `tree` being [`crate::cpu::dot`]'s.

use half::f16;
use rayon::prelude::*;

use super::{QMatrix, QuantType};

#[cfg(target_arch = "x86_64")]
mod x86;

/// Activation rows in Q8 blocks of two digits, each row padded to an even number of blocks with
/// zeros.
pub struct Q8Rows {
    /// Blocks per row before padding.
    blocks: usize,
    /// Blocks per row after padding (even).
    stride: usize,
    /// The digits `q1`, `q2`: `rows * stride * 32` each.
    q: [Vec<i8>; 2],
    /// Per block `(s, ms)`, interleaved (`rows * stride * 2`), so two consecutive blocks' pairs
    /// load as one vector.
    scales: Vec<f32>,
    /// Per block eight negated partial sums of `Q` (`-(Q[4l] + .. + Q[4l + 3])`), the offsets
    /// Q4_0's `- 8` and the VNNI path's unsigned Q8_0 weights need: `rows * stride * 8`.
    neg_sums: Vec<i32>,
}

impl Q8Rows {
    /// Quantizes `x` (rows of `k` values, `k` a multiple of 32), row by row.
    pub fn quantize(x: &[f32], k: usize) -> Q8Rows {
        assert!(k > 0 && k.is_multiple_of(32), "Q8Rows: k {k} is not whole blocks of 32");
        assert_eq!(x.len() % k, 0, "Q8Rows: x.len() {} not a multiple of k {k}", x.len());
        let rows = x.len() / k;
        let blocks = k / 32;
        let stride = blocks.next_multiple_of(2);
        let n = rows * stride;
        let mut out = Q8Rows {
            blocks,
            stride,
            q: [vec![0; n * 32], vec![0; n * 32]],
            scales: vec![0.0; n * 2],
            neg_sums: vec![0; n * 8],
        };
        #[cfg(target_arch = "x86_64")]
        {
            let wide = x86::vnni512_available();
            if wide || x86::avx2_available() {
                // SAFETY: the features were just checked.
                unsafe { x86::quantize_rows(wide, &mut out, x, k) };
                return out;
            }
        }
        out.fill(x, k);
        out
    }

    /// [`Q8Rows::quantize`] without SIMD, for the test that pins the SIMD copy to it.
    #[cfg(test)]
    fn quantize_portable(x: &[f32], k: usize) -> Q8Rows {
        let mut out = Q8Rows::quantize(&[], k);
        let rows = x.len() / k;
        let n = rows * out.stride;
        out.q = [vec![0; n * 32], vec![0; n * 32]];
        out.scales = vec![0.0; n * 2];
        out.neg_sums = vec![0; n * 8];
        out.fill(x, k);
        out
    }

    /// Quantizes every row of `x` into this (zeroed) buffer.
    #[inline(always)]
    fn fill(&mut self, x: &[f32], k: usize) {
        let (stride, out) = (self.stride, self);
        for (r, xr) in x.chunks_exact(k).enumerate() {
            for (b, xb) in xr.chunks_exact(32).enumerate() {
                let at = r * stride + b;
                let xb: &[f32; 32] = xb.try_into().expect("32");
                let [q1, q2] = &mut out.q;
                let q1: &mut [i8; 32] = (&mut q1[at * 32..at * 32 + 32]).try_into().expect("32");
                let q2: &mut [i8; 32] = (&mut q2[at * 32..at * 32 + 32]).try_into().expect("32");
                let s = quantize_block(xb, q1, q2);
                let mut sum = 0i32;
                for (l, n) in out.neg_sums[at * 8..at * 8 + 8].iter_mut().enumerate() {
                    let part: i32 = (4 * l..4 * l + 4).map(|i| 128 * q1[i] as i32 + q2[i] as i32).sum();
                    *n = -part;
                    sum += part;
                }
                out.scales[2 * at] = s;
                out.scales[2 * at + 1] = s * sum as f32;
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.q[0].len() / (self.stride * 32)
    }

    pub fn k(&self) -> usize {
        self.blocks * 32
    }
}

/// One block: `d1 = max|x| / 127` as `quantize_row_q8_0`, `s = d1 / 128`, `Q = round(x / s)`
/// (ties to even, as ggml's SIMD paths round), split into `q1 = (Q + 64) >> 7` and
/// `q2 = Q - 128 q1`. Returns `s`. The scale stays f32 where ggml rounds it to f16.
#[inline(always)]
fn quantize_block(x: &[f32; 32], q1: &mut [i8; 32], q2: &mut [i8; 32]) -> f32 {
    // Eight running maxima, as a vector unit keeps them (max is exact, so any order is equal).
    let mut m = [0f32; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            m[l] = m[l].max(c[l].abs());
        }
    }
    let amax = m.iter().fold(0f32, |a, &v| a.max(v));
    let s = amax / 127.0 / 128.0;
    let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
    for i in 0..32 {
        let q = (x[i] * inv).round_ties_even().clamp(-16256.0, 16256.0) as i32;
        let hi = (q + 64) >> 7;
        q1[i] = hi as i8;
        q2[i] = (q - 128 * hi) as i8;
    }
    s
}

/// Whether `t` has an int8-activation kernel.
pub fn supported(t: QuantType) -> bool {
    matches!(t, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Weight `i` (0..32) of block `b` as the signed integer the dot uses.
fn weight_quant(t: QuantType, b: &[u8], i: usize) -> i32 {
    let nibble = |off: usize| {
        let byte = b[off + i % 16];
        (if i < 16 { byte & 0x0F } else { byte >> 4 }) as i32
    };
    match t {
        QuantType::Q4_0 => nibble(2) - 8,
        QuantType::Q4_1 => nibble(4),
        _ => (b[2 + i] as i8) as i32,
    }
}

/// The portable definition of one output: weight row `w` (stored blocks) against row `r` of `a`.
pub fn dot_portable(t: QuantType, w: &[u8], a: &Q8Rows, r: usize) -> f32 {
    let bb = t.block_bytes();
    assert_eq!(w.len(), a.blocks * bb, "dot_portable: weight row of {} bytes", w.len());
    let mut acc = [[0f32; 8]; 2];
    let mut mc = [0f32; 2];
    for b in 0..a.stride {
        let at = r * a.stride + b;
        let (sx, ms) = (a.scales[2 * at], a.scales[2 * at + 1]);
        let q: Vec<i32> = (0..32).map(|i| 128 * a.q[0][at * 32 + i] as i32 + a.q[1][at * 32 + i] as i32).collect();
        // The padding block: zero quants and zero scales, as the SIMD paths see it.
        let blk = (b < a.blocks).then(|| &w[b * bb..(b + 1) * bb]);
        let (dw, mw) =
            blk.map_or((0.0, 0.0), |blk| (f16_at(blk, 0), if t == QuantType::Q4_1 { f16_at(blk, 2) } else { 0.0 }));
        let s = dw * sx;
        for (l, lane) in acc[b % 2].iter_mut().enumerate() {
            let sumi: i32 = blk.map_or(0, |blk| (4 * l..4 * l + 4).map(|i| weight_quant(t, blk, i) * q[i]).sum());
            *lane = (sumi as f32).mul_add(s, *lane);
        }
        if t == QuantType::Q4_1 {
            mc[b % 2] += mw * ms;
        }
    }
    let tree = crate::cpu::combine_lanes;
    (tree(&acc[0], 0.0) + tree(&acc[1], 0.0)) + (mc[0] + mc[1])
}

/// Which kernel runs; every one computes the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI (`vpdpbusd` on 512-bit registers, two blocks per instruction).
    #[cfg(target_arch = "x86_64")]
    Vnni512,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`, one block per instruction.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Int8Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Int8Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if x86::vnni512_available() {
                return Int8Kernel::Vnni512;
            }
            if x86::avx2_available() {
                return Int8Kernel::Avx2;
            }
        }
        Int8Kernel::Portable
    }

    /// Every kernel this CPU runs, fastest first (for tests that pin them to each other).
    pub fn available() -> Vec<Int8Kernel> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if x86::vnni512_available() {
                all.push(Int8Kernel::Vnni512);
            }
            if x86::avx2_available() {
                all.push(Int8Kernel::Avx2);
            }
        }
        all.push(Int8Kernel::Portable);
        all
    }
}

/// Below this many multiply-adds a call stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 17;

/// `y[m, n] = q8(x)[m, k] · w^T (+ bias)`, every row of `x` quantized on its own.
pub fn matmul_int8(x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, y: &mut [f32]) {
    let a = Q8Rows::quantize(x, w.cols);
    matmul_q8(Int8Kernel::detect(), &a, w, bias, y);
}

/// [`matmul_int8`] on already quantized rows and a given kernel.
pub fn matmul_q8(kernel: Int8Kernel, a: &Q8Rows, w: &QMatrix<'_>, bias: Option<&[f32]>, y: &mut [f32]) {
    assert!(supported(w.dtype), "matmul_int8: {} has no int8 kernel", w.dtype);
    let (m, n) = (a.rows(), w.rows);
    assert_eq!(a.k(), w.cols, "matmul_int8: activations of {} values, weights of {}", a.k(), w.cols);
    assert_eq!(y.len(), m * n, "matmul_int8: y.len() {} != m {m} * n {n}", y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul_int8: bias.len() {} != n {n}", b.len());
    }
    let out = crate::cpu::OutPtr(y.as_mut_ptr());
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * w.cols < PARALLEL_MIN_WORK {
        // SAFETY: shapes checked above; this call alone writes `y`.
        return unsafe { columns(kernel, a, w, bias, 0..n, out) };
    }
    let chunk = n.div_ceil(threads * 4).next_multiple_of(4);
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
        // SAFETY: shapes checked above; chunks are disjoint column ranges of `y`.
        unsafe { columns(kernel, a, w, bias, c * chunk..n.min((c + 1) * chunk), out) };
    });
}

/// Columns `cols` of `y` for every row of `a`: four weight rows at a time (their blocks unpacked
/// once) against up to four activation rows.
///
/// # Safety
/// Shapes as checked by [`matmul_q8`]; no other thread writes columns `cols` meanwhile.
pub(crate) unsafe fn columns(
    kernel: Int8Kernel,
    a: &Q8Rows,
    w: &QMatrix<'_>,
    bias: Option<&[f32]>,
    cols: std::ops::Range<usize>,
    y: crate::cpu::OutPtr,
) {
    let (m, n) = (a.rows(), w.rows);
    let mut j = cols.start;
    while j < cols.end {
        let nr = 4.min(cols.end - j);
        // Short groups repeat their last weight row; the extra results are dropped.
        let ws = [0, 1, 2, 3].map(|t| w.row_data(j + t.min(nr - 1)..j + t.min(nr - 1) + 1).as_ptr());
        let mut i = 0;
        while i < m {
            let mr = if i + 4 <= m { 4 } else { 1 };
            let mut res = [[0f32; 4]; 4];
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::Vnni512 | Int8Kernel::Avx2 => x86::tile(kernel, w.dtype, a, i, mr, &ws, &mut res),
                Int8Kernel::Portable => {
                    for (r, row) in res.iter_mut().enumerate().take(mr) {
                        for (t, o) in row.iter_mut().enumerate().take(nr) {
                            *o = dot_portable(w.dtype, w.row_data(j + t..j + t + 1), a, i + r);
                        }
                    }
                }
            }
            for (r, row) in res.iter().enumerate().take(mr) {
                for (t, &v) in row.iter().enumerate().take(nr) {
                    let c = j + t;
                    // SAFETY: `(i + r) * n + c < m * n`; only this task writes column `c`.
                    unsafe { *y.get().add((i + r) * n + c) = v + bias.map_or(0.0, |b| b[c]) };
                }
            }
            i += mr;
        }
        j += nr;
    }
}

#[cfg(test)]
mod tests;
