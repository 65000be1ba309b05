//! CONTRACT §15: `pdq api --webhook-url --webhook-secret`. A receiver served in the test checks
//! each event's Standard Webhooks signature by computing it here (hmac, sha2, base64: nothing
//! of pdq's), and the official `openai` package verifies one with its own code.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as Answer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use pdq_api::{ApiConfig, WebhookConfig};
use pdq_protocol::ClusterShape;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::{completion, lines, registered_idle, Api};
use crate::common::Harness;

/// As OpenAI's secrets are: 32 bytes, base64.
const SECRET: &str = "whsec_c2VjcmV0LWtleS1vZi10aGlydHktdHdvLWJ5dGVzISE=";
const WAIT: Duration = Duration::from_secs(60);

/// One POST the receiver got.
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

impl Delivery {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
    }

    /// Checks the signature as a Standard Webhooks receiver does, and returns the event.
    fn verified(&self) -> Value {
        let (id, timestamp) = (self.header("webhook-id"), self.header("webhook-timestamp"));
        let key = STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        let signatures = self.header("webhook-signature");
        assert!(signatures.split(' ').any(|s| s == expected), "{signatures} is not {expected}");
        let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
        assert!((-5..300).contains(&age), "signed {age} s ago: receivers refuse it past 5 minutes");
        assert_eq!(self.header("content-type"), "application/json");
        let event: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(event["id"], id, "the webhook-id is the event's id");
        event
    }
}

/// An HTTP server that answers each POST with the next of `answers`, then 200, and hands
/// what it got to the test.
struct Receiver {
    url: String,
    answers: Arc<Mutex<VecDeque<Answer>>>,
    got: mpsc::UnboundedReceiver<Delivery>,
    server: tokio::task::JoinHandle<()>,
}

type Shared = (Arc<Mutex<VecDeque<Answer>>>, mpsc::UnboundedSender<Delivery>);

impl Receiver {
    async fn start(answers: &[Answer]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let answers = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
        let (tx, got) = mpsc::unbounded_channel();
        let app = axum::Router::new()
            .route(
                "/hooks",
                axum::routing::post(
                    |State((answers, tx)): State<Shared>, headers: HeaderMap, body: Bytes| async move {
                        tx.send(Delivery { headers, body }).ok();
                        answers.lock().unwrap().pop_front().unwrap_or(Answer::OK)
                    },
                ),
            )
            .with_state((answers.clone(), tx));
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, answers, got, server }
    }

    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(WAIT, self.got.recv()).await.expect("a webhook in time").unwrap()
    }

    /// The next `n` events, verified, by batch id.
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..n {
            events.push(self.next().await.verified());
        }
        events.sort_by_key(|e| e["data"]["id"].as_str().unwrap().to_string());
        events
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The intervals shortened, so retries take a fraction of a second.
fn config(url: &str) -> ApiConfig {
    let webhook = WebhookConfig {
        poll: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        first_retry: Duration::from_millis(100),
        max_retry: Duration::from_millis(400),
        ..WebhookConfig::new(url, SECRET).unwrap()
    };
    ApiConfig { webhook: Some(webhook), ..ApiConfig::default() }
}

/// OpenAI's event, exactly: nothing more, nothing less.
fn assert_event(event: &Value, kind: &str, batch: &Value) {
    let keys: Vec<&str> = event.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, ["created_at", "data", "id", "object", "type"], "{event}");
    assert!(event["id"].as_str().unwrap().starts_with("evt_"), "{event}");
    assert_eq!((&event["object"], &event["type"]), (&json!("event"), &json!(kind)), "{event}");
    assert_eq!(event["data"], json!({"id": batch["id"]}), "{event}");
    let ended = batch[format!("{}_at", kind.trim_start_matches("batch."))].as_i64().unwrap();
    assert_eq!(event["created_at"].as_i64(), Some(ended), "the batch's end: {event} {batch}");
}

/// The event's row once its delivery is recorded: (attempts, last_error).
async fn delivered(pool: &PgPool, batch: &Value) -> (i32, Option<String>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT attempts, last_error FROM webhook_events WHERE job_id = $1::uuid AND delivered_at IS NOT NULL",
        )
        .bind(batch["id"].as_str().unwrap())
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(row) = row {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never recorded as delivered", batch["id"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cancelled_batch(api: &Api, n: usize) -> Value {
    let (_, file) = api.upload(&lines(&(0..n).map(|i| completion(&format!("c{i}"))).collect::<Vec<_>>())).await;
    let batch = api.create(&file["id"], "/v1/completions").await;
    let (status, batch) = api.post(&format!("/batches/{}/cancel", batch["id"].as_str().unwrap()), json!({})).await;
    assert_eq!((status, &batch["status"]), (StatusCode::OK, &json!("cancelled")), "{batch}");
    batch
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn every_way_a_batch_ends_sends_one_signed_event(pool: PgPool) {
    let mut receiver = Receiver::start(&[]).await;
    // Idle first, so batches are still running when they are cancelled or expire.
    let mut h = registered_idle(pool.clone()).await;
    let api = Api::start(&h, config(&receiver.url)).await;
    let cancelled = cancelled_batch(&api, 3).await;
    assert_event(&receiver.next().await.verified(), "batch.cancelled", &cancelled);
    assert_eq!(delivered(&pool, &cancelled).await, (1, None));

    // Refused at validation: a failed batch without a job.
    let (_, file) = api.upload(&lines(&[completion("a"), completion("a")])).await;
    let failed = api.create(&file["id"], "/v1/completions").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_event(&receiver.next().await.verified(), "batch.failed", &failed);

    // Past its window: the namespace's feeder expires it.
    let (_, file) = api.upload(&lines(&[completion("e")])).await;
    let expiring = api.create(&file["id"], "/v1/completions").await;
    sqlx::query("UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(expiring["id"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let expired = api.wait(&expiring["id"]).await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_event(&receiver.next().await.verified(), "batch.expired", &expired);

    h.start_cluster().await;
    let (_, file) = api.upload(&lines(&[completion("a"), completion("b")])).await;
    let batch = api.create(&file["id"], "/v1/completions").await;
    let completed = api.wait(&batch["id"]).await;
    assert_eq!(completed["status"], "completed", "{completed}");
    assert_event(&receiver.next().await.verified(), "batch.completed", &completed);
    assert_eq!(delivered(&pool, &completed).await, (1, None));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events").fetch_one(&pool).await.unwrap();
    assert_eq!(events, 4, "one event per batch");
    assert!(receiver.got.try_recv().is_err(), "nothing sent twice");
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_try(pool: PgPool) {
    let mut receiver = Receiver::start(&[Answer::INTERNAL_SERVER_ERROR, Answer::INTERNAL_SERVER_ERROR]).await;
    let h = registered_idle(pool.clone()).await;
    let api = Api::start(&h, config(&receiver.url)).await;
    let batch = cancelled_batch(&api, 2).await;
    let tries = [receiver.next().await, receiver.next().await, receiver.next().await];
    let events: Vec<Value> = tries.iter().map(Delivery::verified).collect();
    assert_event(&events[2], "batch.cancelled", &batch);
    assert!(events.iter().all(|e| *e == events[0]), "the same event, the same id, each time");
    // The last failure stays beside the delivery, for whoever asks why it took three.
    let (attempts, error) = delivered(&pool, &batch).await;
    assert_eq!((attempts, error.as_deref()), (3, Some("the receiver answered 500 Internal Server Error")));
    api.stop().await;
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn events_outlive_the_api_that_recorded_them(pool: PgPool) {
    // Refuses everything until the second API runs.
    let mut receiver = Receiver::start(&[Answer::SERVICE_UNAVAILABLE; 1000]).await;
    let h = registered_idle(pool.clone()).await;
    let first = Api::start(&h, config(&receiver.url)).await;
    let sent = cancelled_batch(&first, 2).await;
    receiver.next().await.verified();
    let (_, file) = first.upload(&lines(&[completion("late")])).await;
    let running = first.create(&file["id"], "/v1/completions").await;
    first.stop().await;

    // With no API running, the second batch ends.
    h.store.cancel_batch(running["id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    receiver.answers.lock().unwrap().clear();
    while receiver.got.try_recv().is_ok() {}
    let second = Api::start(&h, config(&receiver.url)).await;
    let (_, ended_while_down) = second.get(&format!("/batches/{}", running["id"].as_str().unwrap())).await;
    let events = receiver.events(2).await;
    let mut expected = [(sent, "batch.cancelled"), (ended_while_down, "batch.cancelled")];
    expected.sort_by_key(|(b, _)| b["id"].as_str().unwrap().to_string());
    for (event, (batch, kind)) in events.iter().zip(&expected) {
        assert_event(event, kind, batch);
    }
    assert!(delivered(&pool, &expected[0].0).await.0 >= 1);
    assert!(delivered(&pool, &expected[1].0).await.0 >= 1);
    second.stop().await;
    h.finish().await;
}

/// The official `openai` package, installed once under the target directory (from PyPI), on
/// `PYTHONPATH`; `None` after printing `SKIPPED: why` where it cannot be had.
async fn openai_package() -> Option<std::path::PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target directory").to_path_buf()
    });
    let site = target.join("pyopenai");
    let imports = |site: &std::path::Path| {
        tokio::process::Command::new("python3")
            .args(["-c", "import openai.types.webhooks"])
            .env("PYTHONPATH", site)
            .output()
    };
    if imports(&site).await.is_ok_and(|o| o.status.success()) {
        return Some(site);
    }
    let install = tokio::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
        .arg(&site)
        .arg("openai")
        .output();
    let why = match tokio::time::timeout(Duration::from_secs(600), install).await {
        Ok(Ok(o)) if o.status.success() && imports(&site).await.is_ok_and(|o| o.status.success()) => return Some(site),
        Ok(Ok(o)) => format!("pip install openai failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Ok(Err(e)) => format!("cannot run python3: {e}"),
        Err(_) => "pip install openai took over 10 minutes".to_string(),
    };
    println!("SKIPPED: the openai package is not to be had here: {why}");
    None
}

/// `scripts/openai-sdk.py` runs a batch with the official client and checks its
/// `batch.completed` event with `client.webhooks.unwrap`, OpenAI's own verifier.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn the_openai_package_verifies_a_batch_completed_event(pool: PgPool) {
    let Some(site) = openai_package().await else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let h = Harness::start(pool, ClusterShape::disagg(1, 1)).await;
    let api = Api::start(&h, config(&format!("http://127.0.0.1:{port}/"))).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openai-sdk.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&api.base)
        .args(["--webhook-port", &port.to_string()])
        .env("PYTHONPATH", &site)
        .env("PDQ_WEBHOOK_SECRET", SECRET)
        .env_remove("PDQ_API_KEY")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the script ends").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openai-sdk.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("(batch.completed) verified by client.webhooks.unwrap"), "{stdout}");
    println!("{}", stdout.trim());
    api.stop().await;
    h.finish().await;
}
