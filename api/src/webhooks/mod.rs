//! Webhooks (CONTRACT §15): a signed `batch.completed`, `batch.failed`, `batch.cancelled` or
//! `batch.expired` event, OpenAI's, when a batch ends, POSTed to `--webhook-url`.
//! Batches end in any process (workers, a feeder's expiry, a cancel), so `pdq api` looks for
//! ended batches in the database rather than being told: each round it records an event for
//! every batch that ended and has none (`pdq_store` keeps one per batch), then sends the due
//! ones. An event is recorded before it is sent and marked only on a 2xx answer, so delivery is
//! at least once across restarts; receivers drop repeats by `webhook-id`.

mod sign;

use std::time::Duration;

use chrono::Utc;
use pdq_store::{Store, StoreError, WebhookEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use sign::WebhookSecret;

use crate::metrics::{webhook_deliveries_at_zero, webhook_delivery, Delivery};

/// How often `pdq api` looks for ended batches and due events.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// How long a receiver has to answer one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after the first failed attempt, doubled after each further one up to the cap.
pub const DEFAULT_FIRST_RETRY: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_RETRY: Duration = Duration::from_secs(10 * 60);
/// OpenAI retries for up to 72 hours; so does pdq, counted from when the event was recorded.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(72 * 3600);

/// Events sent at once, each on its own request.
const CLAIM: i64 = 16;
/// How far back before its previous look a round looks for ended batches: a batch's end is
/// stamped at the start of the transaction that ends it, which may commit after a look began.
const LOOK_BACK: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("`--webhook-secret` must be `whsec_` followed by a base64 key, as OpenAI's are (Standard Webhooks): {0}")]
    Secret(String),
    #[error(
        "`--webhook-url` must be an http:// URL with a host (no TLS here: put a proxy in front for https), got '{0}'"
    )]
    Url(String),
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Normalized (`http://host:port/path`); also the key of its `since` marker in the database.
    pub url: reqwest::Url,
    pub secret: WebhookSecret,
    pub poll: Duration,
    pub timeout: Duration,
    pub first_retry: Duration,
    pub max_retry: Duration,
    pub give_up_after: Duration,
}

impl WebhookConfig {
    /// The defaults above, with `url` and `secret` checked.
    pub fn new(url: &str, secret: &str) -> Result<WebhookConfig, WebhookError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| WebhookError::Url(url.to_string()))?;
        if parsed.scheme() != "http" || parsed.host().is_none() {
            return Err(WebhookError::Url(url.to_string()));
        }
        Ok(WebhookConfig {
            url: parsed,
            secret: WebhookSecret::parse(secret)?,
            poll: DEFAULT_POLL,
            timeout: DEFAULT_TIMEOUT,
            first_retry: DEFAULT_FIRST_RETRY,
            max_retry: DEFAULT_MAX_RETRY,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        })
    }

    /// The wait after failed attempt number `attempts` (from 1).
    fn retry_in(&self, attempts: i32) -> Duration {
        let doublings = attempts.saturating_sub(1).clamp(0, 31) as u32;
        self.first_retry.saturating_mul(1u32 << doublings).min(self.max_retry)
    }

    /// An attempt's hold on its event: past it, another process may send the event again.
    fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }
}

/// Why an attempt failed; the text is the event's `last_error`.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{0}")]
    Send(String),
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
}

/// The sender running beside the API server.
pub(crate) struct Sender {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    timeout: Duration,
}

impl Sender {
    /// Looks once before returning, so a batch that ends after `serve` starts is one that
    /// webhooks were configured for; then runs a round every `poll`.
    pub(crate) async fn start(store: Store, config: WebhookConfig) -> Sender {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect is not an answer: the event stays due and the error says where it pointed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pdq-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client without TLS builds");
        webhook_deliveries_at_zero();
        let rounds = Rounds { store, config, http };
        rounds.record().await;
        tracing::info!(url = %rounds.config.url, "sending batch webhooks");
        let (stop, stopped) = watch::channel(false);
        let timeout = rounds.config.timeout;
        Sender { stop, task: tokio::spawn(rounds.run(stopped)), timeout }
    }

    /// Lets the round in progress finish (its attempts are bounded by the timeout), then stops.
    pub(crate) async fn stop(mut self) {
        self.stop.send_replace(true);
        let patience = self.timeout + Duration::from_secs(5);
        if tokio::time::timeout(patience, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

struct Rounds {
    store: Store,
    config: WebhookConfig,
    http: reqwest::Client,
}

impl Rounds {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            self.deliver_due(&stop).await;
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(self.config.poll) => {}
            }
            self.record().await;
        }
    }

    async fn record(&self) {
        match self.store.record_webhook_events(self.config.url.as_str(), LOOK_BACK).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(events = n, "recorded webhook events"),
            // The database away: the next round looks again, from before this one.
            Err(e) => tracing::warn!(error = %e, "could not look for ended batches"),
        }
    }

    /// Sends due events until none is left or a stop is asked for.
    async fn deliver_due(&self, stop: &watch::Receiver<bool>) {
        while !*stop.borrow() {
            let claimed = match self.store.claim_webhook_events(CLAIM, self.config.lease()).await {
                Ok(claimed) => claimed,
                Err(e) => return tracing::warn!(error = %e, "could not read due webhook events"),
            };
            let full = claimed.len() as i64 == CLAIM;
            futures_util::future::join_all(claimed.iter().map(|e| self.deliver(e))).await;
            if !full {
                return;
            }
        }
    }

    async fn deliver(&self, event: &WebhookEvent) {
        let settled = match self.attempt(event).await {
            Ok(()) => {
                tracing::info!(event = %event.id, batch = %event.job_id, attempts = event.attempts, "webhook delivered");
                webhook_delivery(Delivery::Delivered);
                self.store.webhook_delivered(&event.id, event.attempts).await
            }
            Err(e) => self.failed(event, &e).await,
        };
        // The row stays claimed until its lease ends; then the event is sent again.
        if let Err(e) = settled {
            tracing::warn!(event = %event.id, error = %e, "could not record a webhook attempt");
        }
    }

    async fn failed(&self, event: &WebhookEvent, e: &DeliveryError) -> Result<(), StoreError> {
        let retry_in = self.config.retry_in(event.attempts);
        let error = e.to_string();
        let gave_up =
            self.store.webhook_failed(&event.id, event.attempts, &error, retry_in, self.config.give_up_after).await?;
        if gave_up {
            tracing::error!(event = %event.id, batch = %event.job_id, attempts = event.attempts, error,
                            "webhook given up: failing for longer than the delivery window");
            webhook_delivery(Delivery::GaveUp);
        } else {
            tracing::warn!(event = %event.id, batch = %event.job_id, attempts = event.attempts, error,
                           retry_in = ?retry_in, "webhook attempt failed");
            webhook_delivery(Delivery::Failed);
        }
        Ok(())
    }

    /// One POST, signed with this attempt's timestamp (receivers refuse old ones).
    async fn attempt(&self, event: &WebhookEvent) -> Result<(), DeliveryError> {
        let body = event.payload.to_string().into_bytes();
        let timestamp = Utc::now().timestamp();
        let signature = self.config.secret.sign(&event.id, timestamp, &body);
        let answer = self
            .http
            .post(self.config.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::Send(with_causes(&e)))?;
        match answer.status() {
            s if s.is_success() => Ok(()),
            s => Err(DeliveryError::Status(s)),
        }
    }
}

/// reqwest's message names the request only; the cause (refused, timed out) is in its sources.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn retries_double_from_the_first_wait_up_to_the_cap() {
        let c = WebhookConfig::new("http://127.0.0.1:9/hooks", SECRET).unwrap();
        let waits: Vec<u64> = [1, 2, 3, 10, 11, 1000].iter().map(|&n| c.retry_in(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 512, 600, 600]);
    }

    #[test]
    fn only_plain_http_urls_are_taken() {
        assert_eq!(
            WebhookConfig::new("http://hooks.local:8080", SECRET).unwrap().url.as_str(),
            "http://hooks.local:8080/"
        );
        for bad in ["https://hooks.example.com/", "hooks.local:8080", "ftp://x/", "http://"] {
            let e = WebhookConfig::new(bad, SECRET).expect_err(bad).to_string();
            assert!(e.contains("--webhook-url"), "{e}");
        }
    }
}
