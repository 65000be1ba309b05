//! Webhook events of `pdq api`: one row per batch end in `webhook_events`, recorded before it is
//! sent. Invariants:
//! - one event per batch (`job_id` is unique), however many processes record at once;
//! - an event is due while `next_attempt_at` is set; claiming one pushes it past the attempt's
//!   lease, so one process sends it at a time, and one that dies mid-attempt leaves it due later;
//! - `delivered_at` is set once, by an answer in 2xx; delivery is at least once, never exactly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{Store, StoreError};

/// An event claimed for one delivery attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookEvent {
    pub id: String,
    pub job_id: Uuid,
    pub payload: Value,
    /// Attempts so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Ended batches not yet recorded, from `$2` seconds before the endpoint's last look (but never
/// before its `since`), each with the type its batch object's `status` shows (`batches.rs` in
/// the api: an expired job's batch is `expired`; a batch refused at validation, with no job, is
/// `failed`). The payload is OpenAI's event, `created_at` the batch's end.
const RECORD_ENDED: &str = "
WITH mark AS (
    SELECT GREATEST(since, scanned_to - $2 * interval '1 second') AS from_t
      FROM webhook_endpoints WHERE url = $1
), ended AS (
    SELECT b.id, j.finished_at AS ended_at,
           CASE WHEN b.expired_at IS NOT NULL THEN 'batch.expired' ELSE 'batch.' || j.status END AS type
      FROM mark, jobs j JOIN batches b ON b.id = j.id
     WHERE j.finished_at >= mark.from_t AND j.status IN ('completed', 'failed', 'cancelled', 'expired')
    UNION ALL
    SELECT b.id, b.failed_at, 'batch.failed'
      FROM mark, batches b
     WHERE b.failed_at >= mark.from_t AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = b.id)
), fresh AS (
    SELECT 'evt_' || replace(gen_random_uuid()::text, '-', '') AS evt, e.*
      FROM ended e WHERE NOT EXISTS (SELECT 1 FROM webhook_events w WHERE w.job_id = e.id)
)
INSERT INTO webhook_events (id, job_id, type, payload, next_attempt_at)
SELECT evt, id, type,
       jsonb_build_object('id', evt, 'object', 'event', 'type', type,
                          'created_at', floor(extract(epoch FROM ended_at))::bigint,
                          'data', jsonb_build_object('id', id::text)),
       now()
  FROM fresh
ON CONFLICT (job_id) DO NOTHING";

impl Store {
    /// Records an event for every batch that ended since webhooks to `url` were first
    /// configured and has none yet; returns how many. The first call for a URL starts its
    /// `since` now. `margin` is how far back before the previous look this one reaches.
    pub async fn record_webhook_events(&self, url: &str, margin: Duration) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO webhook_endpoints (url) VALUES ($1) ON CONFLICT (url) DO NOTHING")
            .bind(url)
            .execute(&mut *tx)
            .await?;
        // Locked, so two processes take turns rather than both scanning.
        sqlx::query("SELECT 1 FROM webhook_endpoints WHERE url = $1 FOR UPDATE").bind(url).execute(&mut *tx).await?;
        let recorded = sqlx::query(RECORD_ENDED).bind(url).bind(margin.as_secs_f64()).execute(&mut *tx).await?;
        // `now()` is this transaction's start, earlier than the insert's snapshot: nothing
        // committed after that snapshot ended before it, but for transactions longer than `margin`.
        sqlx::query("UPDATE webhook_endpoints SET scanned_to = now() WHERE url = $1")
            .bind(url)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(recorded.rows_affected())
    }

    /// Up to `limit` due events, each with its attempt counted and held for `lease`.
    pub async fn claim_webhook_events(&self, limit: i64, lease: Duration) -> Result<Vec<WebhookEvent>, StoreError> {
        Ok(sqlx::query_as::<_, WebhookEvent>(
            "UPDATE webhook_events SET attempts = attempts + 1, next_attempt_at = now() + $2 * interval '1 second'
              WHERE id IN (SELECT id FROM webhook_events WHERE next_attempt_at <= now()
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, job_id, payload, attempts, created_at",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// The receiver took attempt `attempts` of the event. `last_error` stays, saying why earlier
    /// attempts failed. A later attempt, by a process that took it over after the lease, is
    /// left alone.
    pub async fn webhook_delivered(&self, id: &str, attempts: i32) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_events SET delivered_at = now(), next_attempt_at = NULL
              WHERE id = $1 AND attempts = $2",
        )
        .bind(id)
        .bind(attempts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Attempt `attempts` failed with `error`: due again in `retry_in`, unless the event was
    /// recorded more than `give_up_after` ago; returns true when it was, and no attempt follows.
    pub async fn webhook_failed(
        &self,
        id: &str,
        attempts: i32,
        error: &str,
        retry_in: Duration,
        give_up_after: Duration,
    ) -> Result<bool, StoreError> {
        let next: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
            "UPDATE webhook_events SET last_error = $3,
                    next_attempt_at = CASE WHEN created_at + $5 * interval '1 second' <= now() THEN NULL
                                           ELSE now() + $4 * interval '1 second' END
              WHERE id = $1 AND attempts = $2
             RETURNING next_attempt_at",
        )
        .bind(id)
        .bind(attempts)
        .bind(error.replace('\0', "\u{FFFD}"))
        .bind(retry_in.as_secs_f64())
        .bind(give_up_after.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        // No row: another process took the event over meanwhile; its attempt decides.
        Ok(matches!(next, Some(None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:9/hooks";
    const MARGIN: Duration = Duration::from_secs(3600);

    /// A batch (unless `status` is None: refused, no job) whose job has `status`, ended
    /// `ended_ago` seconds ago when terminal; `batch: false` is a job `pdq submit` made.
    async fn ended(store: &Store, status: Option<&str>, ended_ago: i32, batch: bool) -> Uuid {
        let id = Uuid::now_v7();
        if let Some(status) = status {
            sqlx::query(
                "INSERT INTO jobs (id, namespace, status, finished_at)
                 VALUES ($1, 't', $2, CASE WHEN $2 = 'in_progress' THEN NULL
                                           ELSE now() - $3 * interval '1 second' END)",
            )
            .bind(id)
            .bind(status)
            .bind(ended_ago)
            .execute(store.pool())
            .await
            .unwrap();
        }
        if batch {
            sqlx::query(
                "INSERT INTO batches (id, input_file_id, endpoint, completion_window, expires_at, expired_at, failed_at)
                 VALUES ($1, $1, '/v1/completions', '24h', now() + interval '1 day',
                         CASE WHEN $2 = 'expired' THEN now() END, CASE WHEN $2 IS NULL THEN now() END)",
            )
            .bind(id)
            .bind(status)
            .execute(store.pool())
            .await
            .unwrap();
        }
        id
    }

    async fn event_of(store: &Store, job: Uuid) -> Option<(String, Value, Option<DateTime<Utc>>)> {
        sqlx::query_as("SELECT type, payload, next_attempt_at FROM webhook_events WHERE job_id = $1")
            .bind(job)
            .fetch_optional(store.pool())
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn one_event_per_batch_that_ended_since_the_url_was_configured(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let old = ended(&store, Some("completed"), 86_400, true).await;
        assert_eq!(store.record_webhook_events(URL, MARGIN).await.unwrap(), 0, "nothing for old batches");
        let completed = ended(&store, Some("completed"), 0, true).await;
        let cancelled = ended(&store, Some("cancelled"), 0, true).await;
        let expired = ended(&store, Some("expired"), 0, true).await;
        let refused = ended(&store, None, 0, true).await;
        let running = ended(&store, Some("in_progress"), 0, true).await;
        let submitted = ended(&store, Some("completed"), 0, false).await;
        assert_eq!(store.record_webhook_events(URL, MARGIN).await.unwrap(), 4);
        assert_eq!(store.record_webhook_events(URL, MARGIN).await.unwrap(), 0, "once per batch");
        for (job, kind) in [
            (completed, "batch.completed"),
            (cancelled, "batch.cancelled"),
            (expired, "batch.expired"),
            (refused, "batch.failed"),
        ] {
            let (got, payload, next) = event_of(&store, job).await.expect(kind);
            assert_eq!(got, kind);
            assert!(next.is_some(), "due");
            assert_eq!((&payload["object"], &payload["type"]), (&Value::from("event"), &Value::from(kind)));
            assert_eq!(payload["data"], serde_json::json!({"id": job.to_string()}));
            assert!(payload["id"].as_str().unwrap().starts_with("evt_"), "{payload}");
            assert!((payload["created_at"].as_i64().unwrap() - Utc::now().timestamp()).abs() < 60, "{payload}");
        }
        for job in [old, running, submitted] {
            assert!(event_of(&store, job).await.is_none(), "{job}");
        }
        // Another URL starts its own `since`: the events already recorded are not repeated.
        assert_eq!(store.record_webhook_events("http://other/", MARGIN).await.unwrap(), 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_claimed_event_is_held_retried_and_given_up(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        store.record_webhook_events(URL, MARGIN).await.unwrap();
        let a = ended(&store, Some("completed"), 0, true).await;
        let b = ended(&store, Some("cancelled"), 0, true).await;
        store.record_webhook_events(URL, MARGIN).await.unwrap();
        let lease = Duration::from_secs(60);
        let claimed = store.claim_webhook_events(16, lease).await.unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(claimed.iter().all(|e| e.attempts == 1));
        assert!(store.claim_webhook_events(16, lease).await.unwrap().is_empty(), "held while attempted");
        let ev = |job: Uuid| claimed.iter().find(|e| e.job_id == job).unwrap().clone();
        let (ea, eb) = (ev(a), ev(b));

        let week = Duration::from_secs(7 * 86_400);
        assert!(!store.webhook_failed(&ea.id, 1, "the receiver answered 500", Duration::ZERO, week).await.unwrap());
        let again = store.claim_webhook_events(16, lease).await.unwrap();
        assert_eq!((again.len(), again[0].attempts), (1, 2));
        // A stale attempt's answer does not settle a later one.
        store.webhook_delivered(&ea.id, 1).await.unwrap();
        assert!(event_of(&store, a).await.unwrap().2.is_some());
        store.webhook_delivered(&ea.id, 2).await.unwrap();
        let (delivered, next, error): (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<String>) =
            sqlx::query_as("SELECT delivered_at, next_attempt_at, last_error FROM webhook_events WHERE id = $1")
                .bind(&ea.id)
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert!(delivered.is_some() && next.is_none());
        assert_eq!(error.as_deref(), Some("the receiver answered 500"), "why it took two");

        assert!(store.webhook_failed(&eb.id, 1, "refused", Duration::ZERO, Duration::ZERO).await.unwrap(), "gave up");
        assert_eq!(event_of(&store, b).await.unwrap().2, None);
        assert!(store.claim_webhook_events(16, lease).await.unwrap().is_empty());
    }
}
