//! CONTRACT §14 end to end: requests that share a system prompt find it in their rank's prefix
//! cache, colocated and disaggregated; `meta_info.cached_tokens` and `results.cached_tokens` say
//! how many prompt tokens were not computed, and the answers are those of a cluster without
//! the cache.

use crate::common;

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

/// `--policy prefix`: two groups of requests, each sharing its own system prompt, interleaved
/// in the file, on two colocated ranks. Each group is served where its prefix hashes, so each
/// rank computes one system prompt instead of both (as through the shared queue).
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn prefix_dispatch_keeps_a_prefix_on_one_rank(pool: PgPool) {
    use pdq_protocol::{ChatMessage, Prompt};
    let system = |topic: &str| {
        format!(
            "You answer questions about {topic}. Be brief, be exact, name the place, and never guess \
             opening hours; say when you do not know. Answer in one sentence, in plain words, with no \
             lists, no greetings and no apologies, and stop as soon as the question is answered."
        )
    };
    let key = |s: &str| {
        pdq_producer::prefix_key(&Prompt::Chat(vec![ChatMessage { role: "system".into(), content: s.into() }]))
    };
    // Two topics whose prefixes hash to different ranks first: then neither spills.
    let topics: Vec<String> = (1..=32).map(|n| format!("district {n} of Lyon")).collect();
    let first = |t: &str| pdq_producer::rendezvous_order(key(&system(t)), 2)[0];
    let a = topics[0].as_str();
    let b = topics.iter().find(|t| first(t) != first(a)).expect("a topic that hashes to the other rank").as_str();
    // More lines than one rank prefetches, so the shared queue hands both ranks both prompts.
    let lines: Vec<Value> = (0..160)
        .map(|i| {
            // Pairs (a a b b ...), not alternating lines: the broker deals the shared queue out
            // to two ranks alternately, which would sort alternating groups by itself.
            let (group, topic) = if (i / 2) % 2 == 0 { ("a", a) } else { ("b", b) };
            json!({"custom_id": format!("{group}-{i}"), "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "system", "content": system(topic)},
                                      {"role": "user", "content": format!("Question {i}?")}],
                         "max_tokens": 2, "temperature": 0}})
        })
        .collect();
    let cached_share = |got: &HashMap<String, common::ResultRow>| {
        let sum = |k: &str| -> i64 { got.values().map(|r| r.meta_info.as_ref().unwrap()[k].as_i64().unwrap()).sum() };
        (sum("cached_tokens"), sum("prompt_tokens"))
    };
    // Today's shared queue on the same batch, for the comparison printed below.
    let h = Harness::start(pool.clone(), ClusterShape::colocated(2)).await;
    let shared = h.run(&lines, Policy::Shared).await;
    let (shared_cached, _) = cached_share(&shared);
    let mut spread = std::collections::BTreeMap::new();
    for (id, r) in &shared {
        *spread.entry((id.chars().next().unwrap(), r.dp_rank.unwrap())).or_insert(0) += 1;
    }
    eprintln!("shared queue: (group, rank) -> requests {spread:?}");
    h.finish().await;
    let h = Harness::start(pool.clone(), ClusterShape::colocated(2)).await;
    let got = h.run(&lines, Policy::Prefix).await;
    h.finish().await;
    for (group, topic) in [("a", a), ("b", b)] {
        let ranks: std::collections::HashSet<i32> =
            got.iter().filter(|(id, _)| id.starts_with(group)).map(|(_, r)| r.dp_rank.unwrap()).collect();
        assert_eq!(ranks, [first(topic) as i32].into(), "group {group} served on its prefix's rank");
    }
    let (cached, prompt) = cached_share(&got);
    eprintln!("prompt tokens cached of {prompt}: {cached} with --policy prefix, {shared_cached} with the shared queue");
    assert!(cached > shared_cached, "each system prompt computed on one rank, not on both");
    assert!(cached * 10 >= prompt * 6, "most prompt tokens come from the cache ({cached} of {prompt})");
}

/// KV memory by need on a decode rank (`--kv-by-need`): disaggregated, with every rank's pool
/// 12 blocks (too small to reserve more than three of these generations whole), the decode
/// rank reserves each prompt alone, grows sequences as they decode, preempts and recomputes
/// them when short, and every answer is the one a roomy cluster without by-need gives.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_decode_rank_by_need_preempts_and_keeps_every_answer(pool: PgPool) {
    let lines: Vec<Value> = (0..24)
        .map(|i| {
            let body = json!({"text": format!("by need {i}: tell me about quay {i}"),
                "sampling_params": {"max_new_tokens": 48, "temperature": 0.7, "seed": i, "ignore_eos": true}});
            common::generate_line(&format!("n{i}"), body)
        })
        .collect();
    let roomy = Harness::start_with(pool.clone(), ClusterShape::disagg(1, 1), |c| c.kv_by_need = false).await;
    let want = roomy.run(&lines, Policy::Shared).await;
    roomy.finish().await;
    // One tiny-model block: 16 tokens x 2 layers x (K + V) x 2 heads x 16 dims x 4 bytes.
    let tight = Harness::start_with(pool.clone(), ClusterShape::disagg(1, 1), |c| {
        c.kv_by_need = true;
        c.kv_pool_bytes = 12 * 16 * 2 * 2 * 2 * 16 * 4;
    })
    .await;
    let got = tight.run(&lines, Policy::Shared).await;
    tight.finish().await;
    for (id, r) in &want {
        assert_eq!(r.status, "completed", "{id}");
        assert_eq!(got[id].status, "completed", "{id}: {:?}", got[id].error);
        assert_eq!(got[id].output_ids, r.output_ids, "{id}: by need changed the answer");
    }
    // No other test in this binary runs by need, so the decode role's preemptions are this test's.
    let addr = pdq_api::serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let preempted: f64 = text
        .lines()
        .filter(|l| l.starts_with("pdq_preemptions_total{") && l.contains("role=\"decode\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("decode by need: {preempted} preemptions over {} requests", lines.len());
    assert!(preempted > 0.0, "12 blocks were tight enough to preempt");
}
