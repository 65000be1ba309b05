//! DP dispatch for stages a request leaves unpinned (CONTRACT §3). Pins always win and never
//! move a policy's state: a pinned request bypasses round-robin's counter. Under `shared`, an
//! unpinned request goes to the queue that every idle rank pulls from, so the broker balances it.
//! Under `prefix`, requests whose prompts start alike go to the same rank, where the prefix
//! cache holds their common blocks (CONTRACT §14): rendezvous hashing of the prompt's first
//! bytes, bounded so that no rank takes more than (1 + [`LOAD_SLACK`]) x the mean load.

use pdq_protocol::{route, At, ChatMessage, ClusterShape, EmbedInput, Pins, Prompt, Route, Target};

/// How far above the mean load `prefix` lets a rank go before a prefix spills to its next rank.
pub const LOAD_SLACK: f64 = 0.25;
/// The bytes of a prompt that decide its rank: about the first 64 tokens, the span a shared
/// system prompt covers while the questions after it differ.
pub const PREFIX_KEY_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Unpinned prefill goes to `{ns}.prefill.any`, unpinned decode to `{ns}.kv.{p}`: idle ranks pull.
    #[default]
    Shared,
    RoundRobin,
    /// The rank with the fewest queued requests (broker queue depth plus what this run assigned).
    LeastLoaded,
    /// The rank where the prompt's prefix lives (rendezvous hashing with a load bound); decode
    /// stays with the shared queues.
    Prefix,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Shared => "shared",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoaded => "least-loaded",
            Policy::Prefix => "prefix",
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
            "prefix" => Ok(Policy::Prefix),
            other => Err(format!("policy must be shared, round-robin, least-loaded or prefix, got '{other}'")),
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

    fn pick(&mut self, policy: Policy, pinned: Option<u32>, prefix: Option<u64>) -> Option<u32> {
        let chosen = match (pinned, policy) {
            (Some(r), _) => r,
            (None, Policy::Shared) => return None,
            (None, Policy::Prefix) => match prefix {
                Some(key) => self.bounded_rendezvous(key),
                None => self.least_loaded(),
            },
            (None, Policy::RoundRobin) => {
                let r = self.next;
                self.next = (self.next + 1) % self.load.len() as u32;
                r
            }
            (None, Policy::LeastLoaded) => self.least_loaded(),
        };
        if let Some(l) = self.load.get_mut(chosen as usize) {
            *l += 1;
        }
        (pinned.is_none()).then_some(chosen)
    }

    /// Lowest load, lowest rank on ties.
    fn least_loaded(&self) -> u32 {
        self.load.iter().enumerate().min_by_key(|(i, l)| (**l, *i)).map(|(i, _)| i as u32).unwrap_or(0)
    }

    /// The key's highest-scoring rank whose load stays under the bound. Some rank always is:
    /// loads sum to `total`, and n ranks at the bound would hold more than that.
    fn bounded_rendezvous(&self, key: u64) -> u32 {
        let n = self.load.len().max(1);
        let total: u64 = self.load.iter().sum();
        let bound = ((total + 1) as f64 * (1.0 + LOAD_SLACK) / n as f64).ceil() as u64;
        rendezvous_order(key, n as u32)
            .into_iter()
            .find(|&r| self.load[r as usize] < bound)
            .unwrap_or_else(|| self.least_loaded())
    }
}

/// The ranks in the key's rendezvous order, best first: each rank scores hash(key, rank), so a
/// key keeps its rank when ranks are added or removed elsewhere.
pub fn rendezvous_order(key: u64, ranks: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..ranks).collect();
    order.sort_by_key(|&r| std::cmp::Reverse(mix(key ^ u64::from(r).wrapping_mul(0x9E37_79B9_7F4A_7C15))));
    order
}

/// SplitMix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The key of a prompt's start: FNV-1a over its first [`PREFIX_KEY_BYTES`] bytes (a chat's
/// roles and contents with separators, a token prompt's ids), stable across processes and
/// versions so that every feeder sends a prefix to the same rank.
pub fn prefix_key(prompt: &Prompt) -> u64 {
    let mut h = Fnv::default();
    match prompt {
        Prompt::Text(text) => h.write(text.as_bytes()),
        Prompt::Ids(ids) => ids.iter().for_each(|id| h.write(&id.to_le_bytes())),
        Prompt::Chat(messages) => {
            for ChatMessage { role, content } in messages {
                h.write(role.as_bytes());
                h.write(&[0x1f]);
                h.write(content.as_bytes());
                h.write(&[0x1e]);
            }
        }
        // The first input's start: inputs that share an instruction prefix share a rank.
        Prompt::Embed { inputs, .. } => match inputs.first() {
            Some(EmbedInput::Text(text)) => h.write(text.as_bytes()),
            Some(EmbedInput::Ids(ids)) => ids.iter().for_each(|id| h.write(&id.to_le_bytes())),
            None => {}
        },
    }
    h.hash
}

/// FNV-1a that stops taking bytes after [`PREFIX_KEY_BYTES`].
struct Fnv {
    hash: u64,
    taken: usize,
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv { hash: 0xcbf2_9ce4_8422_2325, taken: 0 }
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(PREFIX_KEY_BYTES.saturating_sub(self.taken)) {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.taken = (self.taken + bytes.len()).min(PREFIX_KEY_BYTES);
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

    /// `prefix` is the prompt's [`prefix_key`] (used by `prefix` only).
    pub fn assign(&mut self, pins: Pins, colocated: bool, prefix: Option<u64>) -> Assignment {
        let dispatch_prefill = self.prefill.pick(self.policy, pins.prefill, prefix);
        // A colocated rank decodes where it prefilled: one choice serves both stages. Decode
        // holds no prefix cache, so `prefix` leaves it to the shared handle queues.
        let decode_policy = if self.policy == Policy::Prefix { Policy::Shared } else { self.policy };
        let dispatch_decode =
            if colocated { dispatch_prefill } else { self.decode.pick(decode_policy, pins.decode, None) };
        let target =
            Target { pins, dispatch: Pins { prefill: dispatch_prefill, decode: dispatch_decode }, ..Target::default() };
        let Route::Prefill(prefill_key) = route(At::Publish, &target) else {
            unreachable!("a publish goes to prefill")
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
            let a = d.assign(Pins::default(), false, None);
            counts[a.dispatch_decode.unwrap() as usize] += 1;
        }
        assert_eq!(counts, [2, 2, 2]);
    }

    #[test]
    fn a_pinned_request_bypasses_the_round_robin_counter() {
        let mut d = Dispatcher::new(Policy::RoundRobin, &SHAPE);
        assert_eq!(d.assign(Pins::default(), false, None).dispatch_decode, Some(0));
        let pinned = d.assign(Pins { prefill: Some(2), decode: Some(2) }, false, None);
        assert_eq!(pinned, Assignment { prefill_key: "2".into(), dispatch_prefill: None, dispatch_decode: None });
        assert_eq!(d.assign(Pins::default(), false, None).dispatch_decode, Some(1));
    }

    #[test]
    fn least_loaded_picks_the_minimum() {
        let mut d = Dispatcher::with_loads(Policy::LeastLoaded, vec![5, 1, 3], vec![2, 2, 0]);
        let a = d.assign(Pins::default(), false, None);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(2)));
        assert_eq!(a.prefill_key, "1");
        // Loads now [5, 2, 3] and [2, 2, 1]: the same ranks again.
        let a = d.assign(Pins::default(), false, None);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(2)));
        // Loads [5, 3, 3] and [2, 2, 2]: ties go to the lowest rank.
        let a = d.assign(Pins::default(), false, None);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(0)));
    }

    #[test]
    fn shared_leaves_unpinned_stages_to_the_queues() {
        let mut d = Dispatcher::new(Policy::Shared, &SHAPE);
        let a = d.assign(Pins::default(), false, None);
        assert_eq!(a, Assignment { prefill_key: "any".into(), dispatch_prefill: None, dispatch_decode: None });
        let a = d.assign(Pins { prefill: Some(1), decode: None }, false, None);
        assert_eq!(a.prefill_key, "1");
    }

    #[test]
    fn colocated_uses_one_rank_for_both_stages() {
        let mut d = Dispatcher::new(Policy::RoundRobin, &SHAPE);
        d.assign(Pins::default(), true, None);
        let a = d.assign(Pins::default(), true, None);
        assert_eq!((a.dispatch_prefill, a.dispatch_decode), (Some(1), Some(1)));
    }

    fn chat(system: &str, question: &str) -> Prompt {
        let m = |role: &str, content: &str| ChatMessage { role: role.into(), content: content.into() };
        Prompt::Chat(vec![m("system", system), m("user", question)])
    }

    #[test]
    fn a_prompt_start_decides_the_key() {
        let rules = "You are the support assistant of a shop. ".repeat(10);
        assert!(rules.len() > PREFIX_KEY_BYTES);
        assert_eq!(prefix_key(&chat(&rules, "Where is my order?")), prefix_key(&chat(&rules, "Can I pay later?")));
        assert_ne!(prefix_key(&chat(&rules, "x")), prefix_key(&chat("Another shop's rules.", "x")));
        assert_ne!(prefix_key(&Prompt::Text("short a".into())), prefix_key(&Prompt::Text("short b".into())));
        assert_eq!(
            prefix_key(&Prompt::Ids(vec![7; 100])),
            prefix_key(&Prompt::Ids([vec![7; 64], vec![9; 36]].concat()))
        );
    }

    #[test]
    fn a_prefix_keeps_its_rank_while_the_load_allows() {
        let shape = ClusterShape { prefill_dp: 4, decode_dp: 4, mode: pdq_protocol::Mode::Colocated };
        let mut d = Dispatcher::new(Policy::Prefix, &shape);
        let keys: Vec<u64> = (0..8u64).map(|i| prefix_key(&Prompt::Text(format!("system prompt {i}")))).collect();
        let mut rank_of = std::collections::HashMap::new();
        for round in 0..20 {
            for &k in &keys {
                let r = d.assign(Pins::default(), true, Some(k)).dispatch_prefill.unwrap();
                if round == 0 {
                    rank_of.insert(k, r);
                }
                assert_eq!(rank_of[&k], r, "8 prefixes spread over 4 ranks each stay where they started");
            }
        }
        let used: std::collections::HashSet<u32> = rank_of.values().copied().collect();
        assert!(used.len() >= 3, "the prefixes spread over the ranks: {rank_of:?}");
        assert_eq!(rendezvous_order(keys[0], 4)[0], rank_of[&keys[0]], "the first choice, when nothing is loaded");
    }

    #[test]
    fn one_hot_prefix_spills_within_the_load_bound_and_pins_still_win() {
        let shape = ClusterShape { prefill_dp: 4, decode_dp: 4, mode: pdq_protocol::Mode::Colocated };
        let mut d = Dispatcher::new(Policy::Prefix, &shape);
        let hot = prefix_key(&Prompt::Text("everybody's system prompt".into()));
        let mut counts = [0u32; 4];
        for _ in 0..400 {
            counts[d.assign(Pins::default(), true, Some(hot)).dispatch_prefill.unwrap() as usize] += 1;
        }
        let bound = (400.0 * (1.0 + LOAD_SLACK) / 4.0).ceil() as u32;
        assert!(counts.iter().all(|&c| c <= bound && c > 0), "{counts:?}");
        assert_eq!(counts[rendezvous_order(hot, 4)[0] as usize], bound, "its own rank fills up to the bound first");
        let pinned = d.assign(Pins { prefill: Some(2), decode: Some(2) }, true, Some(hot));
        assert_eq!((pinned.prefill_key.as_str(), pinned.dispatch_prefill), ("2", None));
    }

    #[test]
    fn prefix_leaves_decode_to_the_shared_queues() {
        let mut d = Dispatcher::new(Policy::Prefix, &SHAPE);
        let a = d.assign(Pins::default(), false, Some(42));
        assert!(a.dispatch_prefill.is_some());
        assert_eq!(a.dispatch_decode, None);
        let unkeyed = d.assign(Pins::default(), false, None);
        assert!(unkeyed.dispatch_prefill.is_some(), "a prompt without a key goes to the least loaded rank");
    }
}
