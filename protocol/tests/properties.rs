//! No input makes the parser, the validator or the KV handle decoder panic: thousands of random
//! lines, random JSON, and valid lines with one field replaced by random JSON. Every refusal is
//! an error with a contract code and a message.

use pdq_protocol::{validate, ClusterShape, InputLine, KvHandle, RawLine};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![Just("/generate"), Just("/v1/completions"), Just("/v1/chat/completions"), Just("user")]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Field names the validator knows, so random objects reach its deeper branches.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("custom_id"),
        Just("url"),
        Just("method"),
        Just("body"),
        Just("headers"),
        Just("prompt"),
        Just("messages"),
        Just("text"),
        Just("input_ids"),
        Just("sampling_params"),
        Just("max_tokens"),
        Just("max_new_tokens"),
        Just("temperature"),
        Just("top_p"),
        Just("top_k"),
        Just("min_p"),
        Just("seed"),
        Just("stop"),
        Just("stop_token_ids"),
        Just("n"),
        Just("routed_dp_rank"),
        Just("disagg_prefill_dp_rank"),
        Just("data_parallel_rank"),
        Just("X-Data-Parallel-Rank"),
        Just("role"),
        Just("content"),
        Just("ignore_eos"),
        Just("x"),
    ]
    .prop_map(str::to_string)
}

fn valid_line() -> Value {
    json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
           "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0.5,
                    "top_p": 0.9, "stop": ["x"], "routed_dp_rank": 1},
           "headers": {"X-Data-Parallel-Rank": "1"}})
}

/// Replaces the value at a random path of `v` with `with`.
fn mutate(v: &mut Value, path: &[usize], with: Value) {
    match (v, path.split_first()) {
        (Value::Object(m), Some((i, rest))) if !m.is_empty() => {
            let key = m.keys().nth(i % m.len()).cloned().expect("a key");
            mutate(m.get_mut(&key).expect("the key"), rest, with)
        }
        (Value::Array(a), Some((i, rest))) if !a.is_empty() => {
            let n = a.len();
            mutate(&mut a[i % n], rest, with)
        }
        (slot, _) => *slot = with,
    }
}

fn check(text: &str) {
    let shape = ClusterShape::disagg(2, 3);
    match InputLine::parse(&RawLine { line_no: 7, text }) {
        Err(e) => assert_eq!(e.code(), "invalid_json", "{e}"),
        Ok(line) => {
            if let Err(e) = validate(&line, Some(&json!("2")), &shape) {
                assert!(!e.to_string().is_empty());
                assert!(["invalid_request", "context_length_exceeded", "invalid_json"].contains(&e.code()), "{e}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_text_is_parsed_or_refused(text in ".{0,200}") {
        check(&text);
    }

    #[test]
    fn any_json_is_validated_or_refused(v in json_value()) {
        check(&v.to_string());
    }

    #[test]
    fn a_valid_line_with_one_field_replaced(path in prop::collection::vec(any::<usize>(), 1..5), with in json_value()) {
        let mut line = valid_line();
        mutate(&mut line, &path, with);
        check(&line.to_string());
    }

    #[test]
    fn any_bytes_are_a_handle_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = KvHandle::decode(&bytes);
    }

    #[test]
    fn a_handle_with_one_field_replaced(path in prop::collection::vec(any::<usize>(), 1..4), with in json_value()) {
        let mut h = handle();
        mutate(&mut h, &path, with);
        if let Ok(h) = KvHandle::decode(h.to_string().as_bytes()) {
            prop_assert!(!h.endpoint.is_empty() && h.attempt >= 1);
        }
    }
}

/// A handle as a prefill worker writes it.
fn handle() -> Value {
    let line = valid_line();
    let text = line.to_string();
    let parsed = InputLine::parse(&RawLine { line_no: 1, text: &text }).unwrap();
    let request = validate(&parsed, None, &ClusterShape::disagg(2, 3)).unwrap();
    let h = KvHandle {
        request_id: uuid::Uuid::now_v7(),
        job_id: None,
        request: (&request).into(),
        line,
        attempt: 1,
        decode_rank: Some(1),
        prefill_dp_rank: 1,
        endpoint: "127.0.0.1:1".into(),
        kv_id: uuid::Uuid::new_v4(),
        kv_bytes: 10,
        prompt_tokens: 1,
        cached_tokens: 0,
        first_token: 1,
        firsts: Vec::new(),
        seed: 0,
        enqueued_at_ms: 0,
        published_at_ms: 0,
        timings: Default::default(),
        warnings: Vec::new(),
        shm_host: None,
    };
    serde_json::to_value(&h).unwrap()
}

#[test]
fn the_handle_fixture_decodes() {
    KvHandle::decode(handle().to_string().as_bytes()).unwrap();
}

#[test]
fn a_handle_carries_one_first_token_per_choice() {
    let mut h = handle();
    let old: KvHandle = KvHandle::decode(h.to_string().as_bytes()).unwrap();
    let first = |t: u32| pdq_protocol::FirstToken { token: t, logprob: None };
    assert_eq!(old.first_tokens(), vec![first(1)], "a handle without `firsts` is one choice, `first_token`");
    h["request"]["sampling"]["n"] = 2.into();
    h["firsts"] = serde_json::to_value([first(1), first(9)]).unwrap();
    let two = KvHandle::decode(h.to_string().as_bytes()).unwrap();
    assert_eq!(two.first_tokens(), vec![first(1), first(9)]);
    h["firsts"] = serde_json::to_value([first(1)]).unwrap();
    assert!(KvHandle::decode(h.to_string().as_bytes()).unwrap_err().contains("`firsts` holds 1 tokens for n=2"));
    h["firsts"] = serde_json::to_value([first(3), first(9)]).unwrap();
    assert!(KvHandle::decode(h.to_string().as_bytes()).is_err(), "firsts[0] must be first_token");
}

#[test]
fn a_handle_carries_the_prompt_once() {
    let h = handle();
    let text = h.to_string();
    assert_eq!(text.matches("\"hi\"").count(), 1, "the prompt is in the line only: {text}");
    assert!(h["request"].get("prompt").is_none() && h["request"].get("warnings").is_none());
}

#[test]
fn a_handle_with_the_whole_request_still_decodes() {
    // What a prefill rank sent before the handle was slimmed: the validated request, prompt,
    // model and warnings included. A decoder of this version reads it, ignoring those.
    let mut h = handle();
    let line = valid_line();
    let parsed = InputLine::parse(&RawLine { line_no: 1, text: &line.to_string() }).unwrap();
    let whole = validate(&parsed, None, &ClusterShape::disagg(2, 3)).unwrap();
    h["request"] = serde_json::to_value(&whole).unwrap();
    assert!(h["request"].get("prompt").is_some());
    let old = KvHandle::decode(h.to_string().as_bytes()).unwrap();
    assert_eq!(old.request, (&whole).into());
}
