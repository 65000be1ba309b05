//! `GET /metrics`: the process's Prometheus registry as text (CONTRACT §11), on an address of
//! its own so a scraper never needs the API key and the API port can stay private. `GET /ready`
//! on the same address: 200 while every rank of the process takes work, else 503, for a
//! supervisor's readiness probe (Kubernetes). The API's own series: webhook deliveries.

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{register_int_counter_vec, Encoder, IntCounterVec, TextEncoder};

static WEBHOOK_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "pdq_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome: delivered, failed (retried later), gave_up",
        &["outcome"]
    )
    .expect("a metric is registered once")
});

/// How a webhook attempt ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Delivery {
    Delivered,
    Failed,
    GaveUp,
}

impl Delivery {
    const ALL: [Delivery; 3] = [Delivery::Delivered, Delivery::Failed, Delivery::GaveUp];

    fn label(self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Failed => "failed",
            Delivery::GaveUp => "gave_up",
        }
    }
}

pub(crate) fn webhook_delivery(outcome: Delivery) {
    WEBHOOK_DELIVERIES.with_label_values(&[outcome.label()]).inc();
}

/// Every outcome's series at 0, so a scrape shows them before the first batch ends.
pub(crate) fn webhook_deliveries_at_zero() {
    for outcome in Delivery::ALL {
        WEBHOOK_DELIVERIES.with_label_values(&[outcome.label()]).inc_by(0);
    }
}

async fn scrape() -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
        tracing::error!(error = %e, "encoding metrics");
    }
    ([(CONTENT_TYPE, encoder.format_type().to_string())], body)
}

/// Ready when the process runs at least one rank and every one takes work (consuming, not
/// draining, not broken): before its ranks start, while they drain, and in a process that runs
/// none (`pdq api`, whose readiness is its API port) it is not.
async fn ready() -> impl IntoResponse {
    let ranks: Vec<(String, f64)> = prometheus::gather()
        .iter()
        .filter(|f| f.name() == pdq_protocol::READY_METRIC)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            // Named as the worker names itself in logs and connection names: `decode-1`.
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map_or("?", |l| l.value());
            (format!("{}-{}", label("role"), label("rank")), m.get_gauge().get_value())
        })
        .collect();
    let not_ready: Vec<&str> = ranks.iter().filter(|(_, v)| *v < 1.0).map(|(l, _)| l.as_str()).collect();
    if ranks.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no rank has started\n".to_string())
    } else if !not_ready.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", not_ready.join("; ")))
    } else {
        (StatusCode::OK, format!("ready: {} ranks\n", ranks.len()))
    }
}

/// Binds `addr` and serves `/metrics` and `/ready` in the background; returns the bound address.
pub async fn serve_metrics(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(scrape)).route("/ready", get(ready));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics");
    Ok(bound)
}
