//! Files of `pdq api`. Bytes live in `file_chunks`, written while the upload streams in; one
//! transaction per upload, so an upload that is cut off or refused leaves nothing behind.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRow {
    pub id: Uuid,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub lines: i32,
    pub created_at: DateTime<Utc>,
    /// From the upload's `expires_after`; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewFile {
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub lines: i32,
    /// Seconds after the upload that the file expires (`expires_after`); `None`: never.
    pub expires_after_s: Option<i64>,
}

/// Newest first, or oldest first; `after` is the id the previous page ended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder {
    Desc,
    Asc,
}

/// An upload in progress: chunks are written as they arrive, the files row at the end.
pub struct FileUpload {
    tx: Transaction<'static, Postgres>,
    id: Uuid,
    seq: i32,
}

const FILE_COLUMNS: &str = "id, filename, purpose, bytes, lines, created_at, expires_at";
/// An expired file is gone to every reader, whether or not the sweeper has deleted it yet.
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

impl FileUpload {
    pub fn id(&self) -> Uuid {
        self.id
    }

    pub async fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
            .bind(self.id)
            .bind(self.seq)
            .bind(data)
            .execute(&mut *self.tx)
            .await?;
        self.seq += 1;
        Ok(())
    }

    pub async fn finish(mut self, file: &NewFile) -> Result<FileRow, StoreError> {
        let row = sqlx::query_as::<_, FileRow>(&format!(
            "INSERT INTO files (id, filename, purpose, bytes, lines, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 second') RETURNING {FILE_COLUMNS}"
        ))
        .bind(self.id)
        .bind(file.filename.replace('\0', "\u{FFFD}"))
        .bind(file.purpose.replace('\0', "\u{FFFD}"))
        .bind(file.bytes)
        .bind(file.lines)
        .bind(file.expires_after_s)
        .fetch_one(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(row)
    }
}

impl Store {
    pub async fn begin_upload(&self) -> Result<FileUpload, StoreError> {
        Ok(FileUpload { tx: self.pool.begin().await?, id: Uuid::now_v7(), seq: 0 })
    }

    pub async fn file(&self, id: Uuid) -> Result<Option<FileRow>, StoreError> {
        Ok(sqlx::query_as::<_, FileRow>(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND {LIVE}"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Up to `limit` files after `after` (ids are UUIDv7, so id order is upload order).
    pub async fn files(
        &self,
        purpose: Option<&str>,
        after: Option<Uuid>,
        order: ListOrder,
        limit: i64,
    ) -> Result<Vec<FileRow>, StoreError> {
        let (cmp, dir) = match order {
            ListOrder::Desc => ("<", "DESC"),
            ListOrder::Asc => (">", "ASC"),
        };
        Ok(sqlx::query_as::<_, FileRow>(&format!(
            "SELECT {FILE_COLUMNS} FROM files
             WHERE ($1::text IS NULL OR purpose = $1) AND ($2::uuid IS NULL OR id {cmp} $2) AND {LIVE}
             ORDER BY id {dir} LIMIT $3"
        ))
        .bind(purpose)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// True when there was such a file (an expired one is not there any more).
    pub async fn delete_file(&self, id: Uuid) -> Result<bool, StoreError> {
        let done =
            sqlx::query(&format!("DELETE FROM files WHERE id = $1 AND {LIVE}")).bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the files whose expiry passed, with their bytes; returns how many. A batch keeps
    /// its `input_file_id` (its requests were copied into the job when it was created).
    pub async fn sweep_expired_files(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM files WHERE expires_at <= now()").execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Chunk `seq` of a file, `None` past the last one.
    pub async fn file_chunk(&self, id: Uuid, seq: i32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2")
            .bind(id)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?)
    }
}
