//! The KV pool as a cache on a chat batch, through the colocated engine loop (prefill and
//! decode in one pool, as `serve --mode colocated` runs it), two settings in one run on one
//! machine, output tokens compared request by request:
//! - `--compare cache` (default): the prefix cache off, then on;
//! - `--compare by-need`: whole-generation reservations, then KV by need (cache on in both);
//! - `--compare decode-by-need`: a decode rank's engine alone, as `serve --mode disagg` runs it:
//!   every prompt prefilled beforehand on a roomy engine (not timed), then its pages decoded in
//!   a `--pool-mb` pool, reserving whole generations, then by need.
//!
//! `prefix_bench [--model PATH|tiny] [--requests 48] [--max-tokens 64] [--max-running 8]
//!  [--pool-mb 1024] [--system true|false] [--compare cache|by-need|decode-by-need]`
//!
//! A model with a chat template gets a ~260-token support-rules system prompt (unless
//! `--system false`) and a different short question per request (as in issue 18's batch);
//! `tiny` gets token ids of the same shape. All requests arrive at once, greedy. Prints one
//! `PREFIX` row per setting and a `RATIO` row; exits 1 when any request's tokens differ.

use std::sync::Arc;
use std::time::Instant;

use pdq_engine::{CpuExecutor, Executor, Model, SamplingParams};
use pdq_workers::{EngineHandle, EngineLoopConfig, MetricLabels};

const SYSTEM: &str = "You are the support assistant of Velo & Co, a small bicycle shop in Lyon. Follow these \
rules in every answer. 1. Be polite and brief: at most three sentences. 2. Returns: unused items in their \
original packaging may be returned within 30 days of delivery with the receipt; helmets, inner tubes and \
worn clothing cannot be returned for hygiene and safety reasons. 3. Refunds go back to the original payment \
method within five working days after we receive the item. 4. Repairs: we service all bicycles including \
e-bikes from the brands we sell; a standard tune-up costs 59 euros and takes two working days; e-bike \
battery diagnostics cost 25 euros. 5. Never promise a delivery date; say that orders usually ship within \
three working days. 6. Opening hours: Tuesday to Saturday, 9:30 to 19:00; closed on Sundays, Mondays and \
public holidays. 7. For warranty claims, ask for the order number and a photo of the defect. 8. If a \
question is not about the shop, its products or its services, politely say you can only help with the shop. \
9. Never share personal data of other customers. 10. End every answer by asking whether there is anything \
else you can help with.";

const QUESTIONS: &[&str] = &[
    "Can I return a helmet I bought last week?",
    "How long does a refund take?",
    "Do you repair e-bikes from other brands?",
    "Are you open on Monday?",
    "How much is a tune-up?",
    "When will my order arrive?",
    "My brake lever snapped after two days, what do I do?",
    "Can you check my e-bike battery?",
    "What is the weather in Lyon tomorrow?",
    "Can I return unused gloves without the box?",
    "Do you sell children's bikes?",
    "Can I pay for a repair in cash?",
];

struct Args {
    model: String,
    requests: usize,
    max_tokens: usize,
    max_running: usize,
    pool_mb: usize,
    system: bool,
    compare: Compare,
}

#[derive(Clone, Copy, PartialEq)]
enum Compare {
    Cache,
    ByNeed,
    DecodeByNeed,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        model: "tiny".into(),
        requests: 48,
        max_tokens: 64,
        max_running: 8,
        pool_mb: 1024,
        system: true,
        compare: Compare::Cache,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--requests" => a.requests = number(value()?)?,
            "--max-tokens" => a.max_tokens = number(value()?)?,
            "--max-running" => a.max_running = number(value()?)?,
            "--pool-mb" => a.pool_mb = number(value()?)?,
            "--system" => a.system = value()?.parse().map_err(|e| format!("--system: {e}"))?,
            "--compare" => {
                a.compare = match value()?.as_str() {
                    "cache" => Compare::Cache,
                    "by-need" => Compare::ByNeed,
                    "decode-by-need" => Compare::DecodeByNeed,
                    other => return Err(format!("--compare: `cache`, `by-need` or `decode-by-need`, got {other}")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn load(spec: &str) -> Result<Model, Box<dyn std::error::Error>> {
    if spec == "tiny" {
        let dir = std::env::temp_dir().join(format!("pdq-prefix-bench-{}", std::process::id()));
        pdq_engine::tiny::write(&dir)?;
        let m = Model::load(&dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(m);
    }
    Ok(Model::load(std::path::Path::new(spec))?)
}

/// Each request's prompt: the chat template over the system prompt and its question, or (for a
/// model without one) 260 shared ids and a 12-id tail of its own.
fn prompts(model: &Model, n: usize, system: bool) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            let question = format!("{} (ticket {i})", QUESTIONS[i % QUESTIONS.len()]);
            let user = serde_json::json!({"role": "user", "content": question});
            let messages = match system {
                true => serde_json::json!([{"role": "system", "content": SYSTEM}, user]),
                false => serde_json::json!([user]),
            };
            model.encode_chat(&messages).unwrap_or_else(|_| {
                let vocab = model.config.vocab_size as u32 - 3;
                let tail = (0..12).map(|j| (i as u32 * 97 + j * 13) % vocab + 3);
                let head = if system { 260 } else { 0 };
                (0..head).map(|j| (j * 37 + 11) % vocab + 3).chain(tail).collect()
            })
        })
        .collect()
}

struct Run {
    wall_s: f64,
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
    outputs: Vec<Vec<u32>>,
}

impl Run {
    /// A setting's figures from its prompts, its wall time, its cached prompt tokens and each
    /// request's output tokens.
    fn new(prompts: &[Vec<u32>], wall_s: f64, cached_tokens: usize, outputs: Vec<Vec<u32>>) -> Run {
        Run {
            wall_s,
            prompt_tokens: prompts.iter().map(Vec::len).sum(),
            cached_tokens,
            completion_tokens: outputs.iter().map(Vec::len).sum(),
            outputs,
        }
    }
}

/// One setting: `second` is the cache on (`--compare cache`) or KV by need (the others).
async fn run(model: &Arc<Model>, prompts: &[Vec<u32>], a: &Args, second: bool) -> Result<Run, String> {
    if a.compare == Compare::DecodeByNeed {
        return decode_run(model, prompts, a, second).await;
    }
    let by_need = a.compare == Compare::ByNeed;
    let mut exec = CpuExecutor::new(model.clone(), a.pool_mb << 20);
    exec.set_prefix_cache(second || by_need);
    let cfg = EngineLoopConfig {
        max_running: a.max_running,
        prefill_token_budget: 4096,
        metrics: MetricLabels::new("prefix-bench", second as u32),
        kv_by_need: by_need && second,
    };
    let engine = EngineHandle::spawn(Box::new(exec), cfg, "prefix-bench".into());
    let params = SamplingParams { max_new_tokens: a.max_tokens, ..SamplingParams::default() };
    let started = Instant::now();
    let runs = prompts.iter().map(|p| {
        let (engine, params) = (engine.clone(), params.clone());
        async move { engine.generate(p.clone(), params, 1, None).await.map_err(|e| e.to_string()) }
    });
    let outs = futures_util::future::try_join_all(runs).await?;
    let wall_s = started.elapsed().as_secs_f64();
    let outputs = outs.iter().map(|(_, o)| o.choices[0].output_ids.clone()).collect();
    Ok(Run::new(prompts, wall_s, outs.iter().map(|(p, _)| p.cached_tokens).sum(), outputs))
}

/// A decode rank's engine: the prompts' pages come from a roomy prefill engine (with the
/// prefix cache, as a prefill rank runs; not timed), then every one is decoded at once in the
/// `--pool-mb` pool, with its prompt's tokens (by need) or without (whole generations).
async fn decode_run(model: &Arc<Model>, prompts: &[Vec<u32>], a: &Args, by_need: bool) -> Result<Run, String> {
    let mut prefill = CpuExecutor::new(model.clone(), 4096 << 20);
    prefill.set_prefix_cache(true);
    let cfg = |rank: u32, kv_by_need: bool| EngineLoopConfig {
        max_running: a.max_running,
        prefill_token_budget: 4096,
        metrics: MetricLabels::new("prefix-bench-decode", rank),
        kv_by_need,
    };
    let prefill = EngineHandle::spawn(Box::new(prefill), cfg(2, false), "prefix-bench-prefill".into());
    let params = SamplingParams { max_new_tokens: a.max_tokens, ..SamplingParams::default() };
    let runs = prompts.iter().map(|p| {
        let (prefill, params) = (prefill.clone(), params.clone());
        async move { prefill.prefill(p.clone(), params, 1, None).await.map_err(|e| e.to_string()) }
    });
    let prefilled = futures_util::future::try_join_all(runs).await?;
    let mut exec = CpuExecutor::new(model.clone(), a.pool_mb << 20);
    exec.set_prefix_cache(false);
    let engine = EngineHandle::spawn(Box::new(exec), cfg(by_need as u32, by_need), "prefix-bench-decode".into());
    let started = Instant::now();
    let runs = prefilled.iter().zip(prompts).map(|(pre, p)| {
        let (engine, params) = (engine.clone(), params.clone());
        let prompt = by_need.then(|| p.clone());
        async move {
            engine.decode(pre.pages.clone(), prompt, pre.firsts.clone(), params, None).await.map_err(|e| e.to_string())
        }
    });
    let outs = futures_util::future::try_join_all(runs).await?;
    let wall_s = started.elapsed().as_secs_f64();
    let outputs = outs.iter().map(|o| o.choices[0].output_ids.clone()).collect();
    Ok(Run::new(prompts, wall_s, prefilled.iter().map(|p| p.cached_tokens).sum(), outputs))
}

#[tokio::main]
async fn main() {
    let a = args().unwrap_or_else(|e| {
        eprintln!("prefix_bench: {e}");
        std::process::exit(2)
    });
    let model = Arc::new(load(&a.model).unwrap_or_else(|e| {
        eprintln!("prefix_bench: loading {}: {e}", a.model);
        std::process::exit(2)
    }));
    let prompts = prompts(&model, a.requests, a.system);
    let shared = prompts[0].iter().zip(&prompts[1]).take_while(|(x, y)| x == y).count();
    let mut runs = Vec::new();
    let setting = |second: bool| match (a.compare, second) {
        (Compare::Cache, false) => "cache=off",
        (Compare::Cache, true) => "cache=on",
        (Compare::ByNeed, false) => "kv=whole",
        (Compare::ByNeed, true) => "kv=by-need",
        (Compare::DecodeByNeed, false) => "decode kv=whole",
        (Compare::DecodeByNeed, true) => "decode kv=by-need",
    };
    for second in [false, true] {
        let r = run(&model, &prompts, &a, second).await.unwrap_or_else(|e| {
            eprintln!("prefix_bench: {e}");
            std::process::exit(1)
        });
        println!(
            "PREFIX model={} {} pool_mb={} requests={} shared_prompt_tokens={shared} prompt_tokens={} \
             cached_tokens={} cached_share={:.2} completion_tokens={} wall_s={:.2} tok_s={:.0}",
            a.model,
            setting(second),
            a.pool_mb,
            a.requests,
            r.prompt_tokens,
            r.cached_tokens,
            r.cached_tokens as f64 / r.prompt_tokens as f64,
            r.completion_tokens,
            r.wall_s,
            r.completion_tokens as f64 / r.wall_s,
        );
        runs.push(r);
    }
    let same = runs[0].outputs.iter().zip(&runs[1].outputs).filter(|(x, y)| x == y).count();
    println!("RATIO first_over_second={:.2} identical={same}/{}", runs[0].wall_s / runs[1].wall_s, a.requests);
    std::process::exit(i32::from(same != a.requests))
}
