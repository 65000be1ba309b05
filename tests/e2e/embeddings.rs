//! `/v1/embeddings` lines through the real pipeline (CONTRACT §15), colocated and
//! disaggregated, in one job with a chat line: the rank that takes an embeddings request off
//! the prefill queue computes and writes it (no decode, no KV handle). The vectors are
//! transformers' (the golden `embeddings-tiny.json`), come back as numbers or base64 as asked,
//! are stored as `real[]` in the `embeddings` table, and a bad `dimensions` is refused by name;
//! a line published straight to AMQP gets the same.

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use common::Harness;
use pdq_broker::{MessageMeta, Outgoing};
use pdq_producer::{export_lines, ExportKind, Policy};
use pdq_protocol::ClusterShape;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    ids: Vec<u32>,
    /// The tiny model has no pooling metadata: its last token is pooled.
    last: Vec<f32>,
}

fn golden() -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/golden/embeddings-tiny.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::String(b64) => BASE64_STANDARD
            .decode(b64)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        v => v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
    }
}

fn lines(golden: &Golden) -> Vec<Value> {
    let ids: Vec<&Vec<u32>> = golden.cases.iter().map(|c| &c.ids).collect();
    vec![
        json!({"custom_id": "ids", "url": "/v1/embeddings", "body": {"model": "tiny", "input": ids}}),
        json!({"custom_id": "ids-b64", "url": "/v1/embeddings",
            "body": {"model": "tiny", "input": ids, "encoding_format": "base64", "dimensions": 64}}),
        json!({"custom_id": "one", "url": "/v1/embeddings", "body": {"input": ids[2], "routed_dp_rank": 1}}),
        json!({"custom_id": "text", "url": "/v1/embeddings", "body": {"input": ["hello there", "hello there"]}}),
        json!({"custom_id": "chat", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}}),
        json!({"custom_id": "bad-dims", "url": "/v1/embeddings", "body": {"input": "x", "dimensions": 8}}),
        json!({"custom_id": "bad-field", "url": "/v1/embeddings", "body": {"input": "x", "temperature": 0}}),
    ]
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn embeddings_batches_are_transformers_vectors_in_both_modes(pool: PgPool) {
    let golden = golden();
    let size = common::model().embedding_size();
    assert_eq!(size, 64, "the tiny model's hidden size (the `dimensions` line asks for it)");
    for shape in [ClusterShape::colocated(2), ClusterShape::disagg(2, 2)] {
        let h = Harness::start(pool.clone(), shape).await;
        let job = h.submit(&lines(&golden), Policy::Shared).await;
        let row = h.wait(job).await;
        assert_eq!((row.completed, row.failed), (5, 2), "{shape:?}");
        let rows = h.store.export_rows(job).await.unwrap();
        let by_id = |kind| -> HashMap<String, Value> {
            export_lines(&rows, kind)
                .iter()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .map(|v| (v["custom_id"].as_str().unwrap().to_string(), v))
                .collect()
        };
        let (out, err) = (by_id(ExportKind::Output), by_id(ExportKind::Errors));

        for id in ["ids", "ids-b64"] {
            let body = &out[id]["response"]["body"];
            assert_eq!((body["object"].as_str(), body["model"].as_str()), (Some("list"), Some("tiny")), "{id}");
            let data = body["data"].as_array().unwrap();
            assert_eq!(data.len(), golden.cases.len(), "{id}: one vector per input");
            let prompt: usize = golden.cases.iter().map(|c| c.ids.len()).sum();
            assert_eq!(body["usage"], json!({"prompt_tokens": prompt, "total_tokens": prompt}), "{id}");
            for (i, (d, case)) in data.iter().zip(&golden.cases).enumerate() {
                assert_eq!((d["object"].as_str(), d["index"].as_u64()), (Some("embedding"), Some(i as u64)));
                let v = floats(&d["embedding"]);
                assert_eq!(v.len(), size);
                let err = v.iter().zip(&case.last).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "{shape:?} {id} input {i}: max abs error {err} against transformers");
            }
            assert!(body["data"][0]["embedding"].is_string() == (id == "ids-b64"), "{id}: the format asked for");
        }
        // Numbers and base64 are the same vectors, bit for bit.
        let (a, b) = (&out["ids"]["response"]["body"]["data"], &out["ids-b64"]["response"]["body"]["data"]);
        for i in 0..golden.cases.len() {
            assert_eq!(floats(&a[i]["embedding"]), floats(&b[i]["embedding"]));
        }
        // The same text twice: the same vector twice.
        let text = &out["text"]["response"]["body"]["data"];
        assert_eq!(floats(&text[0]["embedding"]), floats(&text[1]["embedding"]));
        // The rank that ran it is both ranks of the row; a pin is honoured.
        let meta = &out["one"]["response"]["body"]["meta_info"];
        assert_eq!((meta["dp_rank"].as_u64(), meta["prefill_dp_rank"].as_u64()), (Some(1), Some(1)), "{shape:?}");
        assert_eq!(out["chat"]["response"]["body"]["object"], "chat.completion");

        let e = &err["bad-dims"]["error"];
        assert_eq!(e["code"], "invalid_request");
        assert_eq!(e["message"], "`dimensions` 8 is not supported: this model's embeddings have 64 dimensions");
        assert_eq!(err["bad-field"]["error"]["message"], "`temperature` is not a parameter of /v1/embeddings");

        // SQL sees the vectors: one row per input, each as long as the model's hidden size,
        // and the results row holds no text.
        let (n, dims, texts): (i64, Vec<i32>, i64) = sqlx::query_as(
            "SELECT count(*), array_agg(DISTINCT array_length(e.embedding, 1)), count(s.text)
             FROM embeddings e JOIN results s USING (request_id) WHERE s.job_id = $1",
        )
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((n, dims, texts), (2 * golden.cases.len() as i64 + 3, vec![size as i32], 0));
        // docs/sql.md's nearest-inputs query: "hello there" is nearest to itself (cosine 1).
        let nearest: Vec<(String, i32, f64)> = sqlx::query_as(
            "WITH q AS (SELECT e.embedding FROM embeddings e JOIN results r USING (request_id)
                        WHERE r.job_id = $1 AND r.custom_id = 'text' AND e.input_index = 0)
             SELECT r.custom_id, e.input_index,
                    (SELECT sum(a * b) FROM unnest(e.embedding, q.embedding) AS t(a, b))::float8 AS cosine
             FROM embeddings e JOIN results r USING (request_id), q
             WHERE r.job_id = $1 ORDER BY cosine DESC LIMIT 5",
        )
        .bind(job)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(nearest.len(), 5);
        assert!(nearest[..2].iter().all(|(id, _, cos)| id == "text" && (cos - 1.0).abs() < 1e-5), "{nearest:?}");
        assert!(nearest[2].2 < 1.0 - 1e-4, "another input is not the same vector: {nearest:?}");

        // A producer publishing straight to AMQP (CONTRACT §4): the same row and vectors.
        let direct = format!("direct-{:?}", shape.mode);
        let line = json!({"custom_id": direct, "url": "/v1/embeddings", "body": {"input": golden.cases[3].ids}});
        let msg = Outgoing {
            exchange: h.broker.topology.prefill_exchange(),
            key: "any".into(),
            body: line.to_string().into_bytes(),
            meta: MessageMeta::default(),
        };
        h.broker.publisher().publish(&msg).await.unwrap();
        h.wait_count(&format!("SELECT count(*) FROM results WHERE custom_id = '{direct}' AND job_id IS NULL"), 1).await;
        let (status, vector): (String, Vec<f32>) = sqlx::query_as(
            "SELECT s.status, e.embedding FROM results s JOIN embeddings e USING (request_id)
             WHERE s.custom_id = $1 AND s.job_id IS NULL",
        )
        .bind(&direct)
        .fetch_one(&pool)
        .await
        .unwrap();
        let err = vector.iter().zip(&golden.cases[3].last).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert_eq!(status, "completed");
        assert!(err < 1e-5, "{shape:?} direct: max abs error {err}");
        h.finish().await;
    }
}
