//! The int8-activation tiles on x86: four weight rows against one or four activation rows, the
//! integer dots by `vpdpbusd` (AVX-512 VNNI, two blocks per register) or `vpmaddubsw` +
//! `vpmaddwd` (AVX2, one block per register). Both yield the eight partial sums per block that
//! the portable definition names, then the same fused multiply-adds, so the bits agree.

use std::arch::x86_64::*;

use super::{Int8Kernel, Q8Rows};
use crate::quant::x86::PREFETCH_BYTES;
use crate::quant::QuantType;

pub(super) fn vnni512_available() -> bool {
    avx2_available()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("gfni")
}

/// [`super::Q8Rows::quantize`]'s per-row work compiled for AVX-512 (or AVX2): the same IEEE
/// operations, so the same bits, but `round_ties_even` becomes `vrndscaleps` instead of a call
/// to libm's `rintf` per value, and the loops vectorize.
///
/// # Safety
/// AVX-512F/VL/BW (`wide`) or AVX2 and FMA are available.
pub(super) unsafe fn quantize_rows(wide: bool, out: &mut Q8Rows, x: &[f32], k: usize) {
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw")]
    unsafe fn avx512(out: &mut Q8Rows, x: &[f32], k: usize) {
        out.fill(x, k)
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(out: &mut Q8Rows, x: &[f32], k: usize) {
        out.fill(x, k)
    }
    if wide {
        avx512(out, x, k)
    } else {
        avx2(out, x, k)
    }
}

pub(super) fn avx2_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// `T`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0.
fn type_code(t: QuantType) -> u8 {
    match t {
        QuantType::Q4_0 => 0,
        QuantType::Q4_1 => 1,
        _ => 2,
    }
}

/// Rows `i0..i0 + mr` (`mr` is 1 or 4) of `a` against the four weight rows `ws` into `out[r][j]`.
///
/// # Safety
/// `kernel` is available on this CPU; `ws` point at whole rows of `a.k()` weights of type `t`;
/// rows `i0..i0 + mr` exist in `a`.
pub(super) unsafe fn tile(
    kernel: Int8Kernel,
    t: QuantType,
    a: &Q8Rows,
    i0: usize,
    mr: usize,
    ws: &[*const u8; 4],
    out: &mut [[f32; 4]; 4],
) {
    match (kernel, type_code(t), mr) {
        (Int8Kernel::Vnni512, 0, 4) => tile_vnni::<0, 4>(a, i0, ws, out),
        (Int8Kernel::Vnni512, 1, 4) => tile_vnni::<1, 4>(a, i0, ws, out),
        (Int8Kernel::Vnni512, 2, 4) => tile_vnni::<2, 4>(a, i0, ws, out),
        (Int8Kernel::Vnni512, 0, _) => tile_vnni::<0, 1>(a, i0, ws, out),
        (Int8Kernel::Vnni512, 1, _) => tile_vnni::<1, 1>(a, i0, ws, out),
        (Int8Kernel::Vnni512, 2, _) => tile_vnni::<2, 1>(a, i0, ws, out),
        (_, code, _) => {
            for (r, row) in out.iter_mut().enumerate().take(mr) {
                match code {
                    0 => row_avx2::<0>(a, i0 + r, ws, row),
                    1 => row_avx2::<1>(a, i0 + r, ws, row),
                    _ => row_avx2::<2>(a, i0 + r, ws, row),
                }
            }
        }
    }
}

const BLOCK_BYTES: [usize; 3] = [18, 20, 34];

/// The first four bytes of block `b` of row `w` (its f16 scale, and Q4_1's f16 min), or zero
/// for the padding block.
#[inline(always)]
unsafe fn head<const T: u8>(w: *const u8, b: usize, blocks: usize) -> i32 {
    if b < blocks {
        (w.add(b * BLOCK_BYTES[T as usize]) as *const i32).read_unaligned()
    } else {
        0
    }
}

/// The final combination of the portable definition, from the two accumulators' lanes.
#[inline(always)]
fn finish(even: &[f32; 8], odd: &[f32; 8], mc: [f32; 2]) -> f32 {
    let tree = crate::cpu::combine_lanes;
    (tree(even, 0.0) + tree(odd, 0.0)) + (mc[0] + mc[1])
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni,avx512vbmi,gfni")]
unsafe fn tile_vnni<const T: u8, const MR: usize>(a: &Q8Rows, i0: usize, ws: &[*const u8; 4], out: &mut [[f32; 4]; 4]) {
    let (blocks, stride) = (a.blocks, a.stride);
    let bb = BLOCK_BYTES[T as usize];
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let off = if T == 1 { 4 } else { 2 };
    // Byte o of the unpacked pair: 128-bit lanes 0 and 1 take block b0's packed bytes (low
    // nibbles, weights 0..16, then high, 16..32), lanes 2 and 3 block b1's.
    let place_bytes: [u8; 64] = std::array::from_fn(|o| ((o / 32) * bb + off + o % 16) as u8);
    let place = _mm512_loadu_si512(place_bytes.as_ptr() as *const __m512i);
    // Each byte's low nibble (lanes 0, 2) or high nibble (lanes 1, 3) in one GF(2) affine map
    // per qword: output bit k is input bit k (or k + 4) for k < 4, zero above.
    let (low, high) = (0x0102_0408_0000_0000u64 as i64, 0x1020_4080_0000_0000u64 as i64);
    let nibble_of = _mm512_set_epi64(high, high, low, low, high, high, low, low);
    // Bytes 0..16 from rows 0 and 1, 16..32 (the same indices) from rows 2 and 3.
    let gather_bytes: [u8; 64] = std::array::from_fn(|o| {
        let (row, h, byte) = ((o / 8) % 2, (o / 4) % 2, o % 4);
        (64 * row + h * bb + byte) as u8
    });
    let gather_heads = _mm512_loadu_si512(gather_bytes.as_ptr() as *const __m512i);
    // The first `n` bytes (Q8_0's pair, 68 bytes, is never loaded whole: its mask is unused).
    let first = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    let (pair_mask, one_mask, head_mask) = (first(2 * bb), first(bb), first(bb + 4));
    // Lane 4j + 2h of the scale products is row j's `d_w * d_x` for block h of the pair.
    let spread: [__m512i; 4] = std::array::from_fn(|j| {
        let (e, o) = (4 * j as i32, 4 * j as i32 + 2);
        _mm512_setr_epi32(e, e, e, e, e, e, e, e, o, o, o, o, o, o, o, o)
    });
    let mut acc = [[_mm512_setzero_ps(); 4]; MR];
    let mut mc = [_mm512_setzero_ps(); MR];
    for b0 in (0..stride).step_by(2) {
        let b1 = b0 + 1;
        let has1 = b1 < blocks;
        let whole = (blocks - b0) * bb >= 64;
        // Each row's pair of blocks as 64 unsigned bytes in quant order (block b0's 32, then b1's).
        // Q4: one 64-byte load from the pair's start, one byte permute that places each block's
        // 16 packed bytes twice, one GF(2) affine map that takes the low nibbles of one copy and
        // the high of the other: where two half loads, two inserts, two shifts, two masks and a
        // lane shuffle were (the kernel is bound by these operations, not by memory). The heads
        // come out of the same registers.
        let mut wv = [_mm512_setzero_si512(); 4];
        let mut raw = [_mm512_setzero_si512(); 4];
        for (j, v) in wv.iter_mut().enumerate() {
            let p0 = ws[j].add(b0 * bb);
            // A pair of blocks spans up to two cache lines (Q8_0: 68 bytes).
            _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(PREFETCH_BYTES) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(PREFETCH_BYTES + 2 * bb - 1) as *const i8);
            if T == 2 {
                let p1 = ws[j].add(b1 * bb);
                let lo = _mm256_loadu_si256(p0.add(2) as *const __m256i);
                let hi = if has1 { _mm256_loadu_si256(p1.add(2) as *const __m256i) } else { _mm256_setzero_si256() };
                // Signed weights made unsigned (w + 128); the activations' sums take the 128 back off.
                *v = _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi), flip);
                // The two heads (bytes 0..4 of each block) for the scales below.
                raw[j] = _mm512_maskz_loadu_epi8(if has1 { head_mask } else { 0xF }, p0 as *const i8);
            } else {
                // A plain 64-byte load where the row has that many bytes left (masked loads cost
                // about 8% here); the row's last pair is masked, so nothing past it is read.
                raw[j] = if whole {
                    _mm512_loadu_si512(p0 as *const __m512i)
                } else {
                    _mm512_maskz_loadu_epi8(if has1 { pair_mask } else { one_mask }, p0 as *const i8)
                };
                let twice = _mm512_permutexvar_epi8(place, raw[j]);
                *v = _mm512_gf2p8affine_epi64_epi8::<0>(twice, nibble_of);
            }
        }
        // [d, m] of (row j, block h) at halves 4j + 2h, 4j + 2h + 1: bytes 0..4 and bb..bb + 4
        // of each row's pair, gathered by two two-source byte permutes.
        let h01 = _mm512_permutex2var_epi8(raw[0], gather_heads, raw[1]);
        let h23 = _mm512_permutex2var_epi8(raw[2], gather_heads, raw[3]);
        let heads = _mm512_castsi512_si256(_mm512_mask_blend_epi32(0x00F0, h01, h23));
        let dm = _mm512_cvtph_ps(heads);
        for i in 0..MR {
            let at = (i0 + i) * stride + b0;
            // The digits of blocks b0 and b1, and [s, ms] of both repeated for the four weight
            // rows: times [d_w, m_w], the scales and the mins.
            let xq = [0, 1].map(|d| _mm512_loadu_si512(a.q[d].as_ptr().add(at * 32) as *const __m512i));
            let px = _mm512_broadcast_f32x4(_mm_loadu_ps(a.scales.as_ptr().add(2 * at)));
            let prod = _mm512_mul_ps(dm, px);
            let init = if T == 1 {
                _mm512_setzero_si512()
            } else {
                let neg = _mm512_loadu_si512(a.neg_sums.as_ptr().add(at * 8) as *const __m512i);
                if T == 0 {
                    _mm512_slli_epi32::<3>(neg)
                } else {
                    _mm512_slli_epi32::<7>(neg)
                }
            };
            if T == 1 {
                mc[i] = _mm512_add_ps(mc[i], prod);
            }
            for j in 0..4 {
                // dot(w, Q) = 128 dot(w, q1) + dot(w, q2), exactly (|sums| < 2^24).
                let hi = _mm512_slli_epi32::<7>(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[j], xq[0]));
                let sumi = _mm512_dpbusd_epi32(_mm512_add_epi32(hi, init), wv[j], xq[1]);
                let s = _mm512_permutexvar_ps(spread[j], prod);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), s, acc[i][j]);
            }
        }
    }
    for i in 0..MR {
        let mut m = [0f32; 16];
        _mm512_storeu_ps(m.as_mut_ptr(), mc[i]);
        for j in 0..4 {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[i][j]);
            let mins = if T == 1 { [m[4 * j + 1], m[4 * j + 3]] } else { [0.0; 2] };
            let (even, odd) = lanes.split_at(8);
            out[i][j] = finish(even.try_into().expect("8"), odd.try_into().expect("8"), mins);
        }
    }
}

/// One activation row against four weight rows, one block per 256-bit register.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_avx2<const T: u8>(a: &Q8Rows, r: usize, ws: &[*const u8; 4], out: &mut [f32; 4]) {
    let (blocks, stride) = (a.blocks, a.stride);
    let bb = BLOCK_BYTES[T as usize];
    let nibbles = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut mc = [[0f32; 2]; 4];
    for b in 0..stride {
        let at = r * stride + b;
        let xq = [0, 1].map(|d| _mm256_loadu_si256(a.q[d].as_ptr().add(at * 32) as *const __m256i));
        let neg = _mm256_loadu_si256(a.neg_sums.as_ptr().add(at * 8) as *const __m256i);
        let (sx, ms) = (a.scales[2 * at], a.scales[2 * at + 1]);
        for j in 0..4 {
            let h = head::<T>(ws[j], b, blocks);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
            let (dw, mw) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps::<1>(dm, dm)));
            let dot = |x: __m256i| {
                if T == 2 {
                    let w = _mm256_loadu_si256(ws[j].add(b * bb + 2) as *const __m256i);
                    _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)), ones)
                } else {
                    let q = _mm_loadu_si128(ws[j].add(b * bb + if T == 1 { 4 } else { 2 }) as *const __m128i);
                    let (lo, hi) = (_mm_and_si128(q, nibbles), _mm_and_si128(_mm_srli_epi16::<4>(q), nibbles));
                    _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), x), ones)
                }
            };
            let sumi = if b >= blocks {
                _mm256_setzero_si256()
            } else {
                // dot(w, Q) = 128 dot(w, q1) + dot(w, q2), exactly; Q4_0 subtracts 8 sum(Q).
                let s = _mm256_add_epi32(_mm256_slli_epi32::<7>(dot(xq[0])), dot(xq[1]));
                if T == 0 {
                    _mm256_add_epi32(s, _mm256_slli_epi32::<3>(neg))
                } else {
                    s
                }
            };
            acc[j][b % 2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(dw * sx), acc[j][b % 2]);
            if T == 1 {
                mc[j][b % 2] += mw * ms;
            }
        }
    }
    for j in 0..4 {
        let (mut even, mut odd) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(even.as_mut_ptr(), acc[j][0]);
        _mm256_storeu_ps(odd.as_mut_ptr(), acc[j][1]);
        out[j] = finish(&even, &odd, mc[j]);
    }
}
