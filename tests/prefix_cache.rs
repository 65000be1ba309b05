//! CONTRACT §14 end to end: requests that share a system prompt find it in their rank's prefix
//! cache, colocated and disaggregated; `meta_info.cached_tokens` and `results.cached_tokens` say
//! how many prompt tokens were not computed, and the answers are those of a cluster without
//! the cache.

mod common;

use std::collections::HashMap;

use common::Harness;
use pdq_producer::Policy;
use pdq_protocol::ClusterShape;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Chat requests sharing a long system prompt, each with its own question.
fn shared_system_batch() -> Vec<Value> {
    let system = "You answer questions about the river port of Lyon. Be brief, be exact, name the quay, \
                  and never guess opening hours; say when you do not know.";
    (0..8)
        .map(|i| {
            json!({"custom_id": format!("q-{i}"), "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "system", "content": system},
                                      {"role": "user", "content": format!("Question {i}: where is quay {i}?")}],
                         "max_tokens": 6, "temperature": 0}})
        })
        .collect()
}

/// Per `custom_id`: output ids, `meta_info.cached_tokens`, `results.cached_tokens`, prompt tokens.
async fn run(h: &Harness) -> HashMap<String, (Vec<i32>, i64, Option<i32>, i64)> {
    let job = h.submit(&shared_system_batch(), Policy::Shared).await;
    assert_eq!(h.wait(job).await.completed, 8);
    let rows: Vec<(String, Vec<i32>, Value, Option<i32>)> = sqlx::query_as(
        "SELECT custom_id, output_ids, meta_info, cached_tokens FROM results WHERE job_id = $1 AND status = 'completed'",
    )
    .bind(job)
    .fetch_all(h.store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, ids, meta, column)| {
            let m = |k: &str| meta[k].as_i64().unwrap_or_else(|| panic!("{id}: meta_info.{k}"));
            (id.clone(), (ids, m("cached_tokens"), column, m("prompt_tokens")))
        })
        .collect()
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_shared_system_prompt_is_computed_once_per_rank(pool: PgPool) {
    let off = Harness::start_with(pool.clone(), ClusterShape::colocated(1), |c| c.prefix_cache = false).await;
    let want = run(&off).await;
    off.finish().await;
    assert!(want.values().all(|r| r.1 == 0 && r.2 == Some(0)), "no cache, nothing cached: {want:?}");
    for shape in [ClusterShape::colocated(1), ClusterShape::disagg(1, 1)] {
        let h = Harness::start(pool.clone(), shape).await;
        let got = run(&h).await;
        h.finish().await;
        for (id, (ids, cached, column, prompt)) in &got {
            assert_eq!(ids, &want[id].0, "{shape:?} {id}: the cache changed the answer");
            assert_eq!(Some(*cached as i32), *column, "{id}: the column says what meta_info says");
            assert!(
                cached % 16 == 0 && cached < prompt,
                "{id}: whole blocks, never the last token ({cached} of {prompt})"
            );
        }
        // The requests queue together, so all but the first find the shared blocks.
        let hits = got.values().filter(|r| r.1 >= 32).count();
        assert!(hits >= 7, "{shape:?}: {hits} of 8 requests hit: {got:?}");
    }
}
