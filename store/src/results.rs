//! Result rows. Written in batches, one statement per batch: the insert, the request status and
//! the job counters move together, and `ON CONFLICT DO NOTHING` makes a redelivered message's
//! second write count for nothing.

use chrono::{DateTime, Utc};
use pdq_protocol::Outcome;
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError};

/// How many of a batch's rows were new (the rest were already written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsWritten {
    pub inserted: u64,
}

const INSERT_OUTCOMES: &str = r#"
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1) AS r(
        request_id uuid, job_id uuid, custom_id text, status text, text text,
        output_ids jsonb, meta_info jsonb, error jsonb, logprobs jsonb, choices jsonb)
), ins AS (
    INSERT INTO results (request_id, job_id, custom_id, status, text, output_ids, meta_info, error,
                         dp_rank, prefill_dp_rank, prompt_tokens, completion_tokens, finish_reason,
                         logprobs, choices)
    SELECT request_id, job_id, custom_id, status, text,
           ARRAY(SELECT jsonb_array_elements_text(output_ids)::int),
           meta_info, error,
           (meta_info->>'dp_rank')::int, (meta_info->>'prefill_dp_rank')::int,
           (meta_info->>'prompt_tokens')::int, (meta_info->>'completion_tokens')::int,
           meta_info->'finish_reason'->>'type',
           logprobs, choices
    FROM input
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, job_id, status
), req AS (
    UPDATE requests q SET status = ins.status, updated_at = now()
    FROM ins WHERE q.id = ins.request_id
    RETURNING 1
), counts AS (
    SELECT job_id,
           count(*) FILTER (WHERE status = 'completed') AS c,
           count(*) FILTER (WHERE status = 'failed') AS f,
           count(*) FILTER (WHERE status = 'cancelled') AS x
    FROM ins WHERE job_id IS NOT NULL GROUP BY job_id
), jobs_done AS (
    UPDATE jobs j SET
        completed = j.completed + counts.c,
        failed = j.failed + counts.f,
        cancelled = j.cancelled + counts.x,
        status = CASE
            WHEN j.completed + j.failed + j.cancelled + counts.c + counts.f + counts.x < j.total THEN j.status
            WHEN j.status = 'cancelling' THEN 'cancelled'
            ELSE 'completed' END,
        finished_at = CASE
            WHEN j.completed + j.failed + j.cancelled + counts.c + counts.f + counts.x < j.total THEN j.finished_at
            ELSE now() END
    FROM counts WHERE j.id = counts.job_id
    RETURNING 1
)
SELECT count(*) FROM ins
"#;

pub(crate) async fn insert_outcomes(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[Outcome],
) -> Result<u64, StoreError> {
    let mut inserted = 0u64;
    for chunk in outcomes.chunks(2000) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|o| {
                pg_safe(json!({
                    "request_id": o.request_id,
                    "job_id": o.job_id,
                    "custom_id": o.custom_id,
                    "status": o.status.as_str(),
                    "text": o.text,
                    "output_ids": o.output_ids,
                    "meta_info": o.meta_info,
                    "error": o.error,
                    "logprobs": o.logprobs,
                    "choices": (!o.choices.is_empty()).then_some(&o.choices),
                }))
            })
            .collect();
        let n: i64 = sqlx::query_scalar(INSERT_OUTCOMES).bind(Value::Array(rows)).fetch_one(&mut **tx).await?;
        inserted += n as u64;
    }
    Ok(inserted)
}

/// PostgreSQL text and jsonb cannot hold U+0000, which a model can generate and a prompt can
/// contain; it is stored as U+FFFD, the replacement character.
pub(crate) fn pg_safe(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{FFFD}")),
        Value::Array(items) => Value::Array(items.into_iter().map(pg_safe).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k.replace('\0', "\u{FFFD}"), pg_safe(v))).collect())
        }
        other => other,
    }
}

const EXPORT_SELECT: &str = "SELECT s.request_id, s.custom_id, q.line_no, q.url, q.body, s.status, s.text,
        s.output_ids, s.meta_info, s.error, s.prompt_tokens, s.completion_tokens, s.finish_reason, s.created_at,
        s.logprobs, s.choices
    FROM results s JOIN requests q ON q.id = s.request_id";

/// One line of `pdq results`: a result with the request it answers.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRow {
    pub request_id: Uuid,
    pub custom_id: Option<String>,
    pub line_no: Option<i32>,
    pub url: Option<String>,
    pub body: Option<Value>,
    pub status: String,
    pub text: Option<String>,
    pub output_ids: Option<Vec<i32>>,
    pub meta_info: Option<Value>,
    pub error: Option<Value>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub finish_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Choice 0's log-probabilities (`pdq_protocol::TokenLogprob`s), when asked for.
    pub logprobs: Option<Value>,
    /// Every choice (`pdq_protocol::Choice`s) when `n` > 1.
    pub choices: Option<Value>,
}

impl Store {
    /// Writes a batch of results in one transaction and returns how many were new.
    pub async fn write_results(&self, outcomes: &[Outcome]) -> Result<ResultsWritten, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = insert_outcomes(&mut tx, outcomes).await?;
        tx.commit().await?;
        Ok(ResultsWritten { inserted })
    }

    /// A job's results in input order.
    pub async fn export_rows(&self, job_id: Uuid) -> Result<Vec<ExportRow>, StoreError> {
        Ok(sqlx::query_as::<_, ExportRow>(&format!("{EXPORT_SELECT} WHERE s.job_id = $1 ORDER BY q.line_no, q.id"))
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Up to `limit` of a job's completed results (or the others, when `completed` is false) in
    /// input order, after the row `after` names: a cursor for streaming the output files.
    pub async fn export_page(
        &self,
        job_id: Uuid,
        completed: bool,
        after: Option<(i32, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ExportRow>, StoreError> {
        let (line, id) = after.map_or((None, None), |(l, i)| (Some(l), Some(i)));
        Ok(sqlx::query_as::<_, ExportRow>(&format!(
            "{EXPORT_SELECT} WHERE s.job_id = $1 AND (s.status = 'completed') = $2
               AND ($3::int IS NULL OR (COALESCE(q.line_no, 0), q.id) > ($3, $4::uuid))
             ORDER BY COALESCE(q.line_no, 0), q.id LIMIT $5"
        ))
        .bind(job_id)
        .bind(completed)
        .bind(line)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_everywhere() {
        let v = pg_safe(json!({"a\u{0}": ["x\u{0}y", 1], "b": "ok"}));
        assert_eq!(v, json!({"a\u{FFFD}": ["x\u{FFFD}y", 1], "b": "ok"}));
    }
}
