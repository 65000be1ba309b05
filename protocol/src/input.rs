//! The raw input line: one JSON object per line of a batch file, or one AMQP message body.
//! Parsing here only checks that the line is a JSON object; everything else is `validate`'s job,
//! so a malformed field still yields a `custom_id` to report the failure under.

use serde_json::{Map, Value};

use crate::ValidationError;

/// A line that parsed as a JSON object. Fields are read by `validate`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLine {
    pub object: Map<String, Value>,
}

/// A line as it came off the file or the wire, with its 1-based position.
#[derive(Debug, Clone)]
pub struct RawLine<'a> {
    pub line_no: usize,
    pub text: &'a str,
}

impl InputLine {
    pub fn parse(raw: &RawLine<'_>) -> Result<InputLine, ValidationError> {
        let value: Value = serde_json::from_str(raw.text)
            .map_err(|e| ValidationError::InvalidJson { line: raw.line_no, reason: e.to_string() })?;
        match value {
            Value::Object(object) => Ok(InputLine { object }),
            other => Err(ValidationError::InvalidJson {
                line: raw.line_no,
                reason: format!("expected a JSON object, got {}", kind(&other)),
            }),
        }
    }

    /// `custom_id` when it is a string; used to label failures before full validation.
    pub fn custom_id(&self) -> Option<&str> {
        self.object.get("custom_id").and_then(Value::as_str)
    }

    pub fn url(&self) -> Option<&str> {
        self.object.get("url").and_then(Value::as_str)
    }

    pub fn body(&self) -> Option<&Map<String, Value>> {
        self.object.get("body").and_then(Value::as_object)
    }

    /// Case-insensitive lookup in the line's optional `headers` object, as HTTP headers are.
    pub fn header(&self, name: &str) -> Option<&Value> {
        self.object
            .get("headers")
            .and_then(Value::as_object)?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn to_value(&self) -> Value {
        Value::Object(self.object.clone())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
