//! The AVX-512 variants of the fused kernels: two weight rows per 512-bit register, fed the same
//! eight-lane sums in the same order as the AVX2 path, so the bits are the same (pinned by
//! `quant::tests`) with half the instructions.

use std::arch::x86_64::*;

use super::PREFETCH_BYTES;
use crate::quant::QuantType;

/// Whether [`dot_rows4_avx512`] can run here.
pub(crate) fn fused512_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("fma")
}

/// [`dot_rows::<1, 4>`](super::dot_rows) with two weight rows per 512-bit register: the low
/// eight lanes are row `2p`'s accumulator, the high eight row `2p + 1`'s, each fed exactly the
/// eight-lane sums of the AVX2 path (same values, same order), so the bits are the same; half
/// the instructions.
///
/// # Safety
/// [`fused_available`](super::fused::fused_available) for `t` and [`fused512_available`] hold;
/// `xs[0]` points at `k` floats; `ws[..4]` at one weight row each.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw")]
pub(crate) unsafe fn dot_rows4_avx512(
    t: QuantType,
    xs: &[*const f32; 4],
    ws: &[*const u8; 4],
    k: usize,
    out: &mut [[f32; 4]; 4],
) {
    match t {
        QuantType::Q4_0 => dot_rows4_512_as::<0>(xs[0], ws, k, out),
        QuantType::Q4_1 => dot_rows4_512_as::<1>(xs[0], ws, k, out),
        _ => dot_rows4_512_as::<2>(xs[0], ws, k, out),
    }
}

/// Lane `lo` of `v` into the low eight lanes, lane `hi` into the high eight. (Plain fns, not
/// closures, so they inline into the caller's target features.)
#[inline(always)]
unsafe fn spread(v: __m512, lo: i32, hi: i32) -> __m512 {
    _mm512_permutexvar_ps(_mm512_setr_epi32(lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi), v)
}

/// The `vpshufb` indices that move byte `plus + 4 (L % 2) + i` of each 128-bit lane L into
/// byte `at` of its 32-bit lane i, zeroing the other three bytes (index 0x80).
#[inline(always)]
unsafe fn pair_shuffle(plus: usize, at: usize) -> __m512i {
    let bytes: [u8; 64] = std::array::from_fn(|o| {
        let (lane, i, byte) = (o / 16, (o % 16) / 4, o % 4);
        if byte == at {
            (plus + 4 * (lane % 2) + i) as u8
        } else {
            0x80
        }
    });
    _mm512_loadu_si512(bytes.as_ptr() as *const __m512i)
}

/// Weights reach 32-bit lanes by one in-lane byte shuffle each (`vpshufb`, which also zeroes
/// the other three bytes): the source register holds rows `2p` and `2p + 1`'s packed bytes as
/// [row 2p's 16, the same, row 2p + 1's 16, the same], so every 128-bit lane has the bytes its
/// four lanes need. Each weight lands at a power-of-two multiple of its value (Q8_0 in the top
/// byte, for its sign; a Q4 high nibble still times 16), and the scale is divided by the same
/// power: both products are exact, so `q * d` (and Q4_1's one rounding of `q * d + m`) is the
/// portable value bit for bit. Where a half load, an unpack and a widening were, per eight
/// weights of two rows.
#[inline(always)]
unsafe fn dot_rows4_512_as<const T: u8>(x: *const f32, ws: &[*const u8; 4], k: usize, out: &mut [[f32; 4]; 4]) {
    let bb = [18, 20, 34][T as usize];
    let off = [2, 4, 2][T as usize];
    // Shuffle indices (within each 128-bit lane L): bytes 4 (L % 2) + i of the lane's copy, or
    // 8 + that, into byte 0 (Q4) or byte 3 (Q8_0) of lane i; 0x80 zeroes.
    let target = if T == 2 { 3 } else { 0 };
    let (idx0, idx8) = (pair_shuffle(0, target), pair_shuffle(8, target));
    let (lo_mask, hi_mask) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0xF0u8 as i8));
    // Q4_0's `- 8` at each nibble's position (low: 8, high: 8 * 16).
    let (eight_lo, eight_hi) = (_mm512_set1_epi32(8), _mm512_set1_epi32(128));
    let (s_lo, s_hi) = if T == 2 {
        (_mm512_set1_ps(1.0 / 16_777_216.0), _mm512_set1_ps(1.0 / 16_777_216.0))
    } else {
        (_mm512_set1_ps(1.0), _mm512_set1_ps(1.0 / 16.0))
    };
    let mut acc = [_mm512_setzero_ps(); 2];
    for bi in 0..k / 32 {
        let b = [ws[0].add(bi * bb), ws[1].add(bi * bb), ws[2].add(bi * bb), ws[3].add(bi * bb)];
        // Every block starts with its f16 scale (Q4_1: then its f16 min): the first four bytes of
        // the four blocks, widened in one conversion to [d0, m0, d1, m1, d2, m2, d3, m3], then
        // spread into (row 2p, row 2p + 1) halves. Scalar conversions cost a third of the time.
        // The four rows are four streams from memory; fetch a few blocks ahead of use.
        for bj in b {
            _mm_prefetch::<_MM_HINT_T0>(bj.wrapping_add(PREFETCH_BYTES) as *const i8);
        }
        let head = |i: usize| (b[i] as *const i32).read_unaligned();
        let dm = _mm256_cvtph_ps(_mm_set_epi32(head(3), head(2), head(1), head(0)));
        let dm = _mm512_castps256_ps512(dm);
        let d = [spread(dm, 0, 2), spread(dm, 4, 6)];
        let m = if T == 1 { [spread(dm, 1, 3), spread(dm, 5, 7)] } else { [_mm512_setzero_ps(); 2] };
        // [row 2p's 16 bytes at `at`, the same, row 2p + 1's, the same].
        let pair = |p: usize, at: usize| {
            let lo = _mm512_broadcast_i32x4(_mm_loadu_si128(b[2 * p].add(at) as *const __m128i));
            _mm512_mask_broadcast_i32x4(lo, 0xFF00, _mm_loadu_si128(b[2 * p + 1].add(at) as *const __m128i))
        };
        // Per pair, the sources of groups (0, 1) and (2, 3), and the scales they need.
        let mut src = [[_mm512_setzero_si512(); 2]; 2];
        let mut ds = [[_mm512_setzero_ps(); 2]; 2];
        for p in 0..2 {
            if T == 2 {
                src[p] = [pair(p, off), pair(p, off + 16)];
            } else {
                let raw = pair(p, off);
                src[p] = [_mm512_and_si512(raw, lo_mask), _mm512_and_si512(raw, hi_mask)];
            }
            ds[p] = [_mm512_mul_ps(d[p], s_lo), _mm512_mul_ps(d[p], s_hi)];
        }
        for g in 0..4 {
            let xv = _mm256_castps_pd(_mm256_loadu_ps(x.add(bi * 32 + 8 * g)));
            let xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(xv));
            for p in 0..2 {
                let q = _mm512_shuffle_epi8(src[p][g / 2], if g % 2 == 0 { idx0 } else { idx8 });
                let scale = ds[p][g / 2];
                let v = match T {
                    // `q * d + m` as one fused multiply-add: `q * d` is exact in f32 (4 bits
                    // times an f16's 11), so rounding once after adding `m` rounds the unfused sum.
                    1 => _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), scale, m[p]),
                    0 => {
                        let q = _mm512_sub_epi32(q, if g < 2 { eight_lo } else { eight_hi });
                        _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale)
                    }
                    _ => _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale),
                };
                acc[p] = _mm512_add_ps(acc[p], _mm512_mul_ps(xv, v));
            }
        }
    }
    for p in 0..2 {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc[p]);
        out[0][2 * p] = crate::cpu::combine_lanes(lanes[..8].try_into().expect("8"), 0.0);
        out[0][2 * p + 1] = crate::cpu::combine_lanes(lanes[8..].try_into().expect("8"), 0.0);
    }
}

/// Q4_K's eight 6-bit (scale, min) pairs of one block as bytes `[sc0..sc8]` and `[m0..m8]`,
/// unpacked four at a time in 32-bit words (what [`crate::quant::blocks::scale_min_k4`]
/// computes one by one).
#[inline(always)]
unsafe fn q4_k_scales(q: *const u8) -> (u64, u64) {
    let w = |i: usize| (q.add(4 * i) as *const u32).read_unaligned();
    let (w0, w1, w2) = (w(0), w(1), w(2));
    let sc_lo = w0 & 0x3F3F_3F3F;
    let m_lo = w1 & 0x3F3F_3F3F;
    let sc_hi = (w2 & 0x0F0F_0F0F) | ((w0 >> 2) & 0x3030_3030);
    let m_hi = ((w2 >> 4) & 0x0F0F_0F0F) | ((w1 >> 2) & 0x3030_3030);
    (sc_lo as u64 | (sc_hi as u64) << 32, m_lo as u64 | (m_hi as u64) << 32)
}

/// [`dot_rows4_avx512`] for Q4_K: four weight rows against one row of `x`, two rows per 512-bit
/// register as in the 32-weight kernels, each block's sub-block scales `d * sc` and mins
/// `dmin * m` computed once per block in vector registers (the portable path's f32 multiplies),
/// each group of eight weights one in-lane byte shuffle. `d1 * q - m1` is one fused
/// multiply-subtract: `d1 * q` is exact (an f16 times a 6-bit scale times a 4-bit quant, 21
/// bits), so one rounding is the portable result. Bit for bit [`crate::cpu::dot`] on the
/// dequantized rows.
///
/// # Safety
/// [`fused512_available`] holds; `x` points at `k` floats; `ws[..4]` at one Q4_K row each.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw")]
pub(crate) unsafe fn dot_rows4_q4k_avx512(x: *const f32, ws: &[*const u8; 4], k: usize, out: &mut [f32; 4]) {
    let (idx0, idx8) = (pair_shuffle(0, 0), pair_shuffle(8, 0));
    let (lo_mask, hi_mask) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0xF0u8 as i8));
    // Odd sub-blocks take high nibbles, which the shuffle leaves at 16 times their value.
    let parity = _mm256_setr_ps(1.0, 1.0 / 16.0, 1.0, 1.0 / 16.0, 1.0, 1.0 / 16.0, 1.0, 1.0 / 16.0);
    // Lane s of the low half and 8 + s of the high half, for sub-block s of (row 2p, 2p + 1).
    let sub: [__m512i; 8] = std::array::from_fn(|s| {
        let (a, b) = (s as i32, 8 + s as i32);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    });
    let mut acc = [_mm512_setzero_ps(); 2];
    for bi in 0..k / 256 {
        let b = [ws[0].add(bi * 144), ws[1].add(bi * 144), ws[2].add(bi * 144), ws[3].add(bi * 144)];
        for bj in b {
            _mm_prefetch::<_MM_HINT_T0>(bj.wrapping_add(PREFETCH_BYTES) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(bj.wrapping_add(PREFETCH_BYTES + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(bj.wrapping_add(PREFETCH_BYTES + 128) as *const i8);
        }
        // Per row: [d * sc0..8] and [dmin * m0..8] (with odd sub-blocks' scales over 16).
        let mut dsc = [_mm256_setzero_ps(); 4];
        let mut dmn = [_mm256_setzero_ps(); 4];
        for j in 0..4 {
            let (sc, mn) = q4_k_scales(b[j].add(4));
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((b[j] as *const i32).read_unaligned()));
            let d = _mm256_broadcastss_ps(dd);
            let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            let to_f = |v: u64| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)));
            dsc[j] = _mm256_mul_ps(_mm256_mul_ps(d, to_f(sc)), parity);
            dmn[j] = _mm256_mul_ps(dmin, to_f(mn));
        }
        let join = |a: __m256, b: __m256| _mm512_insertf32x8::<1>(_mm512_castps256_ps512(a), b);
        let scales = [join(dsc[0], dsc[1]), join(dsc[2], dsc[3])];
        let mins = [join(dmn[0], dmn[1]), join(dmn[2], dmn[3])];
        for c in 0..4 {
            // [row 2p's 16 bytes, the same, row 2p + 1's, the same] of qs[32c..32c + 32].
            let pair = |p: usize, at: usize| {
                let lo = _mm512_broadcast_i32x4(_mm_loadu_si128(b[2 * p].add(16 + at) as *const __m128i));
                _mm512_mask_broadcast_i32x4(lo, 0xFF00, _mm_loadu_si128(b[2 * p + 1].add(16 + at) as *const __m128i))
            };
            let src: [[__m512i; 4]; 2] = std::array::from_fn(|p| {
                let (s0, s1) = (pair(p, 32 * c), pair(p, 32 * c + 16));
                [
                    _mm512_and_si512(s0, lo_mask),
                    _mm512_and_si512(s1, lo_mask),
                    _mm512_and_si512(s0, hi_mask),
                    _mm512_and_si512(s1, hi_mask),
                ]
            });
            for h in 0..2 {
                let s = 2 * c + h;
                let d1 = [_mm512_permutexvar_ps(sub[s], scales[0]), _mm512_permutexvar_ps(sub[s], scales[1])];
                let m1 = [_mm512_permutexvar_ps(sub[s], mins[0]), _mm512_permutexvar_ps(sub[s], mins[1])];
                for l in 0..4 {
                    let at = bi * 256 + 64 * c + 32 * h + 8 * l;
                    let xv = _mm256_castps_pd(_mm256_loadu_ps(x.add(at)));
                    let xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(xv));
                    for p in 0..2 {
                        let q = _mm512_shuffle_epi8(src[p][2 * h + l / 2], if l % 2 == 0 { idx0 } else { idx8 });
                        let v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(q), d1[p], m1[p]);
                        acc[p] = _mm512_add_ps(acc[p], _mm512_mul_ps(xv, v));
                    }
                }
            }
        }
    }
    for p in 0..2 {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc[p]);
        out[2 * p] = crate::cpu::combine_lanes(lanes[..8].try_into().expect("8"), 0.0);
        out[2 * p + 1] = crate::cpu::combine_lanes(lanes[8..].try_into().expect("8"), 0.0);
    }
}
