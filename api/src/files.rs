//! `/v1/files`. An upload streams into PostgreSQL in chunks of [`CHUNK_BYTES`], within one
//! transaction that commits only once the whole body arrived within the limits; memory holds one
//! chunk at a time. The multipart `purpose` may come before or after the file.

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use pdq_store::{FileRow, FileUpload, ListOrder, NewFile};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ids::FileId;
use crate::{expiry, output, reply, ApiError, ApiState};

const CHUNK_BYTES: usize = 1 << 20;
const PURPOSES: &[&str] = &["batch"];
/// Form fields other than the file (`purpose`) are short.
const MAX_FIELD_BYTES: usize = 1024;

pub(crate) fn file_object(row: &FileRow) -> Value {
    json!({
        "id": FileId::Upload(row.id).to_string(),
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at.timestamp(),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": null,
        "expires_at": row.expires_at.map(|t| t.timestamp()),
    })
}

/// Bytes and lines of an upload, counted as it streams (a last line without `\n` counts).
#[derive(Default)]
struct Counter {
    bytes: u64,
    newlines: u64,
    ends_with_newline: bool,
}

impl Counter {
    fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.newlines += data.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(&last) = data.last() {
            self.ends_with_newline = last == b'\n';
        }
    }

    fn lines(&self) -> u64 {
        self.newlines + u64::from(self.bytes > 0 && !self.ends_with_newline)
    }
}

pub(crate) async fn upload(
    State(s): State<ApiState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart?;
    let mut file: Option<(FileUpload, String, Counter)> = None;
    let mut purpose: Option<String> = None;
    // `expires_after[anchor]` and `expires_after[seconds]`, as OpenAI's clients send the object.
    let (mut anchor, mut seconds): (Option<String>, Option<String>) = (None, None);
    while let Some(mut field) = multipart.next_field().await? {
        match field.name() {
            Some("file") => {
                if file.is_some() {
                    return Err(ApiError::invalid("Only one `file` may be uploaded per request", "file"));
                }
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                let mut upload = s.store.begin_upload().await?;
                let mut count = Counter::default();
                let mut buf = Vec::with_capacity(CHUNK_BYTES);
                while let Some(data) = field.chunk().await? {
                    count.feed(&data);
                    if count.bytes > s.config.max_file_bytes {
                        return Err(ApiError::FileTooLarge { limit: s.config.max_file_bytes });
                    }
                    if count.newlines > s.config.max_file_lines {
                        return Err(ApiError::TooManyLines { limit: s.config.max_file_lines });
                    }
                    buf.extend_from_slice(&data);
                    if buf.len() >= CHUNK_BYTES {
                        upload.append(&buf).await?;
                        buf.clear();
                    }
                }
                if count.lines() > s.config.max_file_lines {
                    return Err(ApiError::TooManyLines { limit: s.config.max_file_lines });
                }
                if !buf.is_empty() {
                    upload.append(&buf).await?;
                }
                file = Some((upload, filename, count));
            }
            Some("purpose") => purpose = Some(short_text(&mut field).await?),
            Some("expires_after[anchor]") => anchor = Some(short_text(&mut field).await?),
            Some("expires_after[seconds]") => seconds = Some(short_text(&mut field).await?),
            // Fields pdq does not use are read past.
            _ => while field.chunk().await?.is_some() {},
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("`purpose` is required", "purpose"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(format!("`purpose` must be 'batch', got '{purpose}'"), "purpose"));
    }
    let expires_after_s = if anchor.is_none() && seconds.is_none() {
        None
    } else {
        let n = seconds.as_deref().map(|s| s.trim().parse::<i64>().map_err(|_| s)).transpose().map_err(|got| {
            ApiError::invalid(format!("`expires_after.seconds` must be an integer, got '{got}'"), "expires_after")
        })?;
        Some(expiry::seconds(anchor.as_deref(), n, "expires_after")?)
    };
    let (upload, filename, count) = file.ok_or_else(|| ApiError::invalid("`file` is required", "file"))?;
    let new = NewFile { filename, purpose, bytes: count.bytes as i64, lines: count.lines() as i32, expires_after_s };
    Ok(reply::ok(&file_object(&upload.finish(&new).await?)))
}

/// A small text field, refused past [`MAX_FIELD_BYTES`] instead of buffered whole.
async fn short_text(field: &mut axum::extract::multipart::Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("").to_string();
    let mut bytes = Vec::new();
    while let Some(data) = field.chunk().await? {
        bytes.extend_from_slice(&data);
        if bytes.len() > MAX_FIELD_BYTES {
            return Err(ApiError::Invalid {
                message: format!("`{name}` is over {MAX_FIELD_BYTES} bytes"),
                param: None,
            });
        }
    }
    String::from_utf8(bytes).map_err(|_| ApiError::Invalid { message: format!("`{name}` is not UTF-8"), param: None })
}

pub(crate) async fn retrieve(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let object = match FileId::parse(&id)? {
        FileId::Upload(uuid) => file_object(&uploaded(&s, uuid, &id).await?),
        generated => output::file_object(&s.store, generated, &id).await?,
    };
    Ok(reply::ok(&object))
}

pub(crate) async fn content(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let body = match FileId::parse(&id)? {
        FileId::Upload(uuid) => {
            uploaded(&s, uuid, &id).await?;
            Body::from_stream(output::chunks(s.store.clone(), uuid))
        }
        generated => {
            output::batch_of(&s.store, generated, &id).await?;
            Body::from_stream(output::lines(s.store.clone(), generated))
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListParams {
    purpose: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    order: Option<String>,
}

pub(crate) async fn list(
    State(s): State<ApiState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = query?;
    let limit = reply::limit(p.limit.as_deref(), 10_000, 10_000)?;
    let order = match p.order.as_deref() {
        None | Some("desc") => ListOrder::Desc,
        Some("asc") => ListOrder::Asc,
        Some(other) => {
            return Err(ApiError::invalid(format!("`order` must be 'asc' or 'desc', got '{other}'"), "order"))
        }
    };
    let after = match p.after.as_deref() {
        None => None,
        Some(a) => match FileId::parse(a) {
            Ok(FileId::Upload(id)) => Some(id),
            _ => return Err(ApiError::invalid(format!("`after` must be a file id, got '{a}'"), "after")),
        },
    };
    let rows = s.store.files(p.purpose.as_deref(), after, order, limit as i64 + 1).await?;
    Ok(reply::list(rows.iter().map(file_object).collect(), limit))
}

pub(crate) async fn delete(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match FileId::parse(&id)? {
        FileId::Upload(uuid) if s.store.delete_file(uuid).await? => {
            Ok(reply::ok(&json!({"id": id, "object": "file", "deleted": true})))
        }
        FileId::Upload(_) => Err(ApiError::NotFound { what: "file", id }),
        _ => Err(ApiError::invalid(
            "A batch's output and error files are generated from its results and cannot be deleted",
            "file_id",
        )),
    }
}

pub(crate) async fn uploaded(s: &ApiState, uuid: uuid::Uuid, id: &str) -> Result<FileRow, ApiError> {
    s.store.file(uuid).await?.ok_or_else(|| ApiError::NotFound { what: "file", id: id.to_string() })
}
