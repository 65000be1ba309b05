//! Request features (CONTRACT §12) through the real pipeline, colocated and disaggregated:
//! log-probabilities on all three urls against transformers' goldens, `n` choices reproducible
//! in both modes and equal to single requests seeded `seed + i`, and structured output that
//! parses and validates on all three urls. Results are read back through `pdq results`' export.

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use common::Harness;
use pdq_producer::{export_lines, ExportKind, Policy};
use pdq_protocol::ClusterShape;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

const TOLERANCE: f64 = 1e-4;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    token: u32,
    logprob: f64,
    top_ids: Vec<u32>,
    top_logprobs: Vec<f64>,
}

fn golden() -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/golden/logprobs-tiny.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs `lines` and returns the job and each line's exported response body by `custom_id`.
async fn run(h: &Harness, lines: &[Value]) -> (uuid::Uuid, HashMap<String, Value>) {
    let job = h.submit(lines, Policy::Shared).await;
    h.wait(job).await;
    let rows = h.store.export_rows(job).await.unwrap();
    let failed: Vec<String> = export_lines(&rows, ExportKind::Errors);
    assert!(failed.is_empty(), "failed lines: {failed:?}");
    let bodies = export_lines(&rows, ExportKind::Output)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["custom_id"].as_str().unwrap().to_string(), v["response"]["body"].clone())
        })
        .collect();
    (job, bodies)
}

fn shapes() -> [ClusterShape; 2] {
    [ClusterShape::colocated(2), ClusterShape::disagg(2, 2)]
}

/// A token's string as the row stores it: PostgreSQL cannot hold U+0000, stored as U+FFFD.
fn stored(model: &pdq_engine::Model, id: u32) -> String {
    model.decode(&[id]).unwrap().replace('\0', "\u{FFFD}")
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < TOLERANCE, "{what}: {a} vs {b}");
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn logprobs_match_transformers_on_every_url_in_both_modes(pool: PgPool) {
    let golden = golden();
    let model = common::model();
    let mut lines = Vec::new();
    for (i, c) in golden.cases.iter().enumerate() {
        let n = c.steps.len();
        // top_k 1 is greedy whatever the temperature; the reported distribution must not be
        // the temperature-scaled one.
        lines.push(json!({"custom_id": format!("cmpl-{i}"), "url": "/v1/completions", "body": {"prompt": c.prompt,
            "max_tokens": n, "temperature": 0.5, "top_k": 1, "ignore_eos": true, "logprobs": 20}}));
        lines.push(json!({"custom_id": format!("gen-{i}"), "url": "/generate", "body": {"input_ids": c.prompt,
            "return_logprob": true, "top_logprobs_num": 5, "return_text_in_logprobs": true,
            "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": true}}}));
    }
    let messages = json!([{"role": "user", "content": "Name a colour."}]);
    lines.push(json!({"custom_id": "chat", "url": "/v1/chat/completions", "body": {"messages": messages,
        "max_tokens": 6, "temperature": 0, "ignore_eos": true, "logprobs": true, "top_logprobs": 3}}));
    let mut chat_runs = Vec::new();
    for shape in shapes() {
        let h = Harness::start(pool.clone(), shape).await;
        let (_, b) = run(&h, &lines).await;
        h.finish().await;
        for (i, c) in golden.cases.iter().enumerate() {
            let l = &b[&format!("cmpl-{i}")]["choices"][0]["logprobs"];
            let g = &b[&format!("gen-{i}")]["meta_info"];
            for (s, step) in c.steps.iter().enumerate() {
                let at = format!("{shape:?} case {i} step {s}");
                let name = stored(&model, step.token);
                assert_eq!(l["tokens"][s], json!(name), "{at}");
                close(l["token_logprobs"][s].as_f64().unwrap(), step.logprob, &at);
                let top = l["top_logprobs"][s].as_object().unwrap();
                // Token strings may collide in the dict; every golden alternative is there, with
                // its value (up to 20 alternatives within tolerance).
                for (id, lp) in step.top_ids.iter().zip(&step.top_logprobs).take(10) {
                    let key = stored(&model, *id);
                    let ours = top.get(&key).and_then(Value::as_f64).unwrap_or_else(|| panic!("{at}: {key:?} missing"));
                    assert!(ours >= lp - TOLERANCE, "{at}: {key:?}: {ours} vs {lp}");
                }
                // SGLang: [logprob, id, text] triples.
                let t = &g["output_token_logprobs"][s];
                assert_eq!((t[1].clone(), t[2].clone()), (json!(step.token), json!(name)), "{at}");
                close(t[0].as_f64().unwrap(), step.logprob, &at);
                let top5 = g["output_top_logprobs"][s].as_array().unwrap();
                assert_eq!(top5.len(), 5);
                for (j, alt) in top5.iter().enumerate() {
                    close(alt[0].as_f64().unwrap(), step.top_logprobs[j], &format!("{at} rank {j}"));
                }
            }
            assert_eq!(l["text_offset"][0], 0);
        }
        let content = b["chat"]["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
        assert_eq!(content.len(), 6);
        for e in &content {
            let token = e["token"].as_str().unwrap();
            assert_eq!(e["bytes"], json!(token.as_bytes()));
            assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 3);
            assert!(e["logprob"].as_f64().unwrap() <= 0.0);
            assert_eq!(e["top_logprobs"][0]["logprob"], e["logprob"], "greedy takes the most likely");
        }
        chat_runs.push(content);
    }
    assert_eq!(chat_runs[0], chat_runs[1], "chat logprobs are the same colocated and disaggregated");
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn n_choices_are_reproducible_and_equal_single_requests_seeded_seed_plus_i(pool: PgPool) {
    let prompt = "Once upon a time";
    let mut lines = vec![
        json!({"custom_id": "cmpl", "url": "/v1/completions", "body": {"prompt": prompt, "n": 4, "seed": 11,
            "max_tokens": 10, "temperature": 1.0, "logprobs": 2}}),
        json!({"custom_id": "chat", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user",
            "content": prompt}], "n": 3, "seed": 5, "max_tokens": 7, "temperature": 0.9}}),
        json!({"custom_id": "gen", "url": "/generate", "body": {"text": prompt, "sampling_params": {"n": 3,
            "seed": 21, "max_new_tokens": 9, "temperature": 1.1}}}),
    ];
    for i in 0..4 {
        lines
            .push(json!({"custom_id": format!("cmpl-single-{i}"), "url": "/v1/completions", "body": {"prompt": prompt,
            "seed": 11 + i, "max_tokens": 10, "temperature": 1.0, "logprobs": 2}}));
    }
    let mut runs = Vec::new();
    for shape in shapes() {
        let h = Harness::start(pool.clone(), shape).await;
        let (job, b) = run(&h, &lines).await;
        // The SQL interface: `text` and `output_ids` keep choice 0, `choices` holds them all.
        let (text, ids, choices, completion): (String, Vec<i32>, Value, i32) = sqlx::query_as(
            "SELECT text, output_ids, choices, completion_tokens FROM results WHERE job_id = $1 AND custom_id = 'cmpl'",
        )
        .bind(job)
        .fetch_one(h.store.pool())
        .await
        .unwrap();
        h.finish().await;
        assert_eq!(choices.as_array().unwrap().len(), 4);
        assert_eq!(json!(text), choices[0]["text"]);
        assert_eq!(json!(ids), choices[0]["output_ids"]);
        let all: usize = choices.as_array().unwrap().iter().map(|c| c["output_ids"].as_array().unwrap().len()).sum();
        assert_eq!(completion as usize, all);
        let cmpl = b["cmpl"]["choices"].as_array().unwrap();
        assert_eq!(cmpl.len(), 4);
        let mut total = 0;
        for (i, c) in cmpl.iter().enumerate() {
            assert_eq!(c["index"], i);
            let single = &b[&format!("cmpl-single-{i}")]["choices"][0];
            assert_eq!(c["text"], single["text"], "{shape:?} choice {i} vs a single request seeded 11 + {i}");
            assert_eq!(c["logprobs"], single["logprobs"]);
            total += c["logprobs"]["tokens"].as_array().unwrap().len();
        }
        assert_eq!(b["cmpl"]["usage"]["completion_tokens"], total, "usage counts every choice");
        let texts: std::collections::HashSet<_> = cmpl.iter().map(|c| c["text"].to_string()).collect();
        assert!(texts.len() > 1, "choices differ: {texts:?}");
        assert_eq!(b["chat"]["choices"].as_array().unwrap().len(), 3);
        let gen = b["gen"].as_array().expect("/generate with n > 1 answers a list");
        assert_eq!(gen.len(), 3);
        assert_eq!(gen[2]["index"], 2);
        runs.push(b);
    }
    for id in ["cmpl", "chat", "gen"] {
        let strip = |v: &Value| {
            let mut v = v.clone();
            // Timings, ranks and ids differ between runs; the choices must not.
            if let Some(items) = v.as_array_mut() {
                items.iter_mut().for_each(|i| i["meta_info"] = Value::Null);
                return v;
            }
            for k in ["id", "created", "meta_info"] {
                v[k] = Value::Null;
            }
            v
        };
        assert_eq!(strip(&runs[0][id]), strip(&runs[1][id]), "{id}: same choices colocated and disaggregated");
    }
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "colour": {"enum": ["red", "green", "blue"]}
        },
        "required": ["name", "age", "colour"],
        "additionalProperties": false
    })
}

/// Every choice that stopped (not at `max_tokens`) of a constrained request body.
fn stopped_texts(body: &Value) -> Vec<String> {
    let items: Vec<(Value, Value)> = match body {
        Value::Array(items) => {
            items.iter().map(|i| (i["text"].clone(), json!(i["meta_info"]["finish_reason"]["type"]))).collect()
        }
        Value::Object(_) if body.get("choices").is_some() => body["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (c.get("text").cloned().unwrap_or_else(|| c["message"]["content"].clone()), c["finish_reason"].clone())
            })
            .collect(),
        _ => vec![(body["text"].clone(), body["meta_info"]["finish_reason"]["type"].clone())],
    };
    items.into_iter().filter(|(_, f)| f == "stop").map(|(t, _)| t.as_str().unwrap().to_string()).collect()
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn structured_output_parses_and_validates_on_every_url(pool: PgPool) {
    let schema = person_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let rf = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}});
    let mut lines = Vec::new();
    for i in 0..10 {
        lines.push(json!({"custom_id": format!("cmpl-{i}"), "url": "/v1/completions", "body": {"prompt": "A person:",
            "n": 8, "seed": 100 * i, "max_tokens": 80, "temperature": 1.0, "response_format": rf}}));
        lines.push(json!({"custom_id": format!("chat-{i}"), "url": "/v1/chat/completions", "body": {"messages": [
            {"role": "user", "content": "A person, as JSON"}], "n": 8, "seed": 7 + i, "max_tokens": 80,
            "response_format": rf}}));
        lines.push(json!({"custom_id": format!("gen-{i}"), "url": "/generate", "body": {"text": "A person:",
            "sampling_params": {"n": 8, "seed": i, "max_new_tokens": 80, "json_schema": schema.to_string()}}}));
    }
    lines.push(json!({"custom_id": "object", "url": "/v1/chat/completions", "body": {"messages": [
        {"role": "user", "content": "JSON please"}], "n": 4, "max_tokens": 60, "response_format": {"type": "json_object"}}}));
    lines.push(json!({"custom_id": "regex", "url": "/generate", "body": {"text": "Answer:",
        "sampling_params": {"n": 4, "max_new_tokens": 20, "regex": "(yes|no), [0-9]{2}"}}}));
    let bad = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nowhere"}}});
    let refused = json!({"custom_id": "bad", "url": "/v1/chat/completions", "body": {"messages": [
        {"role": "user", "content": "x"}], "response_format": bad}});
    let mut runs = Vec::new();
    for shape in shapes() {
        let h = Harness::start(pool.clone(), shape).await;
        let (_, b) = run(&h, &lines).await;
        let failed = h.run(std::slice::from_ref(&refused), Policy::Shared).await;
        h.finish().await;
        let bad = &failed["bad"];
        assert_eq!((bad.status.as_str(), bad.code()), ("failed", "invalid_request"));
        assert!(bad.message().starts_with("`response_format.json_schema.schema` cannot be used"), "{}", bad.message());
        let mut completed = 0;
        for (id, body) in b.iter().filter(|(id, _)| *id != "regex") {
            for text in stopped_texts(body) {
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{shape:?} {id}: {e}: {text:?}"));
                if id == "object" {
                    assert!(v.is_object(), "{text}");
                } else {
                    assert!(validator.is_valid(&v), "{shape:?} {id}: {text} does not validate");
                }
                completed += 1;
            }
        }
        let regex = b["regex"].as_array().unwrap();
        for item in regex {
            let t = item["text"].as_str().unwrap();
            let (word, num) = t.split_once(", ").unwrap_or_else(|| panic!("{t:?}"));
            assert!(
                ["yes", "no"].contains(&word) && num.len() == 2 && num.bytes().all(|c| c.is_ascii_digit()),
                "{t:?}"
            );
        }
        eprintln!("{shape:?}: {completed} of 244 constrained choices completed and validated");
        assert!(completed >= 220, "{shape:?}: only {completed} constrained choices completed");
        runs.push(b);
    }
    assert_eq!(stopped_texts(&runs[0]["gen-3"]), stopped_texts(&runs[1]["gen-3"]), "same in both modes");
}
