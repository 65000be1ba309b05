//! `pdq results`: the OpenAI Batch output file (successes) or error file (failures and
//! cancellations), one JSON object per line, in input order.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use pdq_protocol::{Choice, EncodingFormat, Endpoint, TokenLogprob};
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

/// One choice as the export needs it: from `results.choices` when the request had several,
/// else from the row's own columns.
struct Out {
    text: String,
    output_ids: Vec<u32>,
    /// OpenAI's spelling.
    finish: Option<String>,
    /// SGLang's `meta_info.finish_reason` object, for a choice of several.
    sglang_finish: Option<Value>,
    logprobs: Option<Vec<TokenLogprob>>,
}

fn outs(r: &ExportRow) -> Vec<Out> {
    let several: Option<Vec<Choice>> = r.choices.clone().and_then(|v| serde_json::from_value(v).ok());
    match several {
        Some(choices) if !choices.is_empty() => choices
            .into_iter()
            .map(|c| Out {
                finish: c.finish_reason.as_ref().map(|f| f.openai().to_string()),
                sglang_finish: c.finish_reason.as_ref().and_then(|f| serde_json::to_value(f).ok()),
                text: c.text,
                output_ids: c.output_ids,
                logprobs: c.logprobs,
            })
            .collect(),
        _ => vec![Out {
            text: r.text.clone().unwrap_or_default(),
            output_ids: r.output_ids.clone().unwrap_or_default().into_iter().map(|t| t as u32).collect(),
            finish: r.finish_reason.clone(),
            sglang_finish: None,
            logprobs: r.logprobs.clone().and_then(|v| serde_json::from_value(v).ok()),
        }],
    }
}

/// The response body a server would have returned for the line's `url`.
fn body(r: &ExportRow) -> Value {
    let meta = r.meta_info.clone().unwrap_or(Value::Null);
    let endpoint = r.url.as_deref().and_then(Endpoint::from_path).unwrap_or(Endpoint::Generate);
    let request = r.body.as_ref();
    let model = request.and_then(|b| b.get("model")).and_then(Value::as_str).unwrap_or("pdq");
    let prompt = r.prompt_tokens.unwrap_or(0);
    let completion = r.completion_tokens.unwrap_or(0);
    // Prompt tokens the rank's prefix cache held (OpenAI's `prompt_tokens_details`).
    let cached = meta.get("cached_tokens").and_then(Value::as_u64).unwrap_or(0);
    let usage = json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    });
    let created = r.created_at.timestamp();
    let outs = outs(r);
    match endpoint {
        Endpoint::Embeddings => embeddings_body(r, model, prompt, meta),
        Endpoint::Generate => {
            let with_text = request.and_then(|b| b.get("return_text_in_logprobs")).and_then(Value::as_bool);
            let mut items: Vec<Value> = outs.iter().map(|o| generate_item(o, &meta, with_text == Some(true))).collect();
            if r.choices.is_some() && items.len() > 1 {
                // SGLang answers a request with `n` > 1 with one object per choice.
                for (i, item) in items.iter_mut().enumerate() {
                    item["index"] = json!(i);
                }
                Value::Array(items)
            } else {
                items.remove(0)
            }
        }
        Endpoint::Completions => json!({
            "id": format!("cmpl-{}", r.request_id.simple()),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": outs.iter().enumerate().map(|(i, o)| json!({
                "index": i, "text": o.text, "logprobs": o.logprobs.as_deref().map(completion_logprobs),
                "finish_reason": o.finish,
            })).collect::<Vec<_>>(),
            "usage": usage,
            "meta_info": meta,
        }),
        Endpoint::ChatCompletions => json!({
            "id": format!("chatcmpl-{}", r.request_id.simple()),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": outs.iter().enumerate().map(|(i, o)| json!({
                "index": i, "message": {"role": "assistant", "content": o.text},
                "logprobs": o.logprobs.as_deref().map(chat_logprobs), "finish_reason": o.finish,
            })).collect::<Vec<_>>(),
            "usage": usage,
            "meta_info": meta,
        }),
        Endpoint::Responses => {
            // pdq does not count the tokens a request adds to the prefix cache: `cache_write_tokens`
            // (required by OpenAI's types) is 0.
            let usage = json!({
                "input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            });
            response_object(r, &outs[0], model, created, usage, meta)
        }
    }
}

/// OpenAI's embeddings answer: a list of vectors, as numbers or, when the request asked for
/// `encoding_format: base64`, as the base64 of their little-endian f32 bytes (which is what
/// OpenAI's clients ask for and decode).
fn embeddings_body(r: &ExportRow, model: &str, prompt: i32, meta: Value) -> Value {
    let format = EncodingFormat::of_body(r.body.as_ref());
    let vectors = match &r.embeddings {
        Some(Value::Array(vectors)) => vectors.as_slice(),
        _ => &[],
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match format {
                EncodingFormat::Float => v.clone(),
                EncodingFormat::Base64 => {
                    let floats = v.as_array().map(Vec::as_slice).unwrap_or_default();
                    // The table holds f32 values; their JSON text reads back as the same f32.
                    let bytes: Vec<u8> =
                        floats.iter().flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes()).collect();
                    Value::String(BASE64_STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        "meta_info": meta,
    })
}

/// OpenAI's Response object: one assistant message with the text. A response cut at the token
/// limit is `incomplete`, as OpenAI reports one cut at `max_output_tokens`. The request's
/// settings are echoed with OpenAI's defaults where it left them out.
fn response_object(r: &ExportRow, o: &Out, model: &str, created: i64, usage: Value, meta: Value) -> Value {
    let request = r.body.as_ref();
    let echo =
        |k: &str, default: Value| request.and_then(|b| b.get(k)).filter(|v| !v.is_null()).cloned().unwrap_or(default);
    let cut = o.finish.as_deref() == Some("length");
    let status = if cut { "incomplete" } else { "completed" };
    let hex = r.request_id.simple();
    let logprobs = o.logprobs.as_deref().map(token_logprobs).unwrap_or_default();
    json!({
        "id": format!("resp_{hex}"),
        "object": "response",
        "created_at": created,
        "completed_at": (!cut).then_some(created),
        "status": status,
        "error": null,
        "incomplete_details": cut.then(|| json!({"reason": "max_output_tokens"})),
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "model": model,
        "output": [{
            "type": "message", "id": format!("msg_{hex}"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": o.text, "annotations": [], "logprobs": logprobs}],
        }],
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "temperature": echo("temperature", json!(1.0)),
        "text": echo("text", json!({"format": {"type": "text"}})),
        "tool_choice": echo("tool_choice", json!("auto")),
        "tools": [],
        "top_logprobs": echo("top_logprobs", json!(0)),
        "top_p": echo("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": usage,
        "user": echo("user", Value::Null),
        "metadata": echo("metadata", json!({})),
        "meta_info": meta,
    })
}

/// SGLang's `/generate` answer; log-probabilities as `[logprob, token_id, text]` triples, the
/// text null unless `return_text_in_logprobs`.
fn generate_item(o: &Out, meta: &Value, with_text: bool) -> Value {
    let mut meta = meta.clone();
    if let (Some(m), Some(f)) = (meta.as_object_mut(), &o.sglang_finish) {
        m.insert("finish_reason".into(), f.clone());
        m.insert("completion_tokens".into(), json!(o.output_ids.len()));
    }
    if let (Some(m), Some(lps)) = (meta.as_object_mut(), &o.logprobs) {
        let text = |t: &str| if with_text { json!(t) } else { Value::Null };
        let tokens: Vec<Value> = lps.iter().map(|l| json!([l.logprob, l.id, text(&l.token)])).collect();
        let top: Vec<Value> = lps
            .iter()
            .map(|l| Value::Array(l.top.iter().map(|t| json!([t.logprob, t.id, text(&t.token)])).collect()))
            .collect();
        m.insert("output_token_logprobs".into(), Value::Array(tokens));
        m.insert("output_top_logprobs".into(), Value::Array(top));
    }
    json!({"text": o.text, "output_ids": o.output_ids, "meta_info": meta})
}

/// OpenAI's legacy completions shape. `text_offset` counts characters into the completion, as
/// vLLM does without `echo`; a position without alternatives (`logprobs: 0`) has `null`.
fn completion_logprobs(lps: &[TokenLogprob]) -> Value {
    let mut offset = 0;
    let mut text_offset = Vec::with_capacity(lps.len());
    for l in lps {
        text_offset.push(offset);
        offset += l.token.chars().count();
    }
    let top: Vec<Value> = lps
        .iter()
        .map(|l| {
            if l.top.is_empty() {
                return Value::Null;
            }
            // Distinct ids can decode to one string; the most likely keeps the key.
            let mut m = serde_json::Map::new();
            for t in &l.top {
                m.entry(t.token.clone()).or_insert(json!(t.logprob));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// OpenAI's chat shape.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    json!({"content": token_logprobs(lps), "refusal": null})
}

/// Each token with its UTF-8 bytes and alternatives, as chat and Responses both give them.
fn token_logprobs(lps: &[TokenLogprob]) -> Vec<Value> {
    let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    lps.iter()
        .map(|l| {
            let mut e = entry(&l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|t| entry(&t.token, t.logprob)).collect();
            e
        })
        .collect()
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
            meta_info: Some(json!({"dp_rank": 1, "cached_tokens": 2})),
            error: (status != "completed").then(|| json!({"code": "invalid_request", "message": "bad"})),
            prompt_tokens: Some(3),
            completion_tokens: Some(2),
            finish_reason: Some("length".into()),
            created_at: chrono::Utc::now(),
            logprobs: None,
            choices: None,
            embeddings: None,
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
        assert_eq!(out[1]["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(out[1]["response"]["body"]["choices"][0]["message"]["content"], "hi");
        assert_eq!(out[1]["error"], Value::Null);
        let err: Vec<Value> =
            export_lines(&rows, ExportKind::Errors).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0]["response"], Value::Null);
        assert_eq!(err[0]["error"]["code"], "invalid_request");
    }

    fn lp(id: u32, token: &str, logprob: f32, top: &[(u32, &str, f32)]) -> TokenLogprob {
        let top = top.iter().map(|&(id, t, l)| pdq_protocol::TopLogprob { id, token: t.into(), logprob: l }).collect();
        TokenLogprob { id, token: token.into(), logprob, top }
    }

    fn body_of(r: &ExportRow) -> Value {
        let line: Value = serde_json::from_str(&export_line(r)).unwrap();
        line["response"]["body"].clone()
    }

    #[test]
    fn logprobs_in_openai_and_sglang_shapes() {
        let lps = vec![
            lp(5, "h\u{e9}", -0.5, &[(5, "h\u{e9}", -0.5), (9, "x", -1.5)]),
            lp(6, "i", -0.25, &[(6, "i", -0.25), (2, "y", -2.0)]),
        ];
        let mut r = row("/v1/completions", "completed");
        r.logprobs = Some(serde_json::to_value(&lps).unwrap());
        let b = body_of(&r);
        let l = &b["choices"][0]["logprobs"];
        assert_eq!(l["tokens"], json!(["h\u{e9}", "i"]));
        assert_eq!(l["token_logprobs"], json!([-0.5, -0.25]));
        assert_eq!(l["top_logprobs"][0], json!({"h\u{e9}": -0.5, "x": -1.5}));
        assert_eq!(l["text_offset"], json!([0, 2]), "characters, not bytes");
        r.url = Some("/v1/chat/completions".into());
        let c = &body_of(&r)["choices"][0]["logprobs"]["content"];
        assert_eq!(c[0]["token"], "h\u{e9}");
        assert_eq!(c[0]["bytes"], json!([104, 195, 169]));
        assert_eq!(c[1]["top_logprobs"][1], json!({"token": "y", "logprob": -2.0, "bytes": [121]}));
        r.url = Some("/generate".into());
        let m = &body_of(&r)["meta_info"];
        assert_eq!(m["output_token_logprobs"], json!([[-0.5, 5, null], [-0.25, 6, null]]));
        assert_eq!(m["output_top_logprobs"][1], json!([[-0.25, 6, null], [-2.0, 2, null]]));
        r.body = Some(json!({"return_text_in_logprobs": true}));
        assert_eq!(body_of(&r)["meta_info"]["output_token_logprobs"][0], json!([-0.5, 5, "h\u{e9}"]));
        r.url = Some("/v1/completions".into());
        r.logprobs = None;
        assert_eq!(body_of(&r)["choices"][0]["logprobs"], Value::Null);
    }

    #[test]
    fn a_response_object_as_openais_sdk_reads_it() {
        let mut r = row("/v1/responses", "completed");
        r.body = Some(json!({"model": "tiny", "input": "x", "instructions": "Be brief.", "max_output_tokens": 2,
            "text": {"format": {"type": "json_object"}}}));
        let b = body_of(&r);
        let hex = r.request_id.simple();
        assert_eq!((b["id"].clone(), b["object"].clone()), (json!(format!("resp_{hex}")), json!("response")));
        assert_eq!((b["status"].clone(), b["completed_at"].clone()), (json!("incomplete"), Value::Null));
        assert_eq!(b["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(
            b["output"],
            json!([{"type": "message", "id": format!("msg_{hex}"), "status": "incomplete", "role": "assistant",
                    "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]}])
        );
        assert_eq!(
            b["usage"],
            json!({"input_tokens": 3, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0}, "output_tokens": 2,
                   "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5})
        );
        assert_eq!((b["model"].clone(), b["instructions"].clone()), (json!("tiny"), json!("Be brief.")));
        assert_eq!((b["max_output_tokens"].clone(), b["temperature"].clone()), (json!(2), json!(1.0)));
        assert_eq!(b["text"], json!({"format": {"type": "json_object"}}));
        // The fields the SDK's `Response` requires.
        assert_eq!(
            (b["tools"].clone(), b["tool_choice"].clone(), b["parallel_tool_calls"].clone()),
            (json!([]), json!("auto"), json!(true))
        );
        assert!(b["created_at"].is_i64() && b["error"].is_null());

        r.finish_reason = Some("stop".into());
        r.logprobs = Some(serde_json::to_value(vec![lp(5, "h", -0.5, &[(5, "h", -0.5), (9, "x", -1.5)])]).unwrap());
        let b = body_of(&r);
        assert_eq!((b["status"].clone(), b["incomplete_details"].clone()), (json!("completed"), Value::Null));
        assert_eq!(b["completed_at"], b["created_at"]);
        assert_eq!(b["output"][0]["status"], "completed");
        let l = &b["output"][0]["content"][0]["logprobs"];
        assert_eq!(
            l,
            &json!([{"token": "h", "logprob": -0.5, "bytes": [104], "top_logprobs": [
                {"token": "h", "logprob": -0.5, "bytes": [104]}, {"token": "x", "logprob": -1.5, "bytes": [120]}]}])
        );
    }

    #[test]
    fn every_choice_with_its_index() {
        let choice = |i: u32, text: &str| Choice {
            index: i,
            text: text.into(),
            output_ids: vec![i + 1; i as usize + 1],
            finish_reason: Some(pdq_protocol::FinishReason::Length { length: i + 1 }),
            logprobs: None,
        };
        let mut r = row("/v1/completions", "completed");
        r.choices = Some(serde_json::to_value(vec![choice(0, "a"), choice(1, "b")]).unwrap());
        r.completion_tokens = Some(3);
        let b = body_of(&r);
        assert_eq!(b["choices"][1], json!({"index": 1, "text": "b", "logprobs": null, "finish_reason": "length"}));
        assert_eq!(b["usage"]["completion_tokens"], 3);
        r.url = Some("/v1/chat/completions".into());
        assert_eq!(body_of(&r)["choices"][1]["message"]["content"], "b");
        r.url = Some("/generate".into());
        let g = body_of(&r);
        assert_eq!(g.as_array().unwrap().len(), 2);
        assert_eq!((g[1]["text"].clone(), g[1]["index"].clone()), (json!("b"), json!(1)));
        assert_eq!(g[1]["meta_info"]["finish_reason"], json!({"type": "length", "length": 2}));
        assert_eq!(g[1]["meta_info"]["completion_tokens"], 2);
    }
}
