//! `pdq api`: binds, then serves (and feeds the namespace's jobs) until SIGINT/SIGTERM.

use anyhow::{Context, Result};
use pdq_api::{ApiConfig, ApiState, WebhookConfig};
use pdq_store::Store;

use crate::cli::{ApiArgs, FeederArgs, Global};

pub async fn run(g: &Global, a: ApiArgs, feeder: FeederArgs) -> Result<()> {
    // Checked before anything connects: a bad secret is a typo to fix, not a runtime fault.
    let webhook = match (&a.webhook_url, &a.webhook_secret) {
        (Some(url), Some(secret)) => Some(WebhookConfig::new(url, secret)?),
        _ => None,
    };
    let store = Store::connect(&g.database_url).await?;
    let listener =
        tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("cannot listen on {}", a.addr))?;
    let config = ApiConfig {
        api_key: a.api_key,
        max_file_bytes: a.max_file_bytes,
        max_file_lines: a.max_file_lines,
        policy: a.policy,
        webhook,
    };
    tracing::info!(addr = %listener.local_addr()?, auth = config.api_key.is_some(),
                   webhooks = config.webhook.is_some(), "serving the OpenAI Batch API at /v1");
    let shutdown = crate::shutdown::feeding_until_shutdown(g, &feeder, &store, None);
    let state = ApiState::new(store, &g.namespace, config);
    pdq_api::serve(listener, state, shutdown).await.context("api server")?;
    Ok(())
}
