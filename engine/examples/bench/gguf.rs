//! `bench --gguf FILE`: pdq on a GGUF checkpoint beside llama.cpp on the same file, same
//! threads, in one run: batch-1 decode, one 512-token prefill, and pdq with 32 concurrent
//! requests, for pdq's exact default and its opt-in int8-activation path.
//! llama.cpp runs through llama-cpp-python when `$PDQ_BENCH_PYTHON` (default `python3`) can
//! import it; otherwise its column says so.
//!
//! Each figure is the best of [`REPEATS`] timed windows, for pdq and llama.cpp alike: on a
//! machine shared with other work, the best window is the one least disturbed. The load
//! average before and after is printed so a reader can judge how quiet the run was.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use pdq_engine::{Activations, Model, SeqId};

const PROMPT: usize = 32;
const DECODE_STEPS: usize = 32;
const PREFILL: usize = 512;
const CONCURRENT: usize = 32;
const CONCURRENT_STEPS: usize = 8;
const REPEATS: usize = 3;

fn argmax(l: &[f32]) -> u32 {
    l.iter().enumerate().fold(0, |b, (i, &x)| if x > l[b] { i } else { b }) as u32
}

fn tokens(n: usize, salt: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((salt * 7919 + i * 31) % (vocab - 100) + 50) as u32).collect()
}

/// pdq's tok/s on one model.
struct Figures {
    decode: f64,
    prefill: f64,
    concurrent: f64,
}

fn best(mut f: impl FnMut() -> f64) -> f64 {
    (0..REPEATS).map(|_| f()).fold(0.0, f64::max)
}

fn pdq(model: &Model) -> Figures {
    let vocab = model.config.vocab_size;
    let blocks = |len: usize| len.div_ceil(pdq_engine::DEFAULT_BLOCK_SIZE);

    let decode = best(|| {
        let mut kv = model.new_paged_kv(blocks(PROMPT + DECODE_STEPS + 1) + 2);
        let seq = kv.add_sequence(PROMPT + DECODE_STEPS + 1).unwrap();
        let prompt = tokens(PROMPT, 1, vocab);
        let mut logits = model.forward_batch(&mut kv, &[(seq, &prompt)]).unwrap().pop().unwrap();
        let t = Instant::now();
        for _ in 0..DECODE_STEPS {
            let next = [argmax(&logits)];
            logits = model.forward_batch(&mut kv, &[(seq, &next)]).unwrap().pop().unwrap();
        }
        DECODE_STEPS as f64 / t.elapsed().as_secs_f64()
    });

    // `PDQ_BENCH_ONLY=decode` (or `concurrent`): that figure alone, for profiling it.
    let only = std::env::var("PDQ_BENCH_ONLY").unwrap_or_default();
    if only == "decode" {
        return Figures { decode, prefill: 0.0, concurrent: 0.0 };
    }
    let prefill = if only == "concurrent" { 0.0 } else { prefill_rate(model) };
    let concurrent = concurrent_rate(model);
    Figures { decode, prefill, concurrent }
}

fn prefill_rate(model: &Model) -> f64 {
    let vocab = model.config.vocab_size;
    let blocks = |len: usize| len.div_ceil(pdq_engine::DEFAULT_BLOCK_SIZE);
    best(|| {
        let mut kv = model.new_paged_kv(blocks(PREFILL) + 2);
        let seq = kv.add_sequence(PREFILL).unwrap();
        let long = tokens(PREFILL, 2, vocab);
        let t = Instant::now();
        model.forward_batch(&mut kv, &[(seq, &long)]).unwrap();
        PREFILL as f64 / t.elapsed().as_secs_f64()
    })
}

fn concurrent_rate(model: &Model) -> f64 {
    let vocab = model.config.vocab_size;
    let blocks = |len: usize| len.div_ceil(pdq_engine::DEFAULT_BLOCK_SIZE);
    best(|| {
        let len = PROMPT + CONCURRENT_STEPS + 1;
        let mut kv = model.new_paged_kv(CONCURRENT * blocks(len) + 2);
        let seqs: Vec<SeqId> = (0..CONCURRENT).map(|_| kv.add_sequence(len).unwrap()).collect();
        let prompts: Vec<Vec<u32>> = (0..CONCURRENT).map(|b| tokens(PROMPT, 10 + b, vocab)).collect();
        let items: Vec<(SeqId, &[u32])> = seqs.iter().zip(&prompts).map(|(&s, p)| (s, &p[..])).collect();
        let mut logits = model.forward_batch(&mut kv, &items).unwrap();
        let t = Instant::now();
        for _ in 0..CONCURRENT_STEPS {
            let next: Vec<[u32; 1]> = logits.iter().map(|l| [argmax(l)]).collect();
            let items: Vec<(SeqId, &[u32])> = seqs.iter().zip(&next).map(|(&s, t)| (s, &t[..])).collect();
            logits = model.forward_batch(&mut kv, &items).unwrap();
        }
        (CONCURRENT * CONCURRENT_STEPS) as f64 / t.elapsed().as_secs_f64()
    })
}

const LLAMA_CPP: &str = r#"
import json, sys, time
import llama_cpp
from llama_cpp import Llama
path, threads, prompt, steps, prefill, repeats, extra = sys.argv[1], *map(int, sys.argv[2:8])
if not extra:
    # Without ggml's extra buffer types (AMX, weight repacking): their AMX path crashes on
    # some CPUs (a segfault in ggml_backend_amx_mul_mat on this one).
    default_params = llama_cpp.llama_model_default_params
    def no_extra():
        p = default_params()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama_model_default_params = no_extra
    llama_cpp.llama.llama_cpp.llama_model_default_params = no_extra
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512, verbose=False)
vocab = llm.n_vocab()
toks = lambda n, salt: [(salt * 7919 + i * 31) % (vocab - 100) + 50 for i in range(n)]
decode = prefill_rate = 0.0
for r in range(repeats):
    llm.reset(); llm.eval(toks(prompt, 1))
    t = time.perf_counter()
    for i in range(steps):
        llm.eval([toks(1, 100 + i)[0]])
    decode = max(decode, steps / (time.perf_counter() - t))
    llm.reset(); t = time.perf_counter(); llm.eval(toks(prefill, 2))
    prefill_rate = max(prefill_rate, prefill / (time.perf_counter() - t))
print(json.dumps({"decode": decode, "prefill": prefill_rate}))
"#;

/// llama.cpp's (decode, prefill) tok/s, or why it did not run. If it dies on a signal (its AMX
/// path segfaults on some CPUs), it runs again without ggml's extra buffer types and says so.
fn llama_cpp(path: &Path, threads: usize) -> Result<(f64, f64), String> {
    let python = std::env::var("PDQ_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let run = |extra: usize| {
        Command::new(&python)
            .args(["-c", LLAMA_CPP])
            .arg(path)
            .args([threads, PROMPT, DECODE_STEPS, PREFILL, REPEATS, extra].map(|n| n.to_string()))
            .output()
            .map_err(|e| format!("{python}: {e}"))
    };
    let mut out = run(1)?;
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&out.status) {
        println!(
            "llama.cpp died on signal {signal}; running it again with use_extra_bufts = false (no AMX, no repacking)"
        );
        out = run(0)?;
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok((v["decode"].as_f64().unwrap_or(0.0), v["prefill"].as_f64().unwrap_or(0.0)))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
}

pub fn run(path: &Path) {
    let threads = rayon::current_num_threads();
    println!("load average before: {}", load_average());
    let t = Instant::now();
    let model = Model::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    println!(
        "model: {} ({:.0} MB), loaded in {:.2}s; {threads} threads",
        model.name(),
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let exact = pdq(&model);
    // Peak resident memory: mapped weight pages, KV pools and activations (Linux only).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!("pdq peak resident memory (VmHWM): {}", line.trim_start_matches("VmHWM:").trim());
    }
    let peer = llama_cpp(path, threads);
    let (model, changed) = model.with_activations(Activations::Int8);
    let int8 = (changed > 0).then(|| pdq(&model));
    println!("load average after: {}", load_average());
    println!();
    println!("| | pdq tok/s | llama.cpp tok/s | pdq / llama.cpp |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, ours: f64, theirs: Option<f64>| match theirs {
        Some(x) => println!("| {name} | {ours:.1} | {x:.1} | {:.2}x |", ours / x),
        None => println!("| {name} | {ours:.1} | - | - |"),
    };
    let p = peer.as_ref().ok();
    for (mode, f) in [("exact", Some(&exact)), ("int8 activations", int8.as_ref())] {
        let Some(f) = f else {
            println!("| {mode}: no Q4_0/Q4_1/Q8_0 matrix, nothing to run | | | |");
            continue;
        };
        row(&format!("{mode}, batch-1 decode"), f.decode, p.map(|p| p.0));
        row(&format!("{mode}, {PREFILL}-token prefill"), f.prefill, p.map(|p| p.1));
        // The aim compares pdq's concurrent throughput with llama.cpp's batch-1 decode.
        row(&format!("{mode}, {CONCURRENT} concurrent (vs llama.cpp batch 1)"), f.concurrent, p.map(|p| p.0));
    }
    if let Err(why) = peer {
        println!("\nllama.cpp not run: {why}");
    }
}
