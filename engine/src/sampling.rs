//! Token sampling.
//!
//! Reproducibility contract: the choice for output token number `step` depends only on the
//! logits, the params and `(params.seed, step)`. The RNG is re-seeded per step, so a prefill
//! worker can sample step 0 and another process continue at step 1 with identical results.
//! Ties are broken towards the lower token id everywhere (greedy and the sorted candidate list).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// 1 means off.
    pub top_p: f32,
    /// 0 means off.
    pub top_k: usize,
    /// 0 means off; otherwise drop tokens with probability < `min_p * max_probability`.
    pub min_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Alternatives to report with each token's log-probability; `None` reports none.
    pub logprobs: Option<usize>,
}

pub const DEFAULT_MAX_NEW_TOKENS: usize = 16;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// The parameters of choice `i` of a request with several: the seed moves by `i`.
    pub fn for_choice(&self, i: usize) -> SamplingParams {
        SamplingParams { seed: self.seed.wrapping_add(i as u64), ..self.clone() }
    }
}

/// The most log-probabilities [`logprobs`] reports per position.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// OpenAI cannot carry -inf in JSON; like vLLM, an impossible token reports this instead.
pub const MIN_LOGPROB: f32 = -9999.0;

/// A token's log-probability and the `top` most likely tokens of the same distribution, most
/// likely first, ties towards the lower id.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of the raw `logits` (before temperature and truncation) at `token`, with the
/// `k` most likely tokens (at most [`MAX_TOP_LOGPROBS`]). Accumulates in f64 so the result is
/// within f32 rounding of an exact log-softmax; a NaN logit counts as impossible.
pub fn logprobs(logits: &[f32], token: u32, k: usize) -> Logprob {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let max = logits.iter().copied().map(clean).fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (clean(x) as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    let lp = |x: f32| ((clean(x) as f64 - log_z) as f32).max(MIN_LOGPROB);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k.min(MAX_TOP_LOGPROBS) + 1);
    for (id, &x) in logits.iter().enumerate() {
        let x = clean(x);
        // Insertion into a short sorted list: k is at most 20, the vocabulary tens of thousands.
        if top.len() == k.min(MAX_TOP_LOGPROBS) && top.last().is_none_or(|&(_, worst)| x <= worst) {
            continue;
        }
        let at = top.partition_point(|&(_, y)| y >= x);
        top.insert(at, (id as u32, x));
        top.truncate(k.min(MAX_TOP_LOGPROBS));
    }
    let at = |t: u32| logits.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY);
    Logprob { logprob: lp(at(token)), top: top.into_iter().map(|(id, x)| (id, lp(x))).collect() }
}

/// The per-step RNG: seed and step both go into the 32-byte ChaCha key, so distinct
/// `(seed, step)` pairs never share a stream.
fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(step as u64).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Picks the next token. `step` is the index of the token being sampled (0 = first output
/// token, sampled from the prefill logits). Filters apply in order top_k, top_p, min_p, each
/// on the temperature-scaled softmax over the full vocabulary (as SGLang does); the selection
/// itself is the kernels crate's CPU reference, the same rules the CUDA sampling kernel follows.
pub fn sample(logits: &[f32], params: &SamplingParams, step: usize) -> u32 {
    params.draw(step).pick(logits)
}

/// Everything one token's choice depends on besides the logits: the filters and the uniform
/// number of `(seed, step)`. `Copy`, so a batch can carry it to wherever the logits are (the
/// host, or a device sampler that gets the same number and follows the same rules).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub filters: pdq_kernels::cpu::SampleParams,
    /// In `[0, 1)`; `None` when the filters are greedy (they draw nothing).
    pub uniform: Option<f64>,
}

impl Draw {
    /// The token these filters and this number pick from `logits`.
    pub fn pick(&self, logits: &[f32]) -> u32 {
        pdq_kernels::cpu::sample(logits, &self.filters, self.uniform.unwrap_or(0.0))
    }

    pub fn is_greedy(&self) -> bool {
        self.uniform.is_none()
    }
}

impl SamplingParams {
    /// The choice of output token number `step`. The RNG is only built when the filters use it.
    pub fn draw(&self, step: usize) -> Draw {
        let greedy = self.temperature <= 0.0 || self.top_k == 1;
        Draw {
            filters: pdq_kernels::cpu::SampleParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
            },
            uniform: (!greedy).then(|| step_rng(self.seed, step).gen::<f64>()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> SamplingParams {
        SamplingParams { temperature: 1.0, seed, ..Default::default() }
    }

    #[test]
    fn greedy_takes_lowest_index_on_ties() {
        assert_eq!(sample(&[0.0, 3.0, 3.0, 1.0], &SamplingParams::default(), 0), 1);
        assert_eq!(sample(&[f32::NAN, 1.0], &SamplingParams::default(), 0), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| (0..40).map(|s| sample(&logits, &params(seed), s)).collect::<Vec<_>>();
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        // Position-keyed: step 5 alone gives the same token as step 5 within a run.
        assert_eq!(sample(&logits, &params(1), 5), run(1)[5]);
    }

    #[test]
    fn filters_restrict_the_candidates() {
        let logits = [5.0, 4.0, 3.0, 0.0, -1.0];
        for s in 0..200 {
            let k = SamplingParams { top_k: 2, ..params(3) };
            assert!(sample(&logits, &k, s) < 2);
            let p = SamplingParams { top_p: 0.5, ..params(3) };
            assert_eq!(sample(&logits, &p, s), 0, "p0 = 0.66 > 0.5 so only token 0 stays");
            let m = SamplingParams { min_p: 0.3, ..params(3) };
            assert!(sample(&logits, &m, s) < 2, "p2/p0 = e^-2 < 0.3");
        }
    }

    #[test]
    fn logprobs_are_the_log_softmax_of_the_raw_logits() {
        let logits = [2.0f32, 1.0, 3.0, 3.0, -50.0];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let want = |i: usize| (logits[i] as f64 - z.ln()) as f32;
        let lp = logprobs(&logits, 0, 3);
        assert!((lp.logprob - want(0)).abs() < 1e-6);
        // Most likely first; the tie between ids 2 and 3 goes to the lower id.
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 3, 0]);
        assert!((lp.top[0].1 - want(2)).abs() < 1e-6);
        let total: f64 = (0..5).map(|i| (logprobs(&logits, i, 0).logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(logprobs(&logits, 0, 99).top.len(), 5);
        let nan = logprobs(&[f32::NAN, 0.0], 0, 2);
        assert_eq!((nan.logprob, nan.top[0]), (MIN_LOGPROB, (1, 0.0)));
    }

    #[test]
    fn choices_move_the_seed() {
        let p = params(7);
        assert_eq!((p.for_choice(0).seed, p.for_choice(3).seed), (7, 10));
        assert_eq!(SamplingParams { seed: u64::MAX, ..p }.for_choice(1).seed, 0);
    }

    #[test]
    fn high_temperature_reaches_many_tokens() {
        let logits = [1.0, 1.0, 1.0, 1.0];
        let seen: std::collections::HashSet<u32> = (0..100).map(|s| sample(&logits, &params(9), s)).collect();
        assert_eq!(seen.len(), 4);
    }
}
