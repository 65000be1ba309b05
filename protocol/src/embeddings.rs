//! `/v1/embeddings` bodies (CONTRACT §15): what the model reads and how the vectors come back.
//! An embedding request runs the prompt only (no decode, no KV handle); the rank that runs it
//! writes the result row, one vector per input.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{sampling, ValidationError};

/// OpenAI's limit on the inputs of one request.
pub const MAX_INPUTS: usize = 2048;

/// One input to embed: text to tokenize, or token ids as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedInput {
    Text(String),
    Ids(Vec<u32>),
}

/// How the vectors are written in the output file. The results table holds them as `real[]`
/// either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// The little-endian f32 bytes, base64: what OpenAI's clients ask for by default.
    Base64,
}

impl EncodingFormat {
    /// From a request body as stored; a body that validated has a known value or none.
    pub fn of_body(body: Option<&Value>) -> EncodingFormat {
        match body.and_then(|b| b.get("encoding_format")).and_then(Value::as_str) {
            Some("base64") => EncodingFormat::Base64,
            _ => EncodingFormat::Float,
        }
    }
}

/// The inputs of an embeddings body, and the `dimensions` it asks for (checked against the
/// model by the worker, which knows its size).
pub fn inputs(body: &Map<String, Value>) -> Result<(Vec<EmbedInput>, Option<u32>), ValidationError> {
    let inputs = match body.get("input") {
        None | Some(Value::Null) => {
            return Err(ValidationError::Missing { field: "input", context: " for /v1/embeddings".into() })
        }
        Some(Value::String(s)) => vec![text(s, "input")?],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ValidationError::invalid("input", "must not be empty"))
        }
        // One list of token ids is one input (OpenAI: "array of integers").
        Some(v @ Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![EmbedInput::Ids(sampling::token_ids(v, "input")?)]
        }
        Some(Value::Array(items)) => {
            if items.len() > MAX_INPUTS {
                return Err(ValidationError::invalid(
                    "input",
                    format!("holds {} inputs, over the limit of {MAX_INPUTS}", items.len()),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = format!("input[{i}]");
                    match item {
                        Value::String(s) => text(s, &field),
                        Value::Array(ids) if !ids.is_empty() => Ok(EmbedInput::Ids(sampling::token_ids(item, &field)?)),
                        Value::Array(_) => Err(ValidationError::invalid(field, "must not be empty")),
                        v => Err(ValidationError::wrong_type(field, "a string or an array of token ids", v)),
                    }
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => return Err(ValidationError::wrong_type("input", "a string or an array", v)),
    };
    match body.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(v) => {
            return Err(ValidationError::invalid("encoding_format", format!("must be float or base64, got {v}")))
        }
    }
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|d| u32::try_from(d).ok()).filter(|&d| d >= 1) {
            Some(d) => Some(d),
            None => return Err(ValidationError::invalid("dimensions", format!("must be an integer >= 1, got {v}"))),
        },
    };
    Ok((inputs, dimensions))
}

/// OpenAI refuses an empty string: it has no tokens to embed.
fn text(s: &str, field: &str) -> Result<EmbedInput, ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::invalid(field, "must not be an empty string"));
    }
    Ok(EmbedInput::Text(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<(Vec<EmbedInput>, Option<u32>), ValidationError> {
        inputs(body.as_object().unwrap())
    }

    #[test]
    fn every_shape_of_input() {
        let text = |s: &str| EmbedInput::Text(s.into());
        assert_eq!(parse(json!({"input": "hi"})).unwrap().0, vec![text("hi")]);
        assert_eq!(parse(json!({"input": ["a", "b"]})).unwrap().0, vec![text("a"), text("b")]);
        assert_eq!(parse(json!({"input": [1, 2]})).unwrap().0, vec![EmbedInput::Ids(vec![1, 2])]);
        assert_eq!(
            parse(json!({"input": [[1], [2, 3]], "dimensions": 8})).unwrap(),
            (vec![EmbedInput::Ids(vec![1]), EmbedInput::Ids(vec![2, 3])], Some(8))
        );
    }

    #[test]
    fn bad_inputs_name_their_field() {
        let msg = |b: Value| parse(b).unwrap_err().to_string();
        assert_eq!(msg(json!({})), "`input` is required for /v1/embeddings");
        assert_eq!(msg(json!({"input": ""})), "`input` must not be an empty string");
        assert_eq!(msg(json!({"input": []})), "`input` must not be empty");
        assert_eq!(msg(json!({"input": ["a", ""]})), "`input[1]` must not be an empty string");
        assert_eq!(msg(json!({"input": ["a", [1], []]})), "`input[2]` must not be empty");
        assert!(msg(json!({"input": ["a", {"x": 1}]})).starts_with("`input[1]` must be a string or an array"));
        assert!(msg(json!({"input": 3})).starts_with("`input` must be a string or an array"));
        assert!(msg(json!({"input": "a", "encoding_format": "int8"})).starts_with("`encoding_format` must be"));
        assert!(msg(json!({"input": "a", "dimensions": 0})).starts_with("`dimensions` must be an integer >= 1"));
        let many = vec![json!("x"); MAX_INPUTS + 1];
        assert_eq!(msg(json!({"input": many})), "`input` holds 2049 inputs, over the limit of 2048");
    }

    #[test]
    fn the_format_comes_from_the_stored_body() {
        assert_eq!(EncodingFormat::of_body(Some(&json!({"encoding_format": "base64"}))), EncodingFormat::Base64);
        assert_eq!(EncodingFormat::of_body(Some(&json!({}))), EncodingFormat::Float);
        assert_eq!(EncodingFormat::of_body(None), EncodingFormat::Float);
    }
}
