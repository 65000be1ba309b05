//! OpenAI's `/v1/responses` body read into pdq's chat request (CONTRACT §15). A batch line is
//! answered alone and nothing is kept between lines, so what needs server state (a previous
//! response, a conversation, a stored prompt, background mode) is refused by name, as are tools
//! and inputs other than text messages. `instructions` becomes a leading system message and a
//! `developer` message a system one: open models' chat templates know no developer role.

use serde_json::{Map, Value};

use crate::features::{get, top_count, Constraint};
use crate::{ChatMessage, ValidationError};

/// The `include` entry that asks for each output token's log-probability.
pub const LOGPROBS_INCLUDE: &str = "message.output_text.logprobs";
/// `include` entries with nothing to add to pdq's answer: it produces no reasoning items.
const EMPTY_INCLUDES: &[&str] = &["reasoning.encrypted_content"];

pub const STORE_WARNING: &str =
    "`store` is ignored: a batch's responses are kept in its output file, not for retrieval by id";

/// The instructions, then the input, as chat messages.
pub(crate) fn messages(body: &Map<String, Value>) -> Result<Vec<ChatMessage>, ValidationError> {
    let mut messages = Vec::new();
    match get(body, "instructions") {
        None => {}
        Some(Value::String(s)) => messages.push(ChatMessage { role: "system".into(), content: s.clone() }),
        Some(v) => return Err(ValidationError::wrong_type("instructions", "a string", v)),
    }
    match get(body, "input") {
        None => {
            return Err(ValidationError::Missing { field: "input", context: " for /v1/responses".into() });
        }
        Some(Value::String(s)) => messages.push(ChatMessage { role: "user".into(), content: s.clone() }),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ValidationError::invalid("input", "must not be empty"));
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                messages.push(message(item, &format!("input[{i}]"))?);
            }
        }
        Some(v) => return Err(ValidationError::wrong_type("input", "a string or a list of messages", v)),
    }
    Ok(messages)
}

/// One input item: a message (`type` absent or `message`) with text content.
fn message(item: &Value, at: &str) -> Result<ChatMessage, ValidationError> {
    let m = item.as_object().ok_or_else(|| ValidationError::wrong_type(at, "an object", item))?;
    match m.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "message" => {}
        Some(Value::String(t)) => {
            return Err(ValidationError::invalid(
                format!("{at}.type"),
                format!("'{t}' is not supported by pdq: only message items, as pdq runs no tools"),
            ))
        }
        Some(v) => return Err(ValidationError::wrong_type(format!("{at}.type"), "a string", v)),
    }
    let role = match m.get("role") {
        Some(Value::String(r)) if matches!(r.as_str(), "user" | "system" | "assistant") => r.clone(),
        Some(Value::String(r)) if r == "developer" => "system".to_string(),
        Some(Value::String(r)) => {
            return Err(ValidationError::invalid(
                format!("{at}.role"),
                format!("must be one of user, system, developer, assistant, got '{r}'"),
            ))
        }
        Some(v) => return Err(ValidationError::wrong_type(format!("{at}.role"), "a string", v)),
        None => return Err(ValidationError::invalid(format!("{at}.role"), "is required")),
    };
    let field = format!("{at}.content");
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().enumerate().map(|(j, p)| text_part(p, &format!("{field}[{j}]"))).collect::<Result<_, _>>()?
        }
        None | Some(Value::Null) => return Err(ValidationError::invalid(field, "is required")),
        Some(v) => return Err(ValidationError::wrong_type(field, "a string or a list of content parts", v)),
    };
    Ok(ChatMessage { role, content })
}

/// `input_text` (what the user wrote) or `output_text` (an earlier answer, sent back as input).
fn text_part(part: &Value, at: &str) -> Result<String, ValidationError> {
    let p = part.as_object().ok_or_else(|| ValidationError::wrong_type(at, "an object", part))?;
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => match p.get("text") {
            Some(Value::String(t)) => Ok(t.clone()),
            Some(v) => Err(ValidationError::wrong_type(format!("{at}.text"), "a string", v)),
            None => Err(ValidationError::invalid(format!("{at}.text"), "is required")),
        },
        Some(t @ ("input_image" | "input_file" | "input_audio" | "refusal")) => Err(ValidationError::invalid(
            format!("{at}.type"),
            format!("'{t}' is not supported by pdq: its models read and write text only"),
        )),
        Some(t) => {
            Err(ValidationError::invalid(format!("{at}.type"), format!("must be input_text or output_text, got '{t}'")))
        }
        None => Err(ValidationError::invalid(format!("{at}.type"), "is required")),
    }
}

/// `include: ["message.output_text.logprobs"]` turns log-probabilities on; `top_logprobs` is
/// the number of alternatives per token.
pub(crate) fn logprobs(body: &Map<String, Value>) -> Result<Option<u32>, ValidationError> {
    let include = match get(body, "include") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or_else(|| ValidationError::wrong_type("include", "a list of strings", v)))
            .collect::<Result<Vec<_>, _>>()?,
        Some(v) => return Err(ValidationError::wrong_type("include", "a list of strings", v)),
    };
    if let Some(other) = include.iter().find(|i| **i != LOGPROBS_INCLUDE && !EMPTY_INCLUDES.contains(i)) {
        return Err(ValidationError::invalid(
            "include",
            format!("'{other}' is not supported by pdq; it can include '{LOGPROBS_INCLUDE}'"),
        ));
    }
    let k = get(body, "top_logprobs").map(|v| top_count(v, "top_logprobs")).transpose()?;
    match (include.contains(&LOGPROBS_INCLUDE), k) {
        (true, k) => Ok(Some(k.unwrap_or(0))),
        (false, None | Some(0)) => Ok(None),
        (false, Some(_)) => {
            Err(ValidationError::invalid("top_logprobs", format!("needs `include: [\"{LOGPROBS_INCLUDE}\"]`")))
        }
    }
}

/// `text.format`: `text`, `json_object`, or `json_schema` with the schema beside its `name`
/// (not nested in a `json_schema` object as chat's `response_format` has it).
pub(crate) fn constraint(body: &Map<String, Value>) -> Result<Option<Constraint>, ValidationError> {
    let Some(text) = get(body, "text") else { return Ok(None) };
    let text = text.as_object().ok_or_else(|| ValidationError::wrong_type("text", "an object", text))?;
    for (name, v) in text {
        match name.as_str() {
            "format" => {}
            "verbosity" if v.is_null() || v.as_str() == Some("medium") => {}
            "verbosity" => {
                return Err(ValidationError::invalid(
                    "text.verbosity",
                    "is not supported by pdq; leave it out or at its default",
                ))
            }
            _ => return Err(ValidationError::invalid(format!("text.{name}"), "is not a parameter of /v1/responses")),
        }
    }
    let Some(format) = get(text, "format") else { return Ok(None) };
    let format = format.as_object().ok_or_else(|| ValidationError::wrong_type("text.format", "an object", format))?;
    match format.get("type") {
        Some(Value::String(t)) if t == "text" => Ok(None),
        Some(Value::String(t)) if t == "json_object" => Ok(Some(Constraint::JsonObject)),
        Some(Value::String(t)) if t == "json_schema" => match get(format, "schema") {
            Some(s @ Value::Object(_)) => Ok(Some(Constraint::JsonSchema { schema: s.clone() })),
            Some(v) => Err(ValidationError::wrong_type("text.format.schema", "an object", v)),
            None => Err(ValidationError::invalid("text.format.schema", "is required for type json_schema")),
        },
        Some(Value::String(t)) => Err(ValidationError::invalid(
            "text.format.type",
            format!("must be one of text, json_object, json_schema, got '{t}'"),
        )),
        Some(v) => Err(ValidationError::wrong_type("text.format.type", "a string", v)),
        None => Err(ValidationError::invalid("text.format.type", "is required")),
    }
}

/// Refuses what a batch line cannot honour, each with its reason; returns the warnings for
/// what it ignores.
pub(crate) fn check(body: &Map<String, Value>) -> Result<Vec<String>, ValidationError> {
    let refuse =
        |field: &str, why: &str| Err(ValidationError::invalid(field, format!("is not supported by pdq: {why}")));
    let stateless =
        "a batch line is answered alone and nothing is kept between lines; send the earlier turns in `input`";
    if get(body, "previous_response_id").is_some() {
        return refuse("previous_response_id", stateless);
    }
    if get(body, "conversation").is_some() {
        return refuse("conversation", stateless);
    }
    if get(body, "prompt").is_some() {
        return refuse("prompt", "stored prompts live at OpenAI; send the text in `instructions` and `input`");
    }
    if body.get("background").is_some_and(|v| *v == Value::Bool(true)) {
        return refuse("background", "a batch already runs in the background; leave it out or false");
    }
    if get(body, "tools").is_some_and(|v| v.as_array().is_none_or(|t| !t.is_empty())) {
        return refuse("tools", "pdq runs no tools");
    }
    if get(body, "tool_choice").is_some_and(|v| !matches!(v.as_str(), Some("none" | "auto"))) {
        return refuse("tool_choice", "pdq runs no tools; leave it out, 'none' or 'auto'");
    }
    let unset = |v: &Value| v.is_null() || v.as_object().is_some_and(|o| o.values().all(Value::is_null));
    if get(body, "reasoning").is_some_and(|v| !unset(v)) {
        return refuse("reasoning", "pdq's models have no reasoning settings");
    }
    if get(body, "truncation").is_some_and(|v| v.as_str() != Some("disabled")) {
        return refuse(
            "truncation",
            "pdq never drops input; a prompt over the context fails with context_length_exceeded",
        );
    }
    let store = body.get("store").is_some_and(|v| *v == Value::Bool(true));
    Ok(if store { vec![STORE_WARNING.to_string()] } else { Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{InputLine, RawLine};
    use crate::{validate, ClusterShape, Endpoint, Prompt, ValidRequest};
    use serde_json::json;

    fn check(body: Value) -> Result<ValidRequest, String> {
        let text = json!({"custom_id": "r", "url": "/v1/responses", "body": body}).to_string();
        let line = InputLine::parse(&RawLine { line_no: 1, text: &text }).unwrap();
        validate(&line, None, &ClusterShape::colocated(1)).map_err(|e| {
            assert_eq!(e.code(), "invalid_request", "{e}");
            e.to_string()
        })
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn a_string_input_with_instructions_is_a_chat() {
        let r = check(json!({"model": "tiny", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 5,
            "temperature": 0.5, "top_p": 0.9, "seed": 3}))
        .unwrap();
        assert_eq!(r.endpoint, Endpoint::Responses);
        assert_eq!(r.prompt, Prompt::Chat(vec![msg("system", "Be brief."), msg("user", "Hi")]));
        let s = &r.sampling;
        assert_eq!((s.max_tokens, s.temperature, s.top_p, s.seed, s.n), (5, 0.5, 0.9, Some(3), 1));
        assert_eq!((s.logprobs, s.constraint.clone(), r.warnings), (None, None, vec![]));
        assert_eq!(check(json!({"input": "Hi"})).unwrap().sampling.max_tokens, 128, "chat's default limit");
    }

    #[test]
    fn message_items_in_every_spelling() {
        let r = check(json!({"input": [
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hel"},
                                                             {"type": "input_text", "text": "lo"}]},
            {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Bonjour", "annotations": []}]},
            {"role": "system", "content": ""},
        ]}))
        .unwrap();
        let expected = vec![msg("system", "Answer in French."), msg("user", "Hello"), msg("assistant", "Bonjour")];
        assert_eq!(r.prompt, Prompt::Chat([expected, vec![msg("system", "")]].concat()));
    }

    #[test]
    fn bad_input_names_the_item() {
        let cases = [
            (json!({}), "`input` is required for /v1/responses"),
            (json!({"input": []}), "`input` must not be empty"),
            (json!({"input": 3}), "`input` must be a string or a list of messages, got number 3"),
            (json!({"input": "x", "instructions": ["a"]}), "`instructions` must be a string, got an array"),
            (json!({"input": ["x"]}), "`input[0]` must be an object, got string 'x'"),
            (
                json!({"input": [{"role": "tool", "content": "x"}]}),
                "`input[0].role` must be one of user, system, developer, assistant, got 'tool'",
            ),
            (json!({"input": [{"content": "x"}]}), "`input[0].role` is required"),
            (json!({"input": [{"role": "user"}]}), "`input[0].content` is required"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
                "`input[0].content[0].type` must be input_text or output_text, got 'text'",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
                "`input[0].content[0].text` is required",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(check(body.clone()).unwrap_err(), expected, "{body}");
        }
    }

    #[test]
    fn what_a_batch_line_cannot_honour_is_refused_by_name() {
        let items = [
            (json!({"type": "function_call_output", "call_id": "c", "output": "4"}), "input[0].type"),
            (json!({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}), "input[0].type"),
            (json!({"type": "reasoning", "summary": []}), "input[0].type"),
            (json!({"type": "item_reference", "id": "x"}), "input[0].type"),
            (
                json!({"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}),
                "input[0].content[0].type",
            ),
            (json!({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}), "input[0].content[0].type"),
        ];
        for (item, field) in items {
            let e = check(json!({"input": [item]})).unwrap_err();
            assert!(e.starts_with(&format!("`{field}` '")) && e.contains("is not supported by pdq"), "{e}");
        }
        let fields = [
            ("previous_response_id", json!("resp_1")),
            ("conversation", json!("conv_1")),
            ("prompt", json!({"id": "pmpt_1"})),
            ("background", json!(true)),
            ("tools", json!([{"type": "web_search"}])),
            ("tool_choice", json!("required")),
            ("tool_choice", json!({"type": "function", "name": "f"})),
            ("reasoning", json!({"effort": "high"})),
            ("truncation", json!("auto")),
            ("text", json!({"verbosity": "low"})),
        ];
        for (name, value) in fields {
            let mut body = json!({"input": "x"});
            body[name] = value;
            let e = check(body).unwrap_err();
            assert!(e.starts_with(&format!("`{name}")) && e.contains("is not supported by pdq"), "{name}: {e}");
        }
        let e = check(json!({"input": "x", "include": ["file_search_call.results"]})).unwrap_err();
        assert_eq!(
            e,
            "`include` 'file_search_call.results' is not supported by pdq; it can include 'message.output_text.logprobs'"
        );
        for (name, value) in [("n", json!(2)), ("max_tokens", json!(4)), ("messages", json!([]))] {
            let mut body = json!({"input": "x"});
            body[name] = value;
            assert_eq!(check(body).unwrap_err(), format!("`{name}` is not a parameter of /v1/responses"));
        }
        let e = check(json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}})).unwrap_err();
        assert_eq!(e, "`text.format.schema` is required for type json_schema");
        let e = check(json!({"input": "x", "text": {"format": {"type": "grammar"}}})).unwrap_err();
        assert!(e.starts_with("`text.format.type` must be one of"), "{e}");
        let e = check(json!({"input": "x", "top_logprobs": 2})).unwrap_err();
        assert_eq!(e, "`top_logprobs` needs `include: [\"message.output_text.logprobs\"]`");
        let e = check(json!({"input": "x", "max_output_tokens": 0})).unwrap_err();
        assert_eq!(e, "`max_output_tokens` must be >= 1, got 0");
    }

    #[test]
    fn defaults_and_neutral_values_pass() {
        let r = check(json!({"input": "x", "store": false, "stream": false, "tools": [], "tool_choice": "auto",
            "parallel_tool_calls": true, "reasoning": {"effort": null}, "truncation": "disabled", "background": false,
            "previous_response_id": null, "metadata": {"k": "v"}, "user": "u", "service_tier": "auto",
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "include": ["reasoning.encrypted_content"],
            "routed_dp_rank": 0}))
        .unwrap();
        assert_eq!((r.warnings.len(), r.pins.decode), (0, Some(0)));
        let r = check(json!({"input": "x", "store": true, "stream": true})).unwrap();
        assert_eq!(r.warnings, vec![STORE_WARNING.to_string(), crate::unsupported::STREAM_WARNING.to_string()]);
    }

    #[test]
    fn structured_output_and_logprobs() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = json!({"type": "json_schema", "name": "a", "schema": schema, "strict": true});
        let r = check(json!({"input": "x", "text": {"format": format}})).unwrap();
        assert_eq!(r.sampling.constraint, Some(Constraint::JsonSchema { schema }));
        let r = check(json!({"input": "x", "text": {"format": {"type": "json_object"}}})).unwrap();
        assert_eq!(r.sampling.constraint, Some(Constraint::JsonObject));
        let r = check(json!({"input": "x", "include": [LOGPROBS_INCLUDE], "top_logprobs": 3})).unwrap();
        assert_eq!(r.sampling.logprobs, Some(3));
        let r = check(json!({"input": "x", "include": [LOGPROBS_INCLUDE]})).unwrap();
        assert_eq!(r.sampling.logprobs, Some(0));
        assert_eq!(check(json!({"input": "x", "top_logprobs": 0})).unwrap().sampling.logprobs, None);
        let e = check(json!({"input": "x", "include": [LOGPROBS_INCLUDE], "top_logprobs": 21})).unwrap_err();
        assert_eq!(e, "`top_logprobs` must be in [0, 20], got 21");
    }
}
