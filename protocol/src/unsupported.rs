//! Nothing silently ignored (CONTRACT §7): a parameter pdq does not implement is refused by
//! name. Log-probabilities, `n` and output constraints (§12) are implemented: their fields are
//! known here and read by `features` and `sampling`. One at its neutral value (a penalty of 0, `best_of` 1, `logprobs` off, an empty
//! `logit_bias`, `response_format` text, no tools) changes nothing and is accepted; so are
//! `user`, `metadata` and `store`, which never change an answer. `stream` is accepted and
//! ignored, with a warning in `meta_info.warnings`. A name pdq does not know at all is refused
//! too, as OpenAI refuses an unrecognized argument: a typo (`temprature`) must not pass as the
//! default. `/v1/responses` fields that need state or tools are refused with a reason of their
//! own (`responses::check`).

use serde_json::{Map, Value};

use crate::{Endpoint, ValidationError};

pub const STREAM_WARNING: &str = "`stream` is ignored: a batch job's results are written whole, not streamed";

/// Sampling parameters at the top of an OpenAI body (`Sampling::parse` reads them).
const SAMPLING: &[&str] = &["temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos"];
/// The routing fields of every url (CONTRACT §3), read by `Routing::from_body`.
const ROUTING: &[&str] = &["routed_dp_rank", "disagg_prefill_dp_rank", "data_parallel_rank"];
/// Read by `validate` or without effect on the answer, on both chat and completions.
const COMMON: &[&str] = &["model", "max_tokens", "n", "user", "metadata", "store", "stream"];
const COMPLETIONS: &[&str] = &["prompt", "logprobs", "response_format"];
const CHAT: &[&str] = &["messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format"];
const GENERATE: &[&str] = &[
    "text",
    "input_ids",
    "sampling_params",
    "sampling_seed",
    "seed",
    "rid",
    "return_logprob",
    "top_logprobs_num",
    "return_text_in_logprobs",
    "stream",
    "model",
];
const EMBEDDINGS: &[&str] = &["input", "model", "encoding_format", "dimensions", "user"];
/// OpenAI's Responses fields beside the sampling extensions. `responses::check` has already
/// refused the stateful and tool fields among them at a value pdq cannot honour.
const RESPONSES: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "text",
    "include",
    "top_logprobs",
    "user",
    "safety_identifier",
    "metadata",
    "store",
    "stream",
    "prompt_cache_key",
    "prompt_cache_retention",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tool_calls",
    "reasoning",
    "previous_response_id",
    "conversation",
    "prompt",
    "background",
    "truncation",
];
const SAMPLING_PARAMS: &[&str] = &[
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "n",
    "seed",
    "sampling_seed",
    "json_schema",
    "regex",
];

/// Known parameters pdq does not implement, accepted only at their neutral value.
fn neutral(name: &str, v: &Value) -> Option<bool> {
    let off = v.is_null() || *v == Value::Bool(false);
    let zero = v.is_null() || v.as_f64() == Some(0.0);
    let empty = v.is_null() || v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty);
    Some(match name {
        "presence_penalty" | "frequency_penalty" => zero,
        "repetition_penalty" => v.is_null() || v.as_f64() == Some(1.0),
        "best_of" => v.is_null() || v.as_i64() == Some(1),
        "logit_bias" | "tools" | "functions" | "stream_options" => empty,
        "logprobs" | "echo" | "return_logprob" | "parallel_tool_calls" => off,
        "top_logprobs" | "top_logprobs_num" => v.is_null() || v.as_i64() == Some(0),
        "suffix" => v.is_null() || v.as_str() == Some(""),
        "response_format" => v.is_null() || v.get("type").and_then(Value::as_str) == Some("text"),
        "tool_choice" | "function_call" => v.is_null() || v.as_str() == Some("none"),
        "service_tier" => v.is_null() || matches!(v.as_str(), Some("auto" | "default")),
        "modalities" => v.is_null() || *v == serde_json::json!(["text"]),
        "min_new_tokens" => v.is_null() || v.as_i64() == Some(0),
        "audio" | "prediction" | "reasoning_effort" | "json_schema" | "regex" | "ebnf" | "logprob_start_len"
        | "image_data" | "lora_path" => v.is_null(),
        _ => return None,
    })
}

fn check_fields(obj: &Map<String, Value>, known: &[&[&str]], prefix: &str, url: &str) -> Result<(), ValidationError> {
    for (name, v) in obj {
        if known.iter().any(|k| k.contains(&name.as_str())) {
            continue;
        }
        let field = format!("{prefix}{name}");
        match neutral(name, v) {
            Some(true) => {}
            Some(false) => {
                return Err(ValidationError::invalid(field, "is not supported by pdq; leave it out or at its default"))
            }
            None => return Err(ValidationError::invalid(field, format!("is not a parameter of {url}"))),
        }
    }
    Ok(())
}

/// Refuses what pdq does not implement; returns the warnings to record for what it ignores.
pub fn check(endpoint: Endpoint, body: &Map<String, Value>) -> Result<Vec<String>, ValidationError> {
    let url = endpoint.path();
    let mut warnings = Vec::new();
    match endpoint {
        Endpoint::Completions => check_fields(body, &[COMMON, SAMPLING, ROUTING, COMPLETIONS], "", url)?,
        Endpoint::ChatCompletions => check_fields(body, &[COMMON, SAMPLING, ROUTING, CHAT], "", url)?,
        Endpoint::Generate => {
            check_fields(body, &[GENERATE, ROUTING], "", url)?;
            if let Some(Value::Object(params)) = body.get("sampling_params") {
                check_fields(params, &[SAMPLING_PARAMS], "sampling_params.", url)?;
            }
        }
        Endpoint::Embeddings => check_fields(body, &[EMBEDDINGS, ROUTING], "", url)?,
        Endpoint::Responses => {
            warnings.extend(crate::responses::check(body)?);
            check_fields(body, &[RESPONSES, SAMPLING, ROUTING], "", url)?;
        }
    }
    if body.get("stream").is_some_and(|v| *v == Value::Bool(true)) {
        warnings.push(STREAM_WARNING.to_string());
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(endpoint: Endpoint, body: Value) -> Result<Vec<String>, String> {
        check(endpoint, body.as_object().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn unsupported_parameters_are_named() {
        let e = run(Endpoint::Completions, json!({"prompt": "x", "best_of": 3})).unwrap_err();
        assert_eq!(e, "`best_of` is not supported by pdq; leave it out or at its default");
        let e = run(Endpoint::ChatCompletions, json!({"messages": [], "tools": [{"type": "function"}]})).unwrap_err();
        assert!(e.starts_with("`tools` is not supported"), "{e}");
        let e = run(Endpoint::Generate, json!({"text": "x", "sampling_params": {"ebnf": "root ::= 'a'"}})).unwrap_err();
        assert!(e.starts_with("`sampling_params.ebnf` is not supported"), "{e}");
        let e = run(Endpoint::Completions, json!({"prompt": "x", "echo": true})).unwrap_err();
        assert!(e.starts_with("`echo` is not supported"), "{e}");
        let e = run(Endpoint::Completions, json!({"prompt": "x", "suffix": "y"})).unwrap_err();
        assert!(e.starts_with("`suffix` is not supported"), "{e}");
        let e = run(Endpoint::Completions, json!({"prompt": "x", "top_logprobs": 2})).unwrap_err();
        assert!(e.starts_with("`top_logprobs` is not supported"), "completions spells it `logprobs`: {e}");
        let e = run(Endpoint::ChatCompletions, json!({"messages": [], "logit_bias": {"1": 2}})).unwrap_err();
        assert!(e.starts_with("`logit_bias` is not supported"), "{e}");
        let e = run(Endpoint::Completions, json!({"prompt": "x", "temprature": 0})).unwrap_err();
        assert_eq!(e, "`temprature` is not a parameter of /v1/completions");
    }

    #[test]
    fn every_unimplemented_parameter_gets_its_error() {
        let refused = [
            (Endpoint::Completions, json!({"best_of": 2})),
            (Endpoint::Completions, json!({"echo": true})),
            (Endpoint::Completions, json!({"suffix": "!"})),
            (Endpoint::Completions, json!({"presence_penalty": 0.5})),
            (Endpoint::Completions, json!({"frequency_penalty": -1})),
            (Endpoint::ChatCompletions, json!({"logit_bias": {"5": 1}})),
            (Endpoint::ChatCompletions, json!({"tools": [{"type": "function"}]})),
            (Endpoint::ChatCompletions, json!({"tool_choice": "auto"})),
            (Endpoint::ChatCompletions, json!({"functions": [{}]})),
            (Endpoint::ChatCompletions, json!({"audio": {}})),
            (Endpoint::ChatCompletions, json!({"prediction": {}})),
            (Endpoint::Generate, json!({"logprob_start_len": 0})),
            (Endpoint::Generate, json!({"sampling_params": {"repetition_penalty": 1.2}})),
            (Endpoint::Generate, json!({"sampling_params": {"min_new_tokens": 3}})),
            (Endpoint::Generate, json!({"sampling_params": {"ebnf": "root ::= 'a'"}})),
        ];
        for (endpoint, extra) in refused {
            let mut body = json!({"prompt": "x", "messages": [], "text": "x"});
            let (name, value) = extra.as_object().unwrap().iter().next().unwrap();
            body[name] = value.clone();
            body.as_object_mut().unwrap().retain(|k, _| match endpoint {
                Endpoint::Completions => k != "messages" && k != "text",
                Endpoint::ChatCompletions => k != "prompt" && k != "text",
                Endpoint::Generate | Endpoint::Responses => k != "prompt" && k != "messages",
                Endpoint::Embeddings => unreachable!("no embeddings case in this table"),
            });
            let field = match value.as_object() {
                Some(inner) if name == "sampling_params" => format!("sampling_params.{}", inner.keys().next().unwrap()),
                _ => name.clone(),
            };
            let e = run(endpoint, body).unwrap_err();
            assert_eq!(e, format!("`{field}` is not supported by pdq; leave it out or at its default"), "{endpoint:?}");
        }
    }

    #[test]
    fn embeddings_take_their_own_fields_only() {
        let body = json!({"input": "x", "model": "m", "encoding_format": "base64", "dimensions": 8, "user": "u"});
        assert_eq!(run(Endpoint::Embeddings, body), Ok(vec![]));
        let e = run(Endpoint::Embeddings, json!({"input": "x", "temperature": 0})).unwrap_err();
        assert_eq!(e, "`temperature` is not a parameter of /v1/embeddings");
    }

    #[test]
    fn implemented_features_are_accepted() {
        let body = json!({"prompt": "x", "logprobs": 3, "n": 2, "response_format": {"type": "json_object"}});
        assert_eq!(run(Endpoint::Completions, body), Ok(vec![]));
        let body =
            json!({"messages": [], "logprobs": true, "top_logprobs": 4, "response_format": {"type": "json_schema"}});
        assert_eq!(run(Endpoint::ChatCompletions, body), Ok(vec![]));
        let body = json!({"text": "x", "return_logprob": true, "top_logprobs_num": 2, "return_text_in_logprobs": true,
                          "sampling_params": {"n": 3, "json_schema": "{}", "regex": "a"}});
        assert_eq!(run(Endpoint::Generate, body), Ok(vec![]));
    }

    #[test]
    fn neutral_values_pass_and_stream_warns() {
        let body = json!({"prompt": "x", "presence_penalty": 0, "best_of": 1, "logit_bias": {}, "logprobs": null,
                          "echo": false, "user": "u1"});
        assert_eq!(run(Endpoint::Completions, body).unwrap(), Vec::<String>::new());
        let chat = json!({"messages": [], "response_format": {"type": "text"}, "tools": [], "stream": true});
        assert_eq!(run(Endpoint::ChatCompletions, chat).unwrap(), vec![STREAM_WARNING.to_string()]);
    }
}
