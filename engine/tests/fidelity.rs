//! The engine against HF transformers: logits and greedy tokens recorded by `scripts/golden.py`
//! (float32, eager attention) for checkpoints written by `save_pretrained`.
//!
//! Logits must agree within [`MAX_RELATIVE_ERROR`] (max |ours - theirs| / max |theirs|) at the
//! prompt's last position and at the last greedy step (reached through `decode_step`, so the
//! KV-cache path is checked too); greedy tokens must be identical. After a deliberate change to
//! the tiny model or the fixtures, rerun `python3 scripts/golden.py`.

mod common;

use std::path::PathBuf;

use pdq_engine::Model;
use serde::Deserialize;
use serde_json::Value as Json;

const MAX_RELATIVE_ERROR: f32 = 1e-4;

#[derive(Deserialize)]
struct Golden {
    name: String,
    /// Checkpoint directory under `fixtures/golden/`; `None` for the tiny model.
    dir: Option<String>,
    rope_inv_freq: Vec<f32>,
    cases: Vec<Case>,
    #[serde(default)]
    text: Option<Json>,
}

#[derive(Deserialize)]
struct Case {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    min_relative_top2_gap: f32,
    prompt_logits: Vec<f32>,
    final_logits: Vec<f32>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn golden(name: &str) -> Golden {
    let path = fixtures().join(format!("{name}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn relative_error(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "logit count");
    let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = ours.iter().zip(theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// First maximum, as `torch.argmax` picks.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Runs every case of `g` on `m`; returns the largest relative logit error seen.
fn check(m: &Model, g: &Golden) -> f32 {
    let mut worst = relative_error(&m.config.rope_inv_freq(), &g.rope_inv_freq);
    assert!(worst < 1e-6, "{}: RoPE inverse frequencies differ by {worst:e}", g.name);
    for (i, case) in g.cases.iter().enumerate() {
        let (mut kv, mut logits) = m.prefill(&case.prompt).unwrap();
        let err = relative_error(&logits, &case.prompt_logits);
        assert!(err < MAX_RELATIVE_ERROR, "{} case {i}: prompt logits relative error {err:e}", g.name);
        worst = worst.max(err);
        let mut tokens = Vec::new();
        for step in 0..case.greedy.len() {
            if step > 0 {
                logits = m.decode_step(&mut kv, *tokens.last().unwrap()).unwrap();
            }
            tokens.push(argmax(&logits));
        }
        let err = relative_error(&logits, &case.final_logits);
        assert!(err < MAX_RELATIVE_ERROR, "{} case {i}: last-step logits relative error {err:e}", g.name);
        worst = worst.max(err);
        assert_eq!(
            tokens, case.greedy,
            "{} case {i}: greedy tokens differ (reference top-2 gap {:e})",
            g.name, case.min_relative_top2_gap
        );
    }
    println!("{}: max relative logit error {worst:.2e} over {} prompts", g.name, g.cases.len());
    worst
}

fn load_fixture(name: &str) -> (Model, Golden) {
    let g = golden(name);
    let dir = fixtures().join(g.dir.as_deref().expect("fixture checkpoint"));
    (Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}")), g)
}

#[test]
fn tiny_model_matches_transformers() {
    let g = golden("tiny");
    check(common::model(), &g);
}

#[test]
fn tiny_tokenizer_and_chat_template_match_transformers() {
    let g = golden("tiny");
    let text = g.text.expect("tiny fixture has text cases");
    let m = common::model();
    for case in text["encode"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(m.encode(case["text"].as_str().unwrap()).unwrap(), ids, "{}", case["text"]);
    }
    let chat = &text["chat"];
    assert_eq!(m.render_chat(&chat["messages"]).unwrap(), chat["rendered"].as_str().unwrap());
    let ids: Vec<u32> = serde_json::from_value(chat["ids"].clone()).unwrap();
    assert_eq!(m.encode_chat(&chat["messages"]).unwrap(), ids);
}

#[test]
fn qwen2_qkv_bias_gqa_matches_transformers() {
    let (m, g) = load_fixture("qwen2-gqa-bias");
    assert_eq!((m.config.qkv_bias, m.config.o_bias), (true, false));
    assert_eq!((m.config.num_attention_heads, m.config.num_key_value_heads), (6, 2));
    check(&m, &g);
}

#[test]
fn bf16_weights_match_transformers() {
    let (m, g) = load_fixture("qwen2-gqa-bias-bf16");
    check(&m, &g);
}

#[test]
fn llama3_tied_rope_scaling_v4_config_matches_transformers() {
    let (m, g) = load_fixture("llama3-tied-rope");
    assert!(m.config.tie_word_embeddings);
    assert_eq!(m.config.rope_scaling.as_ref().map(|s| s.rope_type.as_str()), Some("llama3"));
    check(&m, &g);
}

#[test]
fn mistral_sharded_window_matches_transformers() {
    let (m, g) = load_fixture("mistral-window");
    assert!(fixtures().join("mistral-window/model.safetensors.index.json").is_file());
    // Inside the window, windowed and full attention agree; the engine stops at its edge.
    assert_eq!((m.config.sliding_window, m.max_context()), (Some(64), 64));
    check(&m, &g);
}

/// One small random Llama per GGUF tensor type, written by the tests (`gguf::fixture`), against
/// transformers' GGUF loader on the same file: every block format, the Q/K un-permutation, tied
/// embeddings and the metadata config. CI runs this for every type.
#[test]
fn gguf_every_tensor_type_matches_transformers() {
    for t in pdq_kernels::QuantType::ALL {
        let dir = common::scratch(&format!("fidelity-gguf-{t}"));
        pdq_engine::gguf::fixture::write(t, &dir).unwrap();
        let m = Model::load(&dir.join("model.gguf")).unwrap_or_else(|e| panic!("{t}: {e}"));
        check(&m, &golden(&format!("gguf-{t}")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The Qwen2 GGUF fixture: q/k/v biases from the file, rows not permuted.
#[test]
fn gguf_qwen2_matches_transformers() {
    let dir = common::scratch("fidelity-gguf-qwen2");
    pdq_engine::gguf::fixture::write_qwen2(pdq_kernels::QuantType::Q8_0, &dir).unwrap();
    let m = Model::load(&dir.join("model.gguf")).unwrap();
    assert!(m.config.qkv_bias);
    check(&m, &golden("gguf-qwen2-Q8_0"));
    let _ = std::fs::remove_dir_all(&dir);
}
