//! Prometheus metrics of the workers (CONTRACT §11), in the process's default registry and
//! labelled by role and rank. Outcomes are observed in the one place messages are settled (the
//! decision executor), the engine's queue and KV gauges by the engine loop, and reconnects by
//! the heartbeat. `pdq_api::serve_metrics` exposes them.

use std::sync::LazyLock;

use pdq_engine::PrefixCacheStats;
use pdq_protocol::{Outcome, ResultStatus};
use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, GaugeVec,
    HistogramVec, IntCounterVec, IntGaugeVec,
};

/// From a millisecond to ten minutes: a KV hop on loopback is well under a millisecond, a
/// request's end-to-end time in a large batch is minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
const LABELS: &[&str] = &["role", "rank"];

struct Metrics {
    requests: IntCounterVec,
    prompt_tokens: IntCounterVec,
    generation_tokens: IntCounterVec,
    reconnects: IntCounterVec,
    running: IntGaugeVec,
    waiting: IntGaugeVec,
    kv_usage: GaugeVec,
    prefix_queries: IntCounterVec,
    prefix_hits: IntCounterVec,
    prefix_evictions: IntCounterVec,
    prefix_hit_ratio: GaugeVec,
    preemptions: IntCounterVec,
    handbacks: IntCounterVec,
    reprefills: IntCounterVec,
    kv_store_entries: IntGaugeVec,
    kv_store_bytes: IntGaugeVec,
    ready: IntGaugeVec,
    ttft: HistogramVec,
    e2e: HistogramVec,
    kv_transfer: HistogramVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register_int_counter_vec!(name, help, labels).expect("a metric is registered once")
    };
    let histogram = |name: &str, help: &str| {
        register_histogram_vec!(name, help, LABELS, LATENCY_BUCKETS.to_vec()).expect("a metric is registered once")
    };
    Metrics {
        requests: counter(
            "pdq_requests_total",
            "Requests that ended here, by result status",
            &["role", "rank", "status"],
        ),
        prompt_tokens: counter("pdq_prompt_tokens_total", "Prompt tokens of completed requests", LABELS),
        generation_tokens: counter("pdq_generation_tokens_total", "Tokens generated for completed requests", LABELS),
        reconnects: counter("pdq_broker_reconnects_total", "Times the broker connection was made again", LABELS),
        running: register_int_gauge_vec!("pdq_requests_running", "Sequences the engine is generating", LABELS)
            .expect("a metric is registered once"),
        waiting: register_int_gauge_vec!(
            "pdq_requests_waiting",
            "Jobs queued in the engine: prompts to prefill and decodes waiting for KV blocks",
            LABELS
        )
        .expect("a metric is registered once"),
        kv_usage: register_gauge_vec!("pdq_kv_cache_usage_ratio", "Share of the engine's KV blocks in use", LABELS)
            .expect("a metric is registered once"),
        // As vLLM counts them: prompt tokens looked up and found (its `prefix_cache_queries` /
        // `prefix_cache_hits`); evictions in blocks.
        prefix_queries: counter(
            "pdq_prefix_cache_queries_total",
            "Prompt tokens looked up in the engine's prefix cache",
            LABELS,
        ),
        prefix_hits: counter(
            "pdq_prefix_cache_hits_total",
            "Prompt tokens found in the engine's prefix cache (not computed again)",
            LABELS,
        ),
        prefix_evictions: counter(
            "pdq_prefix_cache_evictions_total",
            "Cached KV blocks given up to make room in the engine's pool",
            LABELS,
        ),
        prefix_hit_ratio: register_gauge_vec!(
            "pdq_prefix_cache_hit_ratio",
            "Prompt tokens found in the prefix cache over prompt tokens looked up, since the engine started",
            LABELS
        )
        .expect("a metric is registered once"),
        preemptions: counter(
            "pdq_preemptions_total",
            "Running sequences whose KV blocks were freed for room, to be recomputed later",
            LABELS,
        ),
        handbacks: counter(
            "pdq_kv_handbacks_total",
            "KV handles a decoder handed back because it could not reach their prefill rank",
            LABELS,
        ),
        reprefills: counter(
            "pdq_kv_reprefills_total",
            "Requests a decoder sent back to prefill because their KV was lost or out of reach too long",
            LABELS,
        ),
        kv_store_entries: register_int_gauge_vec!(
            "pdq_kv_store_entries",
            "KVs a prefill rank holds for decoders that have not taken them yet",
            LABELS
        )
        .expect("a metric is registered once"),
        kv_store_bytes: register_int_gauge_vec!(
            "pdq_kv_store_bytes",
            "Bytes of the KVs a prefill rank holds for decoders",
            LABELS
        )
        .expect("a metric is registered once"),
        ready: register_int_gauge_vec!(
            pdq_protocol::READY_METRIC,
            "1 while the rank takes work (consuming, not draining, not broken), else 0",
            LABELS
        )
        .expect("a metric is registered once"),
        ttft: histogram("pdq_time_to_first_token_seconds", "From enqueue to the first token (queue time plus prefill)"),
        e2e: histogram("pdq_e2e_request_latency_seconds", "From enqueue to the result"),
        kv_transfer: histogram("pdq_kv_transfer_seconds", "Taking a request's KV from its prefill rank"),
    }
});

/// One worker's label values.
#[derive(Debug, Clone)]
pub struct Labels {
    role: &'static str,
    rank: String,
}

impl Labels {
    pub fn new(role: &'static str, rank: u32) -> Labels {
        Labels { role, rank: rank.to_string() }
    }

    fn values(&self) -> [&str; 2] {
        [self.role, &self.rank]
    }

    /// A request's result, once its row is committed.
    pub fn outcome(&self, o: &Outcome) {
        let m = &*METRICS;
        let status = match o.status {
            ResultStatus::Completed => "completed",
            ResultStatus::Failed => "failed",
            ResultStatus::Cancelled => "cancelled",
        };
        m.requests.with_label_values(&[self.role, &self.rank, status]).inc();
        if o.status != ResultStatus::Completed {
            return;
        }
        let v = self.values();
        let info = &o.meta_info;
        m.prompt_tokens.with_label_values(&v).inc_by(info.prompt_tokens as u64);
        m.generation_tokens.with_label_values(&v).inc_by(info.completion_tokens as u64);
        m.ttft.with_label_values(&v).observe(info.timings.queue_time + info.timings.prefill_time);
        m.e2e.with_label_values(&v).observe(info.e2e_latency);
        if info.kv_bytes > 0 {
            m.kv_transfer.with_label_values(&v).observe(info.timings.kv_transfer_time);
        }
    }

    pub fn engine(&self, running: usize, waiting: usize, kv_usage: f64) {
        let m = &*METRICS;
        let v = self.values();
        m.running.with_label_values(&v).set(running as i64);
        m.waiting.with_label_values(&v).set(waiting as i64);
        m.kv_usage.with_label_values(&v).set(kv_usage);
    }

    /// The engine pool's prefix-cache counters: `now` since it started, `before` as last reported.
    pub fn prefix_cache(&self, before: &PrefixCacheStats, now: &PrefixCacheStats) {
        let m = &*METRICS;
        let v = self.values();
        m.prefix_queries.with_label_values(&v).inc_by(now.queried_tokens - before.queried_tokens);
        m.prefix_hits.with_label_values(&v).inc_by(now.hit_tokens - before.hit_tokens);
        m.prefix_evictions.with_label_values(&v).inc_by(now.evicted_blocks - before.evicted_blocks);
        if now.queried_tokens > 0 {
            m.prefix_hit_ratio.with_label_values(&v).set(now.hit_tokens as f64 / now.queried_tokens as f64);
        }
    }

    /// A running sequence was preempted (its blocks freed; it resumes by recomputing).
    pub fn preempted(&self) {
        METRICS.preemptions.with_label_values(&self.values()).inc();
    }

    /// A decoder handed a KV handle back (its prefill rank out of reach).
    pub fn handed_back(&self) {
        METRICS.handbacks.with_label_values(&self.values()).inc();
    }

    /// A decoder sent a request back to prefill.
    pub fn reprefilled(&self) {
        METRICS.reprefills.with_label_values(&self.values()).inc();
    }

    /// What a prefill rank's KV store holds now.
    pub fn kv_store(&self, entries: usize, bytes: usize) {
        let m = &*METRICS;
        let v = self.values();
        m.kv_store_entries.with_label_values(&v).set(entries as i64);
        m.kv_store_bytes.with_label_values(&v).set(bytes as i64);
    }

    pub fn reconnects(&self, more: u64) {
        METRICS.reconnects.with_label_values(&self.values()).inc_by(more);
    }

    /// Whether the rank takes work: set once it consumes, cleared when it drains or breaks.
    /// `/ready` on the metrics endpoint reads it.
    pub fn ready(&self, ready: bool) {
        METRICS.ready.with_label_values(&self.values()).set(i64::from(ready));
    }
}
