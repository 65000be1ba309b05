//! The opt-in int8-activation path on the GGUF fixtures (one small random Llama per tensor
//! type): greedy tokens against the exact path (which `fidelity.rs` pins to transformers), logits
//! close to it, batch invariance kept, and the types without an int8 kernel left exact.
//! The same on SmolLM2 lives in `smollm2.rs`.

mod common;

use pdq_engine::gguf::fixture;
use pdq_engine::{Activations, Model};
use pdq_kernels::QuantType;

/// Greedy tokens the int8 path must share with the exact path, from the first.
const MIN_IDENTICAL: usize = 16;
/// Greedy tokens generated per prompt.
const STEPS: usize = 24;

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b }) as u32
}

/// Prompt logits and `STEPS` greedy tokens through the KV cache.
fn greedy(m: &Model, prompt: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let (mut kv, first) = m.prefill(prompt).unwrap();
    let mut logits = first.clone();
    let mut out = Vec::new();
    for _ in 0..STEPS {
        let t = argmax(&logits);
        out.push(t);
        logits = m.decode_step(&mut kv, t).unwrap();
    }
    (first, out)
}

fn load(t: QuantType, tag: &str) -> (Model, std::path::PathBuf) {
    let dir = common::scratch(&format!("int8-{tag}-{t}"));
    fixture::write(t, &dir).unwrap();
    let m = Model::load(&dir.join("model.gguf")).unwrap_or_else(|e| panic!("{t}: {e}"));
    (m, dir)
}

/// The two prompts of the fixtures' transformers goldens (`fixtures/golden/gguf-*.json`), the two
/// `gguf.rs` traces, and two more.
const PROMPTS: [&[u32]; 6] = [
    &[303, 211, 294, 53, 204],
    &[372, 152, 505, 143, 177, 279, 233, 154, 30, 171, 158, 236, 380, 282, 374, 442, 120],
    &[5],
    &[7, 300, 12, 99, 480, 3, 3, 41],
    &[1, 2, 3, 4, 5, 6],
    &[400, 17, 250],
];

#[test]
fn int8_greedy_tokens_match_the_exact_path() {
    for t in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        let (exact, dir) = load(t, "greedy");
        let (int8, changed) = Model::load(&dir.join("model.gguf")).unwrap().with_activations(Activations::Int8);
        // Seven matrices per layer and the tied lm_head.
        assert_eq!(changed, 7 * exact.config.num_hidden_layers + 1, "{t}: matrices on the int8 path");
        for prompt in PROMPTS {
            let (want_logits, want) = greedy(&exact, prompt);
            let (got_logits, got) = greedy(&int8, prompt);
            let same = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
            let scale = want_logits.iter().fold(0f32, |s, v| s.max(v.abs()));
            let err = want_logits.iter().zip(&got_logits).fold(0f32, |e, (a, b)| e.max((a - b).abs())) / scale;
            eprintln!("{t} {prompt:?}: {same}/{STEPS} greedy tokens identical, prompt logits rel. error {err:.1e}");
            assert!(same >= MIN_IDENTICAL, "{t} {prompt:?}: only {same} identical greedy tokens: {want:?} vs {got:?}");
            assert!(err < 1e-3 && err > 0.0, "{t} {prompt:?}: relative logit error {err:e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn types_without_an_int8_kernel_stay_exact() {
    for t in [QuantType::Q4_K, QuantType::Q6_K, QuantType::F16] {
        let (exact, dir) = load(t, "exact");
        let (int8, changed) = Model::load(&dir.join("model.gguf")).unwrap().with_activations(Activations::Int8);
        // The fixtures keep the embeddings (the tied lm_head) in the same type as the layers.
        assert_eq!(changed, 0, "{t}");
        let prompt = PROMPTS[1];
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(exact.prefill(prompt).unwrap().1), bits(int8.prefill(prompt).unwrap().1), "{t}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn int8_rows_are_batch_invariant() {
    let (m, dir) = load(QuantType::Q4_1, "batch");
    let (m, _) = m.with_activations(Activations::Int8);
    let alone: Vec<Vec<f32>> = PROMPTS
        .iter()
        .map(|p| {
            let mut kv = m.new_paged_kv(16);
            let s = kv.add_sequence(p.len()).unwrap();
            m.forward_batch(&mut kv, &[(s, p)]).unwrap().pop().unwrap()
        })
        .collect();
    let mut kv = m.new_paged_kv(64);
    let seqs: Vec<_> = PROMPTS.iter().map(|p| kv.add_sequence(p.len()).unwrap()).collect();
    let items: Vec<_> = seqs.iter().zip(PROMPTS).map(|(&s, p)| (s, p)).collect();
    let together = m.forward_batch(&mut kv, &items).unwrap();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "prompt {i} differs alone and batched");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
