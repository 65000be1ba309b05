//! The worker engine loop on a device against the CPU engine loop, without broker or database:
//! continuous batching of mixed requests, tokens compared request by request. Part of
//! `scripts/gpu-check.sh` (step 3); with `--device cpu` it rehearses itself anywhere, checking
//! the concurrent CPU loop against the same requests run one at a time.
//!
//! `loop_check [--model tiny|random:NAME|PATH] [--device cuda|cpu] [--requests 64] [--scratch DIR]`
//!
//! The requests (fixed by their index): prompts of 1 to ~330 tokens, 1 to 40 new tokens, a
//! quarter greedy, half seeded (temperature 0.8 / top-p 0.9, or temperature 1 / top-k 40), a
//! quarter greedy with log-probabilities (so the loop asks the executor for logits, not a
//! token), and every eighth with two choices (forked KV: on a GPU, a device block copy). They
//! arrive staggered, so prefills join a running decode batch. Each goes through the engine's
//! own path: prefill, pages out, pages in, decode.
//!
//! Prints one `LOOP` summary row per model (identical requests, greedy and seeded apart; the
//! first differing position of each differing request; tokens/s of both loops; on a GPU, how
//! many requests get the same tokens batched as alone on the device) and exits 1 when any
//! request differs from the CPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdq_engine::{Device, DeviceChoice, Model, SamplingParams};
use pdq_workers::{EngineHandle, EngineLoopConfig, MetricLabels};

struct Args {
    model: String,
    device: DeviceChoice,
    requests: usize,
    scratch: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        model: "tiny".into(),
        device: DeviceChoice::Cuda,
        requests: 64,
        scratch: std::env::temp_dir().join("pdq-loop-check"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--device" => a.device = value()?.parse().map_err(|e| format!("--device: {e}"))?,
            "--requests" => a.requests = value()?.parse().map_err(|e| format!("--requests: {e}"))?,
            "--scratch" => a.scratch = PathBuf::from(value()?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// `tiny`, `random:NAME` (a random checkpoint of a known shape) or a directory or `.gguf` file.
fn load(spec: &str, scratch: &Path) -> Result<Model, Box<dyn std::error::Error>> {
    let dir = if spec == "tiny" {
        let d = scratch.join("tiny");
        pdq_engine::tiny::write(&d)?;
        d
    } else if let Some(name) = spec.strip_prefix("random:") {
        let d = scratch.join(name);
        pdq_engine::random::write(name, &d, 0)?;
        d
    } else {
        PathBuf::from(spec)
    };
    Ok(Model::load(&dir)?)
}

/// A tiny deterministic generator (SplitMix64): the requests depend on their index alone.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct Request {
    prompt: Vec<u32>,
    params: SamplingParams,
    n: usize,
    greedy: bool,
    delay: Duration,
}

fn requests(model: &Model, count: usize) -> Vec<Request> {
    let vocab = model.tokenizer_vocab_size().min(model.config.vocab_size) as u64;
    let max_ctx = model.max_context();
    (0..count)
        .map(|i| {
            let len = ([1, 3, 17, 40, 130, 300][i % 6] + i % 29).min(max_ctx.saturating_sub(48)).max(1);
            // Ids from 3 up: below are BOS/EOS-like specials in the models pdq generates.
            let prompt = (0..len).map(|j| (3 + mix((i * 1000 + j) as u64) % (vocab - 3)) as u32).collect();
            let mut params = SamplingParams {
                max_new_tokens: 1 + (i * 7) % 40,
                ignore_eos: true,
                seed: 1000 + i as u64,
                ..SamplingParams::default()
            };
            match i % 4 {
                0 => {}
                1 => (params.temperature, params.top_p) = (0.8, 0.9),
                2 => (params.temperature, params.top_k) = (1.0, 40),
                _ => params.logprobs = Some(2),
            }
            let greedy = params.temperature <= 0.0;
            let n = if i % 8 == 5 { 2 } else { 1 };
            Request { prompt, params, n, greedy, delay: Duration::from_millis((i % 16) as u64 * 3) }
        })
        .collect()
}

/// Every request through one engine: output ids per choice, and generated tokens per second.
async fn run(device: &Device, reqs: &[Request], max_running: usize) -> Result<(Vec<Vec<Vec<u32>>>, f64), String> {
    let exec = device.executor(2 << 30).map_err(|e| e.to_string())?;
    let cfg = EngineLoopConfig {
        max_running,
        prefill_token_budget: if max_running == 1 { 1 } else { 4096 },
        metrics: MetricLabels::new("loop-check", 0),
        kv_by_need: false,
    };
    let engine = EngineHandle::spawn(exec, cfg, format!("loop-check-{}", device.name()));
    let started = Instant::now();
    let runs = reqs.iter().map(|r| {
        let engine = engine.clone();
        async move {
            tokio::time::sleep(r.delay).await;
            let pre = engine.prefill(r.prompt.clone(), r.params.clone(), r.n, None).await.map_err(|e| e.to_string())?;
            let out =
                engine.decode(pre.pages, None, pre.firsts, r.params.clone(), None).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(out.choices.into_iter().map(|c| c.output_ids).collect::<Vec<_>>())
        }
    });
    let outs = if max_running == 1 {
        // One at a time: the reference the concurrent loop must match.
        let mut outs = Vec::new();
        for r in runs {
            outs.push(r.await?);
        }
        outs
    } else {
        futures_util::future::try_join_all(runs).await?
    };
    let tokens: usize = outs.iter().flatten().map(Vec::len).sum();
    Ok((outs, tokens as f64 / started.elapsed().as_secs_f64()))
}

async fn check(spec: &str, a: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let model = Arc::new(load(spec, &a.scratch)?);
    let reqs = requests(&model, a.requests);
    let cpu = Device::from(model.clone());
    let dev = Device::open(model, a.device)?;
    // On the CPU the candidate runs everything at once and the reference one request at a
    // time; against a GPU the reference is the CPU loop batched the same way.
    let ref_running = if dev.name() == "cpu" { 1 } else { 64 };
    let (want, ref_tps) = run(&cpu, &reqs, ref_running).await?;
    let (got, dev_tps) = run(&dev, &reqs, 64).await?;
    // On a GPU, also the device against itself one request at a time: whether its batched
    // step is batch-invariant (cuBLAS may pick other kernels, and so other summation orders,
    // for other row counts), apart from whether it matches the CPU.
    let invariant = if dev.name() == "cpu" {
        String::new()
    } else {
        let (alone, _) = run(&dev, &reqs, 1).await?;
        let same = alone.iter().zip(&got).filter(|(a, g)| a == g).count();
        format!(" device_alone_vs_batched={same}/{}", reqs.len())
    };
    let (mut same, mut greedy, mut greedy_same) = (0, 0, 0);
    let mut diffs = Vec::new();
    for (i, ((w, g), r)) in want.iter().zip(&got).zip(&reqs).enumerate() {
        let equal = w == g;
        same += usize::from(equal);
        if r.greedy {
            greedy += 1;
            greedy_same += usize::from(equal);
        }
        if !equal {
            let at = w.iter().zip(g).map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count()).min();
            diffs.push(format!("#{i}@{}", at.unwrap_or(0)));
        }
    }
    let n = reqs.len();
    println!(
        "LOOP model={spec} device={} requests={n} identical={same}/{n} greedy={greedy_same}/{greedy} seeded={}/{} \
         ref_tok_s={ref_tps:.0} dev_tok_s={dev_tps:.0}{invariant} differing={}",
        dev.name(),
        same - greedy_same,
        n - greedy,
        if diffs.is_empty() { "none".to_string() } else { diffs.join(",") }
    );
    Ok(same == n)
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loop_check: {e}");
            std::process::exit(2)
        }
    };
    let mut pass = true;
    for spec in a.model.split(',') {
        match check(spec, &a).await {
            Ok(ok) => pass &= ok,
            Err(e) => {
                println!("LOOP model={spec} ERROR {e}");
                pass = false;
            }
        }
    }
    println!("loop_check: {}", if pass { "PASS" } else { "FAIL" });
    std::process::exit(i32::from(!pass))
}
