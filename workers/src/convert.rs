//! Conversions between the wire types (protocol) and the engine's types.

use pdq_engine::{FinishReason as EngineFinish, Matched, SamplingParams};
use pdq_protocol::{FinishReason, Sampling};
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
