//! The pipeline's guarantees: disaggregation does not change answers; direct queue producers get
//! rows; a message delivered twice is written once; a lost KV is prefilled again and then fails
//! as `kv_lost`; a handle that contradicts the request's prefill pin is refused; cancel accounts for
//! every line.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{generate_line, Harness, ResultRow};
use pdq_broker::{MessageMeta, Outgoing};
use pdq_producer::Policy;
use pdq_protocol::{ClusterShape, Topology};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Greedy and seeded-sampling requests over every surface.
fn mixed_batch() -> Vec<Value> {
    let mut lines = Vec::new();
    for i in 0..12 {
        let prompt = ["The cat sat", "Once upon a time", "Rivers run to the sea because"][i % 3];
        lines.push(json!({"custom_id": format!("greedy-{i}"), "url": "/v1/completions",
            "body": {"prompt": prompt, "max_tokens": 6 + i, "temperature": 0, "routed_dp_rank": i % 2}}));
        lines.push(json!({"custom_id": format!("seeded-{i}"), "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0.9,
                     "top_p": 0.9, "top_k": 50, "seed": 1000 + i}}));
        lines.push(json!({"custom_id": format!("gen-{i}"), "url": "/generate",
            "body": {"text": prompt, "sampling_params": {"max_new_tokens": 5, "temperature": 1.2, "seed": i}}}));
    }
    lines
}

fn ids(r: &HashMap<String, ResultRow>) -> HashMap<String, Vec<i32>> {
    r.iter().map(|(k, v)| (k.clone(), v.output_ids.clone().unwrap_or_default())).collect()
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn disaggregation_does_not_change_answers(pool: PgPool) {
    let colocated = Harness::start(pool.clone(), ClusterShape::colocated(2)).await;
    let a = colocated.run(&mixed_batch(), Policy::RoundRobin).await;
    colocated.finish().await;
    let disagg = Harness::start(pool, ClusterShape::disagg(2, 2)).await;
    let b = disagg.run(&mixed_batch(), Policy::Shared).await;
    disagg.finish().await;
    assert!(a.values().chain(b.values()).all(|r| r.status == "completed"));
    assert_eq!(ids(&a), ids(&b), "same output_ids colocated and disaggregated");
    let texts =
        |r: &HashMap<String, ResultRow>| r.iter().map(|(k, v)| (k.clone(), v.text.clone())).collect::<HashMap<_, _>>();
    assert_eq!(texts(&a), texts(&b));
    assert!(a.values().all(|r| r.meta_info.as_ref().unwrap()["kv_bytes"] == 0), "colocated moves no KV");
    assert!(b.values().any(|r| r.output_ids.as_ref().unwrap().len() > 1), "real tokens were generated");
}

/// Prefill and decode on one host share KVs through a shared-memory directory: the same answers
/// as over TCP, and every KV file gone once its request is answered.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn the_shared_memory_data_plane_gives_the_same_answers(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("pdq-shm-{}", Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    let tcp = Harness::start(pool.clone(), ClusterShape::disagg(2, 2)).await;
    let a = tcp.run(&mixed_batch(), Policy::Shared).await;
    tcp.finish().await;
    let shm_dir = dir.clone();
    let shm =
        Harness::start_with(pool, ClusterShape::disagg(2, 2), move |c| c.data_plane.shm_dir = Some(shm_dir)).await;
    let b = shm.run(&mixed_batch(), Policy::Shared).await;
    shm.finish().await;
    assert!(a.values().chain(b.values()).all(|r| r.status == "completed"));
    assert_eq!(ids(&a), ids(&b), "same output_ids over shared memory and TCP");
    assert!(b.values().all(|r| r.meta_info.as_ref().unwrap()["kv_bytes"].as_u64().unwrap() > 0));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no KV file outlives its request");
    std::fs::remove_dir(&dir).unwrap();
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn direct_queue_producer_gets_rows(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(2, 2)).await;
    let publisher = h.broker.publisher();
    let line = generate_line("direct-1", json!({}));
    let meta = MessageMeta { rank_header: Some(json!("1")), ..Default::default() };
    let msg = |body: Vec<u8>, key: &str, meta: MessageMeta| Outgoing {
        exchange: h.broker.topology.prefill_exchange(),
        key: key.to_string(),
        body,
        meta,
    };
    publisher.publish(&msg(line.to_string().into_bytes(), "any", meta)).await.unwrap();
    // Pinned to prefill rank 1 but published to rank 0's queue: forwarded, not run there.
    let pinned = generate_line("direct-2", json!({"disagg_prefill_dp_rank": 1, "routed_dp_rank": 0}));
    publisher.publish(&msg(pinned.to_string().into_bytes(), "0", MessageMeta::default())).await.unwrap();
    publisher.publish(&msg(b"{not json".to_vec(), "any", MessageMeta::default())).await.unwrap();
    // A routing key naming a rank outside the cluster matches no queue: recorded, not dropped.
    let stray = generate_line("direct-3", json!({}));
    publisher.publish(&msg(stray.to_string().into_bytes(), "7", MessageMeta::default())).await.unwrap();
    h.wait_count("SELECT count(*) FROM results WHERE job_id IS NULL", 4).await;
    let rows: Vec<ResultRow> = sqlx::query_as(
        "SELECT request_id, job_id, custom_id, status, text, output_ids, meta_info, error, dp_rank, prefill_dp_rank,
                finish_reason FROM results ORDER BY custom_id",
    )
    .fetch_all(h.store.pool())
    .await
    .unwrap();
    let by_id: HashMap<_, _> = rows.iter().map(|r| (r.custom_id.clone(), r)).collect();
    let d1 = by_id[&Some("direct-1".to_string())];
    assert_eq!(
        (d1.status.as_str(), d1.dp_rank),
        ("completed", Some(1)),
        "AMQP header x-data-parallel-rank pins decode"
    );
    let d2 = by_id[&Some("direct-2".to_string())];
    assert_eq!((d2.prefill_dp_rank, d2.dp_rank), (Some(1), Some(0)));
    let bad = by_id[&None];
    assert_eq!((bad.status.as_str(), bad.code()), ("failed", "invalid_json"));
    let stray = by_id[&Some("direct-3".to_string())];
    assert_eq!((stray.status.as_str(), stray.code()), ("failed", "invalid_request"));
    assert!(stray.message().contains("'7' names no prefill queue"), "{}", stray.message());
    let requests: i64 = sqlx::query_scalar("SELECT count(*) FROM requests WHERE job_id IS NULL")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(requests, 4, "one request row per direct message, forwarded or not");
    // The unparseable message is also in the dead-letter queue (rejected just after its row commits).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.broker.queue_depth(&h.broker.topology.dead()).await.unwrap() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the unparseable message never reached the dead-letter queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.broker.queue_depth(&h.broker.topology.dead()).await.unwrap(), 1);
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_message_delivered_twice_is_written_once(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(1, 1)).await;
    let job = h.submit(&[generate_line("once", json!({}))], Policy::Shared).await;
    h.wait(job).await;
    let request_id: Uuid =
        sqlx::query_scalar("SELECT id FROM requests WHERE custom_id = 'once'").fetch_one(h.store.pool()).await.unwrap();
    // Replay the same message, as the broker would after a lost ack.
    let publisher = h.broker.publisher();
    let meta = MessageMeta { request_id: Some(request_id), job_id: Some(job), ..Default::default() };
    let body = generate_line("once", json!({})).to_string().into_bytes();
    publisher
        .publish(&Outgoing { exchange: h.broker.topology.prefill_exchange(), key: "any".into(), body, meta })
        .await
        .unwrap();
    h.wait_queue_drained(&h.broker.topology.prefill_any_queue()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job_row = h.store.job(job).await.unwrap();
    assert_eq!((job_row.total, job_row.completed), (1, 1), "counters unchanged by the redelivery");
    assert_eq!(h.results(job).await.len(), 1);
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn lost_kv_is_prefilled_again_then_fails_kv_lost(pool: PgPool) {
    // A KV that expires at once is lost for every attempt.
    let h = Harness::start_with(pool, ClusterShape::disagg(1, 1), |cfg| cfg.kv_ttl = Duration::ZERO).await;
    let job = h.submit(&[generate_line("lost", json!({}))], Policy::Shared).await;
    let job_row = h.wait(job).await;
    assert_eq!(job_row.failed, 1);
    let r = &h.results(job).await[0];
    assert_eq!(r.code(), "kv_lost", "{:?}", r.error);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM requests WHERE custom_id = 'lost'")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 3, "prefilled again up to the bound");
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_handle_contradicting_the_prefill_pin_is_refused(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(2, 1)).await;
    // Forge what a confused prefill rank 0 would publish for a request pinned to prefill rank 1.
    let line = generate_line("mismatch", json!({"disagg_prefill_dp_rank": 1}));
    let text = line.to_string();
    let parsed = pdq_protocol::InputLine::parse(&pdq_protocol::RawLine { line_no: 1, text: &text }).unwrap();
    let request = pdq_protocol::validate(&parsed, None, &h.shape).unwrap();
    let request_id = Uuid::now_v7();
    h.store
        .insert_request(&pdq_store::NewRequest {
            id: request_id,
            job_id: None,
            line_no: None,
            custom_id: Some("mismatch".into()),
            url: Some("/generate".into()),
            body: line["body"].clone(),
            routed_dp_rank: None,
            disagg_prefill_dp_rank: Some(1),
            outbound: None,
        })
        .await
        .unwrap();
    let handle = pdq_protocol::KvHandle {
        request_id,
        job_id: None,
        request: (&request).into(),
        line,
        attempt: 1,
        decode_rank: None,
        prefill_dp_rank: 0,
        endpoint: "127.0.0.1:1".into(),
        kv_id: Uuid::new_v4(),
        kv_bytes: 0,
        prompt_tokens: 3,
        cached_tokens: 0,
        first_token: 1,
        firsts: Vec::new(),
        seed: 0,
        enqueued_at_ms: 0,
        published_at_ms: 0,
        timings: Default::default(),
        warnings: vec![],
        shm_host: None,
    };
    let publisher = h.broker.publisher();
    publisher
        .publish(&Outgoing {
            exchange: h.broker.topology.kv_exchange(),
            key: Topology::kv_key(0, None),
            body: serde_json::to_vec(&handle).unwrap(),
            meta: MessageMeta::default(),
        })
        .await
        .unwrap();
    h.wait_count("SELECT count(*) FROM results", 1).await;
    let (status, code): (String, String) =
        sqlx::query_as("SELECT status, error->>'code' FROM results").fetch_one(h.store.pool()).await.unwrap();
    assert_eq!((status.as_str(), code.as_str()), ("failed", "prefill_rank_mismatch"));
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn cancel_accounts_for_every_line(pool: PgPool) {
    // No workers yet: the requests wait in their queues.
    let mut h = Harness::idle(pool, ClusterShape::disagg(1, 1)).await;
    let lines: Vec<_> = (0..10).map(|i| generate_line(&format!("c{i}"), json!({}))).collect();
    let job = h.submit(&lines, Policy::Shared).await;
    let row = h.store.cancel_job(job).await.unwrap();
    assert_eq!((row.status.as_str(), row.cancelled, row.total), ("cancelled", 10, 10));
    assert!(h.store.cancel_job(job).await.is_err(), "a finished job cannot be cancelled again");
    // Workers that now pick the messages up find the rows and skip them.
    h.start_cluster().await;
    h.wait_queue_drained(&h.broker.topology.prefill_any_queue()).await;
    // Give the workers time to act on what they took (they must only ack it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = h.store.job(job).await.unwrap();
    assert_eq!((row.completed, row.cancelled), (0, 10));
    assert!(h.results(job).await.iter().all(|r| r.status == "cancelled" && r.code() == "cancelled"));
    h.finish().await;
}
