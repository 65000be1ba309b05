//! `GET /metrics`: the process's Prometheus registry as text (CONTRACT §11), on an address of
//! its own so a scraper never needs the API key and the API port can stay private.

use std::net::SocketAddr;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};

async fn scrape() -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
        tracing::error!(error = %e, "encoding metrics");
    }
    ([(CONTENT_TYPE, encoder.format_type().to_string())], body)
}

/// Binds `addr` and serves `/metrics` in the background; returns the bound address.
pub async fn serve_metrics(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(scrape));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics");
    Ok(bound)
}
