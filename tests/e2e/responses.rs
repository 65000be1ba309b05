//! CONTRACT §15: `/v1/responses` lines through the HTTP API and a real cluster: the output
//! bodies are OpenAI Response objects, `text.format` constrains them, a response cut at
//! `max_output_tokens` is `incomplete`, and what a batch line cannot honour fails by name.

use crate::api::{lines, parse_lines, Api};
use crate::common;

use common::Harness;
use pdq_api::ApiConfig;
use pdq_protocol::ClusterShape;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_responses_batch_answers_response_objects(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(1, 1)).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"],
        "additionalProperties": false});
    let line = |id: &str, body: Value| json!({"custom_id": id, "method": "POST", "url": "/v1/responses", "body": body});
    let mut input = vec![
        line(
            "cut",
            json!({"model": "tiny", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 4,
            "temperature": 0, "ignore_eos": true, "include": ["message.output_text.logprobs"], "top_logprobs": 2}),
        ),
        line(
            "items",
            json!({"model": "tiny", "input": [{"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
            "max_output_tokens": 6, "temperature": 0}),
        ),
        line("stateful", json!({"model": "tiny", "input": "x", "previous_response_id": "resp_1"})),
        json!({"custom_id": "other-url", "method": "POST", "url": "/v1/chat/completions",
               "body": {"messages": [{"role": "user", "content": "x"}]}}),
    ];
    let format = json!({"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": true}});
    for i in 0..4 {
        input.push(line(
            &format!("schema-{i}"),
            json!({"model": "tiny", "input": "A person, as JSON",
            "max_output_tokens": 80, "seed": i, "text": format}),
        ));
    }
    let (status, file) = api.upload(&lines(&input)).await;
    assert_eq!(status, StatusCode::OK, "{file}");
    let batch = api.wait(&api.create(&file["id"], "/v1/responses").await["id"]).await;
    assert_eq!((batch["status"].as_str(), batch["endpoint"].as_str()), (Some("completed"), Some("/v1/responses")));
    assert_eq!(batch["request_counts"], json!({"total": 8, "completed": 6, "failed": 2}));
    assert!(batch["usage"]["output_tokens"].as_i64().unwrap() >= 10, "{batch}");

    let output = parse_lines(&api.text(&format!("/files/{}/content", batch["output_file_id"].as_str().unwrap())).await);
    let body = |id: &str| &output.iter().find(|l| l["custom_id"] == id).unwrap()["response"]["body"];
    let cut = body("cut");
    assert!(cut["id"].as_str().unwrap().starts_with("resp_"), "{cut}");
    assert_eq!((cut["object"].as_str(), cut["model"].as_str()), (Some("response"), Some("tiny")));
    assert_eq!((cut["status"].as_str(), cut["instructions"].as_str()), (Some("incomplete"), Some("Be brief.")));
    assert_eq!(cut["incomplete_details"], json!({"reason": "max_output_tokens"}));
    let message = &cut["output"][0];
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    let part = &message["content"][0];
    assert_eq!(part["type"], "output_text");
    let logprobs = part["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), 4, "{part}");
    assert!(logprobs.iter().all(|l| l["top_logprobs"].as_array().unwrap().len() == 2), "{part}");
    let usage = &cut["usage"];
    assert_eq!(usage["output_tokens"], 4);
    assert_eq!(usage["total_tokens"], usage["input_tokens"].as_i64().unwrap() + 4);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
    // The system message from `instructions` is part of the prompt.
    let items = body("items");
    assert!(items["usage"]["input_tokens"].as_i64().unwrap() > 0);
    assert!(items["output"][0]["content"][0]["text"].is_string(), "{items}");
    let mut validated = 0;
    for i in 0..4 {
        let b = body(&format!("schema-{i}"));
        assert_eq!(b["text"], format);
        if b["status"] == "completed" {
            let text = b["output"][0]["content"][0]["text"].as_str().unwrap();
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("schema-{i}: {e}: {text:?}"));
            assert!(jsonschema::validator_for(&schema).unwrap().is_valid(&v), "schema-{i}: {text}");
            validated += 1;
        }
    }
    assert!(validated > 0, "no structured response stopped before its limit");

    let errors = parse_lines(&api.text(&format!("/files/{}/content", batch["error_file_id"].as_str().unwrap())).await);
    let error = |id: &str| errors.iter().find(|l| l["custom_id"] == id).unwrap()["error"].clone();
    assert_eq!(error("stateful")["code"], "invalid_request");
    assert!(error("stateful")["message"].as_str().unwrap().starts_with("`previous_response_id` is not supported"));
    assert_eq!(
        error("other-url")["message"],
        "`url` '/v1/chat/completions' differs from the batch's endpoint '/v1/responses'"
    );
    api.stop().await;
    h.finish().await;
}
