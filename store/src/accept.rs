//! Accepting a job: its rows stream into one transaction as the input is read, so a job is
//! accepted whole at `commit` or not at all (a submitter that dies mid-file leaves nothing).
//! Once committed the job needs nobody: its request rows are the outbox a feeder publishes.

use pdq_protocol::Outcome;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::requests::{insert_requests, NewRequest};
use crate::results::insert_outcomes;
use crate::{NewJob, Store, StoreError};

/// A job whose rows are being written; dropped without [`Accepting::commit`], nothing stays.
pub struct Accepting {
    tx: Transaction<'static, Postgres>,
    job_id: Uuid,
    total: usize,
}

impl Store {
    pub async fn begin_job(&self, job: &NewJob) -> Result<Accepting, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Held until the commit or the connection's end: while it is held, an API batch with
        // no job yet is being accepted, not abandoned (see `Store::fail_abandoned_batches`).
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(acceptance_lock(job.id)).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO jobs (id, name, namespace, input_file, status, total, priority, max_in_flight, dispatch,
                               expires_at)
             VALUES ($1, $2, $3, $4, 'validating', 0, $5, $6, $7, now() + $8 * interval '1 millisecond')",
        )
        .bind(job.id)
        .bind(&job.name)
        .bind(&job.namespace)
        .bind(&job.input_file)
        .bind(job.priority)
        .bind(job.max_in_flight.map(|n| n.min(i32::MAX as u32) as i32))
        .bind(&job.dispatch)
        .bind(job.window.as_millis().min(i64::MAX as u128) as i64)
        .execute(&mut *tx)
        .await?;
        Ok(Accepting { tx, job_id: job.id, total: 0 })
    }
}

/// The advisory-lock key of a job being accepted: the id's low 64 bits, as SQL computes them in
/// `ACCEPTANCE_LOCK_SQL`.
pub(crate) fn acceptance_lock(id: Uuid) -> i64 {
    i64::from_be_bytes(id.as_bytes()[8..16].try_into().expect("16-byte uuid"))
}

/// `acceptance_lock` of the uuid column `b.id`, in SQL.
pub(crate) const ACCEPTANCE_LOCK_SQL: &str = "('x' || right(replace(b.id::text, '-', ''), 16))::bit(64)::bigint";

impl Accepting {
    /// Request rows, and the failed results of the lines among them that did not validate.
    pub async fn add(&mut self, requests: &[NewRequest], failed: &[Outcome]) -> Result<(), StoreError> {
        insert_requests(&mut self.tx, requests).await?;
        insert_outcomes(&mut self.tx, failed).await?;
        self.total += requests.len();
        Ok(())
    }

    /// The first of `custom_ids` that an earlier `add` of this job already holds, with its line.
    pub async fn seen_custom_id(&mut self, custom_ids: &[String]) -> Result<Option<(String, i32)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT custom_id, line_no FROM requests WHERE job_id = $1 AND custom_id = ANY($2)
             ORDER BY line_no LIMIT 1",
        )
        .bind(self.job_id)
        .bind(custom_ids)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    /// Accepts the job: from here on it is `in_progress` (or already `completed`, when no line
    /// validated), whatever happens to the process that wrote it.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        // `add` counted results against a total of 0; the real total decides the status now.
        sqlx::query(
            "UPDATE jobs SET total = $2, started_at = now(),
                 status = CASE WHEN completed + failed + cancelled >= $2 THEN 'completed' ELSE 'in_progress' END,
                 finished_at = CASE WHEN completed + failed + cancelled >= $2 THEN now() END
             WHERE id = $1",
        )
        .bind(self.job_id)
        .bind(self.total as i32)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
