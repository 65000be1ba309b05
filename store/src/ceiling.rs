//! The database's speed at taking result rows, for `pdq bench` to hold the writer against: COPY
//! (the fastest way into PostgreSQL) of rows shaped like `results`, into a scratch table with the
//! same columns and indexes, each batch its own committed transaction. Durable, like the real
//! writes: a temporary or unlogged table would skip the WAL and flatter the ceiling.

use std::time::Instant;

use pdq_protocol::Outcome;
use sqlx::postgres::PgPoolCopyExt;

use crate::{Store, StoreError};

impl Store {
    /// Rows per second for `outcomes` copied `batch` rows per transaction.
    pub async fn copy_ceiling(&self, outcomes: &[Outcome], batch: usize) -> Result<f64, StoreError> {
        let table = format!("pdq_bench_copy_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE TABLE {table} (LIKE results INCLUDING DEFAULTS INCLUDING INDEXES)"))
            .execute(&self.pool)
            .await?;
        let copied = self.copy_rows(&table, outcomes, batch).await;
        sqlx::query(&format!("DROP TABLE {table}")).execute(&self.pool).await?;
        copied
    }

    async fn copy_rows(&self, table: &str, outcomes: &[Outcome], batch: usize) -> Result<f64, StoreError> {
        let statement = format!(
            "COPY {table} (request_id, job_id, custom_id, status, text, output_ids, meta_info, error, dp_rank,
                           prefill_dp_rank, prompt_tokens, completion_tokens, finish_reason) FROM STDIN"
        );
        // Encoding is part of the client's cost, so it is timed too.
        let started = Instant::now();
        for chunk in outcomes.chunks(batch.max(1)) {
            let mut data = String::with_capacity(chunk.len() * 512);
            for o in chunk {
                copy_line(&mut data, o);
            }
            let mut copy = self.pool.copy_in_raw(&statement).await?;
            copy.send(data.into_bytes()).await?;
            copy.finish().await?;
        }
        Ok(outcomes.len() as f64 / started.elapsed().as_secs_f64())
    }
}

/// One row in COPY's text format: tab-separated, `\N` for NULL.
fn copy_line(out: &mut String, o: &Outcome) {
    let m = &o.meta_info;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "\\N".into());
    let ids = format!("{{{}}}", o.output_ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
    let fields = [
        o.request_id.to_string(),
        opt(o.job_id.map(|j| j.to_string())),
        opt(o.custom_id.as_deref().map(escape)),
        o.status.as_str().to_string(),
        opt(o.text.as_deref().map(escape)),
        ids,
        escape(&serde_json::to_string(m).expect("meta_info serializes")),
        opt(o.error.as_ref().map(|e| escape(&serde_json::to_string(e).expect("an error serializes")))),
        opt(m.dp_rank.map(|r| r.to_string())),
        opt(m.prefill_dp_rank.map(|r| r.to_string())),
        m.prompt_tokens.to_string(),
        m.completion_tokens.to_string(),
        opt(m.finish_reason.as_ref().and_then(finish_type)),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        out.push_str(f);
    }
    out.push('\n');
}

/// `finish_reason.type`, as the writer's insert stores it.
fn finish_type(f: &pdq_protocol::FinishReason) -> Option<String> {
    serde_json::to_value(f).ok()?.get("type")?.as_str().map(escape)
}

/// COPY text escaping (backslash, tab, newline, carriage return), and U+0000 as U+FFFD since
/// PostgreSQL text cannot hold it.
fn escape(s: &str) -> String {
    let mut e = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => e.push_str("\\\\"),
            '\t' => e.push_str("\\t"),
            '\n' => e.push_str("\\n"),
            '\r' => e.push_str("\\r"),
            '\0' => e.push('\u{FFFD}'),
            c => e.push(c),
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_copy_text_format_reserves() {
        assert_eq!(escape("a\tb\nc\\d\re\0"), "a\\tb\\nc\\\\d\\re\u{FFFD}");
    }
}
