//! CONTRACT §11: a scrape of `/metrics` after a batch parses with a Prometheus text parser and
//! counts that batch. Its own test binary, since the registry is per process.

mod common;

use common::{generate_line, Harness};
use pdq_producer::Policy;
use pdq_protocol::ClusterShape;
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use sqlx::PgPool;

fn sum(samples: &[Sample], metric: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric && filter.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            // A histogram's count is its +Inf bucket.
            Value::Histogram(buckets) => buckets.iter().find(|b| b.less_than.is_infinite()).map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_scrape_counts_the_batch(pool: PgPool) {
    let addr = pdq_api::serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let ready = || async move {
        let resp = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    // `/ready` (a readiness probe): not before the ranks consume, not once they drain.
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    let h = Harness::start(pool, ClusterShape::disagg(1, 2)).await;
    assert_eq!(ready().await, (200, "ready: 3 ranks\n".to_string()));
    let n = 20;
    let lines: Vec<_> = (0..n)
        .map(|i| generate_line(&format!("m{i}"), json!({"sampling_params": {"max_new_tokens": 4, "ignore_eos": true}})))
        .collect();
    h.run(&lines, Policy::RoundRobin).await;

    let resp = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format");
    let s = &scrape.samples;

    // The harness's feeder published the batch and holds the namespace's lease.
    let ns = [("namespace", h.ns.as_str())];
    assert_eq!(sum(s, "pdq_feeder_published_total", &ns), n as f64);
    assert_eq!(sum(s, "pdq_feeder_lease_held", &ns), 1.0);
    assert_eq!(sum(s, "pdq_jobs_expired_total", &ns), 0.0);

    let completed = [("role", "decode"), ("status", "completed")];
    assert_eq!(sum(s, "pdq_requests_total", &completed), n as f64);
    assert_eq!(sum(s, "pdq_generation_tokens_total", &[("role", "decode")]), (n * 4) as f64);
    assert!(sum(s, "pdq_prompt_tokens_total", &[("role", "decode")]) >= n as f64);
    for histogram in ["pdq_time_to_first_token_seconds", "pdq_e2e_request_latency_seconds", "pdq_kv_transfer_seconds"] {
        assert_eq!(sum(s, histogram, &[("role", "decode")]), n as f64, "{histogram}");
    }
    // Gauges for every rank, idle now that the batch is done.
    for (role, rank) in [("prefill", "0"), ("decode", "0"), ("decode", "1")] {
        let labels = [("role", role), ("rank", rank)];
        assert!(
            s.iter()
                .any(|x| x.metric == "pdq_kv_cache_usage_ratio"
                    && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v))),
            "{role} {rank}"
        );
        assert_eq!(sum(s, "pdq_requests_running", &labels), 0.0);
    }
    assert_eq!(sum(s, "pdq_broker_reconnects_total", &[]), 0.0);
    assert!(scrape.docs.contains_key("pdq_broker_reconnects_total"));
    h.finish().await;
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");
    for rank in ["prefill-0", "decode-0", "decode-1"] {
        assert!(body.contains(rank), "names the ranks not ready: {body}");
    }
}
