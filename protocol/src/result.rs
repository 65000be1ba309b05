//! The result of one request: what is written to `results` (CONTRACT §5), exactly once.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Choice, ErrorBody, TokenLogprob};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    Completed,
    Failed,
    Cancelled,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Completed => "completed",
            ResultStatus::Failed => "failed",
            ResultStatus::Cancelled => "cancelled",
        }
    }
}

/// SGLang's `meta_info.finish_reason`: `{type: stop|length|abort, matched?, message?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FinishReason {
    Stop {
        /// The stop string, or the token id, that ended generation; absent for EOS via `ignore_eos=false`
        /// when the model's own EOS token matched (SGLang reports the id then too).
        #[serde(skip_serializing_if = "Option::is_none")]
        matched: Option<serde_json::Value>,
    },
    Length {
        length: u32,
    },
    Abort {
        message: String,
    },
}

impl FinishReason {
    /// The OpenAI spelling (`stop` / `length`), stored in `results.finish_reason`.
    pub fn openai(&self) -> &'static str {
        match self {
            FinishReason::Stop { .. } => "stop",
            FinishReason::Length { .. } => "length",
            FinishReason::Abort { .. } => "abort",
        }
    }
}

/// Stage timings in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queue_time: f64,
    pub prefill_time: f64,
    pub kv_transfer_time: f64,
    pub decode_time: f64,
}

/// `results.meta_info`. `dp_rank` is the rank that generated the answer (decode, or colocated),
/// so a router can check its `routed_dp_rank` was honoured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaInfo {
    pub id: String,
    pub dp_rank: Option<u32>,
    pub prefill_dp_rank: Option<u32>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    pub finish_reason: Option<FinishReason>,
    pub e2e_latency: f64,
    #[serde(flatten)]
    pub timings: Timings,
    pub kv_bytes: u64,
    pub warnings: Vec<String>,
    /// Not in SGLang's meta_info: the seed used, so a sampled answer can be replayed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seed: Option<u64>,
    /// Not in SGLang's meta_info: prefill attempts (more than 1 after a lost KV).
    #[serde(default)]
    pub attempts: u32,
}

/// One row of `results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub request_id: Uuid,
    pub job_id: Option<Uuid>,
    pub custom_id: Option<String>,
    pub status: ResultStatus,
    pub text: Option<String>,
    pub output_ids: Vec<u32>,
    pub meta_info: MetaInfo,
    pub error: Option<ErrorBody>,
    /// Choice 0's log-probabilities (`results.logprobs`), when the request asked for them.
    #[serde(default)]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Every choice, choice 0 included, when the request asked for `n` > 1 (`results.choices`);
    /// empty otherwise. `text` and `output_ids` keep choice 0 either way.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// An embeddings request's vectors, one per input (the `embeddings` table); empty for
    /// every other request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<Vec<f32>>,
}

impl Outcome {
    /// A failure recorded without running the model (bad input, lost KV, cancellation).
    pub fn failed(
        request_id: Uuid,
        job_id: Option<Uuid>,
        custom_id: Option<String>,
        error: ErrorBody,
        meta: MetaInfo,
    ) -> Self {
        Outcome {
            request_id,
            job_id,
            custom_id,
            status: ResultStatus::Failed,
            text: None,
            output_ids: Vec::new(),
            meta_info: meta,
            error: Some(error),
            logprobs: None,
            choices: Vec::new(),
            embeddings: Vec::new(),
        }
    }

    pub fn cancelled(request_id: Uuid, job_id: Option<Uuid>, custom_id: Option<String>) -> Self {
        let meta = MetaInfo { id: request_id.to_string(), ..MetaInfo::default() };
        Outcome {
            status: ResultStatus::Cancelled,
            ..Outcome::failed(request_id, job_id, custom_id, ErrorBody::new("cancelled", "the job was cancelled"), meta)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_info_has_the_contract_keys() {
        let m = MetaInfo {
            id: "x".into(),
            dp_rank: Some(2),
            finish_reason: Some(FinishReason::Stop { matched: Some(json!("\n")) }),
            ..MetaInfo::default()
        };
        let v = serde_json::to_value(&m).unwrap();
        for key in [
            "id",
            "dp_rank",
            "prefill_dp_rank",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "finish_reason",
            "e2e_latency",
            "queue_time",
            "prefill_time",
            "kv_transfer_time",
            "decode_time",
            "kv_bytes",
            "warnings",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["finish_reason"], json!({"type": "stop", "matched": "\n"}));
        let back: MetaInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}
