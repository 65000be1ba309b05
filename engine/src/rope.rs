//! Rotary position embedding parameters, as written by transformers 4.x (`rope_theta` plus an
//! optional `rope_scaling`) and 5.x (one `rope_parameters` object holding both). Precedence
//! follows transformers 5's `convert_rope_params_to_dict`: a non-null `rope_scaling` wins over
//! `rope_parameters`, and a `rope_theta` inside the chosen object wins over the top-level one.
//!
//! After [`resolve`], a `rope_scaling` of `None` means plain RoPE (HF's "default" type), and a
//! `Some` is a kind the engine implements with every field it needs present.

use serde::Deserialize;

/// RoPE frequency scaling (`rope_scaling` in 4.x configs, the non-theta part of 5.x
/// `rope_parameters`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type", default = "default_type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn one() -> f64 {
    1.0
}

fn default_type() -> String {
    "default".into()
}

/// Either object: 5.x `rope_parameters` holds `rope_theta` beside the scaling fields, and 4.x
/// `rope_scaling` may too.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(flatten)]
    scaling: RopeScaling,
}

/// The top-level RoPE fields of `config.json`.
pub(crate) struct RopeFields {
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    pub rope_parameters: Option<RopeParameters>,
}

/// Picks theta and scaling from either layout with transformers 5's precedence.
pub(crate) fn resolve(f: RopeFields) -> Result<(f64, Option<RopeScaling>), String> {
    let (params, field) = match (f.rope_scaling, f.rope_parameters) {
        (Some(p), _) => (Some(p), "rope_scaling"),
        (None, p) => (p, "rope_parameters"),
    };
    let theta = params.as_ref().and_then(|p| p.rope_theta).or(f.rope_theta).unwrap_or(DEFAULT_ROPE_THETA);
    let partial = params.as_ref().and_then(|p| p.partial_rotary_factor).or(f.partial_rotary_factor);
    if let Some(p) = partial.filter(|&p| p != 1.0) {
        return Err(format!("`partial_rotary_factor` {p} is not supported (only 1.0)"));
    }
    let scaling = params.map(|p| p.scaling);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(format!("`rope_theta` must be > 0, got {theta}"));
    }
    let scaling = match scaling {
        None => None,
        Some(s) => match s.rope_type.as_str() {
            "default" => None,
            "linear" => Some(s),
            "llama3" => {
                if s.low_freq_factor.is_none()
                    || s.high_freq_factor.is_none()
                    || s.original_max_position_embeddings.is_none()
                {
                    return Err(format!("`{field}` of type llama3 needs `low_freq_factor`, `high_freq_factor` and `original_max_position_embeddings`"));
                }
                Some(s)
            }
            other => {
                return Err(format!(
                    "`{field}.rope_type` {other:?} is not supported (supported: default, linear, llama3)"
                ))
            }
        },
    };
    if let Some(s) = &scaling {
        if !(s.factor.is_finite() && s.factor > 0.0) {
            return Err(format!("`{field}.factor` must be > 0, got {}", s.factor));
        }
    }
    Ok((theta, scaling))
}

/// HF's default `rope_theta` for Llama, Qwen2 and Mistral.
pub(crate) const DEFAULT_ROPE_THETA: f64 = 10000.0;

/// RoPE inverse frequencies after scaling. The tables come from the kernels crate, so the CPU
/// and CUDA backends and the engine share one definition (computed in `f64`, rounded once).
pub(crate) fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    use pdq_kernels::cpu::{rope_inv_freq, rope_inv_freq_llama3, Llama3RopeScaling};
    let Some(s) = scaling else { return rope_inv_freq(head_dim, theta) };
    match s.rope_type.as_str() {
        // Divided in f64 before rounding, as HF does.
        "linear" => {
            let d = head_dim as f64;
            (0..head_dim / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / d) / s.factor) as f32).collect()
        }
        "llama3" => rope_inv_freq_llama3(
            head_dim,
            theta,
            Llama3RopeScaling {
                factor: s.factor,
                low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192),
            },
        ),
        _ => rope_inv_freq(head_dim, theta),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> RopeParameters {
        serde_json::from_str(json).unwrap()
    }

    fn fields(theta: Option<f64>, scaling: Option<&str>, parameters: Option<&str>) -> RopeFields {
        RopeFields {
            rope_theta: theta,
            partial_rotary_factor: None,
            rope_scaling: scaling.map(params),
            rope_parameters: parameters.map(params),
        }
    }

    #[test]
    fn v5_parameters_carry_theta_and_scaling() {
        let p = params(
            r#"{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
        );
        let (theta, s) = resolve(RopeFields { rope_parameters: Some(p), ..fields(None, None, None) }).unwrap();
        assert_eq!(theta, 500000.0);
        let s = s.unwrap();
        assert_eq!((s.rope_type.as_str(), s.factor), ("llama3", 32.0));
    }

    #[test]
    fn default_type_means_no_scaling() {
        let (theta, s) = resolve(fields(None, None, Some(r#"{"rope_type": "default", "rope_theta": 1e6}"#))).unwrap();
        assert_eq!((theta, s.is_none()), (1e6, true));
        assert_eq!(resolve(fields(Some(5.0), Some(r#"{"type": "default"}"#), None)).unwrap(), (5.0, None));
        assert_eq!(resolve(fields(None, None, None)).unwrap().0, DEFAULT_ROPE_THETA);
    }

    #[test]
    fn rope_scaling_wins_and_inner_theta_wins() {
        let linear = r#"{"rope_type": "linear", "factor": 2.0}"#;
        let (theta, s) = resolve(fields(Some(7.0), Some(linear), Some(r#"{"rope_theta": 9.0}"#))).unwrap();
        assert_eq!((theta, s.unwrap().rope_type.as_str()), (7.0, "linear"));
        let (theta, _) = resolve(fields(Some(7.0), None, Some(r#"{"rope_theta": 9.0}"#))).unwrap();
        assert_eq!(theta, 9.0);
        let e = resolve(RopeFields { partial_rotary_factor: Some(0.5), ..fields(None, None, None) }).unwrap_err();
        assert!(e.contains("`partial_rotary_factor`"), "{e}");
    }

    #[test]
    fn unsupported_and_incomplete_kinds_are_named() {
        let e = resolve(fields(None, None, Some(r#"{"rope_type": "yarn", "rope_theta": 1.0}"#))).unwrap_err();
        assert!(e.contains("`rope_parameters.rope_type` \"yarn\""), "{e}");
        let e = resolve(fields(None, Some(r#"{"rope_type": "llama3", "factor": 8.0}"#), None)).unwrap_err();
        assert!(e.contains("`rope_scaling`") && e.contains("low_freq_factor"), "{e}");
    }

    #[test]
    fn llama3_keeps_short_and_divides_long_wavelengths() {
        let s: RopeScaling = serde_json::from_str(
            r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}"#,
        )
        .unwrap();
        let plain = inv_freq(128, 500000.0, None);
        let scaled = inv_freq(128, 500000.0, Some(&s));
        assert_eq!(plain[0], scaled[0]);
        assert_eq!(plain[63] / 8.0, scaled[63]);
    }
}
