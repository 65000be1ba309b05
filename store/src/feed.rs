//! What the feeder reads and writes (CONTRACT §13). Invariants:
//! - one lease per namespace: only its holder publishes, and the holder is whoever renewed it
//!   within its TTL by the database's clock (no two hosts' clocks are compared);
//! - a request is marked published only after the broker confirmed its message, so a feeder that
//!   dies between the two publishes it again, and the result row's key absorbs the duplicate;
//! - "in flight" is published and without a result: messages in the broker and work on ranks.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pdq_protocol::{ErrorBody, Outcome};
use uuid::Uuid;

use crate::results::insert_outcomes;
use crate::{JobStatus, Store, StoreError};

/// An active job of the namespace, as the feeder schedules it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedJob {
    pub id: Uuid,
    pub priority: i32,
    pub max_in_flight: Option<i32>,
    pub dispatch: String,
    pub created_at: DateTime<Utc>,
}

/// Published requests of a job still in the pipeline, per prefill pin (`None`: unpinned).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InFlight {
    pub job_id: Uuid,
    pub prefill_pin: Option<i32>,
    pub count: i64,
}

/// An unpublished request, ready to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unpublished {
    pub id: Uuid,
    pub job_id: Uuid,
    pub line_no: i32,
    pub line: String,
    pub prefill_pin: Option<i32>,
    pub decode_pin: Option<i32>,
    pub prefix_key: Option<i64>,
}

/// How many of a job's unpublished requests pinned to `prefill_pin` to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub job_id: Uuid,
    pub prefill_pin: Option<i32>,
    pub n: i64,
}

/// Who holds a namespace's feeder lease.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeederLease {
    pub holder: Uuid,
    pub host: String,
    pub pid: i32,
    pub heartbeat_age_s: f64,
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Store {
    /// Takes or renews the namespace's lease: true while `holder` holds it.
    pub async fn hold_feeder_lease(
        &self,
        namespace: &str,
        holder: Uuid,
        host: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let held: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO feeders (namespace, holder, host, pid) VALUES ($1, $2, $3, $4)
             ON CONFLICT (namespace) DO UPDATE
                 SET holder = EXCLUDED.holder, host = EXCLUDED.host, pid = EXCLUDED.pid,
                     heartbeat_at = now(),
                     acquired_at = CASE WHEN feeders.holder = EXCLUDED.holder THEN feeders.acquired_at ELSE now() END
                 WHERE feeders.holder = EXCLUDED.holder
                    OR feeders.heartbeat_at < now() - $5 * interval '1 millisecond'
             RETURNING holder",
        )
        .bind(namespace)
        .bind(holder)
        .bind(host)
        .bind(std::process::id() as i32)
        .bind(millis(ttl))
        .fetch_optional(&self.pool)
        .await?;
        Ok(held == Some(holder))
    }

    /// Gives the lease up at once (a clean shutdown), so a standby takes over without waiting.
    pub async fn release_feeder_lease(&self, namespace: &str, holder: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM feeders WHERE namespace = $1 AND holder = $2")
            .bind(namespace)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn feeder_lease(&self, namespace: &str) -> Result<Option<FeederLease>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT holder, host, pid, extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s
             FROM feeders WHERE namespace = $1",
        )
        .bind(namespace)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The namespace's jobs whose requests may still need publishing, oldest first.
    pub async fn feed_jobs(&self, namespace: &str) -> Result<Vec<FeedJob>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, priority, max_in_flight, dispatch, created_at FROM jobs
             WHERE namespace = $1 AND status = 'in_progress' ORDER BY created_at, id",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn in_flight(&self, jobs: &[Uuid]) -> Result<Vec<InFlight>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT job_id, prefill_pin, count(*) AS count FROM requests
             WHERE job_id = ANY($1) AND status = 'queued' AND published_at IS NOT NULL
             GROUP BY job_id, prefill_pin",
        )
        .bind(jobs)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The prefill pins (`None`: unpinned) among a job's unpublished requests.
    pub async fn unpublished_pins(&self, job: Uuid) -> Result<Vec<Option<i32>>, StoreError> {
        // The expression of `requests_unpublished`, so the index alone answers.
        let pins: Vec<i32> = sqlx::query_scalar(
            "SELECT DISTINCT COALESCE(prefill_pin, -1) FROM requests
             WHERE job_id = $1 AND status = 'queued' AND published_at IS NULL",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        Ok(pins.into_iter().map(|p| (p >= 0).then_some(p)).collect())
    }

    /// For each ask, up to `n` of the job's unpublished requests with that pin, in line order.
    pub async fn unpublished(&self, asks: &[Ask]) -> Result<Vec<Unpublished>, StoreError> {
        let jobs: Vec<Uuid> = asks.iter().map(|a| a.job_id).collect();
        let pins: Vec<i32> = asks.iter().map(|a| a.prefill_pin.unwrap_or(-1)).collect();
        let limits: Vec<i64> = asks.iter().map(|a| a.n).collect();
        Ok(sqlx::query_as(
            "SELECT r.id, r.job_id, r.line_no, r.line, r.prefill_pin, r.decode_pin, r.prefix_key
             FROM unnest($1::uuid[], $2::int[], $3::int8[]) AS a(job_id, pin, n)
             CROSS JOIN LATERAL (
                 SELECT id, job_id, line_no, line, prefill_pin, decode_pin, prefix_key FROM requests
                 WHERE job_id = a.job_id AND COALESCE(prefill_pin, -1) = a.pin
                   AND status = 'queued' AND published_at IS NULL
                 ORDER BY line_no LIMIT a.n
             ) r",
        )
        .bind(&jobs)
        .bind(&pins)
        .bind(&limits)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks confirmed messages published. Returns how many rows it marked.
    pub async fn mark_published(&self, ids: &[Uuid]) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE requests SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Fails API batches whose job was never accepted because the process accepting it died
    /// (no job row, and nobody holds its acceptance lock); returns their ids.
    pub async fn fail_abandoned_batches(&self) -> Result<Vec<Uuid>, StoreError> {
        let errors = serde_json::json!({"object": "list", "data": [{
            "code": "abandoned", "line": null, "param": null,
            "message": "the process accepting this batch stopped before the batch was accepted; create it again",
        }]});
        Ok(sqlx::query_scalar(&format!(
            "UPDATE batches b SET errors = $1, failed_at = now()
             WHERE b.errors IS NULL AND b.created_at < now() - interval '5 seconds'
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = b.id)
               AND pg_try_advisory_xact_lock({})
             RETURNING b.id",
            crate::accept::ACCEPTANCE_LOCK_SQL
        ))
        .bind(errors)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Expires the namespace's jobs whose completion window has passed; returns their ids.
    /// Safe from several processes at once (the job row is locked).
    pub async fn expire_jobs(&self, namespace: &str) -> Result<Vec<Uuid>, StoreError> {
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE namespace = $1 AND expires_at <= now()
               AND status NOT IN ('completed', 'failed', 'cancelled', 'expired')",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        let mut expired = Vec::new();
        for id in due {
            if self.expire_job(id).await? {
                expired.push(id);
            }
        }
        Ok(expired)
    }

    /// Every request without a result ends `batch_expired` (a `cancelled` row, as OpenAI files
    /// it in the error file), and the job `expired`. A request still running ends in an insert
    /// that changes nothing.
    async fn expire_job(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if status.as_deref().and_then(JobStatus::parse).is_none_or(JobStatus::is_terminal) {
            return Ok(false);
        }
        let pending = crate::jobs::unfinished(&mut tx, id).await?;
        let expired = ErrorBody::new("batch_expired", "the job's completion window passed before this request ran");
        let outcomes: Vec<Outcome> = pending
            .into_iter()
            .map(|(rid, cid)| Outcome { error: Some(expired.clone()), ..Outcome::cancelled(rid, Some(id), cid) })
            .collect();
        insert_outcomes(&mut tx, &outcomes).await?;
        sqlx::query("UPDATE jobs SET status = 'expired', finished_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE batches SET expired_at = now() WHERE id = $1 AND expired_at IS NULL")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acceptance_lock_key_is_the_same_in_rust_and_sql() {
        // Checked against PostgreSQL in `an_abandoned_batch_fails_and_one_being_accepted_does_not`.
        let id = Uuid::parse_str("01234567-89ab-cdef-8123-456789abcdef").unwrap();
        assert_eq!(crate::accept::acceptance_lock(id), 0x8123_4567_89ab_cdef_u64 as i64);
    }

    async fn batch_without_job(store: &Store, age_s: i32) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO batches (id, input_file_id, endpoint, completion_window, created_at, expires_at)
             VALUES ($1, $1, '/v1/completions', '24h', now() - $2 * interval '1 second', now() + interval '1 day')",
        )
        .bind(id)
        .bind(age_s)
        .execute(store.pool())
        .await
        .unwrap();
        id
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_abandoned_batch_fails_and_one_being_accepted_does_not(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let abandoned = batch_without_job(&store, 60).await;
        let young = batch_without_job(&store, 0).await;
        let accepting = batch_without_job(&store, 60).await;
        // Another process is still streaming this one's rows: its lock is held.
        let open = store.begin_job(&crate::NewJob::new(accepting, "t")).await.unwrap();
        assert_eq!(store.fail_abandoned_batches().await.unwrap(), vec![abandoned]);
        let errors: serde_json::Value = sqlx::query_scalar("SELECT errors FROM batches WHERE id = $1")
            .bind(abandoned)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(errors["data"][0]["code"], "abandoned");
        // The accepting process dies: its transaction and lock go with its connection.
        drop(open);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let failed = store.fail_abandoned_batches().await.unwrap();
            if !failed.is_empty() {
                assert_eq!(failed, vec![accepting], "the young batch ({young}) is left alone");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the rolled-back acceptance's lock was never released");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
