//! Sampling, stop conditions and split (prefill here, decode elsewhere) generation.

mod common;

use common::model;
use pdq_engine::{generate, sample, FinishReason, Generation, KvCache, Matched, SamplingParams};
use serde_json::json;

fn prompt() -> Vec<u32> {
    model().encode("Once upon a time, in a small harbour town,").unwrap()
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        max_new_tokens: 12,
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        min_p: 0.01,
        seed,
        ignore_eos: true,
        ..Default::default()
    }
}

#[test]
fn split_generation_matches_generate() {
    let m = model();
    let params = sampled(42);
    let (expected, _) = generate(m, &prompt(), &params).unwrap();
    assert_eq!(expected.output_ids().len(), 12);

    // Prefill worker: run the prompt, sample token 0, ship the KV.
    let p = prompt();
    let (kv, logits) = m.prefill(&p).unwrap();
    let mut generation = Generation::new(p.len(), params.clone(), m.eos_token_ids(), m.max_context());
    let first = sample(&logits, &params, 0);
    assert!(generation.push(m, first).is_none());
    let wire = kv.to_bytes();

    // Decode worker: a fresh Generation rebuilt from the first token, continuing at step 1.
    let mut kv = KvCache::from_bytes(&wire).unwrap();
    let mut decode = Generation::new(p.len(), params.clone(), m.eos_token_ids(), m.max_context());
    decode.push(m, first);
    let mut token = first;
    loop {
        let logits = m.decode_step(&mut kv, token).unwrap();
        token = sample(&logits, &params, decode.step());
        if decode.push(m, token).is_some() {
            break;
        }
    }
    assert_eq!(decode.output_ids(), expected.output_ids());
    assert_eq!(decode.finish_reason(), expected.finish_reason());
    assert_eq!(decode.text(m).unwrap(), expected.text(m).unwrap());
}

#[test]
fn seeded_generation_is_reproducible_and_seed_dependent() {
    let m = model();
    let run = |seed| generate(m, &prompt(), &sampled(seed)).unwrap().0.output_ids().to_vec();
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let greedy = SamplingParams { max_new_tokens: 8, ignore_eos: true, ..Default::default() };
    let a = generate(m, &prompt(), &greedy).unwrap().0;
    let b = generate(m, &prompt(), &SamplingParams { seed: 99, ..greedy.clone() }).unwrap().0;
    assert_eq!(a.output_ids(), b.output_ids(), "greedy ignores the seed");
}

#[test]
fn max_new_tokens_gives_length() {
    let m = model();
    let params = SamplingParams { max_new_tokens: 5, ignore_eos: true, ..Default::default() };
    let (g, kv) = generate(m, &prompt(), &params).unwrap();
    assert_eq!(g.output_ids().len(), 5);
    assert_eq!(g.finish_reason(), Some(&FinishReason::Length { length: 5 }));
    assert_eq!(kv.len(), prompt().len() + 4, "the last sampled token is never run");
    assert_eq!(g.finish_reason().unwrap().to_json(), json!({"type": "length", "length": 5}));
}

#[test]
fn stop_string_cuts_text_and_is_reported() {
    let m = model();
    let base = SamplingParams { max_new_tokens: 24, ignore_eos: true, ..Default::default() };
    let (full, _) = generate(m, &prompt(), &base).unwrap();
    let text = full.text(m).unwrap();
    // A stop string taken from the middle of the unconstrained output.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "tiny model output too short: {text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = text.find(&stop).unwrap();

    let params = SamplingParams { stop: vec!["never-matches".into(), stop.clone()], ..base };
    let (g, _) = generate(m, &prompt(), &params).unwrap();
    assert_eq!(g.finish_reason(), Some(&FinishReason::Stop { matched: Some(Matched::Text(stop.clone())) }));
    assert_eq!(g.text(m).unwrap(), text[..cut]);
    assert!(full.output_ids().starts_with(g.output_ids()));
    assert_eq!(g.finish_reason().unwrap().to_json(), json!({"type": "stop", "matched": stop}));
}

#[test]
fn eos_and_stop_tokens_finish_with_the_matched_id() {
    let m = model();
    let eos = m.eos_token_ids()[1];
    let hello = m.encode("Hello there").unwrap()[1..].to_vec();
    let params = SamplingParams { max_new_tokens: 10, stop_token_ids: vec![hello[0]], ..Default::default() };

    let mut g = Generation::new(3, SamplingParams::default(), m.eos_token_ids(), m.max_context());
    for &t in &hello {
        assert!(g.push(m, t).is_none());
    }
    assert_eq!(g.push(m, eos), Some(&FinishReason::Stop { matched: Some(Matched::Token(eos)) }));
    assert_eq!(g.output_ids(), &hello[..], "EOS is not kept in output_ids");
    assert_eq!(g.step(), hello.len() + 1);
    assert_eq!(g.text(m).unwrap(), "Hello there");
    assert_eq!(g.finish_reason().unwrap().to_json(), json!({"type": "stop", "matched": eos}));

    let mut g = Generation::new(3, params, m.eos_token_ids(), m.max_context());
    assert!(g.push(m, hello[0]).is_some());
    assert_eq!(g.output_ids(), &hello[..1], "a matched stop token stays in output_ids");
    assert_eq!(g.text(m).unwrap(), "", "but not in the text");

    let ignore = SamplingParams { ignore_eos: true, ..Default::default() };
    let mut g = Generation::new(3, ignore, m.eos_token_ids(), m.max_context());
    assert!(g.push(m, eos).is_none());
    assert_eq!(g.output_ids(), &[eos]);
}

#[test]
fn context_limit_and_zero_budget_finish_with_length() {
    let m = model();
    let params = SamplingParams { max_new_tokens: 100, ignore_eos: true, ..Default::default() };
    let mut g = Generation::new(m.max_context() - 2, params.clone(), m.eos_token_ids(), m.max_context());
    assert!(g.push(m, 100).is_none());
    assert_eq!(g.push(m, 101), Some(&FinishReason::Length { length: 2 }));

    let zero = SamplingParams { max_new_tokens: 0, ..Default::default() };
    let (g, kv) = generate(m, &prompt(), &zero).unwrap();
    assert!(g.output_ids().is_empty());
    assert_eq!(g.finish_reason(), Some(&FinishReason::Length { length: 0 }));
    assert_eq!(kv.len(), prompt().len());

    let abort = FinishReason::Abort { message: "worker lost".into() };
    assert_eq!(abort.to_json(), json!({"type": "abort", "message": "worker lost"}));
}
