//! `pdq api`: the OpenAI Batch API (CONTRACT §10) over HTTP, so OpenAI's own clients drive pdq.
//! Files live in PostgreSQL; a batch is a pdq job created by `pdq submit`'s code
//! (`pdq_producer::submit_lines`); output and error files are `pdq results`' lines, streamed from
//! the results table page by page.

mod auth;
mod batches;
mod error;
mod expiry;
mod files;
mod ids;
mod metrics;
mod output;
mod reply;
mod webhooks;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use pdq_producer::Policy;
use pdq_store::Store;

pub use error::ApiError;
pub use metrics::serve_metrics;
pub use webhooks::{WebhookConfig, WebhookError, WebhookSecret};

/// OpenAI's limits on a batch input file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 200 << 20;
pub const DEFAULT_MAX_FILE_LINES: u64 = 50_000;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every request needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub max_file_bytes: u64,
    pub max_file_lines: u64,
    /// Dispatch policy of the jobs batches create.
    pub policy: Policy,
    /// When set, a signed event is POSTed when a batch ends (see `webhooks`).
    pub webhook: Option<WebhookConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            api_key: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_file_lines: DEFAULT_MAX_FILE_LINES,
            policy: Policy::Shared,
            webhook: None,
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    store: Store,
    /// The namespace whose cluster runs the batches.
    namespace: Arc<str>,
    config: Arc<ApiConfig>,
    key: Option<auth::KeyDigest>,
}

impl ApiState {
    pub fn new(store: Store, namespace: &str, config: ApiConfig) -> ApiState {
        let key = config.api_key.as_deref().map(auth::KeyDigest::of);
        ApiState { store, namespace: namespace.into(), config: Arc::new(config), key }
    }
}

pub fn router(state: ApiState) -> Router {
    // Room for the multipart framing around a file of the largest size allowed; the file's own
    // size is checked as it streams in, for a clearer error.
    let upload_limit = (state.config.max_file_bytes + (1 << 20)).try_into().unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/files", post(files::upload).layer(DefaultBodyLimit::max(upload_limit)).get(files::list))
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::BadMethod })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key))
        .with_state(state)
}

/// How often `serve` deletes the uploads whose `expires_after` passed. Readers never see an
/// expired file meanwhile (every read checks the time); this only frees the bytes.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves until `shutdown` resolves; then finishes the requests in flight. Meanwhile it deletes
/// expired uploads every [`SWEEP_EVERY`] and, with a webhook configured, sends an event for
/// every batch that ends. (Batches past their window are expired by the namespace's feeder,
/// like every job.)
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = tokio::spawn(sweep_expired(state.store.clone()));
    let webhooks = match &state.config.webhook {
        Some(config) => Some(webhooks::Sender::start(state.store.clone(), config.clone()).await),
        None => None,
    };
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    sweeper.abort();
    if let Some(webhooks) = webhooks {
        webhooks.stop().await;
    }
    served
}

async fn sweep_expired(store: pdq_store::Store) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        match store.sweep_expired_files().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "deleted expired files"),
            // The database away: the next round tries again.
            Err(e) => tracing::warn!(error = %e, "could not delete expired files"),
        }
    }
}
