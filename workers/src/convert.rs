//! Conversions between the wire types (protocol) and the engine's types.

use std::collections::HashMap;

use pdq_engine::{Constrained, FinishReason as EngineFinish, GrammarSpec, Logprob, Matched, Model, SamplingParams};
use pdq_protocol::{
    Choice, Constraint, Endpoint, FinishReason, FirstToken, MetaInfo, Outcome, RawLogprob, ResultStatus, Sampling,
    TokenLogprob, TopLogprob, ValidationError,
};

use crate::actors::engine_loop::{DecodeOut, EngineHandle, First};
use serde_json::Value;
use uuid::Uuid;

/// The seed a request samples with: its own, or one derived from its id, so that a sampled
/// answer can be replayed from the `seed` recorded in `meta_info`.
pub fn seed_for(sampling: &Sampling, request_id: Uuid) -> u64 {
    sampling.seed.unwrap_or_else(|| {
        let (hi, lo) = request_id.as_u64_pair();
        hi ^ lo.rotate_left(17)
    })
}

pub fn sampling_params(s: &Sampling, seed: u64) -> SamplingParams {
    SamplingParams {
        max_new_tokens: s.max_tokens as usize,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k as usize,
        min_p: s.min_p,
        seed,
        stop: s.stop.clone(),
        stop_token_ids: s.stop_token_ids.clone(),
        ignore_eos: s.ignore_eos,
        logprobs: s.logprobs.map(|k| k as usize),
    }
}

/// A prefill's first tokens as the KV handle carries them, and back.
pub fn wire_firsts(firsts: &[First]) -> Vec<FirstToken> {
    firsts
        .iter()
        .map(|f| FirstToken {
            token: f.token,
            logprob: f.logprob.as_ref().map(|l| RawLogprob { logprob: l.logprob, top: l.top.clone() }),
        })
        .collect()
}

pub fn engine_firsts(firsts: &[FirstToken]) -> Vec<First> {
    firsts
        .iter()
        .map(|f| First {
            token: f.token,
            logprob: f.logprob.as_ref().map(|l| Logprob { logprob: l.logprob, top: l.top.clone() }),
        })
        .collect()
}

/// What a finished decode puts in a result row: choice 0 in `text` / `output_ids` /
/// `logprobs`, every choice in `choices` when there are several.
pub struct Answer {
    pub text: String,
    pub output_ids: Vec<u32>,
    pub finish: FinishReason,
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub choices: Vec<Choice>,
    /// Over every choice (OpenAI's usage counts them all).
    pub completion_tokens: u32,
}

impl Answer {
    /// The `completed` row of a request this answers. `meta_info` is the stage's; the answer
    /// fills in its token count and finish reason.
    pub fn completed(
        self,
        request_id: Uuid,
        job_id: Option<Uuid>,
        custom_id: Option<String>,
        meta_info: MetaInfo,
    ) -> Outcome {
        Outcome {
            request_id,
            job_id,
            custom_id,
            status: ResultStatus::Completed,
            text: Some(self.text),
            output_ids: self.output_ids,
            meta_info: MetaInfo {
                completion_tokens: self.completion_tokens,
                finish_reason: Some(self.finish),
                ..meta_info
            },
            error: None,
            logprobs: self.logprobs,
            choices: self.choices,
            embeddings: Vec::new(),
        }
    }
}

pub fn answer(model: &Model, out: DecodeOut, with_logprobs: bool) -> Answer {
    let mut names = TokenNames { model, cache: HashMap::new() };
    let completion_tokens = out.choices.iter().map(|c| c.output_ids.len() as u32).sum();
    let mut choices: Vec<Choice> = out
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| Choice {
            index: i as u32,
            logprobs: with_logprobs.then(|| names.logprobs(&c.output_ids, &c.logprobs)),
            text: c.text,
            output_ids: c.output_ids,
            finish_reason: Some(finish_reason(&c.finish)),
        })
        .collect();
    let first = if choices.len() == 1 { choices.remove(0) } else { choices[0].clone() };
    Answer {
        text: first.text,
        output_ids: first.output_ids,
        finish: first.finish_reason.expect("set above"),
        logprobs: first.logprobs,
        choices,
        completion_tokens,
    }
}

/// Token strings for log-probabilities, each id decoded alone once per request.
struct TokenNames<'a> {
    model: &'a Model,
    cache: HashMap<u32, String>,
}

impl TokenNames<'_> {
    fn name(&mut self, id: u32) -> String {
        let model = self.model;
        // An id the tokenizer cannot decode alone is named by its number rather than dropped.
        self.cache.entry(id).or_insert_with(|| model.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"))).clone()
    }

    fn logprobs(&mut self, ids: &[u32], lps: &[Logprob]) -> Vec<TokenLogprob> {
        ids.iter()
            .zip(lps)
            .map(|(&id, lp)| TokenLogprob {
                id,
                token: self.name(id),
                logprob: lp.logprob,
                top: lp.top.iter().map(|&(t, l)| TopLogprob { id: t, token: self.name(t), logprob: l }).collect(),
            })
            .collect()
    }
}

pub fn finish_reason(f: &EngineFinish) -> FinishReason {
    match f {
        EngineFinish::Stop { matched } => FinishReason::Stop {
            matched: matched.as_ref().map(|m| match m {
                Matched::Token(t) => Value::from(*t),
                Matched::Text(s) => Value::from(s.clone()),
            }),
        },
        EngineFinish::Length { length } => FinishReason::Length { length: *length as u32 },
        EngineFinish::Abort { message } => FinishReason::Abort { message: message.clone() },
    }
}

/// The request's output constraint, compiled against the model's vocabulary. One that does not
/// compile is the request's fault (`invalid_request`, naming the field it came in).
pub fn compile_constraint(
    engine: &EngineHandle,
    sampling: &Sampling,
    endpoint: Endpoint,
) -> Result<Option<Constrained>, ValidationError> {
    let Some(c) = &sampling.constraint else { return Ok(None) };
    let (field, spec) = match c {
        Constraint::JsonObject => ("response_format", GrammarSpec::JsonSchema(serde_json::json!({"type": "object"}))),
        Constraint::JsonSchema { schema } => {
            let field = match endpoint {
                Endpoint::Generate => "sampling_params.json_schema",
                Endpoint::Responses => "text.format.schema",
                _ => "response_format.json_schema.schema",
            };
            (field, GrammarSpec::JsonSchema(schema.clone()))
        }
        Constraint::Regex { pattern } => ("sampling_params.regex", GrammarSpec::Regex(pattern.clone())),
    };
    let invalid = |e: pdq_engine::EngineError| ValidationError::Invalid {
        field: field.to_string(),
        reason: format!("cannot be used: {e}"),
    };
    let grammars = engine.grammars().map_err(invalid)?;
    grammars.compile(&spec).map(Some).map_err(invalid)
}
