//! What every request-consuming worker (prefill, colocated) does first with a message: read the
//! metadata, validate the line, honour its pins (forward it when it belongs to another rank),
//! record a request row for a message published straight to AMQP, and tokenize.
//! A request that cannot run ends here with its failed result row.

use std::time::Duration;

use lapin::options::BasicNackOptions;
use lapin::Acker;
use pdq_broker::{Delivery, MessageMeta, Outgoing, Publisher};
use pdq_engine::Model;
use pdq_protocol::{
    validate, ErrorBody, InputLine, MetaInfo, Outcome, Prompt, RawLine, Topology, ValidRequest, ValidationError,
};
use pdq_store::{NewRequest, Store};
use serde_json::Value;
use uuid::Uuid;

use crate::engine_loop::EngineHandle;
use crate::writer::{ResultWriter, Settle};
use crate::{WorkerConfig, WorkerError};

/// How long to hold a message before requeueing it after a transient failure, so a broker or
/// database outage does not turn into a redelivery storm.
const REQUEUE_DELAY: Duration = Duration::from_secs(1);

/// What one worker's message tasks share.
pub struct Ctx {
    pub cfg: WorkerConfig,
    pub store: Store,
    pub publisher: Publisher,
    pub topology: Topology,
    pub engine: EngineHandle,
    pub writer: ResultWriter,
}

/// A request this worker will run.
pub struct Accepted {
    pub request_id: Uuid,
    pub job_id: Option<Uuid>,
    pub req: ValidRequest,
    pub line: Value,
    pub meta: MessageMeta,
    pub tokens: Vec<u32>,
    /// The decode rank: the request's pin, else the dispatcher's choice.
    pub decode_rank: Option<u32>,
    pub enqueued_at_ms: i64,
    pub queue_time: f64,
    pub acker: Acker,
}

impl Accepted {
    pub fn meta_info(&self) -> MetaInfo {
        MetaInfo {
            id: self.request_id.to_string(),
            prompt_tokens: self.tokens.len() as u32,
            warnings: self.req.warnings.clone(),
            attempts: self.meta.attempt + 1,
            ..MetaInfo::default()
        }
    }
}

pub enum Intake {
    Run(Box<Accepted>),
    /// Already settled: forwarded, failed with a row, or answered before.
    Done,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub async fn intake(ctx: &Ctx, delivery: Delivery) -> Result<Intake, WorkerError> {
    let received_ms = now_ms();
    let mut meta = MessageMeta::from_headers(delivery.properties.headers().as_ref());
    // A message without a job came from a direct producer (or was forwarded from one): it needs
    // its own request row, written idempotently since a forwarded copy arrives with its id.
    let direct = meta.job_id.is_none();
    let fresh = meta.request_id.is_none();
    let request_id = *meta.request_id.get_or_insert_with(Uuid::now_v7);
    let acker = delivery.acker;
    let text = String::from_utf8_lossy(&delivery.data).into_owned();
    let raw = RawLine { line_no: meta.line_no.unwrap_or(1) as usize, text: &text };
    let fail = |custom_id: Option<String>, e: ValidationError, warnings: Vec<String>| {
        let meta_info = MetaInfo { id: request_id.to_string(), warnings, ..MetaInfo::default() };
        Outcome::failed(request_id, meta.job_id, custom_id, e.to_body(), meta_info)
    };

    let line = match InputLine::parse(&raw) {
        Ok(line) => line,
        Err(e) => {
            // No worker can read it: record it, then let RabbitMQ dead-letter it.
            if direct {
                ctx.store.insert_request(&direct_row(request_id, None, Value::String(text.clone()))).await?;
            }
            ctx.writer.write(fail(None, e, Vec::new()), Settle::DeadLetter(acker)).await?;
            return Ok(Intake::Done);
        }
    };
    let custom_id = line.custom_id().map(str::to_string);
    let validated = match unroutable_key(ctx, &delivery.routing_key, &delivery.exchange) {
        Some(e) => Err(e),
        None => validate(&line, meta.rank_header.as_ref(), &ctx.cfg.shape),
    };
    let req = match validated {
        Ok(req) => req,
        Err(e) => {
            if direct {
                ctx.store.insert_request(&direct_row(request_id, Some(&line), line.to_value())).await?;
            }
            ctx.writer.write(fail(custom_id, e, Vec::new()), Settle::Ack(acker)).await?;
            return Ok(Intake::Done);
        }
    };
    if req.routing.used_deprecated_alias {
        tracing::warn!(%request_id, "{}", pdq_protocol::DEPRECATION_WARNING);
    }
    if direct {
        let mut row =
            direct_row(request_id, Some(&line), line.body().cloned().map(Value::Object).unwrap_or(Value::Null));
        row.routed_dp_rank = req.routing.routed_dp_rank;
        row.disagg_prefill_dp_rank = req.routing.disagg_prefill_dp_rank;
        ctx.store.insert_request(&row).await?;
        meta.enqueued_at_ms.get_or_insert(received_ms);
    }

    // Honour the pins whatever queue the message came from.
    if let Some(p) = req.pins.prefill.or(meta.dispatch_prefill) {
        if p != ctx.cfg.rank {
            let msg =
                Outgoing { exchange: ctx.topology.prefill_exchange(), key: p.to_string(), body: delivery.data, meta };
            ctx.publisher.publish(&msg).await?;
            acker.ack(Default::default()).await.map_err(pdq_broker::BrokerError::from)?;
            return Ok(Intake::Done);
        }
    }
    if !fresh && ctx.store.has_result(request_id).await? {
        // Redelivered after its result was written, or its job was cancelled.
        acker.ack(Default::default()).await.map_err(pdq_broker::BrokerError::from)?;
        return Ok(Intake::Done);
    }
    let tokens = match tokenize(ctx.engine.model(), &req) {
        Ok(t) => t,
        Err(e) => {
            ctx.writer.write(fail(custom_id, e, req.warnings.clone()), Settle::Ack(acker)).await?;
            return Ok(Intake::Done);
        }
    };
    let enqueued_at_ms = meta.enqueued_at_ms.unwrap_or(received_ms);
    Ok(Intake::Run(Box::new(Accepted {
        request_id,
        job_id: meta.job_id,
        decode_rank: req.pins.decode.or(meta.dispatch_decode),
        req,
        line: line.to_value(),
        meta,
        tokens,
        enqueued_at_ms,
        queue_time: (received_ms - enqueued_at_ms).max(0) as f64 / 1000.0,
        acker,
    })))
}

/// A message published to `{ns}.prefill` with a routing key that names no prefill queue (a rank
/// outside the cluster) reaches us through the exchange's alternate, `{ns}.unroutable`, still
/// carrying its original exchange and key: it fails rather than vanish.
fn unroutable_key(
    ctx: &Ctx,
    key: &lapin::types::ShortString,
    exchange: &lapin::types::ShortString,
) -> Option<ValidationError> {
    let key = key.as_str();
    let routable = key == Topology::ANY || key.parse::<u32>().is_ok_and(|p| p < ctx.cfg.shape.prefill_dp);
    if exchange.as_str() != ctx.topology.prefill_exchange() || routable {
        return None;
    }
    Some(ValidationError::Invalid {
        field: "routing key".into(),
        reason: format!(
            "'{key}' names no prefill queue: use '{}' or a prefill rank in [0, {})",
            Topology::ANY,
            ctx.cfg.shape.prefill_dp
        ),
    })
}

fn direct_row(id: Uuid, line: Option<&InputLine>, body: Value) -> NewRequest {
    NewRequest {
        id,
        job_id: None,
        line_no: None,
        custom_id: line.and_then(|l| l.custom_id()).map(str::to_string),
        url: line.and_then(|l| l.url()).map(str::to_string),
        body,
        routed_dp_rank: None,
        disagg_prefill_dp_rank: None,
    }
}

/// Prompt tokens, checked against the vocabulary and the context length.
fn tokenize(model: &Model, req: &ValidRequest) -> Result<Vec<u32>, ValidationError> {
    let tokenize_err = |e: pdq_engine::EngineError| ValidationError::Tokenize(e.to_string());
    let tokens = match &req.prompt {
        Prompt::Text(text) => model.encode(text).map_err(tokenize_err)?,
        Prompt::Chat(messages) => {
            let messages = serde_json::to_value(messages).map_err(|e| ValidationError::Tokenize(e.to_string()))?;
            model.encode_chat(&messages).map_err(tokenize_err)?
        }
        Prompt::Ids(ids) => {
            let vocab = model.config.vocab_size as u32;
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                let field = if req.endpoint == pdq_protocol::Endpoint::Generate { "input_ids" } else { "prompt" };
                return Err(ValidationError::Invalid {
                    field: field.into(),
                    reason: format!("holds token id {bad}, outside the vocabulary [0, {vocab})"),
                });
            }
            ids.clone()
        }
    };
    let context = model.max_context();
    let max_tokens = req.sampling.max_tokens as usize;
    if tokens.len() + max_tokens > context {
        return Err(ValidationError::ContextLengthExceeded { prompt: tokens.len(), max_tokens, context });
    }
    Ok(tokens)
}

/// Ends a request that was accepted but could not finish here. A transient failure puts the
/// message back in its queue; anything else becomes the request's failed row.
pub async fn settle_failure(ctx: &Ctx, a: &Accepted, e: WorkerError) {
    if e.error_type() == "unavailable" {
        tracing::warn!(request_id = %a.request_id, error = %e, "transient failure; requeueing");
        tokio::time::sleep(REQUEUE_DELAY).await;
        let _ = a.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
        return;
    }
    tracing::warn!(request_id = %a.request_id, error = %e, "request failed");
    let outcome = Outcome::failed(
        a.request_id,
        a.job_id,
        a.req.custom_id.clone(),
        ErrorBody::new(e.error_type(), e.to_string()),
        a.meta_info(),
    );
    if let Err(e) = ctx.writer.write(outcome, Settle::Ack(a.acker.clone())).await {
        tracing::error!(error = %e, "could not record a failed request");
    }
}

/// For errors before a request is accepted (database or broker away): requeue after a pause.
pub async fn requeue_later(acker: &Acker, e: &WorkerError) {
    tracing::warn!(error = %e, "could not take a message; requeueing");
    tokio::time::sleep(REQUEUE_DELAY).await;
    let _ = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
}
