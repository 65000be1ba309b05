//! The fast matrix multiply behind [`crate::Backend::matmul`]: `y[m, n] = x[m, k] · w[n, k]^T
//! (+ bias[n])`, the HF `nn.Linear` layout, on register tiles and both cores.
//!
//! Invariant (batch invariance): every output element is produced by exactly the float operations
//! of [`dot`] — eight lane accumulators fed `acc[l] += x[l] * w[l]` over `k` in order, the same
//! combination tree, the sequential tail added last — whatever `m`, the tile the element lands
//! in, the thread that computes it or the instruction set. Hence a row's result is bit-identical
//! alone or in any batch, and equal to [`matmul_reference`]. To keep it so:
//! - blocking is over `m` and `n` only, never `k`; threads split `n` (output features);
//! - no FMA: a fused multiply-add rounds once where `x * w + acc` rounds twice, and the portable
//!   path has no fast FMA; SIMD lanes are the eight accumulators, so vector width changes nothing.
//!
//! Why not a library: `matrixmultiply` packs the weight matrix on every call, which dominates at
//! decode sizes (measured, k 768 x n 2048 on 2 threads: m = 1 took 0.18 ms here vs 1.6 ms there,
//! m = 16 0.78 vs 1.3 ms; at m = 256 its FMA and k blocking win, 12 vs 20 ms), and its FMA sums
//! differ from [`dot`]'s, which would make prefill and decode disagree. `gemm` also packs, and
//! picks its kernel and `k` blocking by shape, which would break batch invariance.

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::dot;

/// Rows of `x` swept against each weight tile while they stay in L2 (64 rows of k = 4096 is 1 MiB).
pub(super) const M_BLOCK: usize = 64;
/// Below this many multiply-adds a call stays on the calling thread; fanning out costs more.
pub(super) const PARALLEL_MIN_WORK: usize = 1 << 18;
/// Column chunks per thread, so a thread that is descheduled for a moment does not stall the call.
pub(super) const CHUNKS_PER_THREAD: usize = 4;

/// Which tile kernel this CPU runs. Every variant computes the same bits; only speed differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX-512VL: 32 vector registers hold a 4 x 4 tile of accumulators.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2: 16 vector registers hold a 4 x 2 tile.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// Largest tile width (weight rows per tile) over all kernels.
const NR_MAX: usize = 4;

impl Kernel {
    /// Every kernel this CPU can run, fastest first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::detect()];
        #[cfg(target_arch = "x86_64")]
        if all[0] == Kernel::Avx512 {
            all.push(Kernel::Avx2);
        }
        if all[0] != Kernel::Portable {
            all.push(Kernel::Portable);
        }
        all
    }

    pub(super) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// (rows of `x`, rows of `w`) per full tile.
    pub(super) fn tile(self) -> (usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => (4, 4),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => (4, 2),
            Kernel::Portable => (1, 1),
        }
    }
}

/// Wrapper so worker threads can write disjoint columns of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every task writes a disjoint set of columns of `y`, and `y` outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y[m, n] = x[m, k] · w[n, k]^T (+ bias[n])`; panics on inconsistent shapes (a silent
/// mis-shape would produce plausible garbage).
pub fn matmul(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, y: &mut [f32]) {
    assert!(k > 0, "matmul: k must be > 0");
    assert_eq!(x.len() % k, 0, "matmul: x.len() {} not a multiple of k {k}", x.len());
    assert_eq!(w.len() % k, 0, "matmul: w.len() {} not a multiple of k {k}", w.len());
    let (m, n) = (x.len() / k, w.len() / k);
    assert_eq!(y.len(), m * n, "matmul: y.len() {} != m {m} * n {n}", y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul: bias.len() {} != n {n}", b.len());
    }
    if m == 0 || n == 0 {
        return;
    }
    matmul_with(Kernel::detect(), x, w, bias, k, y);
}

/// [`matmul`] on a given kernel; shapes already checked.
fn matmul_with(kernel: Kernel, x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, y: &mut [f32]) {
    let (m, n) = (x.len() / k, w.len() / k);
    let nr = kernel.tile().1;
    let threads = rayon::current_num_threads();
    let out = OutPtr(y.as_mut_ptr());
    if threads <= 1 || m * n * k < PARALLEL_MIN_WORK {
        // SAFETY: shapes checked above; this call alone writes `y`.
        unsafe { columns(kernel, x, w, bias, k, m, n, 0..n, out.get()) };
        return;
    }
    let chunk = n.div_ceil(threads * CHUNKS_PER_THREAD).next_multiple_of(nr);
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let cols = c * chunk..n.min((c + 1) * chunk);
        // SAFETY: shapes checked above; chunks are disjoint column ranges of `y`.
        unsafe { columns(kernel, x, w, bias, k, m, n, cols, out.get()) };
    });
}

/// The plain definition: one [`dot`] per element. The oracle [`matmul`] must equal bit for bit.
pub fn matmul_reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, y: &mut [f32]) {
    let n = w.len() / k;
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (j, (wr, out)) in w.chunks_exact(k).zip(yr.iter_mut()).enumerate() {
            *out = dot(xr, wr) + bias.map_or(0.0, |b| b[j]);
        }
    }
}

/// Computes columns `cols` of `y` (every row) from the full weight matrix `w`.
///
/// # Safety
/// `x` is `m * k`, `w` is `n * k`, `y` points at `m * n` writable floats, and no other thread
/// writes columns `cols` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    kernel: Kernel,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    m: usize,
    n: usize,
    cols: Range<usize>,
    y: *mut f32,
) {
    panel(kernel, x, &w[cols.start * k..cols.end * k], bias, k, m, n, cols.start, y)
}

/// Computes columns `j_base..j_base + w.len() / k` of `y` (every row), where `w` holds exactly
/// those weight rows: a slice of the full matrix, or a dequantized panel of a quantized one.
///
/// # Safety
/// `x` is `m * k`, `y` points at `m * n` writable floats, the columns are below `n`, and no
/// other thread writes them meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn panel(
    kernel: Kernel,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    m: usize,
    n: usize,
    j_base: usize,
    y: *mut f32,
) {
    let (mr, nr) = kernel.tile();
    let width = w.len() / k;
    let mut tile = [[0f32; NR_MAX]; 4];
    for m0 in (0..m).step_by(M_BLOCK) {
        let m1 = m.min(m0 + M_BLOCK);
        for t0 in (0..width).step_by(nr) {
            let valid = nr.min(width - t0);
            // Past the last column, repeat the last weight row: the extra results are discarded.
            let mut ws = [std::ptr::null::<f32>(); NR_MAX];
            for (t, p) in ws.iter_mut().enumerate().take(nr) {
                *p = w.as_ptr().add((t0 + t.min(valid - 1)) * k);
            }
            let mut i = m0;
            while i < m1 {
                let rows = if i + mr <= m1 { mr } else { 1 };
                let mut xs = [std::ptr::null::<f32>(); 4];
                for (t, p) in xs.iter_mut().enumerate().take(rows) {
                    *p = x.as_ptr().add((i + t) * k);
                }
                run_tile(kernel, rows, &xs, &ws, k, &mut tile);
                for (r, out) in tile.iter().enumerate().take(rows) {
                    for (t, &v) in out.iter().enumerate().take(valid) {
                        let j = j_base + t0 + t;
                        *y.add((i + r) * n + j) = v + bias.map_or(0.0, |b| b[j]);
                    }
                }
                i += rows;
            }
        }
    }
}

/// One tile of `rows` (the kernel's full height, or 1) rows of `x` against its full width of `w`.
///
/// # Safety
/// The first `rows` of `xs` and the kernel's width of `ws` point at `k` readable floats.
unsafe fn run_tile(
    kernel: Kernel,
    rows: usize,
    xs: &[*const f32; 4],
    ws: &[*const f32; NR_MAX],
    k: usize,
    out: &mut [[f32; NR_MAX]; 4],
) {
    match (kernel, rows) {
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512, 4) => x86::tile_avx512::<4, 4>(xs, ws, k, out),
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512, _) => x86::tile_avx512::<1, 4>(xs, ws, k, out),
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2, 4) => x86::tile_avx2::<4, 2>(xs, ws, k, out),
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2, _) => x86::tile_avx2::<1, 2>(xs, ws, k, out),
        (Kernel::Portable, _) => {
            out[0][0] = dot(std::slice::from_raw_parts(xs[0], k), std::slice::from_raw_parts(ws[0], k));
        }
    }
}

/// [`dot`]'s combination of its eight lanes and the tail; shared so no kernel can drift from it.
#[inline(always)]
pub(crate) fn combine(a: &[f32; 8], tail: f32) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{combine, NR_MAX};

    /// Eight lanes per accumulator, one `__m256` each; `MR * NR` dot products share their loads.
    ///
    /// # Safety
    /// AVX must be available; `xs[..MR]` and `ws[..NR]` point at `k` readable floats.
    #[inline(always)]
    unsafe fn tile<const MR: usize, const NR: usize>(
        xs: &[*const f32; 4],
        ws: &[*const f32; NR_MAX],
        k: usize,
        out: &mut [[f32; NR_MAX]; 4],
    ) {
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let main = k / 8 * 8;
        let mut p = 0;
        while p < main {
            let mut wv = [_mm256_setzero_ps(); NR];
            for j in 0..NR {
                wv[j] = _mm256_loadu_ps(ws[j].add(p));
            }
            for i in 0..MR {
                let xv = _mm256_loadu_ps(xs[i].add(p));
                for j in 0..NR {
                    acc[i][j] = _mm256_add_ps(acc[i][j], _mm256_mul_ps(xv, wv[j]));
                }
            }
            p += 8;
        }
        for i in 0..MR {
            for j in 0..NR {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]);
                let mut tail = 0f32;
                for q in main..k {
                    tail += *xs[i].add(q) * *ws[j].add(q);
                }
                out[i][j] = combine(&lanes, tail);
            }
        }
    }

    /// # Safety
    /// As [`tile`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn tile_avx2<const MR: usize, const NR: usize>(
        xs: &[*const f32; 4],
        ws: &[*const f32; NR_MAX],
        k: usize,
        out: &mut [[f32; NR_MAX]; 4],
    ) {
        tile::<MR, NR>(xs, ws, k, out)
    }

    /// Same instructions as AVX2, but AVX-512VL's 32 registers fit a 4 x 4 tile without spills.
    ///
    /// # Safety
    /// As [`tile`], and the CPU has AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub unsafe fn tile_avx512<const MR: usize, const NR: usize>(
        xs: &[*const f32; 4],
        ws: &[*const f32; NR_MAX],
        k: usize,
        out: &mut [[f32; NR_MAX]; 4],
    ) {
        tile::<MR, NR>(xs, ws, k, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatch picks one kernel per CPU; this pins every kernel the CPU has to the reference.
    #[test]
    fn every_kernel_is_bitwise_the_reference() {
        let kernels = Kernel::available();
        assert!(!kernels.is_empty());
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1 << 24) as f32) - 0.5
        };
        for &(m, k, n) in &[(1, 5, 3), (4, 8, 4), (7, 19, 9), (70, 172, 300), (1, 768, 1029)] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut want = vec![0f32; m * n];
            matmul_reference(&x, &w, Some(&bias), k, &mut want);
            for &kernel in &kernels {
                let mut got = vec![f32::NAN; m * n];
                matmul_with(kernel, &x, &w, Some(&bias), k, &mut got);
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernel:?} differs from the reference at m {m} k {k} n {n}"
                );
            }
        }
    }
}
