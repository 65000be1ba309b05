//! JSON replies and OpenAI's list envelope.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub(crate) fn json(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

pub(crate) fn ok(body: &Value) -> Response {
    json(StatusCode::OK, body)
}

/// `{object: "list", data, first_id, last_id, has_more}` from one more item than the page holds.
pub(crate) fn list(mut data: Vec<Value>, limit: usize) -> Response {
    let has_more = data.len() > limit;
    data.truncate(limit);
    let id = |v: Option<&Value>| v.map(|v| v["id"].clone()).unwrap_or(Value::Null);
    ok(&json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    }))
}

/// `limit` of a list: 1..=max, `default` when absent.
pub(crate) fn limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, crate::ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(crate::ApiError::invalid(format!("`limit` must be an integer in [1, {max}], got '{raw}'"), "limit")),
    }
}
