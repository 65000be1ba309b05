//! `/v1/batches`. A batch is a pdq job: creation validates and enqueues the input file with
//! `pdq submit`'s code, and the batch object is read back from the job's row, so `pdq status`
//! and SQL see the same batch. The batch row is written first, so a batch is listed (as
//! `validating`) while its lines are, and a file refused as a whole is a `failed` batch with
//! `errors`, as at OpenAI.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{Duration, Utc};
use pdq_producer::{BatchSource, Lines, ProducerError, SubmitOptions};
use pdq_protocol::Endpoint;
use pdq_store::{BatchRow, JobStatus, NewBatch, StoreError};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::ids::{parse_batch_id, FileId};
use crate::{expiry, files, reply, ApiError, ApiState};

/// OpenAI's limits on `metadata`.
const METADATA_KEYS: usize = 16;
const METADATA_KEY_CHARS: usize = 64;
const METADATA_VALUE_CHARS: usize = 512;

#[derive(Deserialize)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    output_expires_after: Option<ExpiresAfter>,
}

#[derive(Deserialize)]
struct ExpiresAfter {
    anchor: Option<String>,
    seconds: Option<i64>,
}

/// A creation request whose fields all checked out.
struct ValidBatch {
    input_file: Uuid,
    endpoint: Endpoint,
    window_hours: u32,
    completion_window: String,
    metadata: Option<Value>,
    /// `metadata.priority` (CONTRACT §13): the job's priority, an integer written as a string
    /// since OpenAI's metadata values are strings.
    priority: i32,
    output_expires_after_s: Option<i64>,
}

impl TryFrom<CreateBatch> for ValidBatch {
    type Error = ApiError;

    fn try_from(raw: CreateBatch) -> Result<ValidBatch, ApiError> {
        let input_file = match FileId::parse(&raw.input_file_id) {
            Ok(FileId::Upload(id)) => id,
            _ => {
                return Err(ApiError::invalid(
                    format!("`input_file_id` '{}' is not an uploaded file's id", raw.input_file_id),
                    "input_file_id",
                ))
            }
        };
        let endpoint = Endpoint::from_path(&raw.endpoint).ok_or_else(|| {
            ApiError::invalid(
                format!("`endpoint` must be one of {}, got '{}'", Endpoint::paths(), raw.endpoint),
                "endpoint",
            )
        })?;
        let window_hours = raw
            .completion_window
            .strip_suffix('h')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "`completion_window` must be '24h' or another number of hours ('Nh', N >= 1), got '{}'",
                        raw.completion_window
                    ),
                    "completion_window",
                )
            })?;
        if let Some(m) = &raw.metadata {
            check_metadata(m)?;
        }
        let priority = match raw.metadata.as_ref().and_then(|m| m.get("priority")).and_then(Value::as_str) {
            None => 0,
            Some(p) => p.trim().parse::<i32>().map_err(|_| {
                ApiError::invalid(format!("`metadata.priority` must be an integer, got '{p}'"), "metadata")
            })?,
        };
        let output_expires_after_s = match &raw.output_expires_after {
            None => None,
            Some(e) => Some(expiry::seconds(e.anchor.as_deref(), e.seconds, "output_expires_after")?),
        };
        Ok(ValidBatch {
            output_expires_after_s,
            priority,
            input_file,
            endpoint,
            window_hours,
            completion_window: raw.completion_window,
            metadata: raw.metadata.map(Value::Object),
        })
    }
}

fn check_metadata(m: &Map<String, Value>) -> Result<(), ApiError> {
    let bad = |msg: String| Err(ApiError::invalid(msg, "metadata"));
    if m.len() > METADATA_KEYS {
        return bad(format!("`metadata` may hold at most {METADATA_KEYS} keys, got {}", m.len()));
    }
    for (k, v) in m {
        if k.chars().count() > METADATA_KEY_CHARS {
            return bad(format!("`metadata` keys may be at most {METADATA_KEY_CHARS} characters, got '{k}'"));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= METADATA_VALUE_CHARS => {}
            Some(_) => return bad(format!("`metadata.{k}` may be at most {METADATA_VALUE_CHARS} characters")),
            None => return bad(format!("`metadata.{k}` must be a string")),
        }
    }
    Ok(())
}

pub(crate) async fn create(State(s): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let raw: CreateBatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Invalid { message: format!("Invalid request body: {e}"), param: None })?;
    let valid = ValidBatch::try_from(raw)?;
    let file = files::uploaded(&s, valid.input_file, &FileId::Upload(valid.input_file).to_string()).await?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid("`input_file_id` must be a file uploaded with purpose 'batch'", "input_file_id"));
    }
    let shape = pdq_producer::cluster_shape(&s.store, &s.namespace).await?;
    let id = Uuid::now_v7();
    let created_at = Utc::now();
    s.store
        .create_batch(&NewBatch {
            id,
            input_file_id: file.id,
            endpoint: valid.endpoint.path().to_string(),
            completion_window: valid.completion_window.clone(),
            metadata: valid.metadata.clone(),
            created_at,
            expires_at: created_at + Duration::hours(valid.window_hours.into()),
            // At most 30 days in seconds: fits.
            output_expires_after_s: valid.output_expires_after_s.map(|s| s as i32),
        })
        .await?;
    // Accepted on a task of its own: a client that hangs up mid-request must not stop it; the
    // job is accepted whole or not at all either way, and the feeders publish it.
    let task = {
        let s = s.clone();
        let opts = SubmitOptions {
            name: Some(format!("batch {id}")),
            policy: s.config.policy,
            priority: valid.priority,
            completion_window: std::time::Duration::from_secs(u64::from(valid.window_hours) * 3600),
            ..SubmitOptions::default()
        };
        let source = FileId::Upload(file.id).to_string();
        let endpoint = valid.endpoint;
        // Read from its stored chunks line by line: memory stays bounded whatever its size.
        let lines = Lines::upload(s.store.clone(), file.id);
        tokio::spawn(async move {
            let input = BatchSource { source, endpoint: Some(endpoint), job_id: id };
            pdq_producer::submit_lines(&s.store, &s.namespace, &input, lines, &shape, &opts).await
        })
    };
    let submitted = task.await.map_err(|e| ApiError::Internal(format!("batch submission stopped: {e}")))?;
    if let Err(e) = submitted {
        let line = match &e {
            ProducerError::Rejected(pdq_protocol::ValidationError::DuplicateCustomId { line, .. }) => Some(*line),
            _ => None,
        };
        let errors = json!({"object": "list", "data": [{"code": e.code(), "message": e.to_string(), "param": null, "line": line}]});
        s.store.fail_batch(id, &errors).await?;
        // A file refused as a whole is a failed batch; the broker or database away is an error.
        if !matches!(e, ProducerError::Rejected(_) | ProducerError::Empty(_) | ProducerError::NotUtf8 { .. }) {
            return Err(e.into());
        }
    }
    Ok(reply::ok(&batch_object(&found(&s, id).await?)))
}

pub(crate) async fn retrieve(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(reply::ok(&batch_object(&found(&s, parse_batch_id(&id)?).await?)))
}

#[derive(Deserialize)]
pub(crate) struct ListParams {
    limit: Option<String>,
    after: Option<String>,
}

pub(crate) async fn list(
    State(s): State<ApiState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = query?;
    let limit = reply::limit(p.limit.as_deref(), 20, 100)?;
    let after = match p.after.as_deref() {
        None => None,
        Some(a) => Some(
            Uuid::try_parse(a)
                .map_err(|_| ApiError::invalid(format!("`after` must be a batch id, got '{a}'"), "after"))?,
        ),
    };
    let rows = s.store.batches(after, limit as i64 + 1).await?;
    Ok(reply::list(rows.iter().map(batch_object).collect(), limit))
}

pub(crate) async fn cancel(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let uuid = parse_batch_id(&id)?;
    let batch = found(&s, uuid).await?;
    if batch.job_status.is_none() {
        return Err(ApiError::Conflict(format!("Cannot cancel a batch with status '{}'", status(&batch))));
    }
    match s.store.cancel_batch(uuid).await {
        Ok(()) => {}
        Err(StoreError::NotCancellable { status, .. }) => {
            return Err(ApiError::Conflict(format!("Cannot cancel a batch with status '{status}'")))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(reply::ok(&batch_object(&found(&s, uuid).await?)))
}

async fn found(s: &ApiState, id: Uuid) -> Result<BatchRow, ApiError> {
    s.store.batch(id).await?.ok_or_else(|| ApiError::NotFound { what: "batch", id: id.to_string() })
}

/// The job's status is the batch's (the names are OpenAI's), but an expired batch's job reads
/// `cancelled`; without a job, the batch is still validating, or was refused.
fn status(b: &BatchRow) -> &str {
    match (&b.job_status, &b.errors) {
        (Some(_), _) if b.expired_at.is_some() => "expired",
        (Some(s), _) => s,
        (None, Some(_)) => "failed",
        (None, None) => "validating",
    }
}

pub(crate) fn batch_object(b: &BatchRow) -> Value {
    let status = status(b);
    let job = b.job_status.as_deref().and_then(JobStatus::parse);
    let ended = job.is_some_and(JobStatus::is_terminal);
    let ts = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.timestamp());
    let at = |s: &str| if status == s { ts(b.finished_at) } else { None };
    let (completed, failed, cancelled) = (b.completed.unwrap_or(0), b.failed.unwrap_or(0), b.cancelled.unwrap_or(0));
    json!({
        "id": b.id.to_string(),
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": b.errors,
        "input_file_id": FileId::Upload(b.input_file_id).to_string(),
        "completion_window": b.completion_window,
        "status": status,
        "output_file_id": (ended && completed > 0).then(|| FileId::Output(b.id).to_string()),
        "error_file_id": (ended && failed + cancelled > 0).then(|| FileId::Errors(b.id).to_string()),
        "created_at": b.created_at.timestamp(),
        "in_progress_at": ts(b.started_at),
        "expires_at": b.expires_at.timestamp(),
        // Results are written as they come, so a job finalizes the moment it completes.
        "finalizing_at": at("completed"),
        "completed_at": at("completed"),
        "failed_at": ts(b.failed_at).or(at("failed")),
        "expired_at": ts(b.expired_at),
        "cancelling_at": ts(b.cancelling_at),
        "cancelled_at": at("cancelled"),
        "request_counts": {"total": b.total.unwrap_or(0), "completed": completed, "failed": failed + cancelled},
        "model": b.model,
        "usage": b.usage.openai(),
        "metadata": b.metadata,
    })
}
