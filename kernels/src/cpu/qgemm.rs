//! The matmul on quantized weights: `y[m, n] = x[m, k] · dequant(w)[n, k]^T (+ bias[n])`.
//!
//! Invariant (exactness and batch invariance): each thread dequantizes a panel of weight rows
//! into an f32 scratch buffer and runs [`super::gemm`]'s tile kernels on it, so every output
//! element is the same float operations as [`super::matmul_reference`] on the dequantized matrix,
//! bit for bit, whatever `m`, the panel or the thread. The weights stay in their block format;
//! only one panel per thread is ever widened, and it is reused by all `m` rows of `x`.
//!
//! Small batches (decode) of the 32-weight formats take a fused path instead on AVX2: blocks are
//! dequantized in registers and fed straight into the same eight-lane sums, so the bits are the
//! same as the panel path's; it only skips writing and re-reading the panel.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{panel, Kernel, OutPtr, CHUNKS_PER_THREAD, PARALLEL_MIN_WORK};
use crate::quant::QMatrix;

/// Floats in one thread's dequantized panel: 32 KiB, so it stays in L1/L2 while `x` streams by.
const PANEL_FLOATS: usize = 8192;
/// Below this many rows of `x` the fused path wins: dequantizing per row group costs less than
/// a panel's store and reload. Measured crossover on AVX2 is near 8.
pub(super) const FUSED_MAX_M: usize = 8;

/// `y[m, n] = x[m, k] · w^T (+ bias[n])` with `w` a `[n, k]` quantized matrix; panics on
/// inconsistent shapes, as [`super::matmul`] does.
pub fn matmul_quant(x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, y: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    assert!(k > 0, "matmul_quant: k must be > 0");
    assert_eq!(x.len() % k, 0, "matmul_quant: x.len() {} not a multiple of k {k}", x.len());
    let m = x.len() / k;
    assert_eq!(y.len(), m * n, "matmul_quant: y.len() {} != m {m} * n {n}", y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul_quant: bias.len() {} != n {n}", b.len());
    }
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if m < FUSED_MAX_M && crate::quant::x86::fused_any(w.dtype) {
        return fused(x, w, bias, y);
    }
    matmul_quant_with(Kernel::detect(), x, w, bias, y);
}

/// The fused small-batch path: threads split output columns; four weight rows against one row
/// of `x` (four independent sums), or one weight row against four rows of `x`.
#[cfg(target_arch = "x86_64")]
pub(super) fn fused(x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, y: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k;
    let out = OutPtr(y.as_mut_ptr());
    // SAFETY (both calls): shapes checked by the caller; chunks are disjoint column ranges.
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < PARALLEL_MIN_WORK {
        return unsafe { fused_columns(x, w, bias, out, 0..n) };
    }
    let chunk = n.div_ceil(threads * CHUNKS_PER_THREAD).next_multiple_of(4);
    (0..n.div_ceil(chunk))
        .into_par_iter()
        .for_each(|c| unsafe { fused_columns(x, w, bias, out, c * chunk..n.min((c + 1) * chunk)) });
}

/// Columns `cols` of the fused path.
///
/// # Safety
/// [`crate::quant::x86::fused_any`] holds for `w.dtype`; `x` is whole rows of `w.cols`, fewer
/// than [`FUSED_MAX_M`]; `y` points at `x.len() / w.cols * w.rows` floats; no other thread
/// writes columns `cols`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn fused_columns(x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, y: OutPtr, cols: Range<usize>) {
    use crate::quant::x86::{dot_rows, dot_rows4_avx512, dot_rows_dequant, fused512_available};
    let wide = fused512_available();
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k;
    let out = y;
    if crate::quant::x86::fused_dequant_available(w.dtype) {
        let mut res = [[0f32; 4]; 8];
        let mut j = cols.start;
        while j < cols.end {
            let nr = 4.min(cols.end - j);
            let ws = [0, 1, 2, 3].map(|t| w.row_data(j + t.min(nr - 1)..j + t.min(nr - 1) + 1).as_ptr());
            if w.dtype == crate::QuantType::Q4_K && wide && nr == 4 && m < 4 {
                // Q4_K in registers, one row of `x` at a time.
                for r in 0..m {
                    // SAFETY: `fused512_available` held; row `r` of `x` is `k` floats.
                    unsafe { crate::quant::x86::dot_rows4_q4k_avx512(x[r * k..].as_ptr(), &ws, k, &mut res[r]) };
                }
            } else {
                // SAFETY: the K kernel's features held; `m < FUSED_MAX_M <= 8` rows of `k` floats.
                unsafe { dot_rows_dequant(w.dtype, x, m, &ws, nr, k, &mut res) };
            }
            for (r, row) in res.iter().enumerate().take(m) {
                for (t, &v) in row.iter().enumerate().take(nr) {
                    let c = j + t;
                    // SAFETY: `r * n + c < m * n`; only this task writes column `c`.
                    unsafe { *out.get().add(r * n + c) = v + bias.map_or(0.0, |b| b[c]) };
                }
            }
            j += nr;
        }
        return;
    }
    let run = |cols: Range<usize>| {
        let mut res = [[0f32; 4]; 4];
        let mut j = cols.start;
        while j < cols.end {
            let nr = if m < 4 && j + 4 <= cols.end { 4 } else { 1 };
            let mut ws = [std::ptr::null::<u8>(); 4];
            for (t, p) in ws.iter_mut().enumerate().take(nr) {
                *p = w.row_data(j + t..j + t + 1).as_ptr();
            }
            let mut i = 0;
            while i < m {
                let mr = if nr == 1 && i + 4 <= m { 4 } else { 1 };
                let mut xs = [x.as_ptr(); 4];
                for (t, p) in xs.iter_mut().enumerate().take(mr) {
                    *p = x[(i + t) * k..].as_ptr();
                }
                // SAFETY: `fused_available` held; each `x` row is `k` floats, each weight row one
                // row of `w`.
                unsafe {
                    match (mr, nr) {
                        (1, 4) if wide => dot_rows4_avx512(w.dtype, &xs, &ws, k, &mut res),
                        (1, 4) => dot_rows::<1, 4>(w.dtype, &xs, &ws, k, &mut res),
                        (4, 1) => dot_rows::<4, 1>(w.dtype, &xs, &ws, k, &mut res),
                        _ => dot_rows::<1, 1>(w.dtype, &xs, &ws, k, &mut res),
                    }
                }
                for (r, row) in res.iter().enumerate().take(mr) {
                    for (t, &v) in row.iter().enumerate().take(nr) {
                        let c = j + t;
                        // SAFETY: `(i + r) * n + c < m * n`; only this task writes column `c`.
                        unsafe { *out.get().add((i + r) * n + c) = v + bias.map_or(0.0, |b| b[c]) };
                    }
                }
                i += mr;
            }
            j += nr;
        }
    };
    run(cols)
}

/// [`matmul_quant`] on a given kernel; shapes already checked.
pub(super) fn matmul_quant_with(kernel: Kernel, x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, y: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k;
    let nr = kernel.tile().1;
    let panel_rows = (PANEL_FLOATS / k / nr * nr).max(nr);
    let threads = rayon::current_num_threads();
    let out = OutPtr(y.as_mut_ptr());
    if threads <= 1 || m * n * k < PARALLEL_MIN_WORK {
        // SAFETY: shapes checked by the caller; this call alone writes `y`.
        unsafe { columns(kernel, x, w, bias, m, 0..n, panel_rows, out.get()) };
        return;
    }
    let chunk = n.div_ceil(threads * CHUNKS_PER_THREAD).next_multiple_of(nr);
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let cols = c * chunk..n.min((c + 1) * chunk);
        // SAFETY: shapes checked by the caller; chunks are disjoint column ranges of `y`.
        unsafe { columns(kernel, x, w, bias, m, cols, panel_rows, out.get()) };
    });
}

/// Columns `cols` of `y`, one dequantized panel of at most `panel_rows` weight rows at a time.
///
/// # Safety
/// As [`panel`]: `x` is `m * w.cols`, `y` points at `m * w.rows` floats, `cols` are this
/// caller's alone.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    kernel: Kernel,
    x: &[f32],
    w: &QMatrix<'_>,
    bias: Option<&[f32]>,
    m: usize,
    cols: Range<usize>,
    panel_rows: usize,
    y: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && m >= WIDE_MIN_M && k_is_whole_groups(w.cols) {
        return columns512(x, w, bias, m, cols, y);
    }
    let k = w.cols;
    let mut buf = vec![0f32; panel_rows.min(cols.len()) * k];
    let mut j0 = cols.start;
    while j0 < cols.end {
        let j1 = cols.end.min(j0 + panel_rows);
        let wp = &mut buf[..(j1 - j0) * k];
        w.dequantize_rows(j0..j1, wp);
        panel(kernel, x, wp, bias, k, m, w.rows, j0, y);
        j0 = j1;
    }
}

/// Whether rows of `k` split into whole groups of eight (always, for block formats).
fn k_is_whole_groups(k: usize) -> bool {
    k.is_multiple_of(8)
}

/// From this many rows of `x` the 512-bit panel path wins (its interleaving copy is paid once
/// per panel; measured: m = 8 is 10% slower, m = 32 11% faster, m = 512 16% faster).
const WIDE_MIN_M: usize = 16;

/// Weight rows per 512-bit panel tile: four pairs, two rows per register.
#[cfg(target_arch = "x86_64")]
const PAIRS: usize = 4;

/// [`columns`] on AVX-512 with 512-bit arithmetic: each panel is dequantized with rows `2q`
/// and `2q + 1` interleaved by groups of eight (`[row 2q's 8, row 2q + 1's 8]` per group), so
/// one 512-bit multiply and add feed two rows' eight-lane sums: the same products, added in
/// the same order as [`super::gemm`]'s tiles (`acc[l] += x[l] * w[l]` over `k`, unfused; the
/// same combination), so the bits are the reference's; twice the lanes per instruction.
///
/// # Safety
/// As [`columns`]; AVX-512F/VL are available (the caller picked [`Kernel::Avx512`]).
#[cfg(target_arch = "x86_64")]
unsafe fn columns512(x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, m: usize, cols: Range<usize>, y: *mut f32) {
    let (k, n) = (w.cols, w.rows);
    let tile_rows = 2 * PAIRS;
    let panel_rows = (PANEL_FLOATS / k / tile_rows * tile_rows).max(tile_rows);
    let mut row = vec![0f32; k];
    let mut buf = vec![0f32; panel_rows.min(cols.len()).next_multiple_of(2) * k];
    let mut j0 = cols.start;
    while j0 < cols.end {
        let j1 = cols.end.min(j0 + panel_rows);
        let rows = j1 - j0;
        let pairs = rows.div_ceil(2);
        for r in 0..2 * pairs {
            // A missing odd row repeats the last one; its results are dropped.
            let src = j0 + r.min(rows - 1);
            w.dequantize_rows(src..src + 1, &mut row);
            let base = (r / 2) * 2 * k + 8 * (r % 2);
            for (g, chunk) in row.chunks_exact(8).enumerate() {
                buf[base + 16 * g..base + 16 * g + 8].copy_from_slice(chunk);
            }
        }
        let mut q0 = 0;
        while q0 < pairs {
            let np = PAIRS.min(pairs - q0);
            // Short groups repeat their last pair; the extra results are dropped.
            let ws: [*const f32; PAIRS] = std::array::from_fn(|q| buf.as_ptr().add((q0 + q.min(np - 1)) * 2 * k));
            let mut i = 0;
            while i < m {
                let mr = if i + 4 <= m { 4 } else { 1 };
                let xs: [*const f32; 4] = std::array::from_fn(|t| x.as_ptr().add((i + t.min(mr - 1)) * k));
                let mut out = [[0f32; 2 * PAIRS]; 4];
                if mr == 4 {
                    tile512::<4>(&xs, &ws, k, &mut out);
                } else {
                    tile512::<1>(&xs, &ws, k, &mut out);
                }
                for (r, o) in out.iter().enumerate().take(mr) {
                    for (t, &v) in o.iter().enumerate().take((2 * np).min(rows - 2 * q0)) {
                        let c = j0 + 2 * q0 + t;
                        *y.add((i + r) * n + c) = v + bias.map_or(0.0, |b| b[c]);
                    }
                }
                i += mr;
            }
            q0 += np;
        }
        j0 = j1;
    }
}

/// `MR` rows of `x` against four interleaved pairs of weight rows: `out[i][2q + h]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
unsafe fn tile512<const MR: usize>(
    xs: &[*const f32; 4],
    ws: &[*const f32; PAIRS],
    k: usize,
    out: &mut [[f32; 2 * PAIRS]; 4],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); PAIRS]; MR];
    for g in 0..k / 8 {
        let wv: [__m512; PAIRS] = std::array::from_fn(|q| _mm512_loadu_ps(ws[q].add(16 * g)));
        for i in 0..MR {
            let xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(xs[i].add(8 * g)))));
            for q in 0..PAIRS {
                acc[i][q] = _mm512_add_ps(acc[i][q], _mm512_mul_ps(xv, wv[q]));
            }
        }
    }
    for i in 0..MR {
        for q in 0..PAIRS {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[i][q]);
            out[i][2 * q] = super::combine_lanes(lanes[..8].try_into().expect("8"), 0.0);
            out[i][2 * q + 1] = super::combine_lanes(lanes[8..].try_into().expect("8"), 0.0);
        }
    }
}
