//! Exchange, queue and routing-key names of one namespace (CONTRACT §4). Every component derives
//! names from here so a cluster, its producers and its tests agree on them.

/// The AMQP names of a namespace `{ns}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
}

impl Topology {
    pub fn new(namespace: impl Into<String>) -> Self {
        Topology { namespace: namespace.into() }
    }

    /// Direct exchange that requests are published to.
    pub fn prefill_exchange(&self) -> String {
        format!("{}.prefill", self.namespace)
    }

    /// Routing key of the shared prefill queue pulled by every prefill worker.
    pub const ANY: &'static str = "any";

    pub fn prefill_any_queue(&self) -> String {
        format!("{}.prefill.any", self.namespace)
    }

    pub fn prefill_rank_queue(&self, p: u32) -> String {
        format!("{}.prefill.{p}", self.namespace)
    }

    /// Direct exchange that prefill workers publish KV handles to.
    pub fn kv_exchange(&self) -> String {
        format!("{}.kv", self.namespace)
    }

    /// Handles from prefill rank `p` for any decode worker.
    pub fn kv_queue(&self, p: u32) -> String {
        format!("{}.kv.{p}", self.namespace)
    }

    /// Handles from prefill rank `p` pinned to decode rank `d`.
    pub fn kv_pinned_queue(&self, p: u32, d: u32) -> String {
        format!("{}.kv.{p}.{d}", self.namespace)
    }

    pub fn kv_key(p: u32, d: Option<u32>) -> String {
        match d {
            Some(d) => format!("{p}.{d}"),
            None => p.to_string(),
        }
    }

    /// Alternate exchange (fanout) of `{ns}.prefill`, and its queue: a request published with a
    /// routing key that matches no queue lands here, and a prefill worker records it as failed.
    pub fn unroutable(&self) -> String {
        format!("{}.unroutable", self.namespace)
    }

    /// What a prefill or colocated rank `p` consumes: its own queue first, then the shared one,
    /// then the alternate exchange's queue (to record unroutable messages).
    pub fn request_queues(&self, p: u32) -> Vec<String> {
        vec![self.prefill_rank_queue(p), self.prefill_any_queue(), self.unroutable()]
    }

    /// What decode rank `d` consumes: for each prefill rank, the handles pinned to `d`, then the
    /// handles for any decoder.
    pub fn decode_queues(&self, prefill_dp: u32, d: u32) -> Vec<String> {
        (0..prefill_dp).flat_map(|p| [self.kv_pinned_queue(p, d), self.kv_queue(p)]).collect()
    }

    /// Dead-letter exchange (fanout) and its queue share one name.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.namespace)
    }
}

/// The gauge a worker sets to 1 while a rank takes work, and that the metrics endpoint's
/// `/ready` reads: written by `pdq_workers`, read by `pdq_api`.
pub const READY_METRIC: &str = "pdq_worker_ready";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let t = Topology::new("ns");
        assert_eq!(t.prefill_exchange(), "ns.prefill");
        assert_eq!(t.prefill_any_queue(), "ns.prefill.any");
        assert_eq!(t.prefill_rank_queue(3), "ns.prefill.3");
        assert_eq!(t.kv_exchange(), "ns.kv");
        assert_eq!(t.kv_queue(1), "ns.kv.1");
        assert_eq!(t.kv_pinned_queue(1, 2), "ns.kv.1.2");
        assert_eq!(Topology::kv_key(1, Some(2)), "1.2");
        assert_eq!(Topology::kv_key(1, None), "1");
        assert_eq!(t.dead(), "ns.dead");
        assert_eq!(t.unroutable(), "ns.unroutable");
    }
}
