//! AVX2 dequantization of the 32-weight block formats. Integer to f32 conversion is exact and
//! the multiplies and adds are the portable path's, unfused and in its order, so the floats are
//! identical (pinned by `quant::tests`).

use std::arch::x86_64::*;

use half::f16;

use super::QuantType;

/// Dequantizes with AVX2 when this CPU has it and the type has a SIMD path; `false` otherwise.
pub(super) fn dequantize(t: QuantType, bytes: &[u8], out: &mut [f32]) -> bool {
    if !std::arch::is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: AVX2 is present; the caller checked `bytes` holds exactly `out.len()` weights.
    unsafe {
        match t {
            QuantType::Q4_0 => q4(bytes, out, 18, false),
            QuantType::Q4_1 => q4(bytes, out, 20, true),
            QuantType::Q8_0 => q8_0(bytes, out),
            _ => return false,
        }
    }
    true
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0 (`q - 8` times `d`) and Q4_1 (`q * d + m`) blocks of `bb` bytes.
///
/// # Safety
/// AVX2 is available; `bytes` is `out.len() / 32` whole blocks.
#[target_feature(enable = "avx2")]
unsafe fn q4(bytes: &[u8], out: &mut [f32], bb: usize, with_min: bool) {
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
unsafe fn q8_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(b, 0));
        for g in 0..4 {
            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.as_ptr().add(2 + 8 * g) as *const __m128i));
            _mm256_storeu_ps(y.as_mut_ptr().add(8 * g), _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}
