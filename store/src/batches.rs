//! Batches of `pdq api`: what OpenAI's batch object holds beyond its job (endpoint, window,
//! metadata). A batch and its job share one id; a batch refused at validation has no job.
//! Expiry is the job's (`feed.rs`), which also stamps the batch's `expired_at`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{Store, StoreError, Usage};

#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: Uuid,
    pub input_file_id: Uuid,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<Value>,
    /// Taken from one clock reading with `expires_at`, so the batch object's `expires_at -
    /// created_at` is exactly its window (the database's `now()` would be a moment later).
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `output_expires_after`: seconds after the batch ends that its output and error files
    /// expire; `None`: never.
    pub output_expires_after_s: Option<i32>,
}

/// A batch with its job's status and counters (absent while it validates, or when refused).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: Uuid,
    pub input_file_id: Uuid,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<Value>,
    pub errors: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub cancelling_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub job_status: Option<String>,
    pub total: Option<i32>,
    pub completed: Option<i32>,
    pub failed: Option<i32>,
    pub cancelled: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The `model` its first request names (pdq serves one model per cluster and echoes the
    /// requested name in every response body, so the batch says the same).
    pub model: Option<String>,
    #[sqlx(flatten)]
    pub usage: Usage,
    /// When the output and error files expire: the batch's end plus `output_expires_after`.
    pub output_expires_at: Option<DateTime<Utc>>,
}

const BATCH_SELECT: &str = "SELECT b.id, b.input_file_id, b.endpoint, b.completion_window, b.metadata, b.errors,
        b.created_at, b.expires_at, b.cancelling_at, b.expired_at, b.failed_at, j.status AS job_status, j.total, j.completed,
        j.failed, j.cancelled, j.started_at, j.finished_at,
        (SELECT q.body->>'model' FROM requests q WHERE q.job_id = b.id ORDER BY q.line_no LIMIT 1) AS model,
        COALESCE(j.prompt_tokens, 0) AS prompt_tokens, COALESCE(j.cached_tokens, 0) AS cached_tokens,
        COALESCE(j.completion_tokens, 0) AS completion_tokens,
        j.finished_at + b.output_expires_after_s * interval '1 second' AS output_expires_at
    FROM batches b LEFT JOIN jobs j ON j.id = b.id";

impl Store {
    pub async fn create_batch(&self, b: &NewBatch) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO batches (id, input_file_id, endpoint, completion_window, metadata, expires_at,
                                  output_expires_after_s, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(b.id)
        .bind(b.input_file_id)
        .bind(&b.endpoint)
        .bind(&b.completion_window)
        .bind(&b.metadata)
        .bind(b.expires_at)
        .bind(b.output_expires_after_s)
        .bind(b.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The batch failed validation as a whole: OpenAI's `errors` object, and no job.
    pub async fn fail_batch(&self, id: Uuid, errors: &Value) -> Result<(), StoreError> {
        sqlx::query("UPDATE batches SET errors = $2, failed_at = now() WHERE id = $1")
            .bind(id)
            .bind(crate::results::pg_safe(errors.clone()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn batch(&self, id: Uuid) -> Result<Option<BatchRow>, StoreError> {
        Ok(sqlx::query_as::<_, BatchRow>(&format!("{BATCH_SELECT} WHERE b.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Up to `limit` batches older than `after`, newest first (ids are UUIDv7).
    pub async fn batches(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<BatchRow>, StoreError> {
        Ok(sqlx::query_as::<_, BatchRow>(&format!(
            "{BATCH_SELECT} WHERE ($1::uuid IS NULL OR b.id < $1) ORDER BY b.id DESC LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Cancels the batch's job (see [`Store::cancel_job`]) and records when it was asked.
    pub async fn cancel_batch(&self, id: Uuid) -> Result<(), StoreError> {
        self.cancel_job(id).await?;
        sqlx::query("UPDATE batches SET cancelling_at = COALESCE(cancelling_at, now()) WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
