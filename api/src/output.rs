//! Streamed file bodies: an upload's chunks one at a time, and a batch's output or error file
//! generated from its results a page of rows at a time (`pdq results`' lines), so neither is
//! ever held whole in memory. A database error mid-stream cuts the body short; the client sees
//! a broken transfer, never a truncated file that looks complete.

use axum::body::Bytes;
use futures_util::stream::{try_unfold, Stream, TryStreamExt};
use pdq_store::{BatchRow, Store};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::ids::FileId;
use crate::ApiError;

const PAGE_ROWS: i64 = 500;

pub(crate) fn chunks(store: Store, file: Uuid) -> impl Stream<Item = Result<Bytes, ApiError>> + Send + 'static {
    try_unfold(0i32, move |seq| {
        let store = store.clone();
        async move { Ok(store.file_chunk(file, seq).await?.map(|data| (Bytes::from(data), seq + 1))) }
    })
}

/// The lines of a generated file, each ending in `\n`.
pub(crate) fn lines(store: Store, file: FileId) -> impl Stream<Item = Result<Bytes, ApiError>> + Send + 'static {
    let (job, completed) = match file {
        FileId::Output(job) => (job, true),
        FileId::Errors(job) | FileId::Upload(job) => (job, false),
    };
    // `None`: the last page was short, so there is no more.
    try_unfold(Some(None), move |cursor: Option<Option<(i32, Uuid)>>| {
        let store = store.clone();
        async move {
            let Some(after) = cursor else { return Ok(None) };
            let rows = store.export_page(job, completed, after, PAGE_ROWS).await?;
            let Some(last) = rows.last() else { return Ok(None) };
            let next = (rows.len() as i64 == PAGE_ROWS).then_some(Some((last.line_no.unwrap_or(0), last.request_id)));
            let mut text = String::new();
            for r in &rows {
                text.push_str(&pdq_producer::export_line(r));
                text.push('\n');
            }
            Ok(Some((Bytes::from(text), next)))
        }
    })
}

/// The batch a generated file belongs to; only an ended batch has its files.
pub(crate) async fn batch_of(store: &Store, file: FileId, id: &str) -> Result<BatchRow, ApiError> {
    let not_found = || ApiError::NotFound { what: "file", id: id.to_string() };
    let job = match file {
        FileId::Output(job) | FileId::Errors(job) => job,
        FileId::Upload(_) => return Err(not_found()),
    };
    let batch = store.batch(job).await?.ok_or_else(not_found)?;
    let ended = batch.job_status.as_deref().and_then(pdq_store::JobStatus::parse).is_some_and(|s| s.is_terminal());
    // Past `output_expires_after` the files are gone; the results rows they came from stay.
    let expired = batch.output_expires_at.is_some_and(|t| t <= chrono::Utc::now());
    if !ended || expired {
        return Err(not_found());
    }
    Ok(batch)
}

/// The file object of a generated file; its size is counted by generating it.
pub(crate) async fn file_object(store: &Store, file: FileId, id: &str) -> Result<Value, ApiError> {
    let batch = batch_of(store, file, id).await?;
    let bytes = lines(store.clone(), file).try_fold(0u64, |n, b| async move { Ok(n + b.len() as u64) }).await?;
    let (suffix, purpose) = match file {
        FileId::Output(_) => ("output", "batch_output"),
        _ => ("error", "batch_output"),
    };
    Ok(json!({
        "id": id,
        "object": "file",
        "bytes": bytes,
        "created_at": batch.finished_at.unwrap_or(batch.created_at).timestamp(),
        "filename": format!("batch_{}_{suffix}.jsonl", batch.id),
        "purpose": purpose,
        "status": "processed",
        "status_details": null,
        "expires_at": batch.output_expires_at.map(|t| t.timestamp()),
    }))
}
