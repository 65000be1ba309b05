//! `pdq submit`: the whole file is validated before anything is recorded. A duplicate
//! `custom_id` rejects the job; any other bad line becomes a failed result row at once, so the job
//! still accounts for every line. Valid requests are published with confirms; a rank outside the
//! cluster never reaches a queue, because validation checked it against the live cluster's shape.
//! `pdq submit` reads a path, `pdq api` an uploaded file's text: both go through [`submit_text`].

use std::collections::HashMap;

use pdq_broker::{Broker, MessageMeta, Outgoing};
use pdq_protocol::{
    validate, ClusterShape, Endpoint, InputLine, MetaInfo, Mode, Outcome, Pins, RawLine, ValidationError,
};
use pdq_store::{NewJob, NewRequest, Store};
use serde_json::Value;
use uuid::Uuid;

use crate::{Dispatcher, Policy, ProducerError};

/// Messages in flight before waiting for their confirms.
const PUBLISH_WINDOW: usize = 1000;

#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub name: Option<String>,
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub struct SubmitReport {
    pub job_id: Uuid,
    pub total: usize,
    pub enqueued: usize,
    pub invalid: usize,
}

/// A batch's lines and where they came from.
#[derive(Debug, Clone)]
pub struct BatchInput<'a> {
    pub text: &'a str,
    /// Recorded as the job's `input_file`: a path, or the id of an uploaded file.
    pub source: String,
    /// The OpenAI batch's `endpoint`: a line whose `url` is another one fails.
    pub endpoint: Option<Endpoint>,
    pub job_id: Uuid,
}

/// A request line that validated: published as-is.
#[derive(Debug, Clone)]
pub struct Publishable {
    pub request_id: Uuid,
    pub line_no: usize,
    pub custom_id: Option<String>,
    pub text: String,
    pub pins: Pins,
}

/// What a batch file turns into, before anything is written.
#[derive(Debug, Default)]
pub struct BatchPlan {
    pub requests: Vec<NewRequest>,
    pub failed: Vec<Outcome>,
    pub publish: Vec<Publishable>,
}

/// Validates a batch file's text (blank lines are skipped and not counted).
pub fn parse_batch(
    text: &str,
    job_id: Uuid,
    shape: &ClusterShape,
    endpoint: Option<Endpoint>,
) -> Result<BatchPlan, ProducerError> {
    let mut plan = BatchPlan::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let raw = RawLine { line_no: i + 1, text: raw };
        let request_id = Uuid::now_v7();
        let parsed = InputLine::parse(&raw);
        let custom_id = parsed.as_ref().ok().and_then(|l| l.custom_id()).map(str::to_string);
        if let Some(cid) = &custom_id {
            if let Some(first_line) = seen.insert(cid.clone(), raw.line_no) {
                return Err(ProducerError::Rejected(ValidationError::DuplicateCustomId {
                    custom_id: cid.clone(),
                    first_line,
                    line: raw.line_no,
                }));
            }
        }
        let mut row = NewRequest {
            id: request_id,
            job_id: Some(job_id),
            line_no: Some(raw.line_no as i32),
            custom_id: custom_id.clone(),
            url: parsed.as_ref().ok().and_then(|l| l.url()).map(str::to_string),
            body: Value::String(raw.text.to_string()),
            routed_dp_rank: None,
            disagg_prefill_dp_rank: None,
        };
        let checked = parsed.and_then(|line| {
            if line.custom_id().is_none() {
                return Err(ValidationError::Missing { field: "custom_id", context: " in a batch file".into() });
            }
            row.body = line.body().cloned().map(Value::Object).unwrap_or_else(|| line.to_value());
            if let (Some(endpoint), Some(url)) = (endpoint, line.url()) {
                if url != endpoint.path() {
                    return Err(ValidationError::EndpointMismatch { url: url.to_string(), endpoint: endpoint.path() });
                }
            }
            validate(&line, None, shape)
        });
        match checked {
            Ok(req) => {
                row.routed_dp_rank = req.routing.routed_dp_rank;
                row.disagg_prefill_dp_rank = req.routing.disagg_prefill_dp_rank;
                plan.publish.push(Publishable {
                    request_id,
                    line_no: raw.line_no,
                    custom_id: custom_id.clone(),
                    text: raw.text.to_string(),
                    pins: req.pins,
                });
            }
            Err(e) => {
                let meta = MetaInfo { id: request_id.to_string(), ..MetaInfo::default() };
                plan.failed.push(Outcome::failed(request_id, Some(job_id), custom_id.clone(), e.to_body(), meta));
            }
        }
        plan.requests.push(row);
    }
    Ok(plan)
}

pub async fn submit(
    store: &Store,
    broker: &Broker,
    path: &str,
    shape: &ClusterShape,
    opts: &SubmitOptions,
) -> Result<SubmitReport, ProducerError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProducerError::Io { path: path.to_string(), source })?;
    let input = BatchInput { text: &text, source: path.to_string(), endpoint: None, job_id: Uuid::now_v7() };
    submit_text(store, broker, &input, shape, opts).await
}

pub async fn submit_text(
    store: &Store,
    broker: &Broker,
    input: &BatchInput<'_>,
    shape: &ClusterShape,
    opts: &SubmitOptions,
) -> Result<SubmitReport, ProducerError> {
    let job_id = input.job_id;
    let plan = parse_batch(input.text, job_id, shape, input.endpoint)?;
    if plan.requests.is_empty() {
        return Err(ProducerError::Empty(input.source.clone()));
    }
    let job = NewJob {
        id: job_id,
        name: opts.name.clone(),
        namespace: broker.topology.namespace.clone(),
        input_file: Some(input.source.clone()),
    };
    store.create_job(&job, &plan.requests, &plan.failed).await?;
    // In progress from the first publish: a fast job may finish before the last one is confirmed.
    store.mark_job_started(job_id).await?;
    let mut dispatcher = dispatcher(broker, shape, opts.policy).await?;
    let publisher = broker.publisher();
    let enqueued_at_ms = chrono::Utc::now().timestamp_millis();
    for (n, chunk) in plan.publish.chunks(PUBLISH_WINDOW).enumerate() {
        let msgs: Vec<Outgoing> = chunk
            .iter()
            .map(|p| {
                let a = dispatcher.assign(p.pins, shape.mode == Mode::Colocated);
                Outgoing {
                    exchange: broker.topology.prefill_exchange(),
                    key: a.prefill_key,
                    body: p.text.as_bytes().to_vec(),
                    meta: MessageMeta {
                        request_id: Some(p.request_id),
                        job_id: Some(job_id),
                        line_no: Some(p.line_no as i64),
                        attempt: 0,
                        deliveries: 0,
                        enqueued_at_ms: Some(enqueued_at_ms),
                        dispatch_prefill: a.dispatch_prefill,
                        dispatch_decode: a.dispatch_decode,
                        rank_header: None,
                        first_route: None,
                    },
                }
            })
            .collect();
        if let Err(e) = publisher.publish_all(&msgs).await {
            // The publisher rides out broker outages itself (it publishes again whatever was not
            // confirmed, on the next connection); only what retrying cannot fix ends up here.
            // Whatever did not reach the broker fails now, so the job can still finish.
            let rest: Vec<(Uuid, Option<String>)> =
                plan.publish[n * PUBLISH_WINDOW..].iter().map(|p| (p.request_id, p.custom_id.clone())).collect();
            store.fail_unpublished(&rest, job_id, &format!("not enqueued: {e}")).await?;
            return Err(e.into());
        }
    }
    Ok(SubmitReport { job_id, total: plan.requests.len(), enqueued: plan.publish.len(), invalid: plan.failed.len() })
}

async fn dispatcher(broker: &Broker, shape: &ClusterShape, policy: Policy) -> Result<Dispatcher, ProducerError> {
    if policy != Policy::LeastLoaded {
        return Ok(Dispatcher::new(policy, shape));
    }
    let t = &broker.topology;
    let mut prefill = Vec::new();
    for p in 0..shape.prefill_dp {
        prefill.push(broker.queue_depth(&t.prefill_rank_queue(p)).await? as u64);
    }
    let mut decode = vec![0u64; shape.decode_dp as usize];
    for p in 0..shape.prefill_dp {
        for (d, load) in decode.iter_mut().enumerate() {
            *load += broker.queue_depth(&t.kv_pinned_queue(p, d as u32)).await? as u64;
        }
    }
    Ok(Dispatcher::with_loads(policy, prefill, decode))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ClusterShape = ClusterShape { prefill_dp: 2, decode_dp: 2, mode: Mode::Disagg };

    #[test]
    fn duplicate_custom_id_rejects_naming_both_lines() {
        let text = concat!(
            r#"{"custom_id":"a","url":"/generate","body":{"text":"x"}}"#,
            "\n\n",
            r#"{"custom_id":"a","url":"/generate","body":{"text":"y"}}"#,
        );
        let e = parse_batch(text, Uuid::now_v7(), &SHAPE, None).unwrap_err();
        assert_eq!(e.to_string(), "job rejected: `custom_id` 'a' on line 3 duplicates line 1");
    }

    #[test]
    fn bad_lines_become_failed_rows_and_good_ones_are_published() {
        let text = concat!(
            "not json\n",
            r#"{"custom_id":"b","url":"/generate","body":{"text":"x","routed_dp_rank":5}}"#,
            "\n",
            r#"{"custom_id":"c","url":"/generate","body":{"text":"x","routed_dp_rank":1}}"#,
        );
        let plan = parse_batch(text, Uuid::now_v7(), &SHAPE, None).unwrap();
        assert_eq!(plan.requests.len(), 3);
        assert_eq!(plan.publish.len(), 1);
        let errors: Vec<_> = plan.failed.iter().map(|o| o.error.clone().unwrap()).collect();
        assert_eq!(errors[0].code, "invalid_json");
        assert!(errors[0].message.starts_with("line 1:"), "{}", errors[0].message);
        assert_eq!(errors[1].message, "routed_dp_rank=5 out of range [0, 2)");
        assert_eq!(plan.publish[0].pins, Pins { prefill: Some(1), decode: Some(1) });
    }

    #[test]
    fn a_line_for_another_endpoint_fails_and_the_rest_are_published() {
        let text = concat!(
            r#"{"custom_id":"a","url":"/v1/completions","body":{"prompt":"x"}}"#,
            "\n",
            r#"{"custom_id":"b","url":"/generate","body":{"text":"x"}}"#,
        );
        let plan = parse_batch(text, Uuid::now_v7(), &SHAPE, Some(Endpoint::Completions)).unwrap();
        assert_eq!((plan.requests.len(), plan.publish.len()), (2, 1));
        let e = plan.failed[0].error.clone().unwrap();
        assert_eq!(e.code, "invalid_request");
        assert_eq!(e.message, "`url` '/generate' differs from the batch's endpoint '/v1/completions'");
    }
}
