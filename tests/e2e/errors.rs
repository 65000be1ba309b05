//! CONTRACT §7: every bad input ends as exactly one failed row with the right code, and the
//! job still adds up (`total = completed + failed + cancelled`).

use crate::common;

use common::{generate_line, Harness};
use pdq_producer::{Policy, ProducerError};
use pdq_protocol::ClusterShape;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn every_bad_line_is_a_failed_row_naming_the_field(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(2, 3)).await;
    let long_prompt = "word ".repeat(900);
    let lines = [
        "this is not json".to_string(),
        json!({"custom_id": "no-prompt", "url": "/v1/completions", "body": {"max_tokens": 4}}).to_string(),
        json!({"custom_id": "bad-url", "url": "/v1/moderations", "body": {"input": "x"}}).to_string(),
        json!({"custom_id": "bad-type", "url": "/v1/completions", "body": {"prompt": "x", "temperature": "hot"}})
            .to_string(),
        json!({"custom_id": "zero-max", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 0}})
            .to_string(),
        generate_line("routed-range", json!({"routed_dp_rank": 3})).to_string(),
        generate_line("routed-prefill-range", json!({"routed_dp_rank": 2})).to_string(),
        generate_line("prefill-range", json!({"disagg_prefill_dp_rank": 2})).to_string(),
        json!({"custom_id": "bad-header", "url": "/generate", "body": {"text": "x"},
               "headers": {"X-Data-Parallel-Rank": "abc"}})
        .to_string(),
        json!({"custom_id": "too-long", "url": "/v1/completions",
               "body": {"prompt": long_prompt, "max_tokens": 500}})
        .to_string(),
        json!({"custom_id": "huge-max", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 1_000_000_000_000u64}})
            .to_string(),
        // 10 MB: refused for its size before the tokenizer sees it.
        json!({"custom_id": "huge-prompt", "url": "/generate", "body": {"text": "word ".repeat(2_000_000)}}).to_string(),
        json!({"custom_id": "best-of", "url": "/v1/completions", "body": {"prompt": "x", "best_of": 2}}).to_string(),
        json!({"custom_id": "typo", "url": "/v1/chat/completions",
               "body": {"messages": [{"role": "user", "content": "x"}], "temprature": 0}})
        .to_string(),
        json!({"custom_id": "stream", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 2, "stream": true}})
            .to_string(),
        json!({"custom_id": "ok", "url": "/v1/completions", "body": {"prompt": "fine", "max_tokens": 2}}).to_string(),
    ];
    let job = h.submit_text(&lines.join("\n"), Policy::Shared).await.unwrap();
    let row = h.wait(job).await;
    assert_eq!((row.total, row.completed, row.failed, row.cancelled), (16, 2, 14, 0));
    assert_eq!(row.status, "completed");
    let results = h.results(job).await;
    let by = |cid: Option<&str>| results.iter().find(|r| r.custom_id.as_deref() == cid).expect("row");
    let expect = |cid: Option<&str>, code: &str, needle: &str| {
        let r = by(cid);
        assert_eq!((r.status.as_str(), r.code()), ("failed", code), "{cid:?}: {:?}", r.error);
        assert!(r.message().contains(needle), "{cid:?}: '{}' should contain '{needle}'", r.message());
    };
    expect(None, "invalid_json", "line 1");
    expect(Some("no-prompt"), "invalid_request", "`prompt`");
    expect(Some("bad-url"), "invalid_request", "`url`");
    expect(Some("bad-type"), "invalid_request", "`temperature`");
    expect(Some("zero-max"), "invalid_request", "`max_tokens` must be >= 1, got 0");
    expect(Some("routed-range"), "invalid_request", "routed_dp_rank=3 out of range [0, 3)");
    expect(Some("routed-prefill-range"), "invalid_request", "routed_dp_rank=2 out of range [0, 2)");
    expect(Some("prefill-range"), "invalid_request", "disagg_prefill_dp_rank=2 out of range [0, 2)");
    expect(Some("bad-header"), "invalid_request", "Invalid X-Data-Parallel-Rank header: must be an integer, got 'abc'");
    expect(Some("too-long"), "context_length_exceeded", "context length");
    expect(Some("huge-max"), "context_length_exceeded", "`max_tokens` (1000000000000)");
    expect(Some("huge-prompt"), "invalid_request", "`text` is 10000000 bytes, over this cluster's limit of 1048576");
    expect(Some("best-of"), "invalid_request", "`best_of` is not supported by pdq");
    expect(Some("typo"), "invalid_request", "`temprature` is not a parameter of /v1/chat/completions");
    assert_eq!(by(Some("ok")).status, "completed");
    let stream = by(Some("stream"));
    assert_eq!(stream.status, "completed");
    assert_eq!(stream.warnings(), vec![pdq_protocol::unsupported::STREAM_WARNING.to_string()]);
    // Nothing out of range reached a queue.
    let t = &h.broker.topology;
    assert_eq!(h.broker.queue_depth(&t.prefill_any_queue()).await.unwrap(), 0);
    assert_eq!(h.broker.queue_depth(&t.dead()).await.unwrap(), 0);
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_duplicate_custom_id_rejects_the_whole_job(pool: PgPool) {
    let h = Harness::idle(pool, ClusterShape::disagg(1, 1)).await;
    let text = [generate_line("a", json!({})), generate_line("b", json!({})), generate_line("a", json!({}))]
        .map(|l| l.to_string())
        .join("\n");
    match h.submit_text(&text, Policy::Shared).await {
        Err(ProducerError::Rejected(e)) => {
            assert_eq!(e.code(), "duplicate_custom_id");
            assert!(e.to_string().contains("line 3") && e.to_string().contains("line 1"), "{e}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(h.store.pool()).await.unwrap();
    assert_eq!(jobs, 0, "nothing recorded");
    assert_eq!(h.broker.queue_depth(&h.broker.topology.prefill_any_queue()).await.unwrap(), 0, "nothing enqueued");
    h.finish().await;
}
