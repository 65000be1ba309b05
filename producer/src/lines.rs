//! Where a batch's lines come from, read one at a time so that accepting a job holds one chunk
//! of it in memory, whatever its size: a file on disk (`pdq submit`), an upload stored in
//! PostgreSQL chunk by chunk (`pdq api`), or text already in memory.

use std::collections::VecDeque;
use std::io::BufRead;

use pdq_store::Store;
use uuid::Uuid;

use crate::ProducerError;

pub enum Lines<'a> {
    Text(std::str::Lines<'a>),
    File { path: String, lines: std::io::Lines<std::io::BufReader<std::fs::File>> },
    Upload(Upload),
}

/// An uploaded file's lines, split out of its stored chunks as they are read.
pub struct Upload {
    store: Store,
    file: Uuid,
    next_seq: i32,
    ready: VecDeque<String>,
    partial: Vec<u8>,
    /// Lines split so far, for the message of a line that is not UTF-8.
    line_no: usize,
    done: bool,
}

impl<'a> Lines<'a> {
    pub fn text(text: &'a str) -> Lines<'a> {
        Lines::Text(text.lines())
    }

    pub fn file(path: &str) -> Result<Lines<'static>, ProducerError> {
        let file = std::fs::File::open(path).map_err(|source| ProducerError::Io { path: path.to_string(), source })?;
        Ok(Lines::File { path: path.to_string(), lines: std::io::BufReader::with_capacity(1 << 20, file).lines() })
    }

    pub fn upload(store: Store, file: Uuid) -> Lines<'static> {
        Lines::Upload(Upload {
            store,
            file,
            next_seq: 0,
            ready: VecDeque::new(),
            partial: Vec::new(),
            line_no: 0,
            done: false,
        })
    }

    /// The next line without its `\n` (or `\r\n`); `None` at the end.
    pub async fn next(&mut self) -> Option<Result<String, ProducerError>> {
        match self {
            Lines::Text(lines) => lines.next().map(|l| Ok(l.to_string())),
            Lines::File { path, lines } => {
                lines.next().map(|l| l.map_err(|source| ProducerError::Io { path: path.clone(), source }))
            }
            Lines::Upload(u) => u.next().await,
        }
    }
}

impl Upload {
    async fn next(&mut self) -> Option<Result<String, ProducerError>> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Some(Ok(line));
            }
            if self.done {
                return None;
            }
            let chunk = match self.store.file_chunk(self.file, self.next_seq).await {
                Ok(c) => c,
                Err(e) => return Some(Err(e.into())),
            };
            self.next_seq += 1;
            match chunk {
                Some(bytes) => self.partial.extend_from_slice(&bytes),
                None => {
                    self.done = true;
                    if self.partial.is_empty() {
                        continue;
                    }
                    self.partial.push(b'\n');
                }
            }
            let mut start = 0;
            while let Some(end) = self.partial[start..].iter().position(|&b| b == b'\n').map(|i| start + i) {
                let raw = &self.partial[start..end];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                self.line_no += 1;
                match std::str::from_utf8(raw) {
                    Ok(line) => self.ready.push_back(line.to_string()),
                    Err(_) => return Some(Err(ProducerError::NotUtf8 { line: self.line_no })),
                }
                start = end + 1;
            }
            self.partial.drain(..start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `chunks` as an uploaded file's chunks, split wherever they happen to be.
    async fn upload(store: &Store, chunks: &[&[u8]]) -> Uuid {
        let id = Uuid::now_v7();
        let mut tx = store.pool().begin().await.unwrap();
        sqlx::query("INSERT INTO files (id, filename, purpose, bytes, lines) VALUES ($1, 'f', 'batch', 0, 0)")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        for (seq, data) in chunks.iter().enumerate() {
            sqlx::query("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(seq as i32)
                .bind(data.to_vec())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        id
    }

    async fn all(mut lines: Lines<'_>) -> Result<Vec<String>, ProducerError> {
        let mut out = Vec::new();
        while let Some(l) = lines.next().await {
            out.push(l?);
        }
        Ok(out)
    }

    #[sqlx::test(migrator = "pdq_store::MIGRATOR")]
    async fn an_upload_splits_into_the_same_lines_as_its_text(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let text = "first\r\nsecond line\n\nthird, with é\nlast without newline";
        let bytes = text.as_bytes();
        // Chunk boundaries inside a line, inside "\r\n" and inside a two-byte character.
        let cuts = [3, 6, 7, 30, 31, bytes.len()];
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            chunks.push(&bytes[at..c]);
            at = c;
        }
        let id = upload(&store, &chunks).await;
        let expected: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(all(Lines::upload(store.clone(), id)).await.unwrap(), expected);
        assert_eq!(all(Lines::text(text)).await.unwrap(), expected);
        let empty = upload(&store, &[]).await;
        assert!(all(Lines::upload(store.clone(), empty)).await.unwrap().is_empty());
    }

    #[sqlx::test(migrator = "pdq_store::MIGRATOR")]
    async fn a_line_that_is_not_utf8_is_named(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let id = upload(&store, &[b"ok\nstill ok\n", b"bad \xff\xfe\nafter\n"]).await;
        let e = all(Lines::upload(store, id)).await.unwrap_err();
        assert_eq!(e.to_string(), "line 3 is not UTF-8");
    }
}
