//! Where a message goes next: the one function every stage calls (CONTRACT §3 and §4).
//!
//! A request's route is fixed by its pins (from the body and the header, resolved by
//! [`Routing::pins`](crate::Routing::pins)) and, for stages it leaves unpinned, by the
//! dispatcher's choice. Pins always win; a dispatcher's choice only fills a stage the request
//! leaves open. This module turns those, plus where the message is now, into one [`Route`]:
//! run here, publish to a prefill or KV key, or refuse with the contract's message. It does no
//! I/O, so every rule is a unit test below.

use crate::{ErrorBody, Pins, Topology, ValidationError};

/// Where the message is when its next hop is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At<'a> {
    /// A request about to be published to `{ns}.prefill`: by the feeder, or by a decode rank
    /// sending it back to prefill after its KV was lost.
    Publish,
    /// A message delivered from `{ns}.prefill` under routing key `key`, before it is read (so
    /// with an empty [`Target`]), in a cluster of `prefill_dp` prefill ranks: a key that names
    /// no queue reached a rank only through the exchange's alternate, and is refused, whatever
    /// the request says.
    Arrived { key: &'a str, prefill_dp: u32 },
    /// A request delivered to prefill (or colocated) rank `rank`.
    Prefill { rank: u32 },
    /// A request prefilled on rank `prefill`: where its KV handle is published.
    Prefilled { prefill: u32 },
    /// A KV handle from prefill rank `prefill` delivered to decode rank `rank`.
    Decode { rank: u32, prefill: u32 },
}

/// What routing knows of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target {
    /// The request's own pins.
    pub pins: Pins,
    /// The dispatcher's choice for the stages the pins leave open (ignored where a pin is set).
    pub dispatch: Pins,
    /// The body's `disagg_prefill_dp_rank`, which a KV handle must agree with.
    pub explicit_prefill: Option<i64>,
}

impl Target {
    /// The prefill rank it runs on, if any is chosen: its pin, else the dispatcher's.
    pub fn prefill(&self) -> Option<u32> {
        self.pins.prefill.or(self.dispatch.prefill)
    }

    /// The decode rank it runs on, if any is chosen: its pin, else the dispatcher's.
    pub fn decode(&self) -> Option<u32> {
        self.pins.decode.or(self.dispatch.decode)
    }
}

/// The next hop.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// This rank runs it.
    Here,
    /// Publish it to `{ns}.prefill` under this key (a rank, or [`Topology::ANY`]).
    Prefill(String),
    /// Publish it to `{ns}.kv` under this key (`{p}` or `{p}.{d}`).
    Kv(String),
    /// It cannot run anywhere: its failed row carries this error.
    Refuse(ErrorBody),
}

/// The next hop of a message at `at` for `target`.
pub fn route(at: At<'_>, target: &Target) -> Route {
    let prefill_key = |p: Option<u32>| p.map_or_else(|| Topology::ANY.to_string(), |p| p.to_string());
    match at {
        At::Publish => Route::Prefill(prefill_key(target.prefill())),
        At::Arrived { key, prefill_dp } if !routable(key, prefill_dp) => {
            Route::Refuse(unroutable(key, prefill_dp).to_body())
        }
        At::Arrived { .. } => Route::Here,
        At::Prefill { rank } => match target.prefill() {
            Some(p) if p != rank => Route::Prefill(p.to_string()),
            _ => Route::Here,
        },
        At::Prefilled { prefill } => Route::Kv(Topology::kv_key(prefill, target.decode())),
        At::Decode { rank, prefill } => match target.decode() {
            // Pinned elsewhere: the KV stays for the decoder it is meant for.
            Some(d) if d != rank => Route::Kv(Topology::kv_key(prefill, Some(d))),
            _ => match target.explicit_prefill {
                Some(p) if p != i64::from(prefill) => Route::Refuse(ErrorBody::new(
                    "prefill_rank_mismatch",
                    format!("KV handle names prefill rank {prefill} but the request pins disagg_prefill_dp_rank={p}"),
                )),
                _ => Route::Here,
            },
        },
    }
}

/// A key of `{ns}.prefill` that names a queue: `any` or a prefill rank of the cluster.
fn routable(key: &str, prefill_dp: u32) -> bool {
    key == Topology::ANY || key.parse::<u32>().is_ok_and(|p| p < prefill_dp)
}

fn unroutable(key: &str, prefill_dp: u32) -> ValidationError {
    ValidationError::Invalid {
        field: "routing key".into(),
        reason: format!(
            "'{key}' names no prefill queue: use '{}' or a prefill rank in [0, {})",
            Topology::ANY,
            prefill_dp
        ),
    }
}

#[cfg(test)]
mod tests;
