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

fn params(max_new_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams { max_new_tokens, temperature: 0.8, seed, ignore_eos: true, ..SamplingParams::default() }
}

/// Prefills then decodes every prompt concurrently on an engine with `blocks` KV blocks.
async fn generate(blocks: usize, prompts: &[Vec<u32>], max_new: usize) -> Vec<Result<Vec<u32>, String>> {
    let cfg = EngineLoopConfig {
        max_running: 8,
        prefill_token_budget: 64,
        kv_pool_bytes: blocks * TINY_BLOCK_BYTES,
        metrics: crate::metrics::Labels::new("test", 0),
    };
    let engine = EngineHandle::spawn(model(), cfg, "engine-test".into());
    let runs = prompts.iter().enumerate().map(|(i, p)| {
        let engine = engine.clone();
        async move {
            let pre = engine.prefill(p.clone(), params(max_new, i as u64)).await.map_err(|e| e.to_string())?;
            let out = engine.decode(pre.pages, pre.first_token, params(max_new, i as u64)).await;
            out.map(|o| o.output_ids).map_err(|e| e.code().to_string())
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
