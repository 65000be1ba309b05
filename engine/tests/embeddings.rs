//! Embeddings against transformers: the final hidden states (`last_hidden_state`, after the
//! model's last norm) pooled by the last token, the mean and the first token, L2-normalized,
//! as `scripts/golden.py embeddings` recorded them for the tiny model and SmolLM2. Also: a
//! vector does not depend on what it is batched with, nor, pooled by its last token, on a
//! prefix the pool had cached.

mod common;

use std::path::Path;
use std::sync::Arc;

use pdq_engine::{tiny, CpuExecutor, Executor, Model, Pooling, StepItem, StepOut, Want};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    ids: Vec<u32>,
    last: Vec<f32>,
    mean: Vec<f32>,
    cls: Vec<f32>,
    #[serde(default)]
    text: Option<String>,
}

fn golden(name: &str) -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/golden/{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn tiny_model() -> Arc<Model> {
    let dir = common::scratch("embeddings");
    tiny::write(&dir).unwrap();
    let model = Model::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(model)
}

/// Each input alone in an empty sequence, pooled as asked.
fn embed(exec: &mut CpuExecutor, ids: &[u32], pooling: Pooling) -> Vec<f32> {
    let seq = exec.add_sequence(ids.len()).unwrap();
    let out = exec.step(&[StepItem { seq, tokens: ids, want: Want::Embed(pooling) }]).unwrap();
    exec.release(seq);
    match out.into_iter().next() {
        Some(StepOut::Embedding(v)) => v,
        other => panic!("not an embedding: {other:?}"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The largest error over every case and pooling, checked against `tolerance`.
fn check(model: Arc<Model>, golden: &Golden, tolerance: f32) -> f32 {
    let mut exec = CpuExecutor::new(model, 64 << 20);
    let mut worst = 0f32;
    for case in &golden.cases {
        for (pooling, want) in [(Pooling::Last, &case.last), (Pooling::Mean, &case.mean), (Pooling::Cls, &case.cls)] {
            let got = embed(&mut exec, &case.ids, pooling);
            let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "unit length, got {norm}");
            let err = max_abs_diff(&got, want);
            assert!(err <= tolerance, "{pooling:?} of {:?}: max abs error {err} > {tolerance}", case.ids);
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn the_tiny_models_embeddings_are_transformers() {
    let err = check(tiny_model(), &golden("embeddings-tiny"), 1e-5);
    println!("tiny model: embeddings' max abs error against transformers {err:.2e}");
}

#[test]
fn smollm2_embeddings_are_transformers() {
    let path = match common::smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED smollm2 embeddings check: {why}");
            return;
        }
    };
    let model = Arc::new(Model::load(&path).unwrap());
    let golden = golden("embeddings-smollm2");
    for case in &golden.cases {
        let text = case.text.as_deref().unwrap();
        assert_eq!(model.encode(text).unwrap(), case.ids, "tokens of {text:?}");
    }
    assert_eq!(model.pooling(), Pooling::Last, "a GGUF without pooling metadata pools its last token");
    assert_eq!(model.embedding_size(), 576);
    // transformers dequantizes Q4_1 to f32 and runs torch's kernels; pdq computes on the
    // blocks. Measured 1.3e-6 over the 30 layers; checked with room for other CPUs' rounding.
    let err = check(model, &golden, 1e-4);
    println!("SmolLM2: embeddings' max abs error against transformers {err:.2e}");
}

#[test]
fn a_vector_depends_only_on_its_input() {
    let model = tiny_model();
    let golden = golden("embeddings-tiny");
    let long = &golden.cases.last().unwrap().ids;
    assert!(long.len() > pdq_engine::DEFAULT_BLOCK_SIZE, "a prompt with a full block");
    let mut exec = CpuExecutor::new(model.clone(), 64 << 20);
    let alone = embed(&mut exec, long, Pooling::Mean);
    let alone_last = embed(&mut exec, long, Pooling::Last);

    // Batched with other inputs and a prompt that wants logits: the same bits.
    let short = &golden.cases[1].ids;
    let seqs: Vec<_> = (0..3).map(|_| exec.add_sequence(long.len()).unwrap()).collect();
    let items = [
        StepItem { seq: seqs[0], tokens: short, want: Want::Logits },
        StepItem { seq: seqs[1], tokens: long, want: Want::Embed(Pooling::Mean) },
        StepItem { seq: seqs[2], tokens: long, want: Want::Embed(Pooling::Last) },
    ];
    let outs = exec.step(&items).unwrap();
    seqs.into_iter().for_each(|s| exec.release(s));
    assert_eq!(outs[1], StepOut::Embedding(alone.clone()));
    assert_eq!(outs[2], StepOut::Embedding(alone_last.clone()));

    // Last-token pooling after the pool cached the input's first block: only the rest runs.
    let (seq, _) = exec.add_prompt(long, long.len()).unwrap();
    exec.step(&[StepItem { seq, tokens: long, want: Want::Logits }]).unwrap();
    exec.register_prompt(seq, long).unwrap();
    exec.release(seq);
    let (seq, cached) = exec.add_prompt(long, long.len()).unwrap();
    assert!(cached >= pdq_engine::DEFAULT_BLOCK_SIZE, "the first block is cached");
    let out = exec.step(&[StepItem { seq, tokens: &long[cached..], want: Want::Embed(Pooling::Last) }]).unwrap();
    exec.release(seq);
    assert_eq!(out[0], StepOut::Embedding(alone_last));

    // Mean pooling over a sequence that holds cached rows is refused before anything runs.
    let (seq, cached) = exec.add_prompt(long, long.len()).unwrap();
    let e = exec.step(&[StepItem { seq, tokens: &long[cached..], want: Want::Embed(Pooling::Mean) }]).unwrap_err();
    assert!(e.to_string().contains("pools every row"), "{e}");
    assert_eq!(exec.pool().len(seq).unwrap(), cached, "a refused step changes nothing");
}
