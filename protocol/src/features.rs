//! The request features of CONTRACT §12 that each surface spells its own way: log-probabilities
//! (`logprobs` on completions, `logprobs` + `top_logprobs` on chat, `return_logprob` +
//! `top_logprobs_num` on /generate, `include` + `top_logprobs` on /v1/responses) and output
//! constraints (`response_format` on the OpenAI surfaces, `text.format` on /v1/responses,
//! `sampling_params.json_schema` / `regex` on /generate). Each is read into the one
//! field of [`crate::Sampling`] it sets; whether a schema compiles is the engine's to say.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Endpoint, ValidationError};

/// OpenAI's bound for chat `top_logprobs`, applied to every surface.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// What every completed choice must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Constraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid against `schema`.
    JsonSchema { schema: Value },
    /// Text matching `pattern` whole (SGLang's `regex`).
    Regex { pattern: String },
}

/// The number of alternatives per token, when log-probabilities are asked for.
pub fn logprobs(endpoint: Endpoint, body: &Map<String, Value>) -> Result<Option<u32>, ValidationError> {
    match endpoint {
        Endpoint::Completions => match get(body, "logprobs") {
            None => Ok(None),
            Some(v) => top_count(v, "logprobs").map(Some),
        },
        Endpoint::ChatCompletions => switched(body, "logprobs", "top_logprobs"),
        Endpoint::Generate => switched(body, "return_logprob", "top_logprobs_num"),
        Endpoint::Embeddings => Ok(None),
        Endpoint::Responses => crate::responses::logprobs(body),
    }
}

/// A boolean switch and the count of alternatives that needs it on.
fn switched(body: &Map<String, Value>, switch: &str, count: &str) -> Result<Option<u32>, ValidationError> {
    let on = match get(body, switch) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(ValidationError::wrong_type(switch, "a boolean", v)),
    };
    let k = get(body, count).map(|v| top_count(v, count)).transpose()?;
    match (on, k) {
        (true, k) => Ok(Some(k.unwrap_or(0))),
        (false, None | Some(0)) => Ok(None),
        (false, Some(_)) => Err(ValidationError::invalid(count, format!("needs `{switch}: true`"))),
    }
}

pub(crate) fn top_count(v: &Value, field: &str) -> Result<u32, ValidationError> {
    let k = v.as_i64().ok_or_else(|| ValidationError::wrong_type(field, "an integer", v))?;
    if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
        return Err(ValidationError::invalid(field, format!("must be in [0, {MAX_TOP_LOGPROBS}], got {k}")));
    }
    Ok(k as u32)
}

/// The output constraint of a request, if any.
pub fn constraint(endpoint: Endpoint, body: &Map<String, Value>) -> Result<Option<Constraint>, ValidationError> {
    match endpoint {
        Endpoint::Completions | Endpoint::ChatCompletions => response_format(body),
        Endpoint::Generate => match body.get("sampling_params").and_then(Value::as_object) {
            Some(params) => generate_constraint(params),
            None => Ok(None),
        },
        Endpoint::Embeddings => Ok(None),
        Endpoint::Responses => crate::responses::constraint(body),
    }
}

fn response_format(body: &Map<String, Value>) -> Result<Option<Constraint>, ValidationError> {
    let Some(rf) = get(body, "response_format") else { return Ok(None) };
    let rf = rf.as_object().ok_or_else(|| ValidationError::wrong_type("response_format", "an object", rf))?;
    match rf.get("type") {
        Some(Value::String(t)) if t == "text" => Ok(None),
        Some(Value::String(t)) if t == "json_object" => Ok(Some(Constraint::JsonObject)),
        Some(Value::String(t)) if t == "json_schema" => {
            let field = "response_format.json_schema";
            let js = match get(rf, "json_schema") {
                Some(Value::Object(js)) => js,
                Some(v) => return Err(ValidationError::wrong_type(field, "an object", v)),
                None => return Err(ValidationError::invalid(field, "is required for type json_schema")),
            };
            match get(js, "schema") {
                Some(s @ Value::Object(_)) => Ok(Some(Constraint::JsonSchema { schema: s.clone() })),
                Some(v) => Err(ValidationError::wrong_type(format!("{field}.schema"), "an object", v)),
                None => Err(ValidationError::invalid(format!("{field}.schema"), "is required")),
            }
        }
        Some(Value::String(t)) => Err(ValidationError::invalid(
            "response_format.type",
            format!("must be one of text, json_object, json_schema, got '{t}'"),
        )),
        Some(v) => Err(ValidationError::wrong_type("response_format.type", "a string", v)),
        None => Err(ValidationError::invalid("response_format.type", "is required")),
    }
}

fn generate_constraint(params: &Map<String, Value>) -> Result<Option<Constraint>, ValidationError> {
    let schema = match get(params, "json_schema") {
        None => None,
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(s @ Value::Object(_)) => Some(Constraint::JsonSchema { schema: s }),
            Ok(_) => return Err(ValidationError::invalid("sampling_params.json_schema", "must be a JSON object")),
            Err(e) => {
                return Err(ValidationError::invalid("sampling_params.json_schema", format!("is not valid JSON: {e}")))
            }
        },
        Some(v) => return Err(ValidationError::wrong_type("sampling_params.json_schema", "a string", v)),
    };
    let regex = match get(params, "regex") {
        None => None,
        Some(Value::String(p)) => Some(Constraint::Regex { pattern: p.clone() }),
        Some(v) => return Err(ValidationError::wrong_type("sampling_params.regex", "a string", v)),
    };
    match (schema, regex) {
        (Some(_), Some(_)) => Err(ValidationError::invalid(
            "sampling_params.json_schema",
            "and `sampling_params.regex` are mutually exclusive",
        )),
        (s, r) => Ok(s.or(r)),
    }
}

pub(crate) fn get<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lp(endpoint: Endpoint, body: Value) -> Result<Option<u32>, String> {
        logprobs(endpoint, body.as_object().unwrap()).map_err(|e| e.to_string())
    }

    fn con(endpoint: Endpoint, body: Value) -> Result<Option<Constraint>, String> {
        constraint(endpoint, body.as_object().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn logprobs_in_three_spellings() {
        assert_eq!(lp(Endpoint::Completions, json!({"logprobs": 3})), Ok(Some(3)));
        assert_eq!(lp(Endpoint::Completions, json!({"logprobs": 0})), Ok(Some(0)));
        assert_eq!(lp(Endpoint::Completions, json!({})), Ok(None));
        assert_eq!(
            lp(Endpoint::Completions, json!({"logprobs": 21})),
            Err("`logprobs` must be in [0, 20], got 21".into())
        );
        assert_eq!(lp(Endpoint::ChatCompletions, json!({"logprobs": true, "top_logprobs": 20})), Ok(Some(20)));
        assert_eq!(lp(Endpoint::ChatCompletions, json!({"logprobs": true})), Ok(Some(0)));
        assert_eq!(lp(Endpoint::ChatCompletions, json!({"logprobs": false, "top_logprobs": 0})), Ok(None));
        assert_eq!(
            lp(Endpoint::ChatCompletions, json!({"top_logprobs": 2})),
            Err("`top_logprobs` needs `logprobs: true`".into())
        );
        assert!(lp(Endpoint::ChatCompletions, json!({"logprobs": 2}))
            .unwrap_err()
            .contains("`logprobs` must be a boolean"));
        assert_eq!(lp(Endpoint::Generate, json!({"return_logprob": true, "top_logprobs_num": 5})), Ok(Some(5)));
        assert_eq!(
            lp(Endpoint::Generate, json!({"return_logprob": true, "top_logprobs_num": -1})),
            Err("`top_logprobs_num` must be in [0, 20], got -1".into())
        );
    }

    #[test]
    fn constraints_in_their_spellings() {
        assert_eq!(con(Endpoint::ChatCompletions, json!({"response_format": {"type": "text"}})), Ok(None));
        assert_eq!(
            con(Endpoint::Completions, json!({"response_format": {"type": "json_object"}})),
            Ok(Some(Constraint::JsonObject))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let rf = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}});
        assert_eq!(con(Endpoint::ChatCompletions, rf), Ok(Some(Constraint::JsonSchema { schema: schema.clone() })));
        let body = json!({"sampling_params": {"json_schema": schema.to_string()}});
        assert_eq!(con(Endpoint::Generate, body), Ok(Some(Constraint::JsonSchema { schema })));
        let body = json!({"sampling_params": {"regex": "[0-9]+"}});
        assert_eq!(con(Endpoint::Generate, body), Ok(Some(Constraint::Regex { pattern: "[0-9]+".into() })));
        assert!(con(Endpoint::ChatCompletions, json!({"response_format": {"type": "xml"}}))
            .unwrap_err()
            .starts_with("`response_format.type` must be one of"));
        assert_eq!(
            con(Endpoint::ChatCompletions, json!({"response_format": {"type": "json_schema"}})),
            Err("`response_format.json_schema` is required for type json_schema".into())
        );
        assert!(con(Endpoint::Generate, json!({"sampling_params": {"json_schema": "{"}}))
            .unwrap_err()
            .starts_with("`sampling_params.json_schema` is not valid JSON"));
        assert!(con(Endpoint::Generate, json!({"sampling_params": {"json_schema": "{}", "regex": "a"}}))
            .unwrap_err()
            .contains("mutually exclusive"));
    }
}
