//! The x86 SIMD paths of the quantized formats, picked at run time by CPU feature: AVX2 block
//! dequantization ([`dequant`]), the AVX2 fused small-batch dot products ([`fused`]) and their
//! AVX-512 variants ([`avx512`]). Every kernel yields the portable path's floats bit for bit
//! (pinned by `quant::tests`); this file holds the dispatcher and the helpers they share.

mod avx512;
mod dequant;
mod fused;

use std::arch::x86_64::*;

use super::QuantType;

pub(crate) use avx512::{dot_rows4_avx512, dot_rows4_q4k_avx512, fused512_available};
#[cfg(test)]
pub(crate) use fused::fused_available;
pub(crate) use fused::{dot_rows, dot_rows_dequant, fused_any, fused_dequant_available};

/// Dequantizes with AVX2 when this CPU has it and the type has a SIMD path; `false` otherwise.
pub(super) fn dequantize(t: QuantType, bytes: &[u8], out: &mut [f32]) -> bool {
    if !std::arch::is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: AVX2 is present (F16C checked where used); the caller checked `bytes` holds
    // exactly `out.len()` weights.
    unsafe {
        match t {
            QuantType::Q4_0 => dequant::q4(bytes, out, 18, false),
            QuantType::Q4_1 => dequant::q4(bytes, out, 20, true),
            QuantType::Q8_0 => dequant::q8_0(bytes, out),
            QuantType::Q4_K if std::arch::is_x86_feature_detected!("f16c") => dequant::q4_k(bytes, out),
            QuantType::Q6_K if std::arch::is_x86_feature_detected!("f16c") => dequant::q6_k(bytes, out),
            QuantType::F16 if std::arch::is_x86_feature_detected!("f16c") => dequant::f16s(bytes, out),
            QuantType::BF16 => dequant::bf16s(bytes, out),
            QuantType::F32 => {
                for (y, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            _ => return false,
        }
    }
    true
}

/// f16 to f32 with F16C (exact, so equal to `half`'s conversion).
#[inline(always)]
pub(super) unsafe fn f16c_at(b: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*b, *b.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// How far ahead of the current block the fused kernels prefetch each weight row. Decode reads
/// every weight once, from DRAM; the hardware prefetcher alone left the lm_head at a third of
/// the bandwidth here. Measured (Zen 4, Q8_0 576 x 49152, one thread): 512 B ahead 5.8 ms,
/// 2 KiB 3.5 ms, 4 KiB 3.2 ms.
pub(crate) const PREFETCH_BYTES: usize = 4096;
