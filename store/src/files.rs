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
}

#[derive(Debug, Clone)]
pub struct NewFile {
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub lines: i32,
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

const FILE_COLUMNS: &str = "id, filename, purpose, bytes, lines, created_at";

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
            "INSERT INTO files (id, filename, purpose, bytes, lines) VALUES ($1, $2, $3, $4, $5) RETURNING {FILE_COLUMNS}"
        ))
        .bind(self.id)
        .bind(file.filename.replace('\0', "\u{FFFD}"))
        .bind(file.purpose.replace('\0', "\u{FFFD}"))
        .bind(file.bytes)
        .bind(file.lines)
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
        Ok(sqlx::query_as::<_, FileRow>(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1"))
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
             WHERE ($1::text IS NULL OR purpose = $1) AND ($2::uuid IS NULL OR id {cmp} $2)
             ORDER BY id {dir} LIMIT $3"
        ))
        .bind(purpose)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// True when there was such a file.
    pub async fn delete_file(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM files WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
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
