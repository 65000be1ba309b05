//! Whole-model check and timing of the GPU forward, for `scripts/gpu-check.sh` on a lent GPU.
//!
//! `gpu_check OUT_DIR [--skip-timing] [--gguf FILE.gguf]...` (checkpoints are written to
//! `$PDQ_GPU_CHECK_MODELS`, default a folder under the system temp dir)
//! 1. Models: the tiny model, a random `qwen2.5-0.5b` (qkv biases), a random `llama-3.2-1b`
//!    (Llama 3 RoPE scaling, tied embeddings) and each `--gguf` file (its quantized weights
//!    dequantized to bf16 on upload). For three short prompts, prefill as one packed GPU batch,
//!    then two greedy decode steps as a batch; every step's last-position logits are compared
//!    with the CPU forward (teacher-forced on the CPU's greedy tokens). KV pages go both ways
//!    once (CPU pages -> GPU import -> GPU decode vs CPU decode). Then the executor's device
//!    sampling: greedy and seeded draws (top-p, top-k, min-p) on the device against the host's
//!    choice from the same logits.
//! 2. Timing (1B shape): the two ceilings measured here (device-to-device copy, 8192^3 bf16
//!    GEMM), then decode tokens/s at batch 1, 8, 64, 256 (128-token contexts) and prefill
//!    tokens/s for 1024-token prompts, each the median of repeats after warm-up, timed with
//!    CUDA events, next to its floor.
//!
//! Lines starting `MODEL `, `TIME ` and `AIM ` (the aims, met or missed; they do not decide
//! the exit) are the summary rows; exit 1 when a check fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use pdq_engine::cuda::{GpuKv, GpuModel};
use pdq_engine::{Device, EngineError, Executor, KvCache, Model, SamplingParams, SeqId, StepItem, StepOut, Want};
use pdq_kernels::CudaBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Max |gpu - cpu| over max |cpu| per logits row: bf16 activations and a bf16 residual stream
/// over up to 16 layers. Norm-relative error is printed beside it (expected 1e-3..1e-2).
const LOGIT_TOL: f64 = 2e-2;
const DECODE_BATCHES: [usize; 4] = [1, 8, 64, 256];
const DECODE_CTX: usize = 128;
const PREFILL_LEN: usize = 1024;
const WARMUP: usize = 3;
const REPEATS: usize = 10;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("gpu-check-out"));
    let skip_timing = args.iter().any(|a| a == "--skip-timing");
    let ggufs: Vec<PathBuf> = args.windows(2).filter(|w| w[0] == "--gguf").map(|w| PathBuf::from(&w[1])).collect();
    match run(&out, skip_timing, &ggufs) {
        Ok(true) => println!("gpu_check: PASS"),
        Ok(false) => {
            println!("gpu_check: FAIL (model check)");
            std::process::exit(1)
        }
        Err(e) => {
            println!("gpu_check: ERROR {e}");
            std::process::exit(1)
        }
    }
}

fn run(out: &Path, skip_timing: bool, ggufs: &[PathBuf]) -> Res<bool> {
    std::fs::create_dir_all(out)?;
    let cuda = CudaBackend::new(0)?;
    println!("device: {}", cuda.describe());
    // Checkpoints go to a scratch folder, never under OUT_DIR (which is fetched back).
    let models = std::env::var_os("PDQ_GPU_CHECK_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("pdq-gpu-check-models"));
    let tiny = models.join("tiny");
    pdq_engine::tiny::write(&tiny)?;
    let (mut pass, mut big, mut worst_logits, mut greedy) = (true, None, 0f64, (0usize, 0usize));
    let mut list: Vec<(String, PathBuf)> = vec![
        ("tiny".into(), tiny),
        ("qwen2.5-0.5b".into(), models.join("qwen")),
        ("llama-3.2-1b".into(), models.join("llama1b")),
    ];
    for g in ggufs {
        let stem = g.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        list.push((stem, g.clone()));
    }
    for (i, (name, dir)) in list.iter().enumerate() {
        // One model's failure (a load, an upload, a device fault) is reported and the others
        // still run: a device call is too scarce to stop at the first problem.
        let checked = (|| -> Res<(ModelCheck, bool, Arc<GpuModel>)> {
            if (1..3).contains(&i) {
                let t = std::time::Instant::now();
                pdq_engine::random::write(name, dir, 0)?;
                println!("wrote random {name} in {:.1}s", t.elapsed().as_secs_f64());
            }
            let model = Arc::new(Model::load(dir)?);
            let gpu = Arc::new(GpuModel::new(model.clone(), cuda.clone())?);
            let m = check_model(name, &model, &gpu)?;
            let sampled = check_sampling(name, &gpu)?;
            Ok((m, sampled, gpu))
        })();
        match checked {
            Ok((m, sampled, gpu)) => {
                pass &= m.pass && sampled;
                worst_logits = worst_logits.max(m.max_rel);
                greedy = (greedy.0 + m.greedy.0, greedy.1 + m.greedy.1);
                if name == "llama-3.2-1b" {
                    big = Some(gpu);
                }
            }
            Err(e) => {
                println!("MODEL {name:<14} ERROR {e}");
                pass = false;
            }
        }
    }
    // The aims, reported beside the checks (they do not decide PASS).
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("AIM greedy tokens identical, every model: {}/{} {}", greedy.0, greedy.1, met(greedy.0 == greedy.1));
    println!(
        "AIM bf16 logits within 1e-2 relative (max-rel, worst model): {worst_logits:.2e} {}",
        met(worst_logits <= 1e-2)
    );
    match (skip_timing, big) {
        (true, _) => {}
        (false, None) => {
            println!("TIME ERROR the 1B model did not load, so nothing was timed");
            pass = false;
        }
        (false, Some(gpu)) => match timing(&gpu) {
            Ok((decode_b1, prefill)) => {
                let b1 = decode_b1 * 100.0;
                println!("AIM batch-1 decode >= 70% of the HBM roofline: {b1:.0}% {}", met(decode_b1 >= 0.7));
                println!(
                    "AIM 1k prefill >= 50% of the bf16 GEMM peak: {:.0}% {}",
                    prefill * 100.0,
                    met(prefill >= 0.5)
                );
            }
            Err(e) => {
                println!("TIME ERROR {e}");
                pass = false;
            }
        },
    }
    Ok(pass)
}

/// (max-abs relative to max |ref|, norm-relative) error of `got` against `want`.
fn rel_err(got: &[f32], want: &[f32]) -> (f64, f64) {
    let (mut max_d, mut max_r, mut sd, mut sr) = (0f64, 0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = (g as f64 - w as f64).abs();
        max_d = if d.is_nan() { f64::INFINITY } else { max_d.max(d) };
        max_r = max_r.max((w as f64).abs());
        sd += d * d;
        sr += (w as f64) * (w as f64);
    }
    (max_d / max_r.max(1e-30), (sd / sr.max(1e-30)).sqrt())
}

fn argmax(x: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    let mut second = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > best.1 {
            second = best.1;
            best = (i, v);
        } else if v > second {
            second = v;
        }
    }
    (best.0, best.1 - second)
}

/// One model's whole-forward check: whether it passed, its worst max-relative logits error,
/// and (identical, compared) greedy choices.
struct ModelCheck {
    pass: bool,
    max_rel: f64,
    greedy: (usize, usize),
}

fn check_model(name: &str, model: &Model, gpu: &GpuModel) -> Res<ModelCheck> {
    let vocab = model.config.vocab_size.min(model.tokenizer_vocab_size());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let prompts: Vec<Vec<u32>> =
        [8usize, 5, 11].iter().map(|&n| (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()).collect();

    // CPU reference: prefill each prompt, then two greedy steps.
    let mut cpu_kv = Vec::new();
    let mut cpu_logits = vec![Vec::new(); 3]; // [step][prompt]
    for p in &prompts {
        let (kv, l) = model.prefill(p)?;
        cpu_kv.push(kv);
        cpu_logits[0].push(l);
    }
    let pages: Vec<Vec<u8>> = cpu_kv.iter().map(KvCache::to_bytes).collect();
    let mut fed = vec![Vec::new(); 2];
    for step in 1..3 {
        for i in 0..prompts.len() {
            let tok = argmax(&cpu_logits[step - 1][i]).0 as u32;
            fed[step - 1].push(tok);
            let l = model.decode_step(&mut cpu_kv[i], tok)?;
            cpu_logits[step].push(l);
        }
    }

    // GPU: one packed prefill batch, then batched decode fed the CPU's tokens.
    let mut kv: GpuKv = gpu.new_kv(64)?;
    let ids: Vec<SeqId> = prompts.iter().map(|_| kv.tables_mut().add_sequence(32)).collect::<Result<_, _>>()?;
    let mut ok = true;
    let mut worst = (0f64, 0f64);
    let mut greedy = (0usize, 0usize);
    for step in 0..3 {
        let batch: Vec<(SeqId, Vec<u32>)> = if step == 0 {
            ids.iter().copied().zip(prompts.iter().cloned()).collect()
        } else {
            ids.iter().copied().zip(fed[step - 1].iter().map(|&t| vec![t])).collect()
        };
        let refs: Vec<(SeqId, &[u32])> = batch.iter().map(|(id, t)| (*id, t.as_slice())).collect();
        let got = gpu.forward_batch(&mut kv, &refs)?;
        for i in 0..prompts.len() {
            let want = &cpu_logits[step][i];
            let e = rel_err(&got[i], want);
            worst = (worst.0.max(e.0), worst.1.max(e.1));
            let ((gt, _), (ct, margin)) = (argmax(&got[i]), argmax(want));
            let max_ref = want.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            greedy.1 += 1;
            if gt == ct {
                greedy.0 += 1;
            } else if margin as f64 > LOGIT_TOL * max_ref {
                println!("  {name} step {step} prompt {i}: greedy {gt} on GPU, {ct} on CPU (CPU margin {margin})");
                ok = false;
            }
            println!("  {name} step {step} prompt {i}: max-rel {:.2e} norm-rel {:.2e} greedy {gt}/{ct}", e.0, e.1);
        }
    }
    ok &= worst.0 <= LOGIT_TOL;

    // Pages: CPU prefill pages imported on the GPU, then one decode step on each side.
    let mut kv2 = gpu.new_kv(64)?;
    let imported = gpu.import_pages(&mut kv2, &pages[0], 32)?;
    let tok = fed[0][0];
    let got = gpu.forward_batch(&mut kv2, &[(imported, &[tok][..])])?;
    let pages_err = rel_err(&got[0], &cpu_logits[1][0]);
    // And GPU pages back: same header and length as the CPU's export of the same sequence.
    let exported = gpu.export_pages(&mut kv, ids[0])?;
    let cpu_pages = cpu_kv[0].to_bytes();
    let mut pages_ok = exported.len() == cpu_pages.len() && pages_err.0 <= LOGIT_TOL;
    if pages_ok {
        let f = |b: &[u8]| -> Vec<f32> {
            b[36..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let e = rel_err(&f(&exported), &f(&cpu_pages));
        println!("  {name} pages: import->decode max-rel {:.2e}; export vs CPU pages max-rel {:.2e}", pages_err.0, e.0);
        pages_ok &= e.0 <= LOGIT_TOL;
    } else {
        println!(
            "  {name} pages: export {} bytes vs CPU {}; import->decode max-rel {:.2e}",
            exported.len(),
            cpu_pages.len(),
            pages_err.0
        );
    }
    ok &= pages_ok;
    println!(
        "MODEL {name:<14} max-rel {:.2e} norm-rel {:.2e} tol {LOGIT_TOL:.0e} greedy {}/{} pages {} {}",
        worst.0,
        worst.1,
        greedy.0,
        greedy.1,
        if pages_ok { "ok" } else { "FAIL" },
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(ModelCheck { pass: ok, max_rel: worst.0, greedy })
}

/// The executor's device sampling against the host's choice from the same (device) logits: two
/// executors run the same prompts, one asked for tokens, the other for logits.
fn check_sampling(name: &str, gpu: &Arc<GpuModel>) -> Res<bool> {
    let device = Device::Cuda(gpu.clone());
    let model = gpu.model();
    let vocab = model.config.vocab_size.min(model.tokenizer_vocab_size()) as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let draws: Vec<SamplingParams> = vec![
        SamplingParams::default(),
        SamplingParams { temperature: 0.8, top_p: 0.9, ..Default::default() },
        SamplingParams { temperature: 1.0, top_k: 40, ..Default::default() },
        SamplingParams { temperature: 0.7, min_p: 0.1, ..Default::default() },
    ];
    let (mut same, mut total) = (0usize, 0usize);
    for seed in 0..8u64 {
        let (mut a, mut b) = (device.executor(64 << 20)?, device.executor(64 << 20)?);
        let prompts: Vec<Vec<u32>> =
            (0..draws.len()).map(|_| (0..9).map(|_| rng.gen_range(0..vocab)).collect()).collect();
        let seqs = |e: &mut Box<dyn Executor>| -> Res<Vec<SeqId>> {
            Ok(prompts.iter().map(|_| e.add_sequence(16)).collect::<Result<_, _>>()?)
        };
        let (sa, sb) = (seqs(&mut a)?, seqs(&mut b)?);
        let want: Vec<_> = draws.iter().map(|p| SamplingParams { seed, ..p.clone() }.draw(seed as usize)).collect();
        let items = |ids: &[SeqId], token: bool| -> Vec<StepItem<'_>> {
            ids.iter()
                .zip(&prompts)
                .zip(&want)
                .map(|((&seq, p), &d)| StepItem {
                    seq,
                    tokens: p,
                    want: if token { Want::Token(d) } else { Want::Logits },
                })
                .collect()
        };
        let tokens = a.step(&items(&sa, true))?;
        let logits = b.step(&items(&sb, false))?;
        for ((t, l), d) in tokens.into_iter().zip(logits).zip(&want) {
            let host = d.pick(&l.into_logits()?);
            total += 1;
            match t {
                StepOut::Token(t) if t == host => same += 1,
                other => println!("  {name} sampling seed {seed} {d:?}: device {other:?}, host {host}"),
            }
        }
    }
    let ok = same == total;
    println!("MODEL {name:<14} device-sampling {same}/{total} {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// Median milliseconds of `f` over [`REPEATS`] runs after [`WARMUP`], each bracketed by events.
fn time_ms(stream: &Arc<CudaStream>, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    let mut ms = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        f()?;
        let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        ms.push(start.elapsed_ms(&end)? as f64);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

fn random_bf16(stream: &Arc<CudaStream>, n: usize, seed: u64) -> Res<CudaSlice<bf16>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let host: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0))).collect();
    Ok(stream.clone_htod(&host)?)
}

/// Prints the TIME rows; returns batch-1 decode's fraction of the roofline and the best
/// prefill's fraction of the GEMM peak.
fn timing(gpu: &GpuModel) -> Res<(f64, f64)> {
    let (mut decode_b1, mut prefill_best) = (0f64, 0f64);
    let cu = gpu.backend();
    let s = cu.stream().clone();
    let c = &gpu.model().config;

    // Ceiling 1: device copy bandwidth, bytes read + written.
    let n = 512 << 20; // 1 GiB of bf16
    let src = random_bf16(&s, n, 1)?;
    let mut dst = s.alloc_zeros::<bf16>(n)?;
    let copy_ms = time_ms(&s, || Ok(s.memcpy_dtod(&src, &mut dst)?))?;
    let bw = 2.0 * (n * 2) as f64 / (copy_ms * 1e-3);
    drop((src, dst));
    // Ceiling 2: bf16 GEMM rate, f32 accumulation (cuBLAS), random operands.
    let g = 8192;
    let (a, b) = (random_bf16(&s, g * g, 2)?, random_bf16(&s, g * g, 3)?);
    let mut y = s.alloc_zeros::<bf16>(g * g)?;
    let gemm_ms = time_ms(&s, || Ok(cu.matmul(&a.as_view(), &b.as_view(), None, g, &mut y.as_view_mut())?))?;
    let peak = 2.0 * (g as f64).powi(3) / (gemm_ms * 1e-3);
    drop((a, b, y));
    println!("TIME copy-bandwidth {:.0} GB/s ({copy_ms:.3} ms per 1 GiB copy)", bw / 1e9);
    println!("TIME bf16-gemm-peak {:.0} TFLOP/s ({gemm_ms:.3} ms for 8192^3)", peak / 1e12);

    let vocab = c.vocab_size.min(gpu.model().tokenizer_vocab_size()) as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut rand_tokens = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.gen_range(0..vocab)).collect() };
    let steps = WARMUP + REPEATS;
    for &batch in &DECODE_BATCHES {
        let max_len = DECODE_CTX + steps + 1;
        let mut kv = gpu.new_kv(batch * max_len.div_ceil(pdq_engine::DEFAULT_BLOCK_SIZE))?;
        let ids: Vec<SeqId> =
            (0..batch).map(|_| kv.tables_mut().add_sequence(max_len)).collect::<Result<_, EngineError>>()?;
        // Prefill the contexts in slices of 32 sequences (bounded activation memory).
        let mut next = Vec::with_capacity(batch);
        for chunk in ids.chunks(32) {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|_| rand_tokens(DECODE_CTX)).collect();
            let refs: Vec<(SeqId, &[u32])> = chunk.iter().copied().zip(prompts.iter().map(Vec::as_slice)).collect();
            next.extend(gpu.forward_batch_greedy(&mut kv, &refs)?);
        }
        let ms = time_ms(&s, || {
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let refs: Vec<(SeqId, &[u32])> = ids.iter().copied().zip(toks.iter().map(|t| &t[..])).collect();
            next = gpu.forward_batch_greedy(&mut kv, &refs)?;
            Ok(())
        })?;
        // Floor: every weight once, plus each sequence's KV (mid-run context length).
        let ctx = DECODE_CTX + WARMUP + REPEATS / 2;
        let bytes = gpu.weight_bytes() + batch * ctx * kv.bytes_per_token();
        let floor_ms = bytes as f64 / bw * 1e3;
        println!(
            "TIME decode batch {batch:>3} ctx {ctx}: {ms:.3} ms/step {:.0} tok/s | floor {floor_ms:.3} ms {:.0} tok/s | {:.0}% of roofline",
            batch as f64 / (ms * 1e-3),
            batch as f64 / (floor_ms * 1e-3),
            100.0 * floor_ms / ms
        );
        if batch == 1 {
            decode_b1 = floor_ms / ms;
        }
    }

    // Prefill: fresh 1024-token prompts each repeat (batch 1 and 4), released afterwards.
    for &batch in &[1usize, 4] {
        let mut kv = gpu.new_kv(batch * PREFILL_LEN.div_ceil(pdq_engine::DEFAULT_BLOCK_SIZE))?;
        let prompts: Vec<Vec<u32>> = (0..batch).map(|_| rand_tokens(PREFILL_LEN)).collect();
        let ms = time_ms(&s, || {
            let ids: Vec<SeqId> =
                (0..batch).map(|_| kv.tables_mut().add_sequence(PREFILL_LEN)).collect::<Result<_, EngineError>>()?;
            let refs: Vec<(SeqId, &[u32])> = ids.iter().copied().zip(prompts.iter().map(Vec::as_slice)).collect();
            gpu.forward_batch_greedy(&mut kv, &refs)?;
            ids.into_iter().for_each(|id| kv.tables_mut().release(id));
            Ok(())
        })?;
        let tokens = (batch * PREFILL_LEN) as f64;
        let (h, l) = (c.hidden_size as f64, c.num_hidden_layers as f64);
        let (qd, kvd, inter) = (
            (c.num_attention_heads * c.head_dim) as f64,
            (c.num_key_value_heads * c.head_dim) as f64,
            c.intermediate_size as f64,
        );
        let per_token = l * 2.0 * (h * (qd + 2.0 * kvd) + qd * h + 3.0 * h * inter);
        // Causal attention: QK^T and PV over on average half the prompt.
        let attn = batch as f64 * l * 2.0 * 2.0 * qd * (PREFILL_LEN as f64).powi(2) / 2.0;
        let flops = per_token * tokens + attn + 2.0 * h * c.vocab_size as f64 * batch as f64;
        let floor_ms = flops / peak * 1e3;
        println!(
            "TIME prefill {batch}x{PREFILL_LEN}: {ms:.2} ms {:.0} tok/s | floor {floor_ms:.2} ms {:.0} tok/s | {:.0}% of GEMM peak",
            tokens / (ms * 1e-3),
            tokens / (floor_ms * 1e-3),
            100.0 * floor_ms / ms
        );
        prefill_best = prefill_best.max(floor_ms / ms);
    }
    Ok((decode_b1, prefill_best))
}
