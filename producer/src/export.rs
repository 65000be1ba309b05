//! `pdq results`: the OpenAI Batch output file (successes) or error file (failures and
//! cancellations), one JSON object per line, in input order.

use pdq_protocol::Endpoint;
use pdq_store::ExportRow;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Output,
    Errors,
}

pub fn export_lines(rows: &[ExportRow], kind: ExportKind) -> Vec<String> {
    rows.iter().filter(|r| (r.status == "completed") == (kind == ExportKind::Output)).map(export_line).collect()
}

/// One line of the output file (a completed row) or the error file (any other).
pub fn export_line(r: &ExportRow) -> String {
    line(r).to_string()
}

fn line(r: &ExportRow) -> Value {
    let id = format!("batch_req_{}", r.request_id.simple());
    if r.status != "completed" {
        let error = r.error.clone().unwrap_or_else(|| json!({"code": r.status, "message": r.status}));
        return json!({"id": id, "custom_id": r.custom_id, "response": null, "error": error});
    }
    json!({
        "id": id,
        "custom_id": r.custom_id,
        "response": {"status_code": 200, "request_id": r.request_id.to_string(), "body": body(r)},
        "error": null,
    })
}

/// The response body a server would have returned for the line's `url`.
fn body(r: &ExportRow) -> Value {
    let text = r.text.clone().unwrap_or_default();
    let meta = r.meta_info.clone().unwrap_or(Value::Null);
    let endpoint = r.url.as_deref().and_then(Endpoint::from_path).unwrap_or(Endpoint::Generate);
    let model = r.body.as_ref().and_then(|b| b.get("model")).and_then(Value::as_str).unwrap_or("pdq");
    let prompt = r.prompt_tokens.unwrap_or(0);
    let completion = r.completion_tokens.unwrap_or(0);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let created = r.created_at.timestamp();
    let finish = r.finish_reason.clone();
    match endpoint {
        Endpoint::Generate => {
            json!({"text": text, "output_ids": r.output_ids.clone().unwrap_or_default(), "meta_info": meta})
        }
        Endpoint::Completions => json!({
            "id": format!("cmpl-{}", r.request_id.simple()),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
            "meta_info": meta,
        }),
        Endpoint::ChatCompletions => json!({
            "id": format!("chatcmpl-{}", r.request_id.simple()),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
            "meta_info": meta,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(url: &str, status: &str) -> ExportRow {
        ExportRow {
            request_id: Uuid::now_v7(),
            custom_id: Some("q-1".into()),
            line_no: Some(1),
            url: Some(url.into()),
            body: Some(json!({"model": "tiny"})),
            status: status.into(),
            text: Some("hi".into()),
            output_ids: Some(vec![5, 6]),
            meta_info: Some(json!({"dp_rank": 1})),
            error: (status != "completed").then(|| json!({"code": "invalid_request", "message": "bad"})),
            prompt_tokens: Some(3),
            completion_tokens: Some(2),
            finish_reason: Some("length".into()),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn output_and_error_files() {
        let rows = vec![
            row("/v1/completions", "completed"),
            row("/v1/chat/completions", "completed"),
            row("/generate", "failed"),
        ];
        let out: Vec<Value> =
            export_lines(&rows, ExportKind::Output).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["response"]["status_code"], 200);
        assert_eq!(out[0]["response"]["body"]["choices"][0]["text"], "hi");
        assert_eq!(out[0]["response"]["body"]["usage"]["total_tokens"], 5);
        assert_eq!(out[1]["response"]["body"]["choices"][0]["message"]["content"], "hi");
        assert_eq!(out[1]["error"], Value::Null);
        let err: Vec<Value> =
            export_lines(&rows, ExportKind::Errors).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0]["response"], Value::Null);
        assert_eq!(err[0]["error"]["code"], "invalid_request");
    }
}
