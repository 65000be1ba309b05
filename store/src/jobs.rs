//! Jobs: a batch file's lifecycle and its counters. Counters only move inside the transaction that
//! inserts result rows (see `results.rs`), so `total = completed + failed + cancelled` holds at the end.

use chrono::{DateTime, Utc};
use pdq_protocol::Outcome;
use serde::Serialize;
use uuid::Uuid;

use crate::requests::NewRequest;
use crate::results::insert_outcomes;
use crate::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
    /// Its `completion_window` passed first: unfinished requests ended `batch_expired`.
    Expired,
}

impl JobStatus {
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "validating" => JobStatus::Validating,
            "in_progress" => JobStatus::InProgress,
            "finalizing" => JobStatus::Finalizing,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelling" => JobStatus::Cancelling,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired)
    }
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct JobRow {
    pub id: Uuid,
    pub name: Option<String>,
    pub namespace: String,
    pub input_file: Option<String>,
    pub status: String,
    pub total: i32,
    pub completed: i32,
    pub failed: i32,
    pub cancelled: i32,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    pub usage: Usage,
}

/// The tokens a job's result rows count, summed as the rows are written: every row's prompt and
/// completion tokens (failed rows count what they used, mostly 0), and the prompt tokens the
/// prefix cache spared. Serialized as OpenAI's batch `usage` (CONTRACT §15).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub completion_tokens: i64,
}

impl Usage {
    /// OpenAI's shape; pdq generates no reasoning tokens.
    pub fn openai(&self) -> serde_json::Value {
        serde_json::json!({
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.openai().serialize(s)
    }
}

impl JobRow {
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }

    pub fn done(&self) -> i32 {
        self.completed + self.failed + self.cancelled
    }
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub name: Option<String>,
    pub namespace: String,
    pub input_file: Option<String>,
    /// Weight 2^priority against the namespace's other active jobs (CONTRACT §13).
    pub priority: i32,
    /// At most this many of the job's requests in the pipeline at once.
    pub max_in_flight: Option<u32>,
    /// The dispatch policy for unpinned stages, as `Policy`'s name.
    pub dispatch: String,
    /// `completion_window` after acceptance.
    pub window: std::time::Duration,
}

impl NewJob {
    /// A job with the defaults: priority 0, no cap, `shared` dispatch, a 24 h window.
    pub fn new(id: Uuid, namespace: &str) -> NewJob {
        NewJob {
            id,
            name: None,
            namespace: namespace.to_string(),
            input_file: None,
            priority: 0,
            max_in_flight: None,
            dispatch: "shared".into(),
            window: DEFAULT_COMPLETION_WINDOW,
        }
    }
}

/// OpenAI's only `completion_window`, and pdq's default.
pub const DEFAULT_COMPLETION_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

const JOB_COLUMNS: &str = "id, name, namespace, input_file, status, total, completed, failed, cancelled, priority, \
     created_at, started_at, finished_at, expires_at, prompt_tokens, cached_tokens, completion_tokens";

impl Store {
    /// Writes a job with all its request rows, and the failed results of lines that did not
    /// validate, in one transaction: a job is either fully accepted or not at all.
    pub async fn create_job(
        &self,
        job: &NewJob,
        requests: &[NewRequest],
        failed: &[Outcome],
    ) -> Result<(), StoreError> {
        let mut accepting = self.begin_job(job).await?;
        accepting.add(requests, failed).await?;
        accepting.commit().await
    }

    pub async fn job(&self, id: Uuid) -> Result<JobRow, StoreError> {
        sqlx::query_as::<_, JobRow>(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::JobNotFound(id))
    }

    pub async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        Ok(sqlx::query_as::<_, JobRow>(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC"))
            .fetch_all(&self.pool)
            .await?)
    }

    /// The namespace's jobs that are cancelling, cancelled or expired, over
    /// the last week: what workers skip.
    pub async fn closed_jobs(&self, namespace: &str) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE namespace = $1 AND status IN ('cancelling', 'cancelled', 'expired')
               AND created_at > now() - interval '7 days'",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Cancels a job: every request without a result gets a `cancelled` row now. Workers
    /// skip the job's messages once they see it closed (within a second), and a message run
    /// meanwhile ends in an insert that changes nothing.
    pub async fn cancel_job(&self, id: Uuid) -> Result<JobRow, StoreError> {
        let mut tx = self.pool.begin().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let status = status.ok_or(StoreError::JobNotFound(id))?;
        if JobStatus::parse(&status).is_none_or(JobStatus::is_terminal) {
            return Err(StoreError::NotCancellable { id, status });
        }
        sqlx::query("UPDATE jobs SET status = 'cancelling' WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let outcomes: Vec<Outcome> = unfinished(&mut tx, id)
            .await?
            .into_iter()
            .map(|(rid, custom_id)| Outcome::cancelled(rid, Some(id), custom_id))
            .collect();
        insert_outcomes(&mut tx, &outcomes).await?;
        tx.commit().await?;
        self.job(id).await
    }
}

/// A job's requests that have no result row yet: (request id, custom_id).
pub(crate) async fn unfinished(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job: Uuid,
) -> Result<Vec<(Uuid, Option<String>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.id, r.custom_id FROM requests r LEFT JOIN results s ON s.request_id = r.id
         WHERE r.job_id = $1 AND s.request_id IS NULL",
    )
    .bind(job)
    .fetch_all(&mut **tx)
    .await?)
}
