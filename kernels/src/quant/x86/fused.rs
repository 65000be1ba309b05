//! The AVX2 fused small-batch kernels: a few activation rows against a few quantized weight
//! rows, each weight block dequantized in registers (32-weight formats) or into an L1 buffer
//! (K formats) and dotted at once, never widening a panel. Each result equals the portable
//! dot product on the dequantized rows bit for bit (pinned by `quant::tests`).

use std::arch::x86_64::*;

use super::dequant::dequant_block;
use super::{f16c_at, PREFETCH_BYTES};
use crate::quant::QuantType;

/// Whether [`dot_rows_dequant`] serves `t`: the K formats (256-weight super-blocks), which the
/// register kernels below do not unpack.
pub(crate) fn fused_dequant_available(t: QuantType) -> bool {
    matches!(t, QuantType::Q4_K | QuantType::Q6_K)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// Whether the small-batch fused path (one of the kernels below) serves `t`.
pub(crate) fn fused_any(t: QuantType) -> bool {
    fused_available(t) || fused_dequant_available(t)
}

/// Rows `x[..m]` (each `k` floats, `m <= 8`) against weight rows `ws[..nr]` (`nr <= 4`) of a K
/// format: each super-block of the `nr` rows is dequantized (AVX2, the portable bits) into a
/// stack buffer in L1, then fed to eight-lane sums in `k` order with unfused multiplies and
/// adds, so `out[i][j]` is [`crate::cpu::dot`] of row `i` with dequantized row `j`, bit for bit
/// (`k` is a multiple of 256, so no tail). The buffer is written once per super-block and
/// reused by all `m` rows, where the panel path widens a 32 KiB panel and runs a GEMM tile.
/// A 512-bit variant (two rows per register, interleaved buffer) measured slower here: the
/// dequantization dominates and runs at a lower clock in 512-bit code.
///
/// # Safety
/// [`fused_dequant_available`] holds for `t`; `x` is `m * k` floats; `ws[..nr]` point at one
/// row each.
#[target_feature(enable = "avx2,f16c,fma")]
pub(crate) unsafe fn dot_rows_dequant(
    t: QuantType,
    x: &[f32],
    m: usize,
    ws: &[*const u8; 4],
    nr: usize,
    k: usize,
    out: &mut [[f32; 4]; 8],
) {
    debug_assert!(m <= 8 && nr <= 4 && x.len() >= m * k);
    let bb = t.block_bytes();
    let mut buf = [[0f32; 256]; 4];
    let mut acc = [[_mm256_setzero_ps(); 4]; 8];
    for blk in 0..k / 256 {
        for (j, row) in buf.iter_mut().enumerate().take(nr) {
            dequant_block(t, ws[j].add(blk * bb), row.as_mut_ptr(), 8);
        }
        for (i, acc) in acc.iter_mut().enumerate().take(m) {
            let xr = x.as_ptr().add(i * k + blk * 256);
            if nr == 4 {
                // Four independent add chains: one chain alone waits on the add latency.
                let mut a = [acc[0], acc[1], acc[2], acc[3]];
                for g in 0..32 {
                    let xv = _mm256_loadu_ps(xr.add(8 * g));
                    for (j, a) in a.iter_mut().enumerate() {
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(xv, _mm256_loadu_ps(buf[j].as_ptr().add(8 * g))));
                    }
                }
                acc[..4].copy_from_slice(&a);
                continue;
            }
            for j in 0..nr {
                let mut a = acc[j];
                for g in 0..32 {
                    let xv = _mm256_loadu_ps(xr.add(8 * g));
                    a = _mm256_add_ps(a, _mm256_mul_ps(xv, _mm256_loadu_ps(buf[j].as_ptr().add(8 * g))));
                }
                acc[j] = a;
            }
        }
    }
    for i in 0..m {
        for j in 0..nr {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]);
            out[i][j] = crate::cpu::combine_lanes(&lanes, 0.0);
        }
    }
}

/// Whether [`dot_rows`] can run here.
pub(crate) fn fused_available(t: QuantType) -> bool {
    matches!(t, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The `MR x NR` dot products of rows `xs[..MR]` with quantized weight rows `ws[..NR]` (each
/// `k / 32` blocks of a 32-weight type), dequantizing each block in registers. Each result is
/// [`crate::cpu::dot`] of the row with the dequantized weights, bit for bit: eight lanes fed in
/// `k` order, the same unfused multiply and add, the same combination (`k` is a multiple of 32,
/// so no tail). Several weight rows (or several `x` rows) give independent add chains.
///
/// # Safety
/// [`fused_available`] holds for `t`; `xs[..MR]` point at `k` floats; `ws[..NR]` at one row each.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_rows<const MR: usize, const NR: usize>(
    t: QuantType,
    xs: &[*const f32; 4],
    ws: &[*const u8; 4],
    k: usize,
    out: &mut [[f32; 4]; 4],
) {
    match t {
        QuantType::Q4_0 => dot_rows_as::<0, MR, NR>(xs, ws, k, out),
        QuantType::Q4_1 => dot_rows_as::<1, MR, NR>(xs, ws, k, out),
        _ => dot_rows_as::<2, MR, NR>(xs, ws, k, out),
    }
}

/// `T`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0.
#[inline(always)]
unsafe fn dot_rows_as<const T: u8, const MR: usize, const NR: usize>(
    xs: &[*const f32; 4],
    ws: &[*const u8; 4],
    k: usize,
    out: &mut [[f32; 4]; 4],
) {
    let bb = [18, 20, 34][T as usize];
    let mask = _mm256_set1_epi32(0x0F);
    let eight = _mm256_set1_epi32(8);
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    for bi in 0..k / 32 {
        let (mut d, mut m) = ([0f32; NR], [0f32; NR]);
        for j in 0..NR {
            let b = ws[j].add(bi * bb);
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH_BYTES) as *const i8);
            d[j] = f16c_at(b);
            if T == 1 {
                m[j] = f16c_at(b.add(2));
            }
        }
        // Groups of eight weights in `k` order: 0 and 1 are low nibbles of bytes 0..8 and 8..16,
        // 2 and 3 the high nibbles of the same bytes (Q8_0: bytes 8g..).
        for g in 0..4 {
            let mut wv = [_mm256_setzero_ps(); NR];
            for j in 0..NR {
                let b = ws[j].add(bi * bb);
                let q = if T == 2 {
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.add(2 + 8 * g) as *const __m128i))
                } else {
                    let qs = b.add(if T == 1 { 4 } else { 2 });
                    let raw = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8 * (g % 2)) as *const __m128i));
                    let nib = if g < 2 { _mm256_and_si256(raw, mask) } else { _mm256_srli_epi32(raw, 4) };
                    if T == 0 {
                        _mm256_sub_epi32(nib, eight)
                    } else {
                        nib
                    }
                };
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(d[j]));
                wv[j] = if T == 1 { _mm256_add_ps(v, _mm256_set1_ps(m[j])) } else { v };
            }
            let p = bi * 32 + 8 * g;
            for i in 0..MR {
                let xv = _mm256_loadu_ps(xs[i].add(p));
                for j in 0..NR {
                    acc[i][j] = _mm256_add_ps(acc[i][j], _mm256_mul_ps(xv, wv[j]));
                }
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]);
            out[i][j] = crate::cpu::combine_lanes(&lanes, 0.0);
        }
    }
}
