//! Data-parallel routing, exactly as SGLang PR 19268 defines it (CONTRACT §3):
//! - `routed_dp_rank` pins the decode rank (the `dp_rank` reported back) and, when
//!   `disagg_prefill_dp_rank` is absent, the prefill rank too;
//! - `disagg_prefill_dp_rank` pins the prefill rank that computes and holds the KV;
//! - `data_parallel_rank` is a deprecated alias, copied into `routed_dp_rank` only when that is
//!   absent, always with a warning;
//! - the `X-Data-Parallel-Rank` header beats both body fields for `routed_dp_rank`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ValidationError;

pub const DEPRECATION_WARNING: &str = "'data_parallel_rank' is deprecated, use 'routed_dp_rank' instead.";

/// How the cluster runs: prefill and decode on separate ranks, or both on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Disagg,
    Colocated,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disagg" => Ok(Mode::Disagg),
            "colocated" => Ok(Mode::Colocated),
            other => Err(format!("mode must be 'disagg' or 'colocated', got '{other}'")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Disagg => "disagg",
            Mode::Colocated => "colocated",
        })
    }
}

/// What a worker process runs: one stage of the disaggregated pipeline, or both on one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerRole {
    Prefill,
    Decode,
    Colocated,
}

impl WorkerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerRole::Prefill => "prefill",
            WorkerRole::Decode => "decode",
            WorkerRole::Colocated => "colocated",
        }
    }
}

impl std::str::FromStr for WorkerRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prefill" => Ok(WorkerRole::Prefill),
            "decode" => Ok(WorkerRole::Decode),
            "colocated" => Ok(WorkerRole::Colocated),
            other => Err(format!("role must be prefill, decode or colocated, got '{other}'")),
        }
    }
}

/// Read from a registry row: an unknown role is an error, never a guess.
impl TryFrom<String> for WorkerRole {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for WorkerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Read from a registry row: an unknown mode is an error, never a guess.
impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// DP sizes of each stage. In colocated mode there is one set of ranks serving both stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterShape {
    pub prefill_dp: u32,
    pub decode_dp: u32,
    pub mode: Mode,
}

impl ClusterShape {
    pub fn disagg(prefill_dp: u32, decode_dp: u32) -> Self {
        ClusterShape { prefill_dp, decode_dp, mode: Mode::Disagg }
    }

    pub fn colocated(dp: u32) -> Self {
        ClusterShape { prefill_dp: dp, decode_dp: dp, mode: Mode::Colocated }
    }
}

/// The routing fields of one request after alias and header resolution. Ranks stay `i64` until
/// [`Routing::pins`] checks them against the cluster, so a negative rank is reported with the
/// same range message as a too-large one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    pub routed_dp_rank: Option<i64>,
    pub disagg_prefill_dp_rank: Option<i64>,
    /// True when the deprecated `data_parallel_rank` was present in the body.
    pub used_deprecated_alias: bool,
}

/// Which rank each stage must run on; `None` leaves the stage to the dispatcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub prefill: Option<u32>,
    pub decode: Option<u32>,
}

impl Routing {
    /// Reads the routing fields from a request body and the header (line `headers` or the AMQP
    /// `x-data-parallel-rank` header; the caller passes whichever is present).
    pub fn from_body(body: &Map<String, Value>, header: Option<&Value>) -> Result<Routing, ValidationError> {
        let routed = rank_field(body, "routed_dp_rank")?;
        let prefill = rank_field(body, "disagg_prefill_dp_rank")?;
        let alias = rank_field(body, "data_parallel_rank")?;
        let header = header.map(parse_header).transpose()?;
        // The header wins; then the new field; the alias only fills a gap.
        Ok(Routing {
            routed_dp_rank: header.or(routed).or(alias),
            disagg_prefill_dp_rank: prefill,
            used_deprecated_alias: alias.is_some(),
        })
    }

    /// Checks the ranks against the cluster and returns the stage pins.
    pub fn pins(&self, shape: &ClusterShape) -> Result<Pins, ValidationError> {
        let check = |field, value: i64, bound: u32| {
            if (0..bound as i64).contains(&value) {
                Ok(value as u32)
            } else {
                Err(ValidationError::RankOutOfRange { field, value, bound })
            }
        };
        let routed = match self.routed_dp_rank {
            None => None,
            Some(r) => {
                let r = check("routed_dp_rank", r, shape.decode_dp)?;
                if self.disagg_prefill_dp_rank.is_none() {
                    check("routed_dp_rank", r as i64, shape.prefill_dp)?;
                }
                Some(r)
            }
        };
        let prefill =
            self.disagg_prefill_dp_rank.map(|p| check("disagg_prefill_dp_rank", p, shape.prefill_dp)).transpose()?;
        match shape.mode {
            Mode::Disagg => Ok(Pins { prefill: prefill.or(routed), decode: routed }),
            Mode::Colocated => {
                if let (Some(p), Some(r)) = (prefill, routed) {
                    if p != r {
                        return Err(ValidationError::ColocatedConflict { prefill: p, routed: r });
                    }
                }
                let rank = routed.or(prefill);
                Ok(Pins { prefill: rank, decode: rank })
            }
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        if self.used_deprecated_alias {
            vec![DEPRECATION_WARNING.to_string()]
        } else {
            Vec::new()
        }
    }
}

/// An optional integer rank field; `null` counts as absent.
fn rank_field(body: &Map<String, Value>, field: &'static str) -> Result<Option<i64>, ValidationError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| ValidationError::wrong_type(field, "an integer", v)),
    }
}

/// The header is text in HTTP; accept a JSON integer too since AMQP headers are typed.
fn parse_header(v: &Value) -> Result<i64, ValidationError> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    text.parse().map_err(|_| ValidationError::BadRankHeader(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routing(body: Value, header: Option<Value>) -> Result<Routing, ValidationError> {
        Routing::from_body(body.as_object().unwrap(), header.as_ref())
    }

    #[test]
    fn routed_pins_both_stages() {
        let r = routing(json!({"routed_dp_rank": 1}), None).unwrap();
        assert_eq!(r.pins(&ClusterShape::disagg(2, 3)).unwrap(), Pins { prefill: Some(1), decode: Some(1) });
    }

    #[test]
    fn prefill_field_pins_only_prefill_when_alone() {
        let r = routing(json!({"disagg_prefill_dp_rank": 1}), None).unwrap();
        assert_eq!(r.pins(&ClusterShape::disagg(2, 3)).unwrap(), Pins { prefill: Some(1), decode: None });
        let r = routing(json!({"disagg_prefill_dp_rank": 0, "routed_dp_rank": 2}), None).unwrap();
        assert_eq!(r.pins(&ClusterShape::disagg(2, 3)).unwrap(), Pins { prefill: Some(0), decode: Some(2) });
    }

    #[test]
    fn alias_fills_gap_and_warns_but_new_field_wins() {
        let r = routing(json!({"data_parallel_rank": 2}), None).unwrap();
        assert_eq!(r.routed_dp_rank, Some(2));
        assert_eq!(r.warnings(), vec![DEPRECATION_WARNING.to_string()]);
        let r = routing(json!({"data_parallel_rank": 2, "routed_dp_rank": 0}), None).unwrap();
        assert_eq!(r.routed_dp_rank, Some(0));
        assert!(r.used_deprecated_alias);
    }

    #[test]
    fn header_beats_body() {
        let r = routing(json!({"data_parallel_rank": 2, "routed_dp_rank": 0}), Some(json!("1"))).unwrap();
        assert_eq!(r.routed_dp_rank, Some(1));
        let e = routing(json!({}), Some(json!("abc"))).unwrap_err();
        assert_eq!(e.to_string(), "Invalid X-Data-Parallel-Rank header: must be an integer, got 'abc'");
        assert_eq!(e.code(), "invalid_request");
    }

    #[test]
    fn ranges_use_the_contract_wording() {
        let shape = ClusterShape::disagg(2, 3);
        let e = routing(json!({"routed_dp_rank": 3}), None).unwrap().pins(&shape).unwrap_err();
        assert_eq!(e.to_string(), "routed_dp_rank=3 out of range [0, 3)");
        // Valid for decode, but it also pins prefill, which has only 2 ranks.
        let e = routing(json!({"routed_dp_rank": 2}), None).unwrap().pins(&shape).unwrap_err();
        assert_eq!(e.to_string(), "routed_dp_rank=2 out of range [0, 2)");
        let e = routing(json!({"disagg_prefill_dp_rank": 5}), None).unwrap().pins(&shape).unwrap_err();
        assert_eq!(e.to_string(), "disagg_prefill_dp_rank=5 out of range [0, 2)");
        let e = routing(json!({"routed_dp_rank": -1}), None).unwrap().pins(&shape).unwrap_err();
        assert_eq!(e.to_string(), "routed_dp_rank=-1 out of range [0, 3)");
        let e = routing(json!({"routed_dp_rank": "1"}), None).unwrap_err();
        assert_eq!(e.to_string(), "`routed_dp_rank` must be an integer, got string '1'");
    }

    #[test]
    fn colocated_uses_one_rank() {
        let shape = ClusterShape::colocated(2);
        let r = routing(json!({"disagg_prefill_dp_rank": 1}), None).unwrap();
        assert_eq!(r.pins(&shape).unwrap(), Pins { prefill: Some(1), decode: Some(1) });
        let r = routing(json!({"disagg_prefill_dp_rank": 1, "routed_dp_rank": 0}), None).unwrap();
        assert!(r.pins(&shape).is_err());
    }
}
