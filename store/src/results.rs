//! Result rows. Written in batches, one statement per batch: the insert, the request status and
//! the job counters (requests and tokens) move together, and `ON CONFLICT DO NOTHING` makes a
//! redelivered message's second write count for nothing.

use chrono::{DateTime, Utc};
use pdq_protocol::Outcome;
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError};

/// Which of a batch's rows were new (the rest were already written: a redelivery, or a
/// request whose job was cancelled while it ran).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultsWritten {
    pub inserted: Vec<Uuid>,
}

const INSERT_OUTCOMES: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[])
        AS r(request_id, job_id, custom_id, status, text, output_ids, meta_info, error, logprobs, choices)
), ins AS (
    INSERT INTO results (request_id, job_id, custom_id, status, text, output_ids, meta_info, error,
                         dp_rank, prefill_dp_rank, prompt_tokens, completion_tokens, cached_tokens,
                         finish_reason, logprobs, choices)
    SELECT request_id, job_id, custom_id, status, text,
           output_ids::int[],
           meta_info, error,
           (meta_info->>'dp_rank')::int, (meta_info->>'prefill_dp_rank')::int,
           (meta_info->>'prompt_tokens')::int, (meta_info->>'completion_tokens')::int,
           (meta_info->>'cached_tokens')::int,
           meta_info->'finish_reason'->>'type',
           logprobs, choices
    FROM input
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, job_id, status, prompt_tokens, cached_tokens, completion_tokens
), req AS (
    UPDATE requests q SET status = ins.status, updated_at = now()
    FROM ins WHERE q.id = ins.request_id
    RETURNING 1
), counts AS (
    SELECT job_id,
           count(*) FILTER (WHERE status = 'completed') AS c,
           count(*) FILTER (WHERE status = 'failed') AS f,
           count(*) FILTER (WHERE status = 'cancelled') AS x,
           COALESCE(sum(prompt_tokens), 0) AS p,
           COALESCE(sum(cached_tokens), 0) AS ct,
           COALESCE(sum(completion_tokens), 0) AS o
    FROM ins WHERE job_id IS NOT NULL GROUP BY job_id
), jobs_done AS (
    UPDATE jobs j SET
        completed = j.completed + counts.c,
        failed = j.failed + counts.f,
        cancelled = j.cancelled + counts.x,
        prompt_tokens = j.prompt_tokens + counts.p,
        cached_tokens = j.cached_tokens + counts.ct,
        completion_tokens = j.completion_tokens + counts.o,
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
SELECT COALESCE(array_agg(request_id), '{}') FROM ins
"#;

pub(crate) async fn insert_outcomes(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[Outcome],
) -> Result<Vec<Uuid>, StoreError> {
    let mut inserted = Vec::new();
    for chunk in outcomes.chunks(2000) {
        // One array per column (UNNEST): PostgreSQL parses each value once, as its own type,
        // instead of taking a JSON document apart row by row.
        let mut c = Columns::with_capacity(chunk.len());
        for o in chunk {
            c.request_id.push(o.request_id);
            c.job_id.push(o.job_id);
            c.custom_id.push(o.custom_id.as_deref().map(no_nul));
            c.status.push(o.status.as_str());
            c.text.push(o.text.as_deref().map(no_nul));
            c.output_ids.push(pg_array(&o.output_ids));
            c.meta_info.push(pg_safe(serde_json::to_value(&o.meta_info).expect("meta_info serializes")));
            c.error.push(o.error.as_ref().map(|e| pg_safe(serde_json::to_value(e).expect("an error serializes"))));
            c.logprobs.push(o.logprobs.as_ref().map(|l| pg_safe(serde_json::to_value(l).expect("logprobs serialize"))));
            let choices = (!o.choices.is_empty()).then_some(&o.choices);
            c.choices.push(choices.map(|ch| pg_safe(serde_json::to_value(ch).expect("choices serialize"))));
        }
        let ids: Vec<Uuid> = sqlx::query_scalar(INSERT_OUTCOMES)
            .bind(&c.request_id)
            .bind(&c.job_id)
            .bind(&c.custom_id)
            .bind(&c.status)
            .bind(&c.text)
            .bind(&c.output_ids)
            .bind(&c.meta_info)
            .bind(&c.error)
            .bind(&c.logprobs)
            .bind(&c.choices)
            .fetch_one(&mut **tx)
            .await?;
        insert_embeddings(tx, chunk, &ids).await?;
        inserted.extend(ids);
    }
    Ok(inserted)
}

/// The vectors of the embedding rows among `outcomes` that `inserted` holds (a redelivery's
/// second write has none to add).
async fn insert_embeddings(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[Outcome],
    inserted: &[Uuid],
) -> Result<(), StoreError> {
    let with_vectors = outcomes.iter().filter(|o| !o.embeddings.is_empty());
    if with_vectors.clone().next().is_none() {
        return Ok(());
    }
    let inserted: std::collections::HashSet<&Uuid> = inserted.iter().collect();
    let (mut request_id, mut index, mut vector) = (Vec::new(), Vec::new(), Vec::new());
    for o in with_vectors.filter(|o| inserted.contains(&o.request_id)) {
        for (i, v) in o.embeddings.iter().enumerate() {
            request_id.push(o.request_id);
            index.push(i as i32);
            vector.push(pg_array(v));
        }
    }
    if request_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO embeddings (request_id, input_index, embedding)
         SELECT r, i, v::real[] FROM unnest($1::uuid[], $2::int[], $3::text[]) AS e(r, i, v)",
    )
    .bind(&request_id)
    .bind(&index)
    .bind(&vector)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A batch of rows as columns, for UNNEST.
struct Columns<'a> {
    request_id: Vec<Uuid>,
    job_id: Vec<Option<Uuid>>,
    custom_id: Vec<Option<String>>,
    status: Vec<&'a str>,
    text: Vec<Option<String>>,
    output_ids: Vec<String>,
    meta_info: Vec<Value>,
    error: Vec<Option<Value>>,
    logprobs: Vec<Option<Value>>,
    choices: Vec<Option<Value>>,
}

impl Columns<'_> {
    fn with_capacity(n: usize) -> Self {
        Columns {
            request_id: Vec::with_capacity(n),
            job_id: Vec::with_capacity(n),
            custom_id: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            text: Vec::with_capacity(n),
            output_ids: Vec::with_capacity(n),
            meta_info: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            logprobs: Vec::with_capacity(n),
            choices: Vec::with_capacity(n),
        }
    }
}

/// `{1,2,3}`: an array literal (int[] of token ids, real[] of a vector), since UNNEST cannot
/// take an array of arrays of different lengths. Rust prints an f32 as the shortest decimal
/// that reads back as the same f32, so a real[] holds the engine's bits exactly.
fn pg_array<T: std::fmt::Display>(items: &[T]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(items.len() * 8 + 2);
    s.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write!(s, "{item}").expect("writing to a String");
    }
    s.push('}');
    s
}

fn no_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
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
        s.logprobs, s.choices,
        (SELECT jsonb_agg(to_jsonb(e.embedding) ORDER BY e.input_index) FROM embeddings e
          WHERE e.request_id = s.request_id) AS embeddings
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
    /// An embeddings request's vectors, in input order: an array of arrays of numbers.
    pub embeddings: Option<Value>,
}

impl Store {
    /// Writes a batch of results in one transaction and returns which were new.
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
    use serde_json::json;

    #[test]
    fn nul_is_replaced_everywhere() {
        let v = pg_safe(json!({"a\u{0}": ["x\u{0}y", 1], "b": "ok"}));
        assert_eq!(v, json!({"a\u{FFFD}": ["x\u{FFFD}y", 1], "b": "ok"}));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_row_written_twice_is_new_once(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let job = crate::NewJob::new(Uuid::now_v7(), "t");
        let request = |i: i32| crate::NewRequest {
            id: Uuid::now_v7(),
            job_id: Some(job.id),
            line_no: Some(i),
            custom_id: (i == 1).then(|| "a\tb\u{0}".to_string()),
            url: Some("/v1/completions".into()),
            body: Value::Null,
            routed_dp_rank: None,
            disagg_prefill_dp_rank: None,
            outbound: None,
        };
        let requests = [request(1), request(2)];
        store.create_job(&job, &requests, &[]).await.unwrap();
        let done = Outcome {
            request_id: requests[0].id,
            job_id: Some(job.id),
            custom_id: requests[0].custom_id.clone(),
            status: pdq_protocol::ResultStatus::Completed,
            text: Some("line\nwith\u{0}nul".into()),
            output_ids: vec![5, 6, 7],
            meta_info: pdq_protocol::MetaInfo {
                id: "x".into(),
                dp_rank: Some(1),
                completion_tokens: 3,
                cached_tokens: 16,
                ..Default::default()
            },
            error: None,
            logprobs: None,
            choices: Vec::new(),
            embeddings: Vec::new(),
        };
        let cancelled = Outcome::cancelled(requests[1].id, Some(job.id), None);
        let first = store.write_results(&[done.clone(), cancelled.clone()]).await.unwrap();
        assert_eq!(first.inserted.len(), 2);
        let again = store.write_results(&[done.clone(), cancelled]).await.unwrap();
        assert!(again.inserted.is_empty(), "a second write of the same rows is not new");
        let (text, ids, dp_rank, custom_id, cached): (String, Vec<i32>, i32, String, i32) = sqlx::query_as(
            "SELECT text, output_ids, dp_rank, custom_id, cached_tokens FROM results WHERE request_id = $1",
        )
        .bind(done.request_id)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!((text.as_str(), ids, dp_rank, cached), ("line\nwith\u{FFFD}nul", vec![5, 6, 7], 1, 16));
        assert_eq!(custom_id, "a\tb\u{FFFD}");
        let j = store.job(job.id).await.unwrap();
        assert_eq!((j.completed, j.cancelled, j.status.as_str()), (1, 1, "completed"));
    }
}
