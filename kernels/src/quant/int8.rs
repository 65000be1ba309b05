//! The int8-activation matmul (opt-in, not exact): each row of `x` is quantized per 32-value
//! block as ggml's `quantize_row_q8_0` does (`d = max|x| / 127`, `q = round(x / d)`), and dotted
//! with Q4_0 / Q4_1 / Q8_0 weight blocks in integers.
//!
//! Invariants: a block's integer dot is exact, so the SIMD and portable paths agree bit for bit
//! (the floats are combined in one fixed order: `acc += (d_w * d_x) * sumi`, plus
//! `(m_w * d_x) * sum(q_x)` for Q4_1, block by block); each row is quantized and reduced on its
//! own, so results stay batch-invariant. Not wired into the engine: as written (a horizontal sum
//! and scalar f16 scales per block, AVX2 only, no VNNI) it is slower than the exact fused path
//! (`examples/qmatmul.rs` times both), so it is the reference a faster int8 kernel must match.

use half::f16;
use rayon::prelude::*;

use super::{QMatrix, QuantType};

/// One activation row in Q8 blocks.
pub struct Q8Row {
    pub d: Vec<f32>,
    /// Sum of each block's quants (for Q4_0's `- 8` and Q4_1's min).
    pub sum: Vec<i32>,
    pub q: Vec<i8>,
}

/// Quantizes `x` (a multiple of 32 values) as ggml's `quantize_row_q8_0_ref`, except that the
/// scale stays f32 (ggml rounds it to f16; pdq has no reason to).
pub fn quantize_row(x: &[f32]) -> Q8Row {
    assert!(x.len().is_multiple_of(32), "quantize_row: {} values are not whole blocks", x.len());
    let n = x.len() / 32;
    let (mut d, mut sum, mut q) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(x.len()));
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        let mut s = 0i32;
        for &v in b {
            let r = (v * inv).round() as i8;
            s += r as i32;
            q.push(r);
        }
        d.push(scale);
        sum.push(s);
    }
    Q8Row { d, sum, q }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The exact integer dot of weight block `b` (its stored quants, unshifted) with 32 quants.
fn block_sumi(t: QuantType, b: &[u8], q: &[i8]) -> i32 {
    match t {
        QuantType::Q8_0 => (0..32).map(|j| (b[2 + j] as i8) as i32 * q[j] as i32).sum(),
        _ => {
            let qs = &b[if t == QuantType::Q4_1 { 4 } else { 2 }..];
            (0..16).map(|j| (qs[j] & 0x0F) as i32 * q[j] as i32 + (qs[j] >> 4) as i32 * q[j + 16] as i32).sum()
        }
    }
}

/// Combines the per-block integer dots in the one fixed float order.
fn combine(t: QuantType, w: &[u8], a: &Q8Row, sumi: impl Fn(usize, &[u8]) -> i32) -> f32 {
    let bb = t.block_bytes();
    let mut acc = 0f32;
    for (i, b) in w.chunks_exact(bb).enumerate() {
        let s = sumi(i, b);
        let dw = f16_at(b, 0);
        acc += match t {
            QuantType::Q4_0 => (dw * a.d[i]) * (s - 8 * a.sum[i]) as f32,
            QuantType::Q4_1 => (dw * a.d[i]) * s as f32 + (f16_at(b, 2) * a.d[i]) * a.sum[i] as f32,
            _ => (dw * a.d[i]) * s as f32,
        };
    }
    acc
}

/// Whether `t` has an int8-activation kernel.
pub fn supported(t: QuantType) -> bool {
    matches!(t, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0)
}

/// The portable dot of one weight row with a quantized activation row.
pub fn dot_portable(t: QuantType, w: &[u8], a: &Q8Row) -> f32 {
    combine(t, w, a, |i, b| block_sumi(t, b, &a.q[32 * i..32 * i + 32]))
}

/// [`dot_portable`], with AVX2 integer dots where present.
pub fn dot(t: QuantType, w: &[u8], a: &Q8Row) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; `b` is one whole block and the quants are its 32.
        return combine(t, w, a, |i, b| unsafe { x86::block_sumi(t, b, a.q[32 * i..].as_ptr()) });
    }
    dot_portable(t, w, a)
}

/// `y[m, n] = q8(x)[m, k] · w^T (+ bias)`: every row of `x` quantized on its own.
pub fn matmul_int8(x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, y: &mut [f32]) {
    assert!(supported(w.dtype), "matmul_int8: {} has no int8 kernel", w.dtype);
    let (k, n) = (w.cols, w.rows);
    assert_eq!(x.len() % k, 0, "matmul_int8: x.len() {} not a multiple of k {k}", x.len());
    assert_eq!(y.len(), x.len() / k * n, "matmul_int8: y.len()");
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        let a = quantize_row(xr);
        yr.par_chunks_mut(64).enumerate().for_each(|(c, out)| {
            for (t, o) in out.iter_mut().enumerate() {
                let j = c * 64 + t;
                *o = dot(w.dtype, w.row_data(j..j + 1), &a) + bias.map_or(0.0, |b| b[j]);
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::QuantType;

    /// The exact integer dot of one weight block with 32 activation quants.
    ///
    /// # Safety
    /// AVX2 is available; `b` is one whole block of `t`; `q` points at 32 quants.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_sumi(t: QuantType, b: &[u8], q: *const i8) -> i32 {
        let x = _mm256_loadu_si256(q as *const __m256i);
        let p16 = if t == QuantType::Q8_0 {
            let w = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
            // |w| * sign(x, w) = w * x, with the unsigned operand first as maddubs wants.
            _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
        } else {
            let qs = _mm_loadu_si128(b.as_ptr().add(if t == QuantType::Q4_1 { 4 } else { 2 }) as *const __m128i);
            let m = _mm_set1_epi8(0x0F);
            let (lo, hi) = (_mm_and_si128(qs, m), _mm_and_si128(_mm_srli_epi16(qs, 4), m));
            _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), x)
        };
        let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        let s = _mm_add_epi32(_mm256_castsi256_si128(p32), _mm256_extracti128_si256(p32, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::matmul_reference;
    use crate::quant::random::{random_blocks, Lcg};

    #[test]
    fn int8_activations_stay_close_to_the_exact_matmul_and_simd_is_portable() {
        let mut rng = Lcg(21);
        let (k, n) = (512, 96);
        for t in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            let bytes = random_blocks(t, n * k, &mut rng);
            let w = QMatrix::new(t, n, k, &bytes).unwrap();
            let x: Vec<f32> = (0..3 * k).map(|_| rng.next_f32()).collect();
            let mut want = vec![0f32; 3 * n];
            matmul_reference(&x, &w.to_f32(), None, k, &mut want);
            let mut got = vec![f32::NAN; 3 * n];
            matmul_int8(&x, &w, None, &mut got);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            assert!(err < 2e-2, "{t}: relative error {err:e}");
            for (r, xr) in x.chunks_exact(k).enumerate() {
                let a = quantize_row(xr);
                for j in 0..n {
                    let row = w.row_data(j..j + 1);
                    assert_eq!(dot(t, row, &a).to_bits(), dot_portable(t, row, &a).to_bits(), "{t} row {r} col {j}");
                    // Batch invariance: a row's result is the same alone as in the batch.
                    assert_eq!(got[r * n + j].to_bits(), dot_portable(t, row, &a).to_bits());
                }
            }
        }
    }
}
