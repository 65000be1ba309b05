//! `pdq api`: binds, then serves until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};
use pdq_api::{ApiConfig, ApiState};
use pdq_broker::Broker;
use pdq_store::Store;

use crate::cli::{ApiArgs, Global};

pub async fn run(g: &Global, a: ApiArgs) -> Result<()> {
    let store = Store::connect(&g.database_url).await?;
    let broker = Arc::new(Broker::connect_with(g.broker().named(format!("pdq:{}:api", g.namespace))).await?);
    let listener =
        tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("cannot listen on {}", a.addr))?;
    let config = ApiConfig {
        api_key: a.api_key,
        max_file_bytes: a.max_file_bytes,
        max_file_lines: a.max_file_lines,
        policy: a.policy,
        ..ApiConfig::default()
    };
    tracing::info!(addr = %listener.local_addr()?, auth = config.api_key.is_some(), "serving the OpenAI Batch API at /v1");
    let state = ApiState::new(store, broker.clone(), config);
    pdq_api::serve(listener, state, crate::commands::shutdown_signal()).await.context("api server")?;
    broker.close().await;
    Ok(())
}
