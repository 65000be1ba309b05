//! DP dispatch for stages a request leaves unpinned (CONTRACT §3). Pins always win and never
//! move a policy's state: a pinned request bypasses round-robin's counter. Under `shared`, an
//! unpinned request goes to the queue that every idle rank pulls from, so the broker balances it.

use pdq_protocol::{ClusterShape, Pins};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Unpinned prefill goes to `{ns}.prefill.any`, unpinned decode to `{ns}.kv.{p}`: idle ranks pull.
    #[default]
    Shared,
    RoundRobin,
    /// The rank with the fewest queued requests (broker queue depth plus what this run assigned).
    LeastLoaded,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Shared => "shared",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoaded => "least-loaded",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(Policy::Shared),
            "round-robin" => Ok(Policy::RoundRobin),
            "least-loaded" => Ok(Policy::LeastLoaded),
            other => Err(format!("policy must be shared, round-robin or least-loaded, got '{other}'")),
        }
    }
}

/// Where one request goes: the prefill routing key and the dispatcher's choices (if any) for
/// the stages the request did not pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub prefill_key: String,
    pub dispatch_prefill: Option<u32>,
    pub dispatch_decode: Option<u32>,
}

/// Per-stage state of one policy.
#[derive(Debug, Clone)]
struct Stage {
    next: u32,
    load: Vec<u64>,
}

impl Stage {
    fn new(ranks: u32, load: Option<Vec<u64>>) -> Stage {
        Stage { next: 0, load: load.unwrap_or_else(|| vec![0; ranks as usize]) }
    }

    fn pick(&mut self, policy: Policy, pinned: Option<u32>) -> Option<u32> {
        let chosen = match (pinned, policy) {
            (Some(r), _) => r,
            (None, Policy::Shared) => return None,
            (None, Policy::RoundRobin) => {
                let r = self.next;
                self.next = (self.next + 1) % self.load.len() as u32;
                r
            }
            (None, Policy::LeastLoaded) => {
                // Lowest load, lowest rank on ties.
                self.load.iter().enumerate().min_by_key(|(i, l)| (**l, *i)).map(|(i, _)| i as u32).unwrap_or(0)
            }
        };
        if let Some(l) = self.load.get_mut(chosen as usize) {
            *l += 1;
        }
        (pinned.is_none()).then_some(chosen)
    }
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    policy: Policy,
    prefill: Stage,
    decode: Stage,
}

impl Dispatcher {
    pub fn new(policy: Policy, shape: &ClusterShape) -> Dispatcher {
        Dispatcher { policy, prefill: Stage::new(shape.prefill_dp, None), decode: Stage::new(shape.decode_dp, None) }
    }

    /// Least-loaded starts from the queues' current depths.
    pub fn with_loads(policy: Policy, prefill_load: Vec<u64>, decode_load: Vec<u64>) -> Dispatcher {
        let n = prefill_load.len() as u32;
        let m = decode_load.len() as u32;
        Dispatcher { policy, prefill: Stage::new(n, Some(prefill_load)), decode: Stage::new(m, Some(decode_load)) }
    }

    pub fn assign(&mut self, pins: Pins, colocated: bool) -> Assignment {
        let dispatch_prefill = self.prefill.pick(self.policy, pins.prefill);
        // A colocated rank decodes where it prefilled: one choice serves both stages.
        let dispatch_decode = if colocated { dispatch_prefill } else { self.decode.pick(self.policy, pins.decode) };
        let prefill_key = match pins.prefill.or(dispatch_prefill) {
            Some(p) => p.to_string(),
            None => pdq_protocol::Topology::ANY.to_string(),
        };
        Assignment { prefill_key, dispatch_prefill, dispatch_decode }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ClusterShape = ClusterShape { prefill_dp: 3, decode_dp: 3, mode: pdq_protocol::Mode::Disagg };

    #[test]
    fn round_robin_spreads_evenly() {
        let mut d = Dispatcher::new(Policy::RoundRobin, &SHAPE);
        let mut counts = [0; 3];
        for _ in 0..6 {
            let a = d.assign(Pins::default(), false);
            counts[a.dispatch_decode.unwrap() as usize] += 1;
        }
        assert_eq!(counts, [2, 2, 2]);
    }

    #[test]
    fn a_pinned_request_bypasses_the_round_robin_counter() {
        let mut d = Dispatcher::new(Policy::RoundRobin, &SHAPE);
        assert_eq!(d.assign(Pins::default(), false).dispatch_decode, Some(0));
        let pinned = d.assign(Pins { prefill: Some(2), decode: Some(2) }, false);
        assert_eq!(pinned, Assignment { prefill_key: "2".into(), dispatch_prefill: None, dispatch_decode: None });
        assert_eq!(d.assign(Pins::default(), false).dispatch_decode, Some(1));
    }

    #[test]
    fn least_loaded_picks_the_minimum() {
        let mut d = Dispatcher::with_loads(Policy::LeastLoaded, vec![5, 1, 3], vec![2, 2, 0]);
        let a = d.assign(Pins::default(), false);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(2)));
        assert_eq!(a.prefill_key, "1");
        // Loads now [5, 2, 3] and [2, 2, 1]: the same ranks again.
        let a = d.assign(Pins::default(), false);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(2)));
        // Loads [5, 3, 3] and [2, 2, 2]: ties go to the lowest rank.
        let a = d.assign(Pins::default(), false);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(0)));
    }

    #[test]
    fn shared_leaves_unpinned_stages_to_the_queues() {
        let mut d = Dispatcher::new(Policy::Shared, &SHAPE);
        let a = d.assign(Pins::default(), false);
        assert_eq!(a, Assignment { prefill_key: "any".into(), dispatch_prefill: None, dispatch_decode: None });
        let a = d.assign(Pins { prefill: Some(1), decode: None }, false);
        assert_eq!(a.prefill_key, "1");
    }

    #[test]
    fn colocated_uses_one_rank_for_both_stages() {
        let mut d = Dispatcher::new(Policy::RoundRobin, &SHAPE);
        d.assign(Pins::default(), true);
        let a = d.assign(Pins::default(), true);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(1)));
    }
}
