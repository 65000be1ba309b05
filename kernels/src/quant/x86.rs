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
    // SAFETY: AVX2 is present (F16C checked where used); the caller checked `bytes` holds
    // exactly `out.len()` weights.
    unsafe {
        match t {
            QuantType::Q4_0 => q4(bytes, out, 18, false),
            QuantType::Q4_1 => q4(bytes, out, 20, true),
            QuantType::Q8_0 => q8_0(bytes, out),
            QuantType::Q4_K if std::arch::is_x86_feature_detected!("f16c") => q4_k(bytes, out),
            QuantType::Q6_K if std::arch::is_x86_feature_detected!("f16c") => q6_k(bytes, out),
            QuantType::F16 if std::arch::is_x86_feature_detected!("f16c") => f16s(bytes, out),
            QuantType::BF16 => bf16s(bytes, out),
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

/// f16 to f32 eight at a time (exact, as every f16 is an f32).
///
/// # Safety
/// AVX2 and F16C are available; `bytes` is `2 * out.len()` bytes.
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16s(bytes: &[u8], out: &mut [f32]) {
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
unsafe fn bf16s(bytes: &[u8], out: &mut [f32]) {
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

/// Q4_K super-blocks (ggml's `dequantize_row_q4_K`): per sub-block pair the scalar
/// `d * sc` and `dmin * m` as the portable path computes them, then `d1 * q - m1` eight lanes at
/// a time (multiply, then subtract; unfused).
///
/// # Safety
/// AVX2 and F16C are available; `bytes` is `out.len() / 256` whole Q4_K blocks.
#[target_feature(enable = "avx2,f16c")]
unsafe fn q4_k(bytes: &[u8], out: &mut [f32]) {
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
        let (sc1, m1) = super::blocks::scale_min_k4(2 * c, scales);
        let (sc2, m2) = super::blocks::scale_min_k4(2 * c + 1, scales);
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
unsafe fn q6_k(bytes: &[u8], out: &mut [f32]) {
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

#[inline(always)]
unsafe fn dequant_block(t: QuantType, b: *const u8, y: *mut f32, gs: usize) {
    match t {
        QuantType::Q4_K => q4_k_block::<true>(b, y, gs),
        _ => q6_k_block(b, y, gs),
    }
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

/// f16 to f32 with F16C (exact, so equal to `half`'s conversion).
#[inline(always)]
unsafe fn f16c_at(b: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*b, *b.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
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

/// How far ahead of the current block the fused kernels prefetch each weight row. Decode reads
/// every weight once, from DRAM; the hardware prefetcher alone left the lm_head at a third of
/// the bandwidth here. Measured (Zen 4, Q8_0 576 x 49152, one thread): 512 B ahead 5.8 ms,
/// 2 KiB 3.5 ms, 4 KiB 3.2 ms.
pub(crate) const PREFETCH_BYTES: usize = 4096;

/// Whether [`dot_rows4_avx512`] can run here.
pub(crate) fn fused512_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("fma")
}

/// [`dot_rows::<1, 4>`] with two weight rows per 512-bit register: the low eight lanes are row
/// `2p`'s accumulator, the high eight row `2p + 1`'s, each fed exactly the eight-lane sums of
/// the AVX2 path (same values, same order), so the bits are the same; half the instructions.
///
/// # Safety
/// [`fused_available`] for `t` and [`fused512_available`] hold; `xs[0]` points at `k` floats;
/// `ws[..4]` at one weight row each.
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
/// unpacked four at a time in 32-bit words (what [`super::blocks::scale_min_k4`] computes one
/// by one).
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
