//! AVX2 dequantization of the 32-weight block formats. Integer to f32 conversion is exact and
//! the multiplies and adds are the portable path's, unfused and in its order, so the floats are
//! identical (pinned by `quant::tests`).

use std::arch::x86_64::*;

use half::f16;

use super::f16c_at;
use crate::quant::QuantType;

/// f16 to f32 eight at a time (exact, as every f16 is an f32).
///
/// # Safety
/// AVX2 and F16C are available; `bytes` is `2 * out.len()` bytes.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn f16s(bytes: &[u8], out: &mut [f32]) {
    let main = out.len() / 8 * 8;
    for i in (0..main).step_by(8) {
        let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    for i in main..out.len() {
        out[i] = f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32();
    }
}

/// bf16 is the top half of an f32: widen and shift, eight at a time.
///
/// # Safety
/// AVX2 is available; `bytes` is `2 * out.len()` bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn bf16s(bytes: &[u8], out: &mut [f32]) {
    let main = out.len() / 8 * 8;
    for i in (0..main).step_by(8) {
        let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const __m128i);
        let w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
    }
    for i in main..out.len() {
        out[i] = f32::from_bits((u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as u32) << 16);
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0 (`q - 8` times `d`) and Q4_1 (`q * d + m`) blocks of `bb` bytes.
///
/// # Safety
/// AVX2 is available; `bytes` is `out.len() / 32` whole blocks.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn q4(bytes: &[u8], out: &mut [f32], bb: usize, with_min: bool) {
    let mask = _mm256_set1_epi32(0x0F);
    let eight = _mm256_set1_epi32(8);
    let qoff = if with_min { 4 } else { 2 };
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let m = _mm256_set1_ps(if with_min { f16_at(b, 2) } else { 0.0 });
        let qs = b.as_ptr().add(qoff);
        for h in 0..2 {
            // Eight bytes widened to eight i32 lanes: weights 8h.. (low nibbles) and 16 + 8h.. (high).
            let raw = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8 * h) as *const __m128i));
            let mut lo = _mm256_and_si256(raw, mask);
            let mut hi = _mm256_srli_epi32(raw, 4);
            if !with_min {
                lo = _mm256_sub_epi32(lo, eight);
                hi = _mm256_sub_epi32(hi, eight);
            }
            let (lo, hi) = (_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi));
            let (lo, hi) = if with_min {
                (_mm256_add_ps(_mm256_mul_ps(lo, d), m), _mm256_add_ps(_mm256_mul_ps(hi, d), m))
            } else {
                (_mm256_mul_ps(lo, d), _mm256_mul_ps(hi, d))
            };
            _mm256_storeu_ps(y.as_mut_ptr().add(8 * h), lo);
            _mm256_storeu_ps(y.as_mut_ptr().add(16 + 8 * h), hi);
        }
    }
}

/// # Safety
/// AVX2 is available; `bytes` is `out.len() / 32` whole Q8_0 blocks.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn q8_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(b, 0));
        for g in 0..4 {
            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.as_ptr().add(2 + 8 * g) as *const __m128i));
            _mm256_storeu_ps(y.as_mut_ptr().add(8 * g), _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}

/// Q4_K super-blocks (ggml's `dequantize_row_q4_K`): per sub-block pair the scalar
/// `d * sc` and `dmin * m` as the portable path computes them, then `d1 * q - m1` eight lanes at
/// a time (multiply, then subtract; unfused).
///
/// # Safety
/// AVX2 and F16C are available; `bytes` is `out.len() / 256` whole Q4_K blocks.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn q4_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(256)) {
        q4_k_block::<false>(b.as_ptr(), y.as_mut_ptr(), 8);
    }
}

/// One Q4_K block at `b`; weights `8g..8g + 8` go to `y + g * gs` (`gs` 8: contiguous; 16: every
/// other group of eight, to interleave two rows).
///
/// With `FMA`, `d1 * q - m1` is one fused multiply-add: `d1 * q` is exact in f32 (`d1` is an
/// f16 times a 6-bit scale, 17 bits, and `q` 4 bits), so one rounding after subtracting `m1` is
/// the unfused result.
#[inline(always)]
unsafe fn q4_k_block<const FMA: bool>(b: *const u8, y: *mut f32, gs: usize) {
    let mask = _mm256_set1_epi32(0x0F);
    let (d, dmin) = (f16c_at(b), f16c_at(b.add(2)));
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let qs = b.add(16);
    for c in 0..4 {
        let (sc1, m1) = crate::quant::blocks::scale_min_k4(2 * c, scales);
        let (sc2, m2) = crate::quant::blocks::scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (_mm256_set1_ps(d * sc1 as f32), _mm256_set1_ps(dmin * m1 as f32));
        let (d2, m2) = (_mm256_set1_ps(d * sc2 as f32), _mm256_set1_ps(dmin * m2 as f32));
        for l in 0..4 {
            let raw = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(32 * c + 8 * l) as *const __m128i));
            let lo = _mm256_cvtepi32_ps(_mm256_and_si256(raw, mask));
            let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(raw, 4));
            let (lo, hi) = if FMA {
                (_mm256_fmsub_ps(d1, lo, m1), _mm256_fmsub_ps(d2, hi, m2))
            } else {
                (_mm256_sub_ps(_mm256_mul_ps(d1, lo), m1), _mm256_sub_ps(_mm256_mul_ps(d2, hi), m2))
            };
            _mm256_storeu_ps(y.add((8 * c + l) * gs), lo);
            _mm256_storeu_ps(y.add((8 * c + 4 + l) * gs), hi);
        }
    }
}

/// Q6_K super-blocks (ggml's `dequantize_row_q6_K`): the 6-bit quants rebuilt from `ql` and
/// `qh` in 32-bit lanes, minus 32, times the scalar `d * scale` of their 16-weight group.
///
/// # Safety
/// AVX2 and F16C are available; `bytes` is `out.len() / 256` whole Q6_K blocks.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn q6_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
        q6_k_block(b.as_ptr(), y.as_mut_ptr(), 8);
    }
}

/// One Q6_K block at `b`, written as [`q4_k_block`] writes.
#[inline(always)]
unsafe fn q6_k_block(b: *const u8, y: *mut f32, gs: usize) {
    let (m4, m2) = (_mm256_set1_epi32(0x0F), _mm256_set1_epi32(3));
    let k32 = _mm256_set1_epi32(32);
    let d = f16c_at(b.add(208));
    let load = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
    for n in 0..2 {
        let ql = b.add(64 * n);
        let qh = b.add(128 + 32 * n);
        let sc = b.add(192 + 8 * n);
        let s = |i: usize| _mm256_set1_ps(d * (*sc.add(i) as i8) as f32);
        for l in 0..4 {
            let is = l / 2;
            let (a, c, h) = (load(ql.add(8 * l)), load(ql.add(8 * l + 32)), load(qh.add(8 * l)));
            let q1 = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_slli_epi32(_mm256_and_si256(h, m2), 4));
            let q2 = _mm256_or_si256(
                _mm256_and_si256(c, m4),
                _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 2), m2), 4),
            );
            let q3 = _mm256_or_si256(
                _mm256_srli_epi32(a, 4),
                _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 4), m2), 4),
            );
            let q4 = _mm256_or_si256(_mm256_srli_epi32(c, 4), _mm256_slli_epi32(_mm256_srli_epi32(h, 6), 4));
            let q = [q1, q2, q3, q4].map(|q| _mm256_cvtepi32_ps(_mm256_sub_epi32(q, k32)));
            let y = y.add(16 * n * gs);
            for (t, q) in q.into_iter().enumerate() {
                _mm256_storeu_ps(y.add((4 * t + l) * gs), _mm256_mul_ps(s(is + 2 * t), q));
            }
        }
    }
}

/// One block of a K format at `b` (Q4_K with the fused multiply-subtract, else Q6_K), written
/// as [`q4_k_block`] writes; the fused kernels' per-block step.
#[inline(always)]
pub(super) unsafe fn dequant_block(t: QuantType, b: *const u8, y: *mut f32, gs: usize) {
    match t {
        QuantType::Q4_K => q4_k_block::<true>(b, y, gs),
        _ => q6_k_block(b, y, gs),
    }
}
