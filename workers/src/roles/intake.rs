//! What every request-consuming worker (prefill, colocated) does first with a message: read the
//! metadata, validate the line, honour its pins (forward it when it belongs to another rank),
//! record a request row for a message published straight to AMQP, and tokenize.
//! A request that cannot run ends here with its failed result row.

use pdq_broker::{Inbound, MessageMeta, Outgoing};
use pdq_engine::Model;
use pdq_protocol::{
    route, validate, At, EmbedInput, InputLine, MetaInfo, Pins, Prompt, RawLine, Route, Target, ValidRequest,
    ValidationError,
};
use pdq_store::NewRequest;
use serde_json::Value;
use uuid::Uuid;

use crate::context::{now_ms, trace_request, Ctx};
use crate::decision::{Decision, FailedRow};
use crate::WorkerError;

/// A request this worker will run.
pub struct Accepted {
    pub request_id: Uuid,
    pub job_id: Option<Uuid>,
    pub req: ValidRequest,
    pub line: Value,
    pub meta: MessageMeta,
    /// The prompt's tokens; empty for an embeddings request, which has `inputs` instead.
    pub tokens: Vec<u32>,
    /// Each input of an embeddings request, tokenized; empty for every other request.
    pub inputs: Vec<Vec<u32>>,
    /// Its pins and the dispatcher's choice, for the hops after this one.
    pub target: Target,
    pub enqueued_at_ms: i64,
    pub queue_time: f64,
}

impl Accepted {
    pub fn meta_info(&self) -> MetaInfo {
        MetaInfo {
            id: self.request_id.to_string(),
            prompt_tokens: (self.tokens.len() + self.inputs.iter().map(Vec::len).sum::<usize>()) as u32,
            warnings: self.req.warnings.clone(),
            attempts: self.meta.attempt + 1,
            ..MetaInfo::default()
        }
    }

    pub fn failed_row(&self) -> FailedRow {
        FailedRow {
            request_id: self.request_id,
            job_id: self.job_id,
            custom_id: self.req.custom_id.clone(),
            meta_info: self.meta_info(),
        }
    }
}

// Short-lived and moved once: boxing the decision would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Intake {
    Run(Box<Accepted>),
    /// Decided without running it: forward, fail with a row, or already answered.
    Decided(Decision),
}

pub async fn intake(ctx: &Ctx, msg: &Inbound) -> Result<Intake, WorkerError> {
    let received_ms = now_ms();
    let mut meta = msg.meta.clone();
    // A message without a job came from a direct producer (or was forwarded from one): it needs
    // its own request row, written idempotently since a forwarded copy arrives with its id.
    let direct = meta.job_id.is_none();
    let request_id = *meta.request_id.get_or_insert_with(Uuid::now_v7);
    let text = String::from_utf8_lossy(&msg.body).into_owned();
    let raw = RawLine { line_no: meta.line_no.unwrap_or(1) as usize, text: &text };
    // The request row of a direct producer's message (`line`: `None` when it is not JSON).
    let direct_row = |line: Option<&InputLine>| NewRequest::of_line(request_id, None, None, line, &text);
    let failed = |custom_id: Option<String>, warnings: Vec<String>| FailedRow {
        request_id,
        job_id: meta.job_id,
        custom_id,
        meta_info: MetaInfo { id: request_id.to_string(), warnings, ..MetaInfo::default() },
    };

    let line = match InputLine::parse(&raw) {
        Ok(line) => line,
        Err(e) => {
            // No worker can read it: record it, then let RabbitMQ dead-letter it.
            if direct {
                ctx.store.insert_request(&direct_row(None)).await?;
            }
            let outcome = failed(None, Vec::new()).outcome(e.to_body());
            return Ok(Intake::Decided(Decision::Write { outcome, dead_letter: true }));
        }
    };
    let custom_id = line.custom_id().map(str::to_string);
    trace_request(request_id, custom_id.as_deref());
    if msg.poisoned {
        if direct {
            ctx.store.insert_request(&direct_row(Some(&line))).await?;
        }
        return Ok(Intake::Decided(failed(custom_id, Vec::new()).poisoned(msg.deliveries)));
    }
    // The key it came by is checked before the request is read: a key that names no queue
    // arrives through the alternate exchange, whatever the request says.
    let arrived = match msg.exchange == ctx.topology.prefill_exchange() {
        true => route(
            At::Arrived { key: &msg.routing_key, prefill_dp: ctx.cfg.cluster.shape.prefill_dp },
            &Target::default(),
        ),
        false => Route::Here,
    };
    let validated = match arrived {
        Route::Refuse(e) => Err(e),
        _ => validate(&line, meta.rank_header.as_ref(), &ctx.cfg.cluster.shape).map_err(|e| e.to_body()),
    };
    let req = match validated {
        Ok(req) => req,
        Err(e) => {
            if direct {
                ctx.store.insert_request(&direct_row(Some(&line))).await?;
            }
            return Ok(Intake::Decided(failed(custom_id, Vec::new()).write(e)));
        }
    };
    if req.routing.used_deprecated_alias {
        tracing::warn!(%request_id, "{}", pdq_protocol::DEPRECATION_WARNING);
    }
    if direct {
        // It arrived over AMQP: published already, so no outbound.
        ctx.store.insert_request(&direct_row(Some(&line)).routed(&req)).await?;
        meta.enqueued_at_ms.get_or_insert(received_ms);
    }

    // Honour the pins whatever queue the message came from.
    let target = Target {
        pins: req.pins,
        dispatch: Pins { prefill: meta.dispatch_prefill, decode: meta.dispatch_decode },
        explicit_prefill: req.routing.disagg_prefill_dp_rank,
    };
    match route(At::Prefill { rank: ctx.cfg.rank }, &target) {
        Route::Here => {}
        Route::Prefill(key) => {
            // A forward is a publish of its own, through the route it names.
            meta.first_route = None;
            let msg = Outgoing { exchange: ctx.topology.prefill_exchange(), key, body: msg.body.to_vec(), meta };
            return Ok(Intake::Decided(Decision::Publish { msgs: vec![msg], lease: None, failed: None }));
        }
        other => unreachable!("a prefill rank runs a request or forwards it, never {other:?}"),
    }
    if ctx.closed.contains(meta.job_id) {
        // Its job was cancelled: the request's `cancelled` row is written already.
        return Ok(Intake::Decided(Decision::Ack));
    }
    let max_bytes = ctx.cfg.cluster.max_prompt_bytes;
    let tokenized = match &req.prompt {
        Prompt::Embed { inputs, dimensions } => {
            tokenize_inputs(ctx.engine.model(), inputs, *dimensions, max_bytes).map(|inputs| (Vec::new(), inputs))
        }
        _ => tokenize(ctx.engine.model(), &req, max_bytes).map(|tokens| (tokens, Vec::new())),
    };
    let (tokens, inputs) = match tokenized {
        Ok(t) => t,
        Err(e) => return Ok(Intake::Decided(failed(custom_id, req.warnings.clone()).write(e.to_body()))),
    };
    let enqueued_at_ms = meta.enqueued_at_ms.unwrap_or(received_ms);
    Ok(Intake::Run(Box::new(Accepted {
        request_id,
        job_id: meta.job_id,
        target,
        req,
        line: line.to_value(),
        meta,
        tokens,
        inputs,
        enqueued_at_ms,
        queue_time: (received_ms - enqueued_at_ms).max(0) as f64 / 1000.0,
    })))
}

/// Prompt tokens, checked against the byte limit (before any tokenizing), the vocabulary and
/// the context length.
pub(crate) fn tokenize(model: &Model, req: &ValidRequest, max_bytes: usize) -> Result<Vec<u32>, ValidationError> {
    let bytes = match &req.prompt {
        Prompt::Text(text) => text.len(),
        Prompt::Chat(messages) => messages.iter().map(|m| m.content.len() + m.role.len()).sum(),
        Prompt::Ids(_) | Prompt::Embed { .. } => 0,
    };
    let field = match (&req.prompt, req.endpoint) {
        (Prompt::Chat(_), pdq_protocol::Endpoint::Responses) => "input",
        (Prompt::Chat(_), _) => "messages",
        (_, pdq_protocol::Endpoint::Generate) => "text",
        _ => "prompt",
    };
    within_bytes(field, bytes, max_bytes)?;
    let tokenize_err = |e: pdq_engine::EngineError| ValidationError::Tokenize(e.to_string());
    let tokens = match &req.prompt {
        Prompt::Text(text) => model.encode(text).map_err(tokenize_err)?,
        Prompt::Chat(messages) => {
            let messages = serde_json::to_value(messages).map_err(|e| ValidationError::Tokenize(e.to_string()))?;
            model.encode_chat(&messages).map_err(tokenize_err)?
        }
        Prompt::Ids(ids) => {
            let field = if req.endpoint == pdq_protocol::Endpoint::Generate { "input_ids" } else { "prompt" };
            in_vocabulary(model, ids, field)?
        }
        Prompt::Embed { .. } => {
            return Err(ValidationError::Tokenize("an embeddings request has inputs, not a prompt".into()))
        }
    };
    let context = model.max_context();
    let max_tokens = req.sampling.max_tokens as usize;
    if tokens.len() + max_tokens > context {
        return Err(ValidationError::ContextLengthExceeded { prompt: tokens.len(), max_tokens, context });
    }
    Ok(tokens)
}

/// The cluster's limit on a request's text, checked before any tokenizing.
fn within_bytes(field: &str, bytes: usize, max_bytes: usize) -> Result<(), ValidationError> {
    if bytes > max_bytes {
        return Err(ValidationError::Invalid {
            field: field.into(),
            reason: format!("is {bytes} bytes, over this cluster's limit of {max_bytes} (--max-prompt-bytes)"),
        });
    }
    Ok(())
}

fn in_vocabulary(model: &Model, ids: &[u32], field: &str) -> Result<Vec<u32>, ValidationError> {
    let vocab = model.config.vocab_size as u32;
    if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
        return Err(ValidationError::Invalid {
            field: field.into(),
            reason: format!("holds token id {bad}, outside the vocabulary [0, {vocab})"),
        });
    }
    Ok(ids.to_vec())
}

/// Each input of an embeddings request as tokens, checked against the byte limit (all inputs
/// together), the vocabulary and the context (each input alone); and `dimensions`, which only
/// the model's own size satisfies (pdq does not truncate vectors that were not trained for it).
fn tokenize_inputs(
    model: &Model,
    inputs: &[EmbedInput],
    dimensions: Option<u32>,
    max_bytes: usize,
) -> Result<Vec<Vec<u32>>, ValidationError> {
    let size = model.embedding_size();
    if let Some(d) = dimensions.filter(|&d| d as usize != size) {
        return Err(ValidationError::Invalid {
            field: "dimensions".into(),
            reason: format!("{d} is not supported: this model's embeddings have {size} dimensions"),
        });
    }
    let bytes: usize = inputs.iter().map(|i| if let EmbedInput::Text(t) = i { t.len() } else { 0 }).sum();
    within_bytes("input", bytes, max_bytes)?;
    let context = model.max_context();
    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let field = if inputs.len() == 1 { "input".to_string() } else { format!("input[{i}]") };
            let tokens = match input {
                EmbedInput::Text(text) => model.encode(text).map_err(|e| ValidationError::Tokenize(e.to_string()))?,
                EmbedInput::Ids(ids) => in_vocabulary(model, ids, &field)?,
            };
            if tokens.len() > context {
                return Err(ValidationError::Invalid {
                    field,
                    reason: format!("is {} tokens, over the model's context length ({context})", tokens.len()),
                });
            }
            Ok(tokens)
        })
        .collect()
}
