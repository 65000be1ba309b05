//! One error type for everything a request line can get wrong. Each variant knows its contract
//! code (CONTRACT §7) and its message names the field with the numbers that broke it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("line {line}: not valid JSON: {reason}")]
    InvalidJson { line: usize, reason: String },
    #[error("`{field}` is required{context}")]
    Missing { field: &'static str, context: String },
    #[error("`{field}` must be {expected}, got {got}")]
    WrongType { field: String, expected: &'static str, got: String },
    #[error("`{field}` {reason}")]
    Invalid { field: String, reason: String },
    #[error("`url` must be one of /v1/completions, /v1/chat/completions, /generate, /v1/responses, got '{0}'")]
    UnknownUrl(String),
    #[error("`url` '{url}' differs from the batch's endpoint '{endpoint}'")]
    EndpointMismatch { url: String, endpoint: &'static str },
    #[error("`method` must be POST, got '{0}'")]
    BadMethod(String),
    #[error("{field}={value} out of range [0, {bound})")]
    RankOutOfRange { field: &'static str, value: i64, bound: u32 },
    #[error("Invalid X-Data-Parallel-Rank header: must be an integer, got '{0}'")]
    BadRankHeader(String),
    #[error("`disagg_prefill_dp_rank`={prefill} differs from `routed_dp_rank`={routed}; a colocated worker prefills and decodes on one rank")]
    ColocatedConflict { prefill: u32, routed: u32 },
    #[error("prompt ({prompt} tokens) + `max_tokens` ({max_tokens}) exceeds the model's context length ({context})")]
    ContextLengthExceeded { prompt: usize, max_tokens: usize, context: usize },
    #[error("`custom_id` '{custom_id}' on line {line} duplicates line {first_line}")]
    DuplicateCustomId { custom_id: String, first_line: usize, line: usize },
    #[error("prompt could not be tokenized: {0}")]
    Tokenize(String),
}

impl ValidationError {
    /// The `error.code` recorded in the result row and the batch error file.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::InvalidJson { .. } => "invalid_json",
            ValidationError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ValidationError::DuplicateCustomId { .. } => "duplicate_custom_id",
            _ => "invalid_request",
        }
    }

    pub fn to_body(&self) -> ErrorBody {
        ErrorBody { code: self.code().to_string(), message: self.to_string() }
    }

    pub(crate) fn wrong_type(field: impl Into<String>, expected: &'static str, got: &serde_json::Value) -> Self {
        ValidationError::WrongType { field: field.into(), expected, got: describe(got) }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ValidationError::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// `{code, message}` as stored in `results.error` and printed in the error file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorBody { code: code.to_string(), message: message.into() }
    }
}

fn describe(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("boolean {b}"),
        serde_json::Value::Number(n) => format!("number {n}"),
        serde_json::Value::String(s) => format!("string '{}'", truncate(s, 40)),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// What a failure means for the message that met it. Control flow decides on this; the string
/// codes exist only for result rows and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying as it is: the broker, the database or a local actor is away for now.
    Transient,
    /// The KV the request needs is gone or unreachable: prefill it again, up to a bound.
    KvLost,
    /// The request itself cannot succeed: it ends as a failed row.
    Request,
    /// The process is misconfigured (credentials, topology): retrying cannot help.
    Fatal,
    /// The rank itself is broken (its device failed, a forward step failed, its engine thread
    /// died): not the request's fault. The message goes back to its queue for another rank,
    /// nothing is written, and the rank stops taking work.
    Rank,
}
