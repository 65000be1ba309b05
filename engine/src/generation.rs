//! One sequence being generated: records sampled tokens and decides when to stop.
//!
//! Invariants:
//! - `step()` counts every pushed token, including a final EOS; it is the `step` for the next
//!   [`sample`] call.
//! - `logprobs()`, when the params ask for them, holds one entry per `output_ids()` entry.
//! - `output_ids()` is every pushed token except a final EOS (SGLang keeps it, but callers here
//!   want ids that decode to the text). A matched `stop_token_ids` token that is not EOS stays
//!   in `output_ids` but is cut from `text()`, as SGLang trims a matched stop token.
//! - `text()` is cut before the earliest matched stop string.
//! - Finish priority for one token: EOS, stop token, stop string, `max_new_tokens`, context.
//! - With a grammar, every sampled token is one the grammar allowed, and the generation stops
//!   (`Stop` with nothing matched) the moment the grammar is complete.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::error::EngineError;
use crate::grammar::Constrained;
use crate::kv::KvCache;
use crate::model::Model;
use crate::sampling::{logprobs, sample, Logprob, SamplingParams};

/// What a stop matched: a token id or a stop string (serialised bare: `128009` or `"\n"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Matched {
    Token(u32),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    Stop {
        matched: Option<Matched>,
    },
    /// `length` is the number of output tokens when the limit hit (SGLang's `FINISH_LENGTH`).
    Length {
        length: usize,
    },
    Abort {
        message: String,
    },
}

impl FinishReason {
    /// SGLang `meta_info.finish_reason`: `{"type":"stop","matched":...}`,
    /// `{"type":"length","length":N}`, `{"type":"abort","message":...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("FinishReason serialises to a JSON object")
    }

    /// The OpenAI `finish_reason` string.
    pub fn openai(&self) -> &'static str {
        match self {
            FinishReason::Stop { .. } => "stop",
            FinishReason::Length { .. } => "length",
            FinishReason::Abort { .. } => "abort",
        }
    }
}

impl Serialize for FinishReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        match self {
            FinishReason::Stop { matched } => {
                m.serialize_entry("type", "stop")?;
                m.serialize_entry("matched", matched)?;
            }
            FinishReason::Length { length } => {
                m.serialize_entry("type", "length")?;
                m.serialize_entry("length", length)?;
            }
            FinishReason::Abort { message } => {
                m.serialize_entry("type", "abort")?;
                m.serialize_entry("message", message)?;
            }
        }
        m.end()
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    prompt_len: usize,
    params: SamplingParams,
    eos: Vec<u32>,
    max_context: usize,
    output: Vec<u32>,
    logprobs: Vec<Logprob>,
    step: usize,
    finish: Option<FinishReason>,
    /// Byte offset in the decoded output where a matched stop string starts.
    stop_at: Option<usize>,
    /// The last output id is a matched `stop_token_ids` token, left out of `text()`.
    stop_token_last: bool,
    grammar: Option<Constrained>,
}

impl Generation {
    /// A generation that is already finished (`Length { length: 0 }`) when `max_new_tokens`
    /// is 0 or the prompt fills the context, so callers never sample for it.
    pub fn new(prompt_len: usize, params: SamplingParams, eos: &[u32], max_context: usize) -> Generation {
        let finish =
            (params.max_new_tokens == 0 || prompt_len >= max_context).then_some(FinishReason::Length { length: 0 });
        Generation {
            prompt_len,
            params,
            eos: eos.to_vec(),
            max_context,
            output: Vec::new(),
            logprobs: Vec::new(),
            step: 0,
            finish,
            stop_at: None,
            stop_token_last: false,
            grammar: None,
        }
    }

    /// The generation with its output constrained by `grammar` (a fresh one, or `None`).
    pub fn with_grammar(mut self, grammar: Option<Constrained>) -> Generation {
        self.grammar = grammar;
        self
    }

    pub fn is_constrained(&self) -> bool {
        self.grammar.is_some()
    }

    /// Computes the grammar's mask for the next token ahead of [`Generation::sample_next`], so it
    /// can run beside the forward pass. A failure shows again when sampling.
    pub fn prepare_grammar(&mut self) {
        if let Some(g) = &mut self.grammar {
            let _ = g.prepare();
        }
    }

    /// Records `token`; returns the finish reason once finished. Pushing after the finish is a
    /// no-op that returns the same reason.
    pub fn push(&mut self, model: &Model, token: u32) -> Option<&FinishReason> {
        self.push_scored(model, token, None)
    }

    /// [`Generation::push`] with the token's log-probability, kept when the token is output.
    pub fn push_scored(&mut self, model: &Model, token: u32, logprob: Option<Logprob>) -> Option<&FinishReason> {
        if self.finish.is_some() {
            return self.finish.as_ref();
        }
        self.step += 1;
        if !self.params.ignore_eos && self.eos.contains(&token) {
            self.finish = Some(FinishReason::Stop { matched: Some(Matched::Token(token)) });
            return self.finish.as_ref();
        }
        self.output.push(token);
        if let Some(lp) = logprob {
            self.logprobs.push(lp);
        }
        if let Some(g) = &mut self.grammar {
            if let Err(e) = g.commit(token) {
                self.finish = Some(FinishReason::Abort { message: e.to_string() });
                return self.finish.as_ref();
            }
            if g.is_complete() {
                self.finish = Some(FinishReason::Stop { matched: None });
                return self.finish.as_ref();
            }
        }
        if self.params.stop_token_ids.contains(&token) {
            self.stop_token_last = true;
            self.finish = Some(FinishReason::Stop { matched: Some(Matched::Token(token)) });
        } else if self.params.stop.iter().any(|s| !s.is_empty()) {
            match model.decode(&self.output) {
                Ok(text) => {
                    if let Some((at, s)) = self.find_stop(&text) {
                        self.stop_at = Some(at);
                        self.finish = Some(FinishReason::Stop { matched: Some(Matched::Text(s)) });
                    }
                }
                Err(e) => self.finish = Some(FinishReason::Abort { message: e.to_string() }),
            }
        }
        if self.finish.is_none()
            && (self.step >= self.params.max_new_tokens || self.prompt_len + self.step >= self.max_context)
        {
            self.finish = Some(FinishReason::Length { length: self.output.len() });
        }
        self.finish.as_ref()
    }

    /// Earliest stop-string match in `text`; on equal offsets the longer string wins so the
    /// cut is the same whichever order the strings were given in.
    fn find_stop(&self, text: &str) -> Option<(usize, String)> {
        self.params
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())))
            .map(|(at, s)| (at, s.clone()))
    }

    /// Ends the generation with an abort (e.g. a failed decode step upstream).
    pub fn abort(&mut self, message: impl Into<String>) {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Abort { message: message.into() });
        }
    }

    pub fn output_ids(&self) -> &[u32] {
        &self.output
    }

    /// One per output id when the params ask for log-probabilities (see the module note).
    pub fn logprobs(&self) -> &[Logprob] {
        &self.logprobs
    }

    /// Samples the next token from `logits`, among those the grammar allows, and scores it
    /// under the model's own distribution when the params ask for that.
    pub fn sample_next(&mut self, logits: &[f32]) -> Result<(u32, Option<Logprob>), EngineError> {
        let token = match &mut self.grammar {
            None => sample(logits, &self.params, self.step),
            Some(g) => {
                let mut masked = logits.to_vec();
                g.apply(&mut masked)?;
                sample(&masked, &self.params, self.step)
            }
        };
        Ok((token, self.params.logprobs.map(|k| logprobs(logits, token, k))))
    }

    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref()
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    pub fn step(&self) -> usize {
        self.step
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Decoded output, cut before a matched stop string or stop token.
    pub fn text(&self, model: &Model) -> Result<String, EngineError> {
        let ids = if self.stop_token_last { &self.output[..self.output.len() - 1] } else { &self.output[..] };
        let mut text = model.decode(ids)?;
        if let Some(at) = self.stop_at {
            text.truncate(at);
        }
        Ok(text)
    }
}

/// Prefill, then sample and decode until finished. The returned cache holds the prompt and every
/// output token except the last one sampled (whose KV is never needed).
pub fn generate(model: &Model, prompt: &[u32], params: &SamplingParams) -> Result<(Generation, KvCache), EngineError> {
    let (mut kv, mut logits) = model.prefill(prompt)?;
    let mut generation = Generation::new(prompt.len(), params.clone(), model.eos_token_ids(), model.max_context());
    while !generation.is_finished() {
        let (token, logprob) = generation.sample_next(&logits)?;
        if generation.push_scored(model, token, logprob).is_some() {
            break;
        }
        logits = model.decode_step(&mut kv, token)?;
    }
    Ok((generation, kv))
}
