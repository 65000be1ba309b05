//! CONTRACT §10: the OpenAI Batch API, driven by a real HTTP client (`reqwest`) against
//! `pdq api` served in-process on a free port, over a real cluster, broker and database.

mod webhooks;

use crate::common;

use std::time::Duration;

use common::Harness;
use pdq_api::{ApiConfig, ApiState};

use pdq_protocol::ClusterShape;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::oneshot;

const BATCH_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
    key: Option<String>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Api {
    pub(crate) async fn start(h: &Harness, config: ApiConfig) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let key = config.api_key.clone();
        let state = ApiState::new(h.store.clone(), &h.ns, config);
        let server = tokio::spawn(pdq_api::serve(listener, state, async {
            stopped.await.ok();
        }));
        Api { base, http: reqwest::Client::new(), key, stop, server }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn send(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = r.send().await.expect("the server answers");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        Api::send(self.req(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Api::send(self.req(reqwest::Method::POST, path).json(&body)).await
    }

    pub(crate) async fn text(&self, path: &str) -> String {
        let resp = self.req(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.text().await.unwrap()
    }

    pub(crate) async fn upload(&self, text: &str) -> (StatusCode, Value) {
        let form = Form::new()
            .text("purpose", "batch")
            .part("file", Part::bytes(text.as_bytes().to_vec()).file_name("input.jsonl"));
        Api::send(self.req(reqwest::Method::POST, "/files").multipart(form)).await
    }

    pub(crate) async fn create(&self, file_id: &Value, endpoint: &str) -> Value {
        let body = json!({"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h",
                          "metadata": {"project": "api-test"}});
        let (status, batch) = self.post("/batches", body).await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        batch
    }

    /// Polls the batch as a client would, until it ends.
    pub(crate) async fn wait(&self, id: &Value) -> Value {
        let path = format!("/batches/{}", id.as_str().unwrap());
        let deadline = tokio::time::Instant::now() + BATCH_TIMEOUT;
        loop {
            let (status, batch) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            if ["completed", "failed", "cancelled", "expired"].contains(&batch["status"].as_str().unwrap()) {
                return batch;
            }
            assert!(tokio::time::Instant::now() < deadline, "batch still {} after {BATCH_TIMEOUT:?}", batch["status"]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn stop(self) {
        self.stop.send(()).ok();
        self.server.await.unwrap().expect("server ran");
    }
}

/// A 1x1 cluster that the API sees registered (a prefill rank's row, so batches are accepted)
/// but that consumes nothing.
async fn registered_idle(pool: PgPool) -> Harness {
    let h = Harness::idle(pool, ClusterShape::disagg(1, 1)).await;
    sqlx::query(
        "INSERT INTO workers (namespace, role, dp_rank, prefill_dp, decode_dp, mode, host, pid, model)
         VALUES ($1, 'prefill', 0, 1, 1, 'disagg', 'test', 0, 'tiny')",
    )
    .bind(&h.ns)
    .execute(h.store.pool())
    .await
    .unwrap();
    h
}

pub(crate) fn lines(values: &[Value]) -> String {
    values.iter().map(|v| v.to_string() + "\n").collect()
}

fn completion(id: &str) -> Value {
    json!({"custom_id": id, "method": "POST", "url": "/v1/completions",
           "body": {"model": "tiny", "prompt": "Hello there", "max_tokens": 4, "temperature": 0, "ignore_eos": true}})
}

pub(crate) fn parse_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// The assertion helper for OpenAI error objects: status, `type` and `code`.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: Option<&str>) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let expected_type = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
    assert_eq!(e["type"], expected_type, "{body}");
    assert_eq!(e["code"].as_str(), code, "{body}");
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_batch_runs_from_upload_to_output_and_error_files(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(1, 2)).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    let input = lines(&[
        completion("a"),
        json!({"custom_id": "zero", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 0}}),
        json!({"custom_id": "other-url", "method": "POST", "url": "/generate", "body": {"text": "x"}}),
        completion("b"),
    ]);
    let (status, file) = api.upload(&input).await;
    assert_eq!(status, StatusCode::OK, "{file}");
    assert_eq!((file["object"].as_str(), file["purpose"].as_str()), (Some("file"), Some("batch")));
    assert_eq!((file["bytes"].as_u64(), file["filename"].as_str()), (Some(input.len() as u64), Some("input.jsonl")));
    let file_path = format!("/files/{}", file["id"].as_str().unwrap());
    assert_eq!(api.get(&file_path).await, (StatusCode::OK, file.clone()));
    assert_eq!(api.text(&format!("{file_path}/content")).await, input);

    let batch = api.create(&file["id"], "/v1/completions").await;
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["input_file_id"], file["id"]);
    assert_eq!(batch["metadata"], json!({"project": "api-test"}));
    assert_eq!(batch["expires_at"].as_i64().unwrap() - batch["created_at"].as_i64().unwrap(), 24 * 3600);
    let batch = api.wait(&batch["id"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"], json!({"total": 4, "completed": 2, "failed": 2}));
    assert!(batch["completed_at"].is_i64() && batch["in_progress_at"].is_i64(), "{batch}");
    // `model` is what the requests named; `usage` sums the job's result rows, as OpenAI's does.
    assert_eq!(batch["model"], "tiny");
    let (prompt, cached, completion): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(prompt_tokens), 0), COALESCE(sum(cached_tokens), 0), COALESCE(sum(completion_tokens), 0)
           FROM results WHERE job_id = $1::uuid",
    )
    .bind(batch["id"].as_str().unwrap())
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(completion, 8, "two completed requests of 4 tokens");
    assert!(prompt > 0);
    let usage = json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                       "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": prompt + completion});
    assert_eq!(batch["usage"], usage, "{batch}");
    // The batch is a pdq job like any other.
    let job = h.store.job(batch["id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    assert_eq!((job.status.as_str(), job.total, job.completed), ("completed", 4, 2));

    let output_path = format!("/files/{}/content", batch["output_file_id"].as_str().expect("an output file"));
    let output = parse_lines(&api.text(&output_path).await);
    let ids: Vec<_> = output.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"], "input order");
    for l in &output {
        assert_eq!(l["response"]["status_code"], 200);
        assert_eq!(l["response"]["body"]["object"], "text_completion");
        assert_eq!(l["response"]["body"]["usage"]["completion_tokens"], 4);
        assert_eq!(l["error"], Value::Null);
    }
    let errors = parse_lines(&api.text(&format!("/files/{}/content", batch["error_file_id"].as_str().unwrap())).await);
    let by_id =
        |id: &str| errors.iter().find(|l| l["custom_id"] == id).unwrap_or_else(|| panic!("{id} in the error file"));
    assert_eq!(errors.len(), 2);
    assert_eq!(by_id("zero")["error"]["code"], "invalid_request");
    assert_eq!(
        by_id("other-url")["error"]["message"],
        "`url` '/generate' differs from the batch's endpoint '/v1/completions'"
    );
    // A generated file's object counts the bytes its content has.
    let (status, out_file) = api.get(&format!("/files/{}", batch["output_file_id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out_file["bytes"].as_u64(), Some(api.text(&output_path).await.len() as u64));
    assert_eq!(out_file["purpose"], "batch_output");
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn files_and_batches_are_listed_in_pages(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(1, 1)).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    let mut file_ids = Vec::new();
    for i in 0..3 {
        let (status, file) = api.upload(&lines(&[completion(&format!("q{i}"))])).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        file_ids.push(file["id"].clone());
    }
    let (_, page) = api.get("/files?limit=2").await;
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    assert_eq!((&page["first_id"], &page["last_id"]), (&file_ids[2], &file_ids[1]), "newest first");
    let (_, rest) = api.get(&format!("/files?limit=2&after={}", page["last_id"].as_str().unwrap())).await;
    assert_eq!((rest["data"].as_array().unwrap().len(), &rest["has_more"]), (1, &json!(false)));
    assert_eq!(rest["data"][0]["id"], file_ids[0]);

    let mut batch_ids = Vec::new();
    for f in &file_ids {
        let batch = api.create(f, "/v1/completions").await;
        batch_ids.push(batch["id"].clone());
    }
    for id in &batch_ids {
        assert_eq!(api.wait(id).await["status"], "completed");
    }
    let (_, page) = api.get("/batches?limit=2").await;
    let ids: Vec<_> = page["data"].as_array().unwrap().iter().map(|b| b["id"].clone()).collect();
    assert_eq!(ids, [batch_ids[2].clone(), batch_ids[1].clone()]);
    assert_eq!((&page["has_more"], &page["last_id"]), (&json!(true), &batch_ids[1]));
    let (_, rest) = api.get(&format!("/batches?limit=2&after={}", batch_ids[1].as_str().unwrap())).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!((&rest["has_more"], &rest["first_id"]), (&json!(false), &batch_ids[0]));
    assert_error(&api.get("/batches?limit=0").await, StatusCode::BAD_REQUEST, None);

    // Deleting a file: gone from retrieval and from the list.
    let path = format!("/files/{}", file_ids[0].as_str().unwrap());
    let (status, deleted) = Api::send(api.req(reqwest::Method::DELETE, &path)).await;
    assert_eq!((status, deleted), (StatusCode::OK, json!({"id": file_ids[0], "object": "file", "deleted": true})));
    assert_error(&api.get(&path).await, StatusCode::NOT_FOUND, None);
    let (_, all) = api.get("/files").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_cancelled_batch_accounts_for_every_line(pool: PgPool) {
    // A registered cluster that consumes nothing yet, so the requests wait in their queues.
    let mut h = registered_idle(pool).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    let (_, file) = api.upload(&lines(&(0..5).map(|i| completion(&format!("c{i}"))).collect::<Vec<_>>())).await;
    let batch = api.create(&file["id"], "/v1/completions").await;
    assert_eq!(batch["status"], "in_progress");
    let id = batch["id"].as_str().unwrap();
    let (status, cancelled) = api.post(&format!("/batches/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["cancelling_at"].is_i64() && cancelled["cancelled_at"].is_i64(), "{cancelled}");
    assert_eq!(cancelled["request_counts"], json!({"total": 5, "completed": 0, "failed": 5}));
    assert_eq!(cancelled["output_file_id"], Value::Null);
    let errors =
        parse_lines(&api.text(&format!("/files/{}/content", cancelled["error_file_id"].as_str().unwrap())).await);
    assert_eq!(errors.len(), 5);
    assert!(errors.iter().all(|l| l["error"]["code"] == "cancelled"), "{errors:?}");
    // Cancelling again is a conflict, as at OpenAI.
    assert_error(&api.post(&format!("/batches/{id}/cancel"), json!({})).await, StatusCode::CONFLICT, None);
    // Workers that now pick the messages up find the rows and skip them.
    h.start_cluster().await;
    h.wait_queue_drained(&h.broker.topology.prefill_any_queue()).await;
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn every_request_needs_the_key_when_one_is_set(pool: PgPool) {
    let h = Harness::idle(pool, ClusterShape::disagg(1, 1)).await;
    let api = Api::start(&h, ApiConfig { api_key: Some("sk-right".into()), ..ApiConfig::default() }).await;
    let url = format!("{}/files", api.base);
    let none = Api::send(api.http.get(&url)).await;
    assert_error(&none, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
    let wrong = Api::send(api.http.get(&url).bearer_auth("sk-wrong")).await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
    let longer = Api::send(api.http.get(&url).bearer_auth("sk-right-and-more")).await;
    assert_error(&longer, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
    // Unknown routes are refused before they are found: nothing is learnt without the key.
    let probe = Api::send(api.http.get(format!("{}/nothing-here", api.base))).await;
    assert_error(&probe, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
    let (status, list) = api.get("/files").await;
    assert_eq!((status, &list["object"]), (StatusCode::OK, &json!("list")));
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn bad_uploads_and_requests_are_openai_errors_and_store_nothing(pool: PgPool) {
    let h = Harness::idle(pool, ClusterShape::disagg(1, 1)).await;
    let config = ApiConfig { max_file_bytes: 4096, max_file_lines: 3, ..ApiConfig::default() };
    let api = Api::start(&h, config).await;
    let files_url = format!("{}/files", api.base);

    let garbage = api
        .http
        .post(&files_url)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nno closing boundary");
    assert_error(&Api::send(garbage).await, StatusCode::BAD_REQUEST, None);
    let not_multipart = api.http.post(&files_url).json(&json!({"purpose": "batch"}));
    assert_error(&Api::send(not_multipart).await, StatusCode::BAD_REQUEST, None);
    let no_purpose = Form::new().part("file", Part::bytes(b"{}\n".to_vec()).file_name("a.jsonl"));
    let got = Api::send(api.http.post(&files_url).multipart(no_purpose)).await;
    assert_error(&got, StatusCode::BAD_REQUEST, None);
    assert_eq!(got.1["error"]["param"], "purpose");
    let wrong_purpose = Form::new().text("purpose", "fine-tune").part("file", Part::bytes(b"{}\n".to_vec()));
    assert_error(&Api::send(api.http.post(&files_url).multipart(wrong_purpose)).await, StatusCode::BAD_REQUEST, None);

    // Over the size limit: refused while it streams in, with OpenAI's status for it.
    let big = "x".repeat(5000);
    assert_error(&api.upload(&big).await, StatusCode::PAYLOAD_TOO_LARGE, Some("file_too_large"));
    // Over the line limit, with or without a final newline.
    assert_error(&api.upload("{}\n{}\n{}\n{}\n").await, StatusCode::BAD_REQUEST, Some("too_many_lines"));
    assert_error(&api.upload("{}\n{}\n{}\n{}").await, StatusCode::BAD_REQUEST, Some("too_many_lines"));
    let (status, ok) = api.upload("{}\n{}\n{}\n").await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    let (_, all) = api.get("/files").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1, "refused uploads left nothing behind");
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM file_chunks").fetch_one(h.store.pool()).await.unwrap();
    assert_eq!(chunks, 1);

    // Batch creation: each field is checked and named.
    for (body, param) in [
        (json!({"input_file_id": ok["id"], "endpoint": "/v1/moderations", "completion_window": "24h"}), "endpoint"),
        (
            json!({"input_file_id": ok["id"], "endpoint": "/v1/completions", "completion_window": "1d"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": "file-nope", "endpoint": "/v1/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
        (
            json!({"input_file_id": ok["id"], "endpoint": "/v1/completions", "completion_window": "24h",
                   "metadata": {"k": 1}}),
            "metadata",
        ),
    ] {
        let got = api.post("/batches", body).await;
        assert_error(&got, StatusCode::BAD_REQUEST, None);
        assert_eq!(got.1["error"]["param"], param, "{}", got.1);
    }
    assert_error(&api.post("/batches", json!({"endpoint": "/v1/completions"})).await, StatusCode::BAD_REQUEST, None);
    // A file that is not there, a batch that is not there, a route that is not there.
    let missing = format!("file-{}", uuid::Uuid::now_v7().simple());
    let body = json!({"input_file_id": missing, "endpoint": "/v1/completions", "completion_window": "24h"});
    assert_error(&api.post("/batches", body).await, StatusCode::NOT_FOUND, None);
    assert_error(&api.get(&format!("/batches/{}", uuid::Uuid::now_v7())).await, StatusCode::NOT_FOUND, None);
    assert_error(&api.get("/nothing-here").await, StatusCode::NOT_FOUND, Some("unknown_url"));
    let put = Api::send(api.req(reqwest::Method::PUT, "/batches")).await;
    assert_error(&put, StatusCode::METHOD_NOT_ALLOWED, None);
    let long_purpose = Form::new().text("purpose", "b".repeat(2000)).part("file", Part::bytes(b"{}\n".to_vec()));
    assert_error(&Api::send(api.http.post(&files_url).multipart(long_purpose)).await, StatusCode::BAD_REQUEST, None);
    // No live workers: the batch cannot be validated against a cluster's shape.
    let body = json!({"input_file_id": ok["id"], "endpoint": "/v1/completions", "completion_window": "24h"});
    assert_error(&api.post("/batches", body).await, StatusCode::SERVICE_UNAVAILABLE, Some("no_cluster"));
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_duplicate_custom_id_is_a_failed_batch_with_errors(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(1, 1)).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    let (_, file) = api.upload(&lines(&[completion("a"), completion("b"), completion("a")])).await;
    let batch = api.create(&file["id"], "/v1/completions").await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].is_i64());
    let e = &batch["errors"]["data"][0];
    assert_eq!((e["code"].as_str(), e["line"].as_u64()), (Some("duplicate_custom_id"), Some(3)));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(h.store.pool()).await.unwrap();
    assert_eq!(jobs, 0, "nothing recorded or enqueued");
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_batch_past_its_window_expires(pool: PgPool) {
    // A registered cluster that consumes nothing, so the requests are still waiting when the
    // window passes.
    let h = registered_idle(pool).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    let (_, file) = api.upload(&lines(&[completion("e0"), completion("e1")])).await;
    let body = json!({"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "1h"});
    let (status, batch) = api.post("/batches", body).await;
    assert_eq!((status, &batch["status"]), (StatusCode::OK, &json!("in_progress")), "{batch}");
    assert_eq!(batch["expires_at"].as_i64().unwrap() - batch["created_at"].as_i64().unwrap(), 3600);
    // The hour passes; the namespace's feeder expires the job within a second.
    sqlx::query("UPDATE jobs SET expires_at = now() - interval '1 second'").execute(h.store.pool()).await.unwrap();
    let batch = api.wait(&batch["id"]).await;
    assert_eq!(batch["status"], "expired", "{batch}");
    assert!(batch["expired_at"].is_i64() && batch["cancelled_at"].is_null(), "{batch}");
    assert_eq!(batch["request_counts"], json!({"total": 2, "completed": 0, "failed": 2}));
    let errors = parse_lines(&api.text(&format!("/files/{}/content", batch["error_file_id"].as_str().unwrap())).await);
    assert_eq!(errors.iter().map(|l| l["error"]["code"].as_str().unwrap()).collect::<Vec<_>>(), ["batch_expired"; 2]);
    // The job ended `expired`, with a row for every request, so `pdq status` and SQL add up.
    let job = h.store.job(batch["id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    assert_eq!((job.status.as_str(), job.cancelled, job.total), ("expired", 2, 2));
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn the_default_upload_limit_is_openais_200_mb(pool: PgPool) {
    let h = Harness::idle(pool, ClusterShape::disagg(1, 1)).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    assert_eq!(pdq_api::DEFAULT_MAX_FILE_BYTES, 200 << 20);
    // One byte over, generated as it is sent: one long line, so only the size limit applies.
    let total = pdq_api::DEFAULT_MAX_FILE_BYTES + 1;
    let pieces = (0..=(total >> 20)).map(move |i| {
        let len = if i == total >> 20 { (total % (1 << 20)) as usize } else { 1 << 20 };
        Ok::<_, std::io::Error>(vec![b'x'; len])
    });
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let form =
        Form::new().text("purpose", "batch").part("file", Part::stream_with_length(body, total).file_name("big.jsonl"));
    let started = std::time::Instant::now();
    let got = Api::send(api.req(reqwest::Method::POST, "/files").multipart(form)).await;
    assert_error(&got, StatusCode::PAYLOAD_TOO_LARGE, Some("file_too_large"));
    eprintln!("200 MB + 1 refused in {:?}", started.elapsed());
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM file_chunks").fetch_one(h.store.pool()).await.unwrap();
    assert_eq!(chunks, 0, "the refused upload was rolled back");
    api.stop().await;
    h.finish().await;
}

/// CONTRACT §15: an upload's `expires_after` and a batch's `output_expires_after`. Past its
/// expiry a file reads as not found (retrieve, content, list, delete), the sweeper deletes an
/// upload with its bytes, and a batch's expired output leaves its results rows in place. The
/// shortest policy OpenAI allows is an hour, so the test moves the clock by moving the
/// recorded times back.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn expired_files_are_gone_and_their_bytes_deleted(pool: PgPool) {
    let h = Harness::start(pool.clone(), ClusterShape::colocated(1)).await;
    let api = Api::start(&h, ApiConfig::default()).await;
    let input = lines(&[completion("a"), completion("b")]);
    let upload = |anchor: &'static str, seconds: &'static str| {
        let form = Form::new()
            .text("purpose", "batch")
            .text("expires_after[anchor]", anchor)
            .text("expires_after[seconds]", seconds)
            .part("file", Part::bytes(input.as_bytes().to_vec()).file_name("input.jsonl"));
        Api::send(api.req(reqwest::Method::POST, "/files").multipart(form))
    };
    for (anchor, seconds) in [("created_at", "59"), ("last_active_at", "3600"), ("created_at", "soon")] {
        assert_error(&upload(anchor, seconds).await, StatusCode::BAD_REQUEST, None);
    }
    let (status, file) = upload("created_at", "3600").await;
    assert_eq!(status, StatusCode::OK, "{file}");
    assert_eq!(file["expires_at"].as_i64().unwrap() - file["created_at"].as_i64().unwrap(), 3600);
    let (_, never) = api.upload(&input).await;
    assert_eq!(never["expires_at"], Value::Null);

    let body = json!({"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h",
                      "output_expires_after": {"anchor": "created_at", "seconds": 7200}});
    let (status, batch) = api.post("/batches", body).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let batch = api.wait(&batch["id"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let output_path = format!("/files/{}", batch["output_file_id"].as_str().unwrap());
    let (status, output) = api.get(&output_path).await;
    assert_eq!(status, StatusCode::OK, "{output}");
    assert_eq!(output["expires_at"].as_i64().unwrap() - output["created_at"].as_i64().unwrap(), 7200);

    // An hour and a bit later, for the upload; two hours and a bit after the batch ended.
    let upload_id: uuid::Uuid = file["id"].as_str().unwrap().trim_start_matches("file-").parse().unwrap();
    let batch_id: uuid::Uuid = batch["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(upload_id)
        .execute(&pool)
        .await
        .unwrap();
    let file_path = format!("/files/{}", file["id"].as_str().unwrap());
    assert_error(&api.get(&file_path).await, StatusCode::NOT_FOUND, None);
    let resp = api.req(reqwest::Method::GET, &format!("{file_path}/content")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (_, listed) = api.get("/files").await;
    assert!(listed["data"].as_array().unwrap().iter().all(|f| f["id"] != file["id"]), "{listed}");
    assert_eq!(h.store.sweep_expired_files().await.unwrap(), 1, "the sweeper deletes it");
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM file_chunks WHERE file_id = $1")
        .bind(upload_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(chunks, 0, "its bytes are gone");
    assert_eq!(api.get(&format!("/files/{}", never["id"].as_str().unwrap())).await.0, StatusCode::OK);

    sqlx::query("UPDATE jobs SET finished_at = finished_at - interval '2 hours 1 second' WHERE id = $1")
        .bind(batch_id)
        .execute(&pool)
        .await
        .unwrap();
    assert_error(&api.get(&output_path).await, StatusCode::NOT_FOUND, None);
    let resp = api.req(reqwest::Method::GET, &format!("{output_path}/content")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM results WHERE job_id = $1")
        .bind(batch_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "the results rows stay");
    let (status, batch) = api.get(&format!("/batches/{batch_id}")).await;
    assert_eq!((status, batch["status"].as_str()), (StatusCode::OK, Some("completed")));
    api.stop().await;
    h.finish().await;
}
