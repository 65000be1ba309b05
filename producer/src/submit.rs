//! `pdq submit` and `pdq api`'s batch creation: accepting a job is validating its lines and
//! committing its rows, nothing more (CONTRACT §13). Lines stream into one transaction in
//! chunks, so memory stays bounded by a chunk and a job is accepted whole or not at all. A
//! duplicate `custom_id` rejects the job; any other bad line becomes a failed result row at
//! once, so the job still accounts for every line. Publishing is the feeder's (`feeder/`).

use std::collections::HashMap;
use std::time::Duration;

use pdq_protocol::{validate, ClusterShape, Endpoint, InputLine, MetaInfo, Outcome, RawLine, ValidationError};
use pdq_store::{Accepting, NewJob, NewRequest, Outbound, Store, DEFAULT_COMPLETION_WINDOW};
use uuid::Uuid;

use crate::dispatch::prefix_key;
use crate::lines::Lines;
use crate::{Policy, ProducerError};

/// Lines per insert: bounds a submitter's memory whatever the file's size.
const CHUNK_LINES: usize = 5000;

#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub name: Option<String>,
    pub policy: Policy,
    /// Weight 2^priority against the other active jobs of the namespace.
    pub priority: i32,
    /// At most this many of the job's requests in the pipeline at once.
    pub max_in_flight: Option<u32>,
    /// After this long the job's unfinished requests end `batch_expired`.
    pub completion_window: Duration,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            name: None,
            policy: Policy::Shared,
            priority: 0,
            max_in_flight: None,
            completion_window: DEFAULT_COMPLETION_WINDOW,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SubmitReport {
    pub job_id: Uuid,
    pub total: usize,
    /// Lines that validated: the feeder publishes them.
    pub enqueued: usize,
    pub invalid: usize,
}

/// Where a batch came from (its lines come as [`Lines`]).
#[derive(Debug, Clone)]
pub struct BatchSource {
    /// Recorded as the job's `input_file`.
    pub source: String,
    pub endpoint: Option<Endpoint>,
    pub job_id: Uuid,
}

/// One line, checked: its request row, and its failed result when it did not validate.
#[derive(Debug)]
pub struct CheckedLine {
    pub row: NewRequest,
    pub failed: Option<Outcome>,
}

/// Validates one input line of a job (the duplicate `custom_id` rule is the chunk's).
pub fn check_line(raw: &RawLine<'_>, job_id: Uuid, shape: &ClusterShape, endpoint: Option<Endpoint>) -> CheckedLine {
    let request_id = Uuid::now_v7();
    let parsed = InputLine::parse(raw);
    let row = NewRequest::of_line(request_id, Some(job_id), Some(raw.line_no as i32), parsed.as_ref().ok(), raw.text);
    let custom_id = row.custom_id.clone();
    let checked = parsed.and_then(|line| {
        if line.custom_id().is_none() {
            return Err(ValidationError::Missing { field: "custom_id", context: " in a batch file".into() });
        }
        if let (Some(endpoint), Some(url)) = (endpoint, line.url()) {
            if url != endpoint.path() {
                return Err(ValidationError::EndpointMismatch { url: url.to_string(), endpoint: endpoint.path() });
            }
        }
        validate(&line, None, shape)
    });
    let (row, failed) = match checked {
        Ok(req) => {
            let outbound =
                Outbound { line: raw.text.to_string(), pins: req.pins, prefix_key: prefix_key(&req.prompt) as i64 };
            (NewRequest { outbound: Some(outbound), ..row.routed(&req) }, None)
        }
        Err(e) => {
            let meta = MetaInfo { id: request_id.to_string(), ..MetaInfo::default() };
            (row, Some(Outcome::failed(request_id, Some(job_id), custom_id, e.to_body(), meta)))
        }
    };
    CheckedLine { row, failed }
}

/// Lines checked since the last insert.
#[derive(Default)]
struct Chunk {
    rows: Vec<NewRequest>,
    failed: Vec<Outcome>,
    /// The chunk's `custom_id`s and their lines; earlier chunks are asked of the database.
    custom_ids: HashMap<String, usize>,
}

impl Chunk {
    fn push(&mut self, line: CheckedLine) -> Result<(), ProducerError> {
        if let (Some(cid), Some(line_no)) = (&line.row.custom_id, line.row.line_no) {
            if let Some(first_line) = self.custom_ids.insert(cid.clone(), line_no as usize) {
                return Err(duplicate(cid, first_line, line_no as usize));
            }
        }
        self.rows.push(line.row);
        self.failed.extend(line.failed);
        Ok(())
    }

    /// Writes the chunk into the job's transaction, after checking its `custom_id`s against
    /// the earlier chunks'.
    async fn flush(&mut self, job: &mut Accepting) -> Result<(), ProducerError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = self.custom_ids.keys().cloned().collect();
        if let Some((cid, first_line)) = job.seen_custom_id(&ids).await? {
            return Err(duplicate(&cid, first_line as usize, self.custom_ids[&cid]));
        }
        job.add(&self.rows, &self.failed).await?;
        *self = Chunk::default();
        Ok(())
    }
}

fn duplicate(custom_id: &str, first_line: usize, line: usize) -> ProducerError {
    ProducerError::Rejected(ValidationError::DuplicateCustomId { custom_id: custom_id.to_string(), first_line, line })
}

/// Accepts a batch file, read line by line.
pub async fn submit(
    store: &Store,
    namespace: &str,
    path: &str,
    shape: &ClusterShape,
    opts: &SubmitOptions,
) -> Result<SubmitReport, ProducerError> {
    let job = new_job(Uuid::now_v7(), namespace, path.to_string(), opts);
    accept(store, job, Lines::file(path)?, shape, None).await
}

/// Accepts a batch from `lines` (an upload, text in memory) as job `input.job_id`.
pub async fn submit_lines(
    store: &Store,
    namespace: &str,
    input: &BatchSource,
    lines: Lines<'_>,
    shape: &ClusterShape,
    opts: &SubmitOptions,
) -> Result<SubmitReport, ProducerError> {
    let job = new_job(input.job_id, namespace, input.source.clone(), opts);
    accept(store, job, lines, shape, input.endpoint).await
}

fn new_job(id: Uuid, namespace: &str, source: String, opts: &SubmitOptions) -> NewJob {
    NewJob {
        name: opts.name.clone(),
        input_file: Some(source),
        priority: opts.priority,
        max_in_flight: opts.max_in_flight,
        dispatch: opts.policy.as_str().to_string(),
        window: opts.completion_window,
        ..NewJob::new(id, namespace)
    }
}

/// Validates every line into the job's transaction and commits it: the job is accepted.
/// Blank lines are skipped and not counted (their numbers still count).
async fn accept(
    store: &Store,
    job: NewJob,
    mut lines: Lines<'_>,
    shape: &ClusterShape,
    endpoint: Option<Endpoint>,
) -> Result<SubmitReport, ProducerError> {
    let source = job.input_file.clone().unwrap_or_default();
    let mut accepting = store.begin_job(&job).await?;
    let mut chunk = Chunk::default();
    let (mut total, mut invalid) = (0, 0);
    let mut line_no = 0;
    while let Some(text) = lines.next().await {
        let text = text?;
        line_no += 1;
        if text.trim().is_empty() {
            continue;
        }
        let checked = check_line(&RawLine { line_no, text: &text }, job.id, shape, endpoint);
        total += 1;
        invalid += usize::from(checked.failed.is_some());
        chunk.push(checked)?;
        if chunk.rows.len() >= CHUNK_LINES {
            chunk.flush(&mut accepting).await?;
        }
    }
    chunk.flush(&mut accepting).await?;
    if total == 0 {
        return Err(ProducerError::Empty(source));
    }
    accepting.commit().await?;
    Ok(SubmitReport { job_id: job.id, total, enqueued: total - invalid, invalid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pdq_protocol::{Mode, Pins};

    const SHAPE: ClusterShape = ClusterShape { prefill_dp: 2, decode_dp: 2, mode: Mode::Disagg };

    fn check(line_no: usize, text: &str, endpoint: Option<Endpoint>) -> CheckedLine {
        check_line(&RawLine { line_no, text }, Uuid::now_v7(), &SHAPE, endpoint)
    }

    #[test]
    fn duplicate_custom_id_in_a_chunk_rejects_naming_both_lines() {
        let mut chunk = Chunk::default();
        chunk.push(check(1, r#"{"custom_id":"a","url":"/generate","body":{"text":"x"}}"#, None)).unwrap();
        let e = chunk.push(check(3, r#"{"custom_id":"a","url":"/generate","body":{"text":"y"}}"#, None)).unwrap_err();
        assert_eq!(e.to_string(), "job rejected: `custom_id` 'a' on line 3 duplicates line 1");
    }

    #[test]
    fn bad_lines_become_failed_rows_and_good_ones_keep_their_line_and_pins() {
        let bad = check(1, "not json", None);
        let e = bad.failed.unwrap().error.unwrap();
        assert_eq!(e.code, "invalid_json");
        assert!(e.message.starts_with("line 1:"), "{}", e.message);
        assert!(bad.row.outbound.is_none(), "a failed line is never published");

        let out_of_range =
            check(2, r#"{"custom_id":"b","url":"/generate","body":{"text":"x","routed_dp_rank":5}}"#, None);
        assert_eq!(out_of_range.failed.unwrap().error.unwrap().message, "routed_dp_rank=5 out of range [0, 2)");

        let text = r#"{"custom_id":"c","url":"/generate","body":{"text":"x","routed_dp_rank":1}}"#;
        let good = check(3, text, None);
        assert!(good.failed.is_none());
        let out = good.row.outbound.unwrap();
        assert_eq!(out.pins, Pins { prefill: Some(1), decode: Some(1) });
        assert_eq!(out.line, text, "the feeder publishes the line as submitted");
    }

    #[test]
    fn a_line_for_another_endpoint_fails() {
        let c = check(1, r#"{"custom_id":"b","url":"/generate","body":{"text":"x"}}"#, Some(Endpoint::Completions));
        let e = c.failed.unwrap().error.unwrap();
        assert_eq!(e.code, "invalid_request");
        assert_eq!(e.message, "`url` '/generate' differs from the batch's endpoint '/v1/completions'");
    }
}
