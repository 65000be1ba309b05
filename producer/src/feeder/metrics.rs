//! The feeder's Prometheus metrics, in the process's default registry (as the workers'), by
//! namespace: what it published, whether this process holds the lease, and the outbox it sees.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};

struct Metrics {
    published: IntCounterVec,
    expired: IntCounterVec,
    lease_held: IntGaugeVec,
    in_flight: IntGaugeVec,
    jobs: IntGaugeVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let counter = |name: &str, help: &str| {
        register_int_counter_vec!(name, help, &["namespace"]).expect("a metric is registered once")
    };
    let gauge = |name: &str, help: &str| {
        register_int_gauge_vec!(name, help, &["namespace"]).expect("a metric is registered once")
    };
    Metrics {
        published: counter("pdq_feeder_published_total", "Requests this process's feeder published (confirmed)"),
        expired: counter("pdq_jobs_expired_total", "Jobs this process's feeder expired"),
        lease_held: gauge("pdq_feeder_lease_held", "1 while this process's feeder holds the namespace's lease"),
        in_flight: gauge("pdq_feeder_in_flight", "Published requests of active jobs without a result, last round"),
        jobs: gauge("pdq_feeder_jobs_active", "Jobs in progress, last round"),
    }
});

/// One namespace's series.
#[derive(Clone)]
pub(crate) struct Labels(String);

impl Labels {
    pub(crate) fn new(namespace: &str) -> Labels {
        let l = Labels(namespace.to_string());
        // Registered at start, so a scrape shows every series before the first job.
        l.lease(false);
        l.published(0);
        l.expired(0);
        l.outbox(0, 0);
        l
    }

    pub(crate) fn lease(&self, held: bool) {
        METRICS.lease_held.with_label_values(&[&self.0]).set(i64::from(held));
    }

    pub(crate) fn published(&self, n: usize) {
        METRICS.published.with_label_values(&[&self.0]).inc_by(n as u64);
    }

    pub(crate) fn expired(&self, n: usize) {
        METRICS.expired.with_label_values(&[&self.0]).inc_by(n as u64);
    }

    pub(crate) fn outbox(&self, jobs: usize, in_flight: u64) {
        METRICS.jobs.with_label_values(&[&self.0]).set(jobs as i64);
        METRICS.in_flight.with_label_values(&[&self.0]).set(in_flight.min(i64::MAX as u64) as i64);
    }
}
