//! Conversion of a raw [`InputLine`] into a [`ValidRequest`]: the only way to get one, so code
//! past this point never re-checks a field. Token-level checks (context length) need the model's
//! tokenizer and happen in the worker, which reports them with the same error type.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::embeddings::EmbedInput;
use crate::routing::{ClusterShape, Pins, Routing};
use crate::sampling::{self, Sampling, DEFAULT_COMPLETION_MAX_TOKENS, DEFAULT_GENERATE_MAX_TOKENS};
use crate::{InputLine, ValidationError};

/// The input surfaces of CONTRACT §2 and §15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    #[serde(rename = "/v1/completions")]
    Completions,
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    #[serde(rename = "/generate")]
    Generate,
    /// The prompt alone, pooled into vectors: no decode.
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
    #[serde(rename = "/v1/responses")]
    Responses,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Generate => "/generate",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
        }
    }

    pub const ALL: [Endpoint; 5] = [
        Endpoint::Completions,
        Endpoint::ChatCompletions,
        Endpoint::Generate,
        Endpoint::Embeddings,
        Endpoint::Responses,
    ];

    /// Every path, comma-separated, for error messages.
    pub fn paths() -> String {
        Endpoint::ALL.map(Endpoint::path).join(", ")
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// Whether a request generates tokens (and so has a decode stage); embeddings do not.
    pub fn generates(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// What the model reads: text to tokenize, ready token ids, chat messages to render, or the
/// inputs of an embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    /// OpenAI `messages`, each with a string `content` (text parts are joined on validation).
    Chat(Vec<ChatMessage>),
    /// `/v1/embeddings`: each input is embedded alone; `dimensions` as asked, checked against
    /// the model where it is known.
    Embed {
        inputs: Vec<EmbedInput>,
        dimensions: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidRequest {
    pub custom_id: Option<String>,
    pub endpoint: Endpoint,
    /// The `model` the caller named, echoed in OpenAI responses.
    pub model: Option<String>,
    pub prompt: Prompt,
    pub sampling: Sampling,
    pub routing: Routing,
    pub pins: Pins,
    pub warnings: Vec<String>,
}

/// Validates one line against the cluster's DP sizes. `amqp_rank_header` is the AMQP
/// `x-data-parallel-rank` header of a directly published message; a `headers` entry in the line
/// itself takes precedence since it is the more specific of the two.
pub fn validate(
    line: &InputLine,
    amqp_rank_header: Option<&Value>,
    shape: &ClusterShape,
) -> Result<ValidRequest, ValidationError> {
    let obj = &line.object;
    let custom_id = match obj.get("custom_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => return Err(ValidationError::wrong_type("custom_id", "a string", v)),
    };
    match obj.get("method") {
        None => {}
        Some(Value::String(m)) if m.eq_ignore_ascii_case("POST") => {}
        Some(Value::String(m)) => return Err(ValidationError::BadMethod(m.clone())),
        Some(v) => return Err(ValidationError::wrong_type("method", "a string", v)),
    }
    let endpoint = match obj.get("url") {
        None | Some(Value::Null) => return Err(missing("url", "")),
        Some(Value::String(u)) => Endpoint::from_path(u).ok_or_else(|| ValidationError::UnknownUrl(u.clone()))?,
        Some(v) => return Err(ValidationError::wrong_type("url", "a string", v)),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => return Err(missing("body", "")),
        Some(Value::Object(b)) => b,
        Some(v) => return Err(ValidationError::wrong_type("body", "an object", v)),
    };
    if let Some(h) = obj.get("headers").filter(|h| !h.is_null() && !h.is_object()) {
        return Err(ValidationError::wrong_type("headers", "an object", h));
    }
    let model = match body.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(v) => return Err(ValidationError::wrong_type("model", "a string", v)),
    };
    let (prompt, sampling) = match endpoint {
        Endpoint::Completions => {
            (completion_prompt(body)?, Sampling::parse(body, &["max_tokens"], DEFAULT_COMPLETION_MAX_TOKENS, "")?)
        }
        Endpoint::ChatCompletions => (
            Prompt::Chat(chat_messages(body)?),
            Sampling::parse(body, &["max_completion_tokens", "max_tokens"], DEFAULT_GENERATE_MAX_TOKENS, "")?,
        ),
        Endpoint::Generate => (generate_prompt(body)?, generate_sampling(body)?),
        Endpoint::Embeddings => {
            let (inputs, dimensions) = crate::embeddings::inputs(body)?;
            // Nothing is sampled: no token is generated.
            (Prompt::Embed { inputs, dimensions }, Sampling::greedy(0))
        }
        Endpoint::Responses => (
            Prompt::Chat(crate::responses::messages(body)?),
            Sampling::parse(body, &["max_output_tokens"], DEFAULT_GENERATE_MAX_TOKENS, "")?,
        ),
    };
    let mut sampling = sampling;
    sampling.logprobs = crate::features::logprobs(endpoint, body)?;
    sampling.constraint = crate::features::constraint(endpoint, body)?;
    let ignored = crate::unsupported::check(endpoint, body)?;
    let header = line.header("X-Data-Parallel-Rank").or(amqp_rank_header);
    let routing = Routing::from_body(body, header)?;
    let pins = routing.pins(shape)?;
    let mut warnings = routing.warnings();
    warnings.extend(ignored);
    Ok(ValidRequest { custom_id, endpoint, model, prompt, sampling, routing, pins, warnings })
}

fn missing(field: &'static str, context: &str) -> ValidationError {
    ValidationError::Missing { field, context: context.to_string() }
}

fn completion_prompt(body: &Map<String, Value>) -> Result<Prompt, ValidationError> {
    match body.get("prompt") {
        None | Some(Value::Null) => Err(missing("prompt", " for /v1/completions")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(v @ Value::Array(items)) if items.iter().all(Value::is_number) => {
            non_empty_ids(sampling::token_ids(v, "prompt")?, "prompt")
        }
        Some(v) => Err(ValidationError::wrong_type("prompt", "a string or an array of token ids", v)),
    }
}

fn generate_prompt(body: &Map<String, Value>) -> Result<Prompt, ValidationError> {
    match (body.get("text").filter(|v| !v.is_null()), body.get("input_ids").filter(|v| !v.is_null())) {
        (Some(_), Some(_)) => Err(ValidationError::invalid("text", "and `input_ids` are mutually exclusive")),
        (Some(Value::String(s)), None) => Ok(Prompt::Text(s.clone())),
        (Some(v), None) => Err(ValidationError::wrong_type("text", "a string", v)),
        (None, Some(v)) => non_empty_ids(sampling::token_ids(v, "input_ids")?, "input_ids"),
        (None, None) => Err(missing("text", " (or `input_ids`) for /generate")),
    }
}

fn non_empty_ids(ids: Vec<u32>, field: &str) -> Result<Prompt, ValidationError> {
    if ids.is_empty() {
        return Err(ValidationError::invalid(field, "must not be empty"));
    }
    Ok(Prompt::Ids(ids))
}

fn generate_sampling(body: &Map<String, Value>) -> Result<Sampling, ValidationError> {
    let params = match body.get("sampling_params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(v) => return Err(ValidationError::wrong_type("sampling_params", "an object", v)),
    };
    let mut sampling = Sampling::parse(&params, &["max_new_tokens"], DEFAULT_GENERATE_MAX_TOKENS, "sampling_params.")?;
    // SGLang also accepts the seed at the top of a /generate body.
    if sampling.seed.is_none() {
        if let Some(v) = body.get("sampling_seed").or(body.get("seed")).filter(|v| !v.is_null()) {
            let seed = v.as_i64().ok_or_else(|| ValidationError::wrong_type("sampling_seed", "an integer", v))?;
            let seed = u64::try_from(seed)
                .map_err(|_| ValidationError::invalid("sampling_seed", format!("must be >= 0, got {seed}")))?;
            sampling.seed = Some(seed);
        }
    }
    Ok(sampling)
}

fn chat_messages(body: &Map<String, Value>) -> Result<Vec<ChatMessage>, ValidationError> {
    let items = match body.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages", " for /v1/chat/completions")),
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(ValidationError::invalid("messages", "must not be empty")),
        Some(v) => return Err(ValidationError::wrong_type("messages", "an array", v)),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |f: &str| format!("messages[{i}].{f}");
            let m =
                m.as_object().ok_or_else(|| ValidationError::wrong_type(format!("messages[{i}]"), "an object", m))?;
            let role = match m.get("role") {
                Some(Value::String(r)) if !r.is_empty() => r.clone(),
                Some(v) => return Err(ValidationError::wrong_type(field("role"), "a non-empty string", v)),
                None => return Err(ValidationError::invalid(field("role"), "is required")),
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => text_parts(parts, &field("content"))?,
                Some(v) => return Err(ValidationError::wrong_type(field("content"), "a string or text parts", v)),
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// OpenAI content parts: only `{"type": "text", "text": ...}` is meaningful to a text model.
fn text_parts(parts: &[Value], field: &str) -> Result<String, ValidationError> {
    parts
        .iter()
        .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => Ok(t.to_string()),
            _ => Err(ValidationError::invalid(field, "parts must be {\"type\": \"text\", \"text\": ...}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::RawLine;
    use serde_json::json;

    fn check(v: Value) -> Result<ValidRequest, ValidationError> {
        let text = v.to_string();
        let line = InputLine::parse(&RawLine { line_no: 1, text: &text }).unwrap();
        validate(&line, None, &ClusterShape::disagg(2, 3))
    }

    #[test]
    fn three_surfaces() {
        let r = check(json!({"custom_id": "a", "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "Hi", "max_tokens": 4, "temperature": 0}}))
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("Hi".into()));
        assert_eq!(r.sampling.max_tokens, 4);
        let r = check(json!({"url": "/v1/chat/completions", "body": {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}}))
        .unwrap();
        assert_eq!(r.prompt, Prompt::Chat(vec![ChatMessage { role: "user".into(), content: "Hi".into() }]));
        let r = check(json!({"url": "/generate", "body": {"input_ids": [1, 2],
            "sampling_params": {"max_new_tokens": 3}, "routed_dp_rank": 1}}))
        .unwrap();
        assert_eq!((r.prompt, r.sampling.max_tokens), (Prompt::Ids(vec![1, 2]), 3));
        assert_eq!(r.pins, Pins { prefill: Some(1), decode: Some(1) });
    }

    #[test]
    fn contract_errors() {
        let e = check(json!({"url": "/v1/completions", "body": {"max_tokens": 3}})).unwrap_err();
        assert_eq!((e.code(), e.to_string().contains("`prompt`")), ("invalid_request", true));
        let e = check(json!({"url": "/v2/x", "body": {}})).unwrap_err();
        assert!(e.to_string().contains("`url`"));
        let e = check(json!({"url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 0}})).unwrap_err();
        assert_eq!(e.to_string(), "`max_tokens` must be >= 1, got 0");
        let e = check(json!({"url": "/v1/completions", "body": {"prompt": "x"},
            "headers": {"X-Data-Parallel-Rank": "abc"}}))
        .unwrap_err();
        assert_eq!(e.to_string(), "Invalid X-Data-Parallel-Rank header: must be an integer, got 'abc'");
        let e = check(json!({"url": "/v1/chat/completions", "body": {"messages": "hi"}})).unwrap_err();
        assert!(e.to_string().contains("`messages`"));
        let e = check(json!({"url": "/generate", "body": {"sampling_params": {}}})).unwrap_err();
        assert!(e.to_string().contains("`text`"));
    }

    #[test]
    fn header_in_line_beats_amqp_header_and_body() {
        let line = InputLine::parse(&RawLine {
            line_no: 1,
            text: r#"{"url":"/generate","body":{"text":"x","routed_dp_rank":0},"headers":{"x-data-parallel-rank":"2"}}"#,
        })
        .unwrap();
        let r = validate(&line, Some(&json!("1")), &ClusterShape::disagg(3, 3)).unwrap();
        assert_eq!(r.routing.routed_dp_rank, Some(2));
        let line = InputLine::parse(&RawLine {
            line_no: 1,
            text: r#"{"url":"/generate","body":{"text":"x","routed_dp_rank":0}}"#,
        })
        .unwrap();
        let r = validate(&line, Some(&json!("1")), &ClusterShape::disagg(3, 3)).unwrap();
        assert_eq!(r.routing.routed_dp_rank, Some(1));
    }
}
