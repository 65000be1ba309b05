//! What a request with `n` choices or log-probabilities stores beyond `results.text`: each
//! choice with its own tokens, finish reason and, when asked for, per-token log-probabilities
//! (CONTRACT §12). Token strings are decoded by the worker, which has the tokenizer, so the
//! export can give OpenAI's and SGLang's shapes from the row alone.

use serde::{Deserialize, Serialize};

use crate::FinishReason;

/// An alternative at one position: a token among the most likely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub id: u32,
    /// The token decoded alone (a partial UTF-8 sequence decodes to U+FFFD, as in vLLM).
    pub token: String,
    pub logprob: f32,
}

/// One output token: its log-probability under the distribution it was drawn from, before
/// temperature and truncation, and the `top` most likely tokens there, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// One of a request's `n` choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub text: String,
    pub output_ids: Vec<u32>,
    pub finish_reason: Option<FinishReason>,
    /// One entry per output id, when the request asked for log-probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}
