//! Sampling parameters in their OpenAI and SGLang spellings, read into one struct.
//! OpenAI surfaces put them at the top of `body`; `/generate` nests them in `sampling_params`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::features::Constraint;
use crate::ValidationError;

/// OpenAI's default for `/v1/completions`.
pub const DEFAULT_COMPLETION_MAX_TOKENS: u64 = 16;
/// SGLang's default `max_new_tokens`, used for chat and `/generate` where OpenAI sets none.
pub const DEFAULT_GENERATE_MAX_TOKENS: u64 = 128;
/// OpenAI allows four stop sequences; SGLang more. Bound it so a line cannot stall the stop scan.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Choices per request (CONTRACT §12): each runs as its own decode sequence.
pub const MAX_N: u32 = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// As the user sent it: a limit past the context fails with the number they wrote.
    pub max_tokens: u64,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means off.
    pub top_k: u32,
    pub min_p: f32,
    /// `None`: the worker derives one from the request id, so a result can still be replayed.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Choices to generate; choice i samples with `seed + i`.
    #[serde(default = "one")]
    pub n: u32,
    /// Log-probabilities to return with each output token, and how many alternatives
    /// (0..=[`crate::features::MAX_TOP_LOGPROBS`]); `None` returns none.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// A grammar every completed choice must match.
    #[serde(default)]
    pub constraint: Option<Constraint>,
}

fn one() -> u32 {
    1
}

impl Sampling {
    pub fn greedy(max_tokens: u64) -> Self {
        Sampling {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            n: 1,
            logprobs: None,
            constraint: None,
        }
    }

    /// Reads the fields from `obj`. `max_names` lists the accepted spellings of the token limit,
    /// in priority order; `prefix` is prepended to field names in errors (`sampling_params.`).
    pub fn parse(
        obj: &Map<String, Value>,
        max_names: &[&'static str],
        default_max: u64,
        prefix: &str,
    ) -> Result<Sampling, ValidationError> {
        let f = Fields { obj, prefix };
        let mut max_tokens = None;
        for name in max_names {
            if let Some(v) = f.int(name)? {
                max_tokens = Some((name, v));
                break;
            }
        }
        let max_tokens = match max_tokens {
            None => default_max,
            Some((name, v)) if v < 1 => {
                return Err(ValidationError::invalid(f.name(name), format!("must be >= 1, got {v}")))
            }
            Some((_, v)) => v as u64,
        };
        let temperature = f.number("temperature")?.unwrap_or(1.0);
        if temperature < 0.0 {
            return Err(ValidationError::invalid(f.name("temperature"), format!("must be >= 0, got {temperature}")));
        }
        let top_p = f.number("top_p")?.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ValidationError::invalid(f.name("top_p"), format!("must be in (0, 1], got {top_p}")));
        }
        let top_k = match f.int("top_k")? {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k < -1 => {
                return Err(ValidationError::invalid(f.name("top_k"), format!("must be -1 (off) or >= 1, got {k}")))
            }
            Some(k) => u32::try_from(k).unwrap_or(u32::MAX),
        };
        let min_p = f.number("min_p")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ValidationError::invalid(f.name("min_p"), format!("must be in [0, 1], got {min_p}")));
        }
        let seed_field = if f.get("seed").is_some() { "seed" } else { "sampling_seed" };
        let seed = match f.int(seed_field)? {
            Some(s) if s < 0 => {
                return Err(ValidationError::invalid(f.name(seed_field), format!("must be >= 0, got {s}")))
            }
            s => s.map(|s| s as u64),
        };
        let n = match f.int("n")? {
            None => 1,
            Some(n) if (1..=MAX_N as i64).contains(&n) => n as u32,
            Some(n) => return Err(ValidationError::invalid(f.name("n"), format!("must be in [1, {MAX_N}], got {n}"))),
        };
        Ok(Sampling {
            max_tokens,
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k,
            min_p: min_p as f32,
            seed,
            stop: f.stop()?,
            stop_token_ids: f.token_ids("stop_token_ids")?,
            ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
            n,
            logprobs: None,
            constraint: None,
        })
    }
}

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl Fields<'_> {
    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn int(&self, field: &str) -> Result<Option<i64>, ValidationError> {
        self.get(field)
            .map(|v| v.as_i64().ok_or_else(|| ValidationError::wrong_type(self.name(field), "an integer", v)))
            .transpose()
    }

    fn number(&self, field: &str) -> Result<Option<f64>, ValidationError> {
        self.get(field)
            .map(|v| v.as_f64().ok_or_else(|| ValidationError::wrong_type(self.name(field), "a number", v)))
            .transpose()
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, ValidationError> {
        self.get(field)
            .map(|v| v.as_bool().ok_or_else(|| ValidationError::wrong_type(self.name(field), "a boolean", v)))
            .transpose()
    }

    fn stop(&self) -> Result<Vec<String>, ValidationError> {
        let stop = match self.get("stop") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ValidationError::wrong_type(self.name("stop"), "a string or a list of strings", v)
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(ValidationError::wrong_type(self.name("stop"), "a string or a list of strings", v)),
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ValidationError::invalid(
                self.name("stop"),
                format!("may hold at most {MAX_STOP_SEQUENCES} sequences, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ValidationError::invalid(self.name("stop"), "must not contain an empty string"));
        }
        Ok(stop)
    }

    fn token_ids(&self, field: &str) -> Result<Vec<u32>, ValidationError> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(v) => token_ids(v, &self.name(field)),
        }
    }
}

/// A JSON array of non-negative token ids.
pub(crate) fn token_ids(v: &Value, field: &str) -> Result<Vec<u32>, ValidationError> {
    let items = v.as_array().ok_or_else(|| ValidationError::wrong_type(field, "an array of token ids", v))?;
    items
        .iter()
        .map(|t| {
            t.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| ValidationError::wrong_type(field, "an array of token ids", t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Sampling, ValidationError> {
        Sampling::parse(v.as_object().unwrap(), &["max_tokens"], 16, "")
    }

    #[test]
    fn defaults_and_aliases() {
        let s = parse(json!({})).unwrap();
        assert_eq!((s.max_tokens, s.temperature, s.top_k), (16, 1.0, 0));
        let s = Sampling::parse(
            json!({"max_completion_tokens": 5, "max_tokens": 9}).as_object().unwrap(),
            &["max_completion_tokens", "max_tokens"],
            16,
            "",
        )
        .unwrap();
        assert_eq!(s.max_tokens, 5);
        let s = parse(json!({"stop": "\n", "top_k": -1, "seed": 7, "ignore_eos": true})).unwrap();
        assert_eq!((s.stop, s.top_k, s.seed, s.ignore_eos), (vec!["\n".to_string()], 0, Some(7), true));
    }

    #[test]
    fn a_negative_seed_is_refused_not_wrapped() {
        let obj = serde_json::json!({"seed": -1}).as_object().unwrap().clone();
        let e = Sampling::parse(&obj, &["max_tokens"], 16, "").unwrap_err();
        assert_eq!(e.to_string(), "`seed` must be >= 0, got -1");
        let obj = serde_json::json!({"max_tokens": 1_000_000_000_000u64}).as_object().unwrap().clone();
        assert_eq!(Sampling::parse(&obj, &["max_tokens"], 16, "").unwrap().max_tokens, 1_000_000_000_000);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(parse(json!({"max_tokens": 0})).unwrap_err().to_string(), "`max_tokens` must be >= 1, got 0");
        assert_eq!(
            parse(json!({"temperature": "hot"})).unwrap_err().to_string(),
            "`temperature` must be a number, got string 'hot'"
        );
        let e = Sampling::parse(
            json!({"max_new_tokens": -3}).as_object().unwrap(),
            &["max_new_tokens"],
            16,
            "sampling_params.",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "`sampling_params.max_new_tokens` must be >= 1, got -3");
        assert!(parse(json!({"stop": [1]})).unwrap_err().to_string().contains("`stop`"));
        assert_eq!(parse(json!({"n": 16})).unwrap().n, 16);
        assert_eq!(parse(json!({"n": 17})).unwrap_err().to_string(), "`n` must be in [1, 16], got 17");
        assert_eq!(parse(json!({"n": 0})).unwrap_err().to_string(), "`n` must be in [1, 16], got 0");
    }
}
