//! DP routing end to end (CONTRACT §3), including SGLang's mini-lb check: random
//! (routed_dp_rank, disagg_prefill_dp_rank) pairs on a 2-prefill x 3-decode cluster, and every
//! result served exactly where it was asked to be.

use crate::common;

use std::collections::HashSet;

use common::{generate_line, Harness, Rng};
use pdq_producer::Policy;
use pdq_protocol::{ClusterShape, DEPRECATION_WARNING};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn mini_lb_random_pairs_are_served_where_asked(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(2, 3)).await;
    let mut rng = Rng(0x5eed_1234);
    let lines: Vec<_> = (0..300)
        .map(|i| {
            let (d, p) = (rng.below(3), rng.below(2));
            generate_line(
                &format!("r{i}-{p}-{d}"),
                json!({"routed_dp_rank": d, "disagg_prefill_dp_rank": p,
                "sampling_params": {"max_new_tokens": 2, "temperature": 0}}),
            )
        })
        .collect();
    let results = h.run(&lines, Policy::Shared).await;
    assert_eq!(results.len(), 300);
    let mut pairs = HashSet::new();
    for (cid, r) in &results {
        let mut parts = cid.split('-').skip(1).map(|s| s.parse::<i32>().unwrap());
        let (p, d) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(r.status, "completed", "{cid}: {:?}", r.error);
        assert_eq!((r.prefill_dp_rank, r.dp_rank), (Some(p), Some(d)), "{cid}");
        let meta = r.meta_info.as_ref().unwrap();
        assert_eq!((meta["prefill_dp_rank"].as_i64(), meta["dp_rank"].as_i64()), (Some(p as i64), Some(d as i64)));
        assert!(meta["kv_bytes"].as_u64().unwrap() > 0, "disaggregated requests move KV");
        pairs.insert((p, d));
    }
    assert_eq!(pairs.len(), 6, "all 2x3 pairs exercised");
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn single_field_pins_and_unpinned_spread(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(2, 3)).await;
    let mut lines = Vec::new();
    for i in 0..6 {
        lines.push(generate_line(&format!("routed-{i}"), json!({"routed_dp_rank": i % 2})));
        lines.push(generate_line(&format!("prefill-{i}"), json!({"disagg_prefill_dp_rank": i % 2})));
    }
    for i in 0..12 {
        lines.push(generate_line(&format!("free-{i}"), json!({})));
    }
    let results = h.run(&lines, Policy::RoundRobin).await;
    let (mut decode_ranks, mut prefill_ranks) = (HashSet::new(), HashSet::new());
    for (cid, r) in &results {
        assert_eq!(r.status, "completed", "{cid}: {:?}", r.error);
        let i: i32 = cid.rsplit('-').next().unwrap().parse().unwrap();
        if cid.starts_with("routed") {
            // routed_dp_rank alone pins both stages to the same rank.
            assert_eq!((r.prefill_dp_rank, r.dp_rank), (Some(i % 2), Some(i % 2)), "{cid}");
        } else if cid.starts_with("prefill") {
            assert_eq!(r.prefill_dp_rank, Some(i % 2), "{cid}");
        } else {
            decode_ranks.insert(r.dp_rank.unwrap());
            prefill_ranks.insert(r.prefill_dp_rank.unwrap());
        }
    }
    assert_eq!(decode_ranks.len(), 3, "round-robin spreads unpinned requests over every decode rank");
    assert_eq!(prefill_ranks.len(), 2, "and over every prefill rank");
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn deprecated_alias_and_header_precedence(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(3, 3)).await;
    let mut header_line = generate_line("header", json!({"routed_dp_rank": 0, "data_parallel_rank": 1}));
    header_line["headers"] = json!({"X-Data-Parallel-Rank": "2"});
    let lines = vec![
        generate_line("alias", json!({"data_parallel_rank": 2})),
        generate_line("both", json!({"data_parallel_rank": 2, "routed_dp_rank": 1})),
        header_line,
        generate_line("plain", json!({"routed_dp_rank": 1})),
    ];
    let r = h.run(&lines, Policy::Shared).await;
    assert_eq!((r["alias"].dp_rank, r["alias"].prefill_dp_rank), (Some(2), Some(2)));
    assert_eq!(r["alias"].warnings(), vec![DEPRECATION_WARNING.to_string()]);
    assert_eq!(r["both"].dp_rank, Some(1), "the new field wins over the alias, without an error");
    assert_eq!(r["both"].warnings(), vec![DEPRECATION_WARNING.to_string()]);
    assert_eq!(r["header"].dp_rank, Some(2), "the header beats both body fields");
    assert!(r["plain"].warnings().is_empty());
    let recorded: Option<i32> = sqlx::query_scalar("SELECT routed_dp_rank FROM requests WHERE custom_id = 'header'")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(recorded, Some(2), "requests.routed_dp_rank records the resolved rank");
    h.finish().await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn least_loaded_and_shared_policies_complete(pool: PgPool) {
    let h = Harness::start(pool, ClusterShape::disagg(2, 2)).await;
    for policy in [Policy::LeastLoaded, Policy::Shared] {
        let lines: Vec<_> = (0..20).map(|i| generate_line(&format!("{policy:?}-{i}"), json!({}))).collect();
        let r = h.run(&lines, policy).await;
        assert!(r.values().all(|r| r.status == "completed"));
        let ranks: HashSet<_> = r.values().map(|r| r.dp_rank.unwrap()).collect();
        if policy == Policy::LeastLoaded {
            assert_eq!(ranks.len(), 2, "least-loaded from empty queues alternates ranks");
        }
    }
    h.finish().await;
}
