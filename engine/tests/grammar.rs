//! Structured output through llguidance: hundreds of samples of the random tiny model under a
//! JSON schema, each completed one parsing and validating (checked by the `jsonschema` crate,
//! not by llguidance), regexes matched whole, schemas the compiler refuses named, and the same
//! with SmolLM2's 49k-token vocabulary when its GGUF can be had (else "SKIPPED").

mod common;

use std::time::{Duration, Instant};

use pdq_engine::{FinishReason, Generation, GrammarSpec, Grammars, Model, SamplingParams};
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "ok"],
        "additionalProperties": false
    })
}

/// Samples one constrained sequence; returns it with the time spent on its grammar masks.
fn sample(
    model: &Model,
    grammars: &Grammars,
    spec: &GrammarSpec,
    prompt: &[u32],
    params: SamplingParams,
) -> (Generation, Duration) {
    let mut g = Generation::new(prompt.len(), params, model.eos_token_ids(), model.max_context())
        .with_grammar(Some(grammars.compile(spec).unwrap()));
    let (mut kv, mut logits) = model.prefill(prompt).unwrap();
    let mut masks = Duration::ZERO;
    loop {
        let t = Instant::now();
        g.prepare_grammar();
        masks += t.elapsed();
        let (token, lp) = g.sample_next(&logits).unwrap();
        if g.push_scored(model, token, lp).is_some() {
            return (g, masks);
        }
        logits = model.decode_step(&mut kv, token).unwrap();
    }
}

fn params(seed: u64, max_new_tokens: usize) -> SamplingParams {
    SamplingParams { max_new_tokens, temperature: 1.0, seed, ..Default::default() }
}

#[test]
fn every_completed_sample_of_the_tiny_model_validates_against_the_schema() {
    let model = common::model();
    let grammars = Grammars::new(model).unwrap();
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let spec = GrammarSpec::JsonSchema(schema());
    let prompt = model.encode("Describe a person as JSON:").unwrap();
    let (mut completed, mut tokens, mut mask_time) = (0, 0, Duration::ZERO);
    let samples = 300;
    for seed in 0..samples {
        let (g, masks) = sample(model, &grammars, &spec, &prompt, params(seed, 120));
        tokens += g.step();
        mask_time += masks;
        let text = g.text(model).unwrap();
        match g.finish_reason() {
            Some(FinishReason::Length { .. }) => {
                if seed < 3 {
                    eprintln!("seed {seed} stopped at the limit: {text:?}");
                }
                continue;
            }
            Some(FinishReason::Stop { .. }) => {}
            other => panic!("seed {seed}: finished {other:?}: {text:?}"),
        }
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "seed {seed}: {text} does not validate: {errors:?}");
        completed += 1;
    }
    eprintln!(
        "tiny model: {completed}/{samples} samples completed, {tokens} tokens, mask {:.1} us/token",
        mask_time.as_secs_f64() * 1e6 / tokens as f64
    );
    assert!(completed >= samples * 9 / 10, "only {completed} of {samples} samples completed within 120 tokens");
}

#[test]
fn json_object_and_regex_constraints_hold() {
    let model = common::model();
    let grammars = Grammars::new(model).unwrap();
    let prompt = model.encode("Answer:").unwrap();
    let object = GrammarSpec::JsonSchema(json!({"type": "object"}));
    let rx = regex::Regex::new("^(yes|no), [0-9]{2,4}!$").unwrap();
    let regex = GrammarSpec::Regex("(yes|no), [0-9]{2,4}!".into());
    let (mut objects, mut matches) = (0, 0);
    for seed in 0..40 {
        let (g, _) = sample(model, &grammars, &object, &prompt, params(seed, 80));
        if matches!(g.finish_reason(), Some(FinishReason::Stop { .. })) {
            let text = g.text(model).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
            assert!(v.is_object(), "{text}");
            objects += 1;
        }
        let (g, _) = sample(model, &grammars, &regex, &prompt, params(seed, 20));
        let text = g.text(model).unwrap();
        assert!(matches!(g.finish_reason(), Some(FinishReason::Stop { .. })), "seed {seed}: {text:?}");
        assert!(rx.is_match(&text), "seed {seed}: {text:?}");
        matches += 1;
    }
    assert!(objects > 0 && matches == 40, "{objects} objects, {matches} regex matches");
}

#[test]
fn a_schema_the_compiler_refuses_is_an_error_naming_why() {
    let model = common::model();
    let grammars = Grammars::new(model).unwrap();
    let bad = GrammarSpec::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}));
    let e = grammars.compile(&bad).unwrap_err();
    assert_eq!(e.error_type(), "grammar");
    assert!(e.to_string().starts_with("structured output: "), "{e}");
    assert!(grammars.compile(&GrammarSpec::Regex("(unclosed".into())).is_err());
}

#[test]
fn smollm2_vocabulary_masks_and_validates() {
    let path = match common::smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: smollm2 structured output: {why}");
            return;
        }
    };
    let model = Model::load(&path).unwrap();
    let started = Instant::now();
    let grammars = Grammars::new(&model).unwrap();
    let trie_time = started.elapsed();
    assert_eq!(grammars.vocab_size(), 49152);
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let spec = GrammarSpec::JsonSchema(schema());
    let messages = json!([{"role": "user", "content": "Give me a JSON object with a name, an age and ok=true."}]);
    let prompt = model.encode_chat(&messages).unwrap();
    let (mut tokens, mut mask_time) = (0, Duration::ZERO);
    for seed in 0..2 {
        let p = SamplingParams { temperature: if seed == 0 { 0.0 } else { 0.7 }, ..params(seed, 48) };
        let (g, masks) = sample(&model, &grammars, &spec, &prompt, p);
        tokens += g.step();
        mask_time += masks;
        let text = g.text(&model).unwrap();
        eprintln!("smollm2 seed {seed}: {:?} {text}", g.finish_reason());
        // 48 tokens hold this schema's object for a model that writes real text.
        assert!(matches!(g.finish_reason(), Some(FinishReason::Stop { .. })), "{text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(validator.is_valid(&v), "{text}");
    }
    eprintln!(
        "smollm2: token trie built in {:.0} ms; mask {:.0} us/token over {tokens} tokens",
        trie_time.as_secs_f64() * 1e3,
        mask_time.as_secs_f64() * 1e6 / tokens as f64
    );
}
