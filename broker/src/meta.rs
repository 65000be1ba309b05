//! pdq's metadata travels in AMQP headers so the body stays exactly one input line: a message a
//! user publishes by hand and one `pdq submit` publishes look the same to a worker.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::Value;
use uuid::Uuid;

const REQUEST_ID: &str = "x-pdq-request-id";
const JOB_ID: &str = "x-pdq-job-id";
const LINE: &str = "x-pdq-line";
const ATTEMPT: &str = "x-pdq-attempt";
const DELIVERIES: &str = "x-pdq-deliveries";
const FIRST_EXCHANGE: &str = "x-pdq-first-exchange";
const FIRST_KEY: &str = "x-pdq-first-routing-key";
const ENQUEUED_AT: &str = "x-pdq-enqueued-at";
const DISPATCH_PREFILL: &str = "x-pdq-prefill-rank";
const DISPATCH_DECODE: &str = "x-pdq-decode-rank";
/// The user-facing header of CONTRACT §3, for direct queue producers.
pub const DATA_PARALLEL_RANK: &str = "x-data-parallel-rank";

/// What pdq knows about a request message besides its body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageMeta {
    /// Absent on a message published straight to AMQP: the worker assigns one.
    pub request_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub line_no: Option<i64>,
    /// Prefill attempts before this one (0 on first delivery).
    pub attempt: u32,
    /// Redeliveries counted so far (see `consume.rs`): 0 until a consumer died holding it.
    pub deliveries: u32,
    pub enqueued_at_ms: Option<i64>,
    /// The dispatcher's choice for a stage the request leaves unpinned.
    pub dispatch_prefill: Option<u32>,
    pub dispatch_decode: Option<u32>,
    /// `x-data-parallel-rank`, as a JSON value (string or integer) for `validate`.
    pub rank_header: Option<Value>,
    /// Where the message was first published (exchange, routing key), kept when pdq publishes
    /// it again to its queue (a requeue, a counted redelivery), since the copy arrives through
    /// the default exchange.
    pub first_route: Option<(String, String)>,
}

impl MessageMeta {
    pub fn to_headers(&self) -> FieldTable {
        let mut t = FieldTable::default();
        let mut put = |k: &str, v: AMQPValue| {
            t.insert(ShortString::from(k), v);
        };
        let text = |s: String| AMQPValue::LongString(LongString::from(s));
        if let Some(id) = self.request_id {
            put(REQUEST_ID, text(id.to_string()));
        }
        if let Some(id) = self.job_id {
            put(JOB_ID, text(id.to_string()));
        }
        if let Some(n) = self.line_no {
            put(LINE, AMQPValue::LongLongInt(n));
        }
        put(ATTEMPT, AMQPValue::LongLongInt(self.attempt as i64));
        if self.deliveries > 0 {
            put(DELIVERIES, AMQPValue::LongLongInt(self.deliveries as i64));
        }
        if let Some(ms) = self.enqueued_at_ms {
            put(ENQUEUED_AT, AMQPValue::LongLongInt(ms));
        }
        if let Some(p) = self.dispatch_prefill {
            put(DISPATCH_PREFILL, AMQPValue::LongLongInt(p as i64));
        }
        if let Some(d) = self.dispatch_decode {
            put(DISPATCH_DECODE, AMQPValue::LongLongInt(d as i64));
        }
        if let Some((exchange, key)) = &self.first_route {
            put(FIRST_EXCHANGE, text(exchange.clone()));
            put(FIRST_KEY, text(key.clone()));
        }
        match &self.rank_header {
            Some(Value::String(s)) => put(DATA_PARALLEL_RANK, text(s.clone())),
            Some(Value::Number(n)) if n.is_i64() => {
                put(DATA_PARALLEL_RANK, AMQPValue::LongLongInt(n.as_i64().unwrap_or(0)))
            }
            Some(other) => put(DATA_PARALLEL_RANK, text(other.to_string())),
            None => {}
        }
        t
    }

    pub fn from_headers(headers: Option<&FieldTable>) -> MessageMeta {
        let Some(t) = headers else { return MessageMeta::default() };
        let get = |k: &str| t.inner().iter().find(|(key, _)| key.as_str().eq_ignore_ascii_case(k)).map(|(_, v)| v);
        let int = |k: &str| get(k).and_then(as_i64);
        let uuid = |k: &str| get(k).and_then(as_text).and_then(|s| Uuid::parse_str(&s).ok());
        MessageMeta {
            request_id: uuid(REQUEST_ID),
            job_id: uuid(JOB_ID),
            line_no: int(LINE),
            attempt: int(ATTEMPT).unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            deliveries: int(DELIVERIES).unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            enqueued_at_ms: int(ENQUEUED_AT),
            dispatch_prefill: int(DISPATCH_PREFILL).and_then(|v| u32::try_from(v).ok()),
            dispatch_decode: int(DISPATCH_DECODE).and_then(|v| u32::try_from(v).ok()),
            rank_header: get(DATA_PARALLEL_RANK).map(|v| match as_i64(v) {
                Some(n) => Value::from(n),
                None => Value::String(as_text(v).unwrap_or_default()),
            }),
            first_route: get(FIRST_EXCHANGE).and_then(as_text).zip(get(FIRST_KEY).and_then(as_text)),
        }
    }
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortShortUInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::ShortUInt(n) => *n as i64,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongUInt(n) => *n as i64,
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        other => as_i64(other).map(|n| n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let meta = MessageMeta {
            request_id: Some(Uuid::now_v7()),
            job_id: Some(Uuid::now_v7()),
            line_no: Some(7),
            attempt: 2,
            deliveries: 3,
            enqueued_at_ms: Some(1_700_000_000_000),
            dispatch_prefill: Some(1),
            dispatch_decode: None,
            rank_header: Some(Value::String("abc".into())),
            first_route: Some(("ns.prefill".into(), "7".into())),
        };
        assert_eq!(MessageMeta::from_headers(Some(&meta.to_headers())), meta);
        assert_eq!(MessageMeta::from_headers(None), MessageMeta::default());
    }

    #[test]
    fn user_rank_header_may_be_an_integer_or_text() {
        let mut t = FieldTable::default();
        t.insert("X-Data-Parallel-Rank".into(), AMQPValue::LongInt(2));
        assert_eq!(MessageMeta::from_headers(Some(&t)).rank_header, Some(Value::from(2)));
    }
}
