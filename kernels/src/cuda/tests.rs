//! The NVRTC compile check (needs libnvrtc, no driver) and the GPU kernel checks.
//!
//! GPU checks: one generic case per op, run on fresh random inputs (never zeros) on the CPU, the
//! oracle, and on CUDA in f32 and bf16 (bf16 inputs are rounded before the CPU sees them);
//! device outputs are poisoned with NaN before each launch; relative L2 error must stay under
//! the dtype's tolerance and NaN never passes. Every check prints one line
//! `CHECK <op> <dtype> rel_err=<e> tol=<t> PASS|FAIL` for `scripts/gpu-check.sh`.
//!
//! Skips are visible: the `gpu_*` tests are `#[ignore]`d, so a plain `cargo test` lists them as
//! ignored, never as passed; `--include-ignored` runs them, and without a driver each prints
//! `SKIPPED: no CUDA driver` and returns (gpu-check.sh fails when it sees that line).

use cudarc::driver::CudaSlice;

use super::*;
use crate::cpu;
use crate::launch::sources;
use crate::paged::{self, BlockTables};
use crate::AttnShape;

#[test]
fn nvrtc_compiles_every_kernel_for_sm90() {
    assert!(
        nvrtc_available(),
        "libnvrtc.so not found: run scripts/nvrtc-check.sh (installs the NVIDIA wheel, sets LD_LIBRARY_PATH)"
    );
    for (file, _) in sources::ALL {
        let ptx = compile(file, "compute_90").unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        let names = kernel_names(file);
        assert!(!names.is_empty(), "{file} is missing from module::KERNELS");
        for name in names {
            assert!(text.contains(&format!(".entry {name}(")), "{file}: no kernel `{name}` in the PTX");
        }
        eprintln!("nvrtc: {file} compiled for compute_90 ({} bytes of PTX)", text.len());
    }
}

#[test]
fn without_a_driver_cuda_is_refused() {
    if is_available() {
        eprintln!("SKIPPED: a CUDA driver is present (this test covers its absence)");
        return;
    }
    let e = CudaBackend::new(0).unwrap_err();
    assert!(matches!(e, KernelError::NoDevice(_)), "{e}");
}

/// Small deterministic generator; `vec` gives values in `[-scale, scale)`.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    /// A seed from the clock, printed, so every run draws fresh inputs and a failure can be replayed.
    fn fresh(test: &str) -> Rng {
        let seed = std::env::var("PDQ_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: PDQ_TEST_SEED={seed}");
        Rng(seed | 1)
    }
}

fn gpu(test: &str) -> Option<CudaBackend> {
    if !is_available() {
        eprintln!("SKIPPED: no CUDA driver ({test})");
        return None;
    }
    Some(CudaBackend::new(0).unwrap_or_else(|e| panic!("a CUDA driver is present but the backend failed: {e}")))
}

/// The values the device will hold: inputs rounded to `T`.
fn round<T: DType>(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| T::from_f32(v).to_f32()).collect()
}
fn up<T: DType>(g: &CudaBackend, x: &[f32]) -> CudaSlice<T> {
    let v: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    g.stream().clone_htod(&v).unwrap()
}
fn up_raw<T: cudarc::driver::DeviceRepr>(g: &CudaBackend, x: &[T]) -> CudaSlice<T> {
    g.stream().clone_htod(x).unwrap()
}
fn poisoned<T: DType>(g: &CudaBackend, n: usize) -> CudaSlice<T> {
    up(g, &vec![f32::NAN; n])
}
fn down<T: DType>(g: &CudaBackend, d: &CudaSlice<T>) -> Vec<f32> {
    g.stream().clone_dtoh(d).unwrap().into_iter().map(T::to_f32).collect()
}

/// ‖got − want‖ / ‖want‖ against `T`'s tolerance (exact when `exact`); NaN anywhere fails.
fn check<T: DType>(op: &str, got: &[f32], want: &[f32], exact: bool) {
    assert_eq!(got.len(), want.len(), "{op}: length");
    let nan = got.iter().position(|v| v.is_nan());
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    let tol = if exact { 0.0 } else { T::TOLERANCE };
    let pass = nan.is_none() && rel <= tol;
    println!("CHECK {op} {} rel_err={rel:.3e} tol={tol:.0e} {}", T::SUFFIX, if pass { "PASS" } else { "FAIL" });
    assert!(nan.is_none(), "{op} {}: NaN at index {} (unwritten or broken output)", T::SUFFIX, nan.unwrap());
    assert!(rel <= tol, "{op} {}: relative error {rel:.3e} > {tol:.0e}", T::SUFFIX);
}

fn each_dtype(test: &str, f: impl Fn(&CudaBackend, &mut Rng, bool)) {
    let Some(g) = gpu(test) else { return };
    let mut r = Rng::fresh(test);
    f(&g, &mut r, false); // f32
    f(&g, &mut r, true); // bf16
}

macro_rules! both {
    ($bf16:expr, $case:ident($($arg:expr),*)) => {
        if $bf16 { $case::<half::bf16>($($arg),*) } else { $case::<f32>($($arg),*) }
    };
}

fn embedding_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let (vocab, hidden) = (1000, 320);
    let table = round::<T>(&r.vec(vocab * hidden, 1.0));
    let ids: Vec<u32> = (0..37).map(|_| ((r.next() + 1.0) * 499.0) as u32).collect();
    let want: Vec<f32> =
        ids.iter().flat_map(|&i| table[i as usize * hidden..(i as usize + 1) * hidden].to_vec()).collect();
    let (dt, di) = (up::<T>(g, &table), up_raw(g, &ids));
    let mut out = poisoned::<T>(g, ids.len() * hidden);
    g.embedding(&dt.as_view(), &di.as_view(), hidden, &mut out.as_view_mut()).unwrap();
    check::<T>("embedding", &down(g, &out), &want, true);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_embedding() {
    each_dtype("gpu_embedding", |g, r, bf16| both!(bf16, embedding_case(g, r)));
}

fn norm_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let (rows, dim, eps) = (19, 1000, 1e-5);
    let (x, delta, w) =
        (round::<T>(&r.vec(rows * dim, 2.0)), round::<T>(&r.vec(rows * dim, 1.0)), round::<T>(&r.vec(dim, 1.0)));
    let mut want = vec![0f32; rows * dim];
    cpu::rms_norm(&x, &w, eps, &mut want);
    let (dx, dw) = (up::<T>(g, &x), up::<T>(g, &w));
    let mut out = poisoned::<T>(g, rows * dim);
    g.rms_norm(&dx.as_view(), &dw.as_view(), eps, &mut out.as_view_mut()).unwrap();
    check::<T>("rms_norm", &down(g, &out), &want, false);

    let h = round::<T>(&x.iter().zip(&delta).map(|(a, b)| a + b).collect::<Vec<_>>());
    cpu::rms_norm(&h, &w, eps, &mut want);
    let (mut res, dd) = (up::<T>(g, &x), up::<T>(g, &delta));
    let mut out = poisoned::<T>(g, rows * dim);
    g.fused_add_rms_norm(&mut res.as_view_mut(), &dd.as_view(), &dw.as_view(), eps, &mut out.as_view_mut()).unwrap();
    check::<T>("fused_add_rms_norm.residual", &down(g, &res), &h, false);
    check::<T>("fused_add_rms_norm", &down(g, &out), &want, false);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_rms_norm() {
    each_dtype("gpu_rms_norm", |g, r, bf16| both!(bf16, norm_case(g, r)));
}

fn rope_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let (tokens, heads, hd) = (13, 6, 128);
    let scaling = cpu::Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let inv = cpu::rope_inv_freq_llama3(hd, 500000.0, scaling);
    let positions: Vec<usize> = (0..tokens).map(|_| ((r.next() + 1.0) * 4000.0) as usize).collect();
    let x = round::<T>(&r.vec(tokens * heads * hd, 1.0));
    let mut want = x.clone();
    cpu::rope_inplace(&mut want, heads, &positions, &inv);
    let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    let mut dx = up::<T>(g, &x);
    let (dp, df) = (up_raw(g, &pos), up_raw(g, &inv));
    g.rope(&mut dx.as_view_mut(), heads, &dp.as_view(), &df.as_view()).unwrap();
    check::<T>("rope_llama3", &down(g, &dx), &want, false);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_rope() {
    each_dtype("gpu_rope", |g, r, bf16| both!(bf16, rope_case(g, r)));
}

fn activation_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let n = 3 * 1376;
    let (gate, upv) = (round::<T>(&r.vec(n, 6.0)), round::<T>(&r.vec(n, 1.0)));
    let mut want = vec![0f32; n];
    cpu::silu_mul(&gate, &upv, &mut want);
    let (dg, du) = (up::<T>(g, &gate), up::<T>(g, &upv));
    let mut out = poisoned::<T>(g, n);
    g.silu_mul(&dg.as_view(), &du.as_view(), &mut out.as_view_mut()).unwrap();
    check::<T>("silu_mul", &down(g, &out), &want, false);

    let (rows, cols) = (5, 3001);
    let x = round::<T>(&r.vec(rows * cols, 8.0));
    let mut want = x.clone();
    want.chunks_exact_mut(cols).for_each(cpu::softmax_inplace);
    let mut dx = up::<T>(g, &x);
    g.softmax(&mut dx.as_view_mut(), cols).unwrap();
    check::<T>("softmax", &down(g, &dx), &want, false);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_activation() {
    each_dtype("gpu_activation", |g, r, bf16| both!(bf16, activation_case(g, r)));
}

fn matmul_case<T: DType>(g: &CudaBackend, r: &mut Rng)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let (m, k, n) = (7, 576, 1536);
    let (x, w, bias) = (round::<T>(&r.vec(m * k, 1.0)), round::<T>(&r.vec(n * k, 0.1)), round::<T>(&r.vec(n, 1.0)));
    let mut want = vec![0f32; m * n];
    cpu::matmul(&x, &w, Some(&bias), k, &mut want);
    let (dx, dw, db) = (up::<T>(g, &x), up::<T>(g, &w), up::<T>(g, &bias));
    let mut y = poisoned::<T>(g, m * n);
    g.matmul(&dx.as_view(), &dw.as_view(), Some(&db.as_view()), k, &mut y.as_view_mut()).unwrap();
    check::<T>("matmul_cublas", &down(g, &y), &want, false);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_matmul() {
    each_dtype("gpu_matmul", |g, r, bf16| both!(bf16, matmul_case(g, r)));
}

/// A cache with out-of-order blocks holding `lens` tokens per sequence, written by `kv_write` on
/// the device and `cpu::kv_write` on the host; returns (cpu k, cpu v, device k, device v, tables).
struct Cache<T> {
    k: Vec<f32>,
    v: Vec<f32>,
    dk: CudaSlice<T>,
    dv: CudaSlice<T>,
    tables: BlockTables,
}

fn write_cache<T: DType>(g: &CudaBackend, r: &mut Rng, lens: &[usize], bs: usize, row: usize) -> Cache<T> {
    let need: usize = lens.iter().map(|&l| paged::blocks_for(l, bs)).sum();
    let num_blocks = 2 * need + 1;
    let mut free: Vec<u32> = (0..num_blocks as u32).rev().step_by(2).collect();
    let mut tables = Vec::new();
    let mut slots = Vec::new();
    for &len in lens {
        let t: Vec<u32> = (0..paged::blocks_for(len, bs)).map(|_| free.remove(0)).collect();
        slots.extend(paged::slot_mapping(&t, 0, len, bs));
        tables.push(t);
    }
    slots.insert(slots.len() / 2, -1); // a padding token: skipped
    let (k_new, v_new) = (round::<T>(&r.vec(slots.len() * row, 1.0)), round::<T>(&r.vec(slots.len() * row, 1.0)));
    let (mut k, mut v) = (vec![f32::NAN; num_blocks * bs * row], vec![f32::NAN; num_blocks * bs * row]);
    cpu::kv_write(&mut k, &mut v, &k_new, &v_new, &slots, row);
    let (mut dk, mut dv) = (poisoned::<T>(g, k.len()), poisoned::<T>(g, v.len()));
    let (dkn, dvn, ds) = (up::<T>(g, &k_new), up::<T>(g, &v_new), up_raw(g, &slots));
    g.kv_write(&mut dk.as_view_mut(), &mut dv.as_view_mut(), &dkn.as_view(), &dvn.as_view(), &ds.as_view(), row)
        .unwrap();
    // Unwritten slots stay NaN on both sides; compare only what attention may read.
    let (gk, gv) = (down(g, &dk), down(g, &dv));
    let written = |a: &[f32]| a.iter().map(|x| if x.is_nan() { 0.0 } else { *x }).collect::<Vec<_>>();
    check::<T>("kv_write.k", &written(&gk), &written(&k), true);
    check::<T>("kv_write.v", &written(&gv), &written(&v), true);
    Cache { k, v, dk, dv, tables: BlockTables::new(&tables) }
}

fn kv_moves_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let (bs, row) = (16, 2 * 64);
    let c = write_cache::<T>(g, r, &[40, 3], bs, row);
    let ids: Vec<i32> = c.tables.row(0)[..3].to_vec();
    let be = bs * row;
    let mut pages = vec![0f32; ids.len() * be];
    cpu::kv_gather_blocks(&c.k, &ids, be, &mut pages);
    let di = up_raw(g, &ids);
    let mut dp = poisoned::<T>(g, pages.len());
    g.kv_gather_blocks(&c.dk.as_view(), &di.as_view(), be, &mut dp.as_view_mut()).unwrap();
    check::<T>("kv_gather_blocks", &down(g, &dp), &pages, true);
    // Scatter the pages into the blocks of sequence 1 and beyond, then read them back.
    let dst: Vec<i32> = vec![c.tables.row(1)[0], 1, 3]; // odd blocks are never allocated: no duplicates
    let mut want = c.k.clone();
    cpu::kv_scatter_blocks(&mut want, &pages, &dst, be);
    let mut dk = c.dk.clone();
    let dd = up_raw(g, &dst);
    g.kv_scatter_blocks(&mut dk.as_view_mut(), &dp.as_view(), &dd.as_view(), be).unwrap();
    let nan0 = |a: Vec<f32>| a.into_iter().map(|x| if x.is_nan() { 0.0 } else { x }).collect::<Vec<_>>();
    check::<T>("kv_scatter_blocks", &nan0(down(g, &dk)), &nan0(want), true);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_kv_moves() {
    each_dtype("gpu_kv_moves", |g, r, bf16| both!(bf16, kv_moves_case(g, r)));
}

fn decode_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let shape = AttnShape { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let bs = paged::DEFAULT_BLOCK_SIZE;
    let lens = [1usize, 17, 300, 64, 0, 33];
    let c = write_cache::<T>(g, r, &lens, bs, shape.n_kv_heads * shape.head_dim);
    let ctx: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let qd = shape.n_heads * shape.head_dim;
    let q = round::<T>(&r.vec(lens.len() * qd, 1.0));
    let mut want = vec![0f32; q.len()];
    cpu::paged_attention_decode(&q, &c.k, &c.v, &c.tables, &ctx, shape, bs, &mut want);
    let (dq, dt, dl) = (up::<T>(g, &q), up_raw(g, &c.tables.flat), up_raw(g, &ctx));
    let kv = KvViews {
        k_cache: c.dk.as_view(),
        v_cache: c.dv.as_view(),
        block_tables: dt.as_view(),
        max_blocks: c.tables.max_blocks,
        context_lens: dl.as_view(),
        block_size: bs,
    };
    let mut out = poisoned::<T>(g, q.len());
    g.paged_attention_decode(&dq.as_view(), &kv, shape, &mut out.as_view_mut()).unwrap();
    check::<T>("paged_attention_decode", &down(g, &out), &want, false);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_paged_attention_decode() {
    each_dtype("gpu_paged_attention_decode", |g, r, bf16| both!(bf16, decode_case(g, r)));
}

fn prefill_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 64 };
    let bs = 7; // block size is a run-time parameter; an odd one crosses tiles unevenly
                // A fresh 37-token prompt, a 20-token chunk after 45 cached tokens, a 1-token chunk.
    let (ctx, q_lens) = ([37usize, 65, 9], [37usize, 20, 1]);
    let c = write_cache::<T>(g, r, &ctx, bs, shape.n_kv_heads * shape.head_dim);
    let cu = paged::cu_seqlens(&q_lens);
    let ctx32: Vec<i32> = ctx.iter().map(|&l| l as i32).collect();
    let qd = shape.n_heads * shape.head_dim;
    let q = round::<T>(&r.vec(q_lens.iter().sum::<usize>() * qd, 1.0));
    let mut want = vec![0f32; q.len()];
    cpu::prefill_attention(&q, &c.k, &c.v, &cu, &ctx32, &c.tables, shape, bs, &mut want);
    let (dq, dcu, dt, dl) = (up::<T>(g, &q), up_raw(g, &cu), up_raw(g, &c.tables.flat), up_raw(g, &ctx32));
    let kv = KvViews {
        k_cache: c.dk.as_view(),
        v_cache: c.dv.as_view(),
        block_tables: dt.as_view(),
        max_blocks: c.tables.max_blocks,
        context_lens: dl.as_view(),
        block_size: bs,
    };
    let mut out = poisoned::<T>(g, q.len());
    g.prefill_attention(&dq.as_view(), &dcu.as_view(), 37, &kv, shape, &mut out.as_view_mut()).unwrap();
    check::<T>("prefill_attention", &down(g, &out), &want, false);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_prefill_attention() {
    each_dtype("gpu_prefill_attention", |g, r, bf16| both!(bf16, prefill_case(g, r)));
}

fn sampling_case<T: DType>(g: &CudaBackend, r: &mut Rng) {
    let vocab = 5003;
    let params = [
        cpu::SampleParams { temperature: 0.0, ..Default::default() },
        cpu::SampleParams::default(),
        cpu::SampleParams { temperature: 0.7, top_k: 50, ..Default::default() },
        cpu::SampleParams { temperature: 1.3, top_p: 0.9, ..Default::default() },
        cpu::SampleParams { temperature: 1.0, min_p: 0.05, ..Default::default() },
        cpu::SampleParams { temperature: 0.8, top_k: 200, top_p: 0.95, min_p: 0.01 },
        cpu::SampleParams { temperature: 1.0, top_k: 1, ..Default::default() },
        cpu::SampleParams { temperature: 2.0, top_p: 0.3, ..Default::default() },
    ];
    let rows = params.len();
    // bf16 logits tie often, which exercises the lower-id rule; one NaN must never win.
    let mut logits = round::<T>(&r.vec(rows * vocab, 6.0));
    logits[3] = f32::NAN;
    let uniform: Vec<f32> = (0..rows).map(|_| (r.next() + 1.0) / 2.0).collect();
    let dl = up::<T>(g, &logits);

    let want: Vec<f32> = logits.chunks_exact(vocab).map(|l| cpu::argmax(l) as f32).collect();
    let mut out = up_raw(g, &vec![-1i32; rows]);
    g.argmax(&dl.as_view(), vocab, &mut out.as_view_mut()).unwrap();
    let got: Vec<f32> = g.stream().clone_dtoh(&out).unwrap().into_iter().map(|v| v as f32).collect();
    check::<T>("argmax", &got, &want, true);

    let temp: Vec<f32> = params.iter().map(|p| p.temperature).collect();
    let top_k: Vec<i32> = params.iter().map(|p| p.top_k as i32).collect();
    let top_p: Vec<f32> = params.iter().map(|p| p.top_p).collect();
    let min_p: Vec<f32> = params.iter().map(|p| p.min_p).collect();
    let (dtemp, dk, dp, dm, du) =
        (up_raw(g, &temp), up_raw(g, &top_k), up_raw(g, &top_p), up_raw(g, &min_p), up_raw(g, &uniform));
    let args = SampleArgs {
        temperature: dtemp.as_view(),
        top_k: dk.as_view(),
        top_p: dp.as_view(),
        min_p: dm.as_view(),
        uniform: du.as_view(),
    };
    let mut out = up_raw(g, &vec![-1i32; rows]);
    g.sample(&dl.as_view(), vocab, &args, &mut out.as_view_mut()).unwrap();
    let got = g.stream().clone_dtoh(&out).unwrap();
    let mut want = Vec::new();
    for (i, (l, p)) in logits.chunks_exact(vocab).zip(&params).enumerate() {
        let u = uniform[i] as f64;
        let w = cpu::sample(l, p, u);
        // f32 sums on the device, f64 on the CPU: a u within 1e-4 of a bin edge may land either side.
        let near = [u - 1e-4, u + 1e-4].iter().any(|&v| cpu::sample(l, p, v.clamp(0.0, 0.999_999)) == got[i] as u32);
        if w != got[i] as u32 && near {
            eprintln!("sample row {i}: {} vs CPU {w} at a bin edge (u = {u})", got[i]);
            want.push(got[i] as f32);
        } else {
            want.push(w as f32);
        }
    }
    let got: Vec<f32> = got.into_iter().map(|v| v as f32).collect();
    check::<T>("sample_top_k_top_p", &got, &want, true);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it"]
fn gpu_sampling() {
    each_dtype("gpu_sampling", |g, r, bf16| both!(bf16, sampling_case(g, r)));
}
