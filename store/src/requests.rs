//! Request rows: one per accepted input line, and one per message a direct producer published.

use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use pdq_protocol::{InputLine, Pins, ValidRequest};

use crate::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: Uuid,
    pub job_id: Option<Uuid>,
    pub line_no: Option<i32>,
    pub custom_id: Option<String>,
    pub url: Option<String>,
    /// The line's `body`, or the whole raw line as a JSON string when it was not JSON.
    pub body: Value,
    pub routed_dp_rank: Option<i64>,
    pub disagg_prefill_dp_rank: Option<i64>,
    /// What the feeder publishes. `None`: the request is not the feeder's to publish (it came
    /// over AMQP, or it failed validation), and its row counts as published.
    pub outbound: Option<Outbound>,
}

impl NewRequest {
    /// The row of one input line: what it names, and its body. `line` is `None` when the text
    /// was not a JSON line at all; the row then keeps the raw text.
    pub fn of_line(id: Uuid, job_id: Option<Uuid>, line_no: Option<i32>, line: Option<&InputLine>, raw: &str) -> Self {
        NewRequest {
            id,
            job_id,
            line_no,
            custom_id: line.and_then(|l| l.custom_id()).map(str::to_string),
            url: line.and_then(|l| l.url()).map(str::to_string),
            body: match line {
                Some(l) => l.body().cloned().map(Value::Object).unwrap_or_else(|| l.to_value()),
                None => Value::String(raw.to_string()),
            },
            routed_dp_rank: None,
            disagg_prefill_dp_rank: None,
            outbound: None,
        }
    }

    /// Records the routing fields as validation resolved them (the header and alias applied).
    pub fn routed(mut self, req: &ValidRequest) -> Self {
        self.routed_dp_rank = req.routing.routed_dp_rank;
        self.disagg_prefill_dp_rank = req.routing.disagg_prefill_dp_rank;
        self
    }
}

/// A validated request of a job, as the feeder will publish it.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The input line, byte for byte: the message body.
    pub line: String,
    /// The stage pins validation resolved: where the feeder sends the request.
    pub pins: Pins,
    /// The prompt's dispatch key (`pdq_producer::prefix_key`), computed once at acceptance.
    pub prefix_key: i64,
}

/// Inserts in one statement (UNNEST over column arrays) however many rows there are.
pub(crate) async fn insert_requests(tx: &mut Transaction<'_, Postgres>, rows: &[NewRequest]) -> Result<(), StoreError> {
    for chunk in rows.chunks(5000) {
        let ids: Vec<Uuid> = chunk.iter().map(|r| r.id).collect();
        let jobs: Vec<Option<Uuid>> = chunk.iter().map(|r| r.job_id).collect();
        let lines: Vec<Option<i32>> = chunk.iter().map(|r| r.line_no).collect();
        let cids: Vec<Option<String>> =
            chunk.iter().map(|r| r.custom_id.as_ref().map(|c| c.replace('\0', "\u{FFFD}"))).collect();
        let urls: Vec<Option<String>> =
            chunk.iter().map(|r| r.url.as_ref().map(|c| c.replace('\0', "\u{FFFD}"))).collect();
        let bodies: Vec<Value> = chunk.iter().map(|r| crate::results::pg_safe(r.body.clone())).collect();
        let routed: Vec<Option<i32>> = chunk.iter().map(|r| r.routed_dp_rank.map(clamp_rank)).collect();
        let prefill: Vec<Option<i32>> = chunk.iter().map(|r| r.disagg_prefill_dp_rank.map(clamp_rank)).collect();
        let texts: Vec<Option<String>> =
            chunk.iter().map(|r| r.outbound.as_ref().map(|o| o.line.replace('\0', "\u{FFFD}"))).collect();
        let prefill_pins: Vec<Option<i32>> =
            chunk.iter().map(|r| r.outbound.as_ref().and_then(|o| o.pins.prefill).map(|p| p as i32)).collect();
        let decode_pins: Vec<Option<i32>> =
            chunk.iter().map(|r| r.outbound.as_ref().and_then(|o| o.pins.decode).map(|p| p as i32)).collect();
        let prefix_keys: Vec<Option<i64>> = chunk.iter().map(|r| r.outbound.as_ref().map(|o| o.prefix_key)).collect();
        sqlx::query(
            "INSERT INTO requests (id, job_id, line_no, custom_id, url, body, routed_dp_rank, disagg_prefill_dp_rank,
                                   line, prefill_pin, decode_pin, prefix_key, published_at)
             SELECT *, CASE WHEN line IS NULL THEN now() END
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::jsonb[], $7::int[], $8::int[],
                         $9::text[], $10::int[], $11::int[], $12::int8[])
                  AS r(id, job_id, line_no, custom_id, url, body, routed_dp_rank, disagg_prefill_dp_rank, line,
                       prefill_pin, decode_pin, prefix_key)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&jobs)
        .bind(&lines)
        .bind(&cids)
        .bind(&urls)
        .bind(&bodies)
        .bind(&routed)
        .bind(&prefill)
        .bind(&texts)
        .bind(&prefill_pins)
        .bind(&decode_pins)
        .bind(&prefix_keys)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Out-of-range ranks are still recorded as given (they are why the request failed).
fn clamp_rank(r: i64) -> i32 {
    r.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

impl Store {
    /// Records a request that arrived without `pdq submit`; a redelivery is a no-op.
    pub async fn insert_request(&self, row: &NewRequest) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_requests(&mut tx, std::slice::from_ref(row)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records another prefill attempt (after a lost KV).
    pub async fn set_attempts(&self, request_id: Uuid, attempts: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE requests SET attempts = GREATEST(attempts, $2), updated_at = now() WHERE id = $1")
            .bind(request_id)
            .bind(attempts as i32)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
