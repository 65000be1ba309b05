//! The KV handle: what a prefill worker publishes on `{ns}.kv` once a prompt's KV is computed.
//! It names where the KV lives (rank, data-plane endpoint, id) and carries what decode reads of
//! the validated request, so the decode worker needs no database read before it can generate.
//! The prompt travels once, in the input `line` that a re-prefill republishes: the KV stands for
//! it everywhere else.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{Endpoint, Pins, Routing, Sampling, Timings, ValidRequest};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvHandle {
    pub request_id: Uuid,
    pub job_id: Option<Uuid>,
    pub request: HandleRequest,
    /// The original input line, republished as-is if the KV is lost and must be prefilled again.
    pub line: Value,
    /// 1 for the first prefill; each re-prefill after a lost KV adds one.
    pub attempt: u32,
    /// The decode rank this handle is for: the request's pin or the dispatcher's choice.
    pub decode_rank: Option<u32>,
    pub prefill_dp_rank: u32,
    /// `host:port` of the prefill worker's data plane.
    pub endpoint: String,
    pub kv_id: Uuid,
    /// Length of the KV the data plane serves for `kv_id`: the prompt's KV pages (a
    /// self-describing header, then each 16-token block's K and V rows for every layer).
    pub kv_bytes: u64,
    pub prompt_tokens: u32,
    /// Prompt tokens the prefill rank found in its prefix cache (`meta_info.cached_tokens`);
    /// 0 in a handle from a prefill without one.
    #[serde(default)]
    pub cached_tokens: u32,
    /// Sampled by prefill from the last position's logits (SGLang sends it as aux data).
    pub first_token: u32,
    /// The first token of each of the request's `n` choices (choice i sampled with `seed + i`)
    /// with its log-probability when asked for; `firsts[0].token == first_token`. Empty in a
    /// handle from a prefill that predates `n`, meaning one choice, `first_token`.
    #[serde(default)]
    pub firsts: Vec<FirstToken>,
    /// The seed actually used (the request's, or one derived from its id).
    pub seed: u64,
    /// Milliseconds since the epoch when the request was first enqueued.
    pub enqueued_at_ms: i64,
    /// Milliseconds since the epoch when prefill published this handle (0 from a prefill that
    /// predates it): bounds how long decoders wait for an unreachable prefill rank.
    #[serde(default)]
    pub published_at_ms: i64,
    pub timings: Timings,
    pub warnings: Vec<String>,
    /// The boot id of the prefill worker's host when it keeps this KV in shared memory: a
    /// decoder on the same host reads it there instead of over TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_host: Option<String>,
}

/// What decode reads of a validated request: everything but the prompt (the KV stands for it;
/// the `line` has it for a re-prefill) and the warnings (the handle carries prefill's, once).
/// A handle from a prefill that sent the whole `ValidRequest` reads as this too: serde skips
/// the extra fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandleRequest {
    pub custom_id: Option<String>,
    /// Names the field a constraint came in, should it fail to compile on the decoder.
    pub endpoint: Endpoint,
    pub sampling: Sampling,
    pub routing: Routing,
    pub pins: Pins,
}

impl From<&ValidRequest> for HandleRequest {
    fn from(r: &ValidRequest) -> HandleRequest {
        HandleRequest {
            custom_id: r.custom_id.clone(),
            endpoint: r.endpoint,
            sampling: r.sampling.clone(),
            routing: r.routing.clone(),
            pins: r.pins,
        }
    }
}

/// A sampled token's log-probability and the most likely `(id, logprob)` pairs, as ids: the
/// decoder, which decodes every other token too, names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstToken {
    pub token: u32,
    #[serde(default)]
    pub logprob: Option<RawLogprob>,
}

impl KvHandle {
    /// The first token of every choice.
    pub fn first_tokens(&self) -> Vec<FirstToken> {
        if self.firsts.is_empty() {
            vec![FirstToken { token: self.first_token, logprob: None }]
        } else {
            self.firsts.clone()
        }
    }

    /// Reads a handle off the wire. Beyond parsing, it refuses what no prefill worker writes:
    /// an empty endpoint or an attempt count of 0.
    pub fn decode(data: &[u8]) -> Result<KvHandle, String> {
        let h: KvHandle = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if h.endpoint.is_empty() {
            return Err("`endpoint` is empty".into());
        }
        if h.attempt == 0 {
            return Err("`attempt` must be >= 1".into());
        }
        let n = h.request.sampling.n as usize;
        if !h.firsts.is_empty() && (h.firsts.len() != n || h.firsts[0].token != h.first_token) {
            return Err(format!("`firsts` holds {} tokens for n={n}, or disagrees with `first_token`", h.firsts.len()));
        }
        Ok(h)
    }
}
