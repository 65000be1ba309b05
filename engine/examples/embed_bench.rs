//! `embed_bench --gguf FILE [--inputs 64] [--words 90]`: embeddings on a GGUF checkpoint, pdq
//! beside llama.cpp (llama-cpp-python's `Llama(embedding=True).embed`, last-token pooling,
//! normalized) on the same texts, same thread count, in one run. Prints each side's input
//! tokens per second (best of [`REPEATS`] passes), their ratio, and how close the two sides'
//! vectors are (the lowest cosine over the inputs), so speed is never bought with wrong answers.
//!
//! pdq runs the inputs as its engine loop does: as many per batched forward as fit a 512-token
//! budget (the default `--prefill-token-budget`), each pooled by its last token. llama.cpp runs
//! when `$PDQ_BENCH_PYTHON` (default `python3`) can import `llama_cpp`; otherwise it says why.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use pdq_engine::{CpuExecutor, Executor, Model, Pooling, StepItem, StepOut, Want};

const REPEATS: usize = 3;
const BUDGET: usize = 512;
const WORDS: &[&str] = &[
    "the", "river", "bends", "twice", "before", "it", "reaches", "a", "quiet", "town", "where", "bakers", "open",
    "early", "and", "cyclists", "wait", "for", "bread", "while", "rain", "falls", "on", "old", "stone", "bridges",
];

fn texts(n: usize, words: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let body: Vec<&str> = (0..words).map(|w| WORDS[(i * 7 + w * (i % 5 + 1)) % WORDS.len()]).collect();
            format!("Note {i}: {}.", body.join(" "))
        })
        .collect()
}

/// pdq's vectors and its best input tokens per second.
fn pdq(model: Arc<Model>, inputs: &[Vec<u32>]) -> (Vec<Vec<f32>>, f64) {
    let total: usize = inputs.iter().map(Vec::len).sum();
    let mut exec = CpuExecutor::new(model, 256 << 20);
    // Each pass starts cold: no prefix cache between passes.
    exec.set_prefix_cache(false);
    let mut vectors = Vec::new();
    let mut best = 0f64;
    for _ in 0..REPEATS {
        vectors.clear();
        let t = Instant::now();
        let mut next = 0;
        while next < inputs.len() {
            let (mut batch, mut used) = (Vec::new(), 0);
            while next < inputs.len() && (batch.is_empty() || used + inputs[next].len() <= BUDGET) {
                used += inputs[next].len();
                batch.push((exec.add_sequence(inputs[next].len()).unwrap(), &inputs[next]));
                next += 1;
            }
            let items: Vec<StepItem> = batch
                .iter()
                .map(|(seq, tokens)| StepItem { seq: *seq, tokens, want: Want::Embed(Pooling::Last) })
                .collect();
            for out in exec.step(&items).unwrap() {
                let StepOut::Embedding(v) = out else { unreachable!("embeddings were asked for") };
                vectors.push(v);
            }
            batch.iter().for_each(|(seq, _)| exec.release(*seq));
        }
        best = best.max(total as f64 / t.elapsed().as_secs_f64());
    }
    (vectors, best)
}

const LLAMA_CPP: &str = r#"
import json, sys, time
import llama_cpp
from llama_cpp import Llama
path, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
texts = json.loads(sys.stdin.read())
# Without ggml's extra buffer types (AMX, weight repacking): their AMX path crashes on some
# CPUs (a segfault in ggml_backend_amx_mul_mat on this one), as the engine bench says.
default_params = llama_cpp.llama_model_default_params
def no_extra():
    p = default_params()
    p.use_extra_bufts = False
    return p
llama_cpp.llama_model_default_params = no_extra
llama_cpp.llama.llama_cpp.llama_model_default_params = no_extra
llm = Llama(model_path=path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST, n_threads=threads,
            n_threads_batch=threads, n_ctx=4096, n_batch=512, n_ubatch=512, verbose=False)
tokens = sum(len(llm.tokenize(t.encode(), add_bos=True, special=False)) for t in texts)
best, vectors = 0.0, None
for _ in range(repeats):
    t = time.perf_counter()
    vectors = llm.embed(texts, normalize=True)
    best = max(best, tokens / (time.perf_counter() - t))
print(json.dumps({"tok_s": best, "tokens": tokens, "vectors": vectors}))
"#;

struct Peer {
    tok_s: f64,
    tokens: usize,
    vectors: Vec<Vec<f32>>,
}

fn llama_cpp(path: &std::path::Path, threads: usize, texts: &[String]) -> Result<Peer, String> {
    use std::io::Write;
    let python = std::env::var("PDQ_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .args(["-c", LLAMA_CPP])
        .arg(path)
        .args([threads.to_string(), REPEATS.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{python}: {e}"))?;
    child.stdin.take().unwrap().write_all(serde_json::to_string(texts).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(Peer {
        tok_s: v["tok_s"].as_f64().unwrap_or(0.0),
        tokens: v["tokens"].as_u64().unwrap_or(0) as usize,
        vectors: serde_json::from_value(v["vectors"].clone()).map_err(|e| e.to_string())?,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut gguf, mut n, mut words) = (None, 64, 90);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--gguf" => gguf = Some(PathBuf::from(value)),
            "--inputs" => n = value.parse().expect("--inputs N"),
            "--words" => words = value.parse().expect("--words N"),
            other => panic!("unknown flag {other}"),
        }
    }
    let path = gguf.expect("--gguf FILE");
    let model = Arc::new(Model::load(&path).expect("load the GGUF"));
    let texts = texts(n, words);
    let inputs: Vec<Vec<u32>> = texts.iter().map(|t| model.encode(t).unwrap()).collect();
    let total: usize = inputs.iter().map(Vec::len).sum();
    let threads = rayon::current_num_threads();
    let load =
        || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').next().unwrap_or("?").to_string();
    println!(
        "embed_bench: {} on {threads} threads, {n} inputs, {total} tokens; load average {}",
        path.display(),
        load()
    );
    let (ours, ours_tok_s) = pdq(model, &inputs);
    println!("| | input tok/s |\n|---|---:|\n| pdq | {ours_tok_s:.0} |");
    match llama_cpp(&path, threads, &texts) {
        Ok(peer) => {
            println!("| llama.cpp | {:.0} |", peer.tok_s);
            let cosine = ours
                .iter()
                .zip(&peer.vectors)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
                .fold(f32::INFINITY, f32::min);
            println!(
                "RATIO pdq_over_llama_cpp={:.2} lowest_cosine={cosine:.6} tokens pdq={total} llama.cpp={}",
                ours_tok_s / peer.tok_s,
                peer.tokens
            );
        }
        Err(why) => println!("llama.cpp not run: {why}"),
    }
    println!("load average after: {}", load());
}
