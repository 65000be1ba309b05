//! The feeder: publishes accepted jobs' requests from the requests table (the outbox) to the
//! broker, a bounded window at a time, fairly across jobs (CONTRACT §13). It runs in every
//! long-lived pdq process (`serve`, `worker`, `api`); one per namespace holds the lease and
//! works, the others stand by. Invariants:
//! - only the lease holder publishes; a holder that stops renewing (killed, hung, cut off) is
//!   replaced within [`TAKEOVER_BOUND`];
//! - a row is marked published after the broker confirmed its message, never before;
//! - each prefill queue holds at most the window of a job's requests in flight (published,
//!   no result yet): `window` per pinned rank, `window` x prefill ranks for the shared queue;
//! - the holder also expires jobs whose completion window has passed, and fails API batches
//!   whose accepting process died before their job was committed.

mod metrics;
mod share;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pdq_broker::{Broker, BrokerOptions, MessageMeta, Outgoing};
use pdq_protocol::{ClusterShape, Mode, Pins};
use pdq_store::{Ask, FeedJob, Store, Unpublished};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use share::{allot, weight, Claimant};

use crate::{Dispatcher, Policy, ProducerError};

/// Requests in flight per prefill queue (per rank for the shared queue) that the feeder keeps.
pub const DEFAULT_FEEDER_WINDOW: u32 = 1024;
/// A lease not renewed for this long is free to take.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the holder renews and a standby tries to take over.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// From a holder's last renewal to a standby's takeover, at most.
pub const TAKEOVER_BOUND: Duration = LEASE_TTL.saturating_add(RENEW_EVERY);
/// How often the holder tops the queues up.
const TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct FeederConfig {
    pub namespace: String,
    pub broker: BrokerOptions,
    pub window: u32,
    /// The cluster's shape as this process knows it (`serve`, `worker`); live workers'
    /// registrations replace it.
    pub shape: Option<ClusterShape>,
}

/// Starts the feeder of `cfg.namespace`; it runs until `stop` fires, then gives its lease up.
pub fn spawn(store: Store, cfg: FeederConfig, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(run(store, cfg, stop))
}

async fn run(store: Store, cfg: FeederConfig, mut stop: watch::Receiver<bool>) {
    let holder = Uuid::new_v4();
    let host = hostname();
    let broker = loop {
        let opts = cfg.broker.clone().named(format!("pdq:{}:feeder", cfg.namespace));
        match Broker::connect_with(opts).await {
            Ok(b) => break b,
            Err(e) => tracing::warn!(error = %e, "feeder: no broker yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = stop.changed() => return,
        }
    };
    let metrics = metrics::Labels::new(&cfg.namespace);
    let mut feed: Option<Feed> = None;
    let mut renewed = Instant::now();
    loop {
        // A standby (or a holder that does not know the cluster yet) asks every time round.
        let due = feed.as_ref().is_none_or(|f| f.shape.is_none()) || renewed.elapsed() >= RENEW_EVERY;
        if due {
            renewed = Instant::now();
            match store.hold_feeder_lease(&cfg.namespace, holder, &host, LEASE_TTL).await {
                Ok(true) => {
                    if feed.is_none() {
                        tracing::info!(namespace = %cfg.namespace, %holder, "feeder: holding the lease");
                    }
                    let f = feed.get_or_insert_with(|| Feed { shape: cfg.shape, ..Feed::default() });
                    metrics.lease(true);
                    metrics.expired(f.housekeeping(&store, &broker, &cfg.namespace).await);
                }
                Ok(false) => {
                    metrics.lease(false);
                    if feed.take().is_some() {
                        tracing::warn!(namespace = %cfg.namespace, "feeder: lease lost to another process");
                    }
                }
                // Without the database there is nothing to publish; the lease lapses.
                Err(e) => tracing::warn!(error = %e, "feeder: renewing the lease failed"),
            }
        }
        let mut wait = if feed.is_some() { TICK } else { RENEW_EVERY };
        if let Some(f) = feed.as_mut() {
            if let Err(e) = f.top_up(&store, &broker, &cfg, &metrics).await {
                // Rows not marked are published again next round; start from the database.
                tracing::warn!(error = %e, "feeder: top-up failed; retrying");
                *f = Feed { shape: f.shape, ..Feed::default() };
                wait = RENEW_EVERY;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    metrics.lease(false);
    if feed.is_some() {
        if let Err(e) = store.release_feeder_lease(&cfg.namespace, holder).await {
            tracing::warn!(error = %e, "feeder: releasing the lease failed; it lapses in {LEASE_TTL:?}");
        }
    }
    broker.close().await;
}

/// What the lease holder knows between rounds; rebuilt from the database after any doubt.
#[derive(Default)]
struct Feed {
    shape: Option<ClusterShape>,
    /// Per job, the prefill pins (`None`: unpinned) that may still have unpublished requests.
    pending: HashMap<Uuid, HashSet<Option<i32>>>,
    /// Round-robin's position, kept across rounds.
    round_robin: Option<Dispatcher>,
}

impl Feed {
    /// Every renewal: the cluster's shape (and its queues), and expiry; returns the jobs expired.
    async fn housekeeping(&mut self, store: &Store, broker: &Broker, namespace: &str) -> usize {
        match crate::cluster_shape(store, namespace).await {
            Ok(shape) if self.shape != Some(shape) => match broker.declare(&shape).await {
                Ok(()) => {
                    self.shape = Some(shape);
                    self.round_robin = None;
                }
                Err(e) => tracing::warn!(error = %e, "feeder: declaring the cluster's queues failed"),
            },
            Ok(_) => {}
            // No live worker: keep the last shape (queues persist); pins are checked at submit.
            Err(e) => tracing::debug!(error = %e, "feeder: no cluster shape"),
        }
        match store.fail_abandoned_batches().await {
            Ok(ids) => ids.iter().for_each(|id| tracing::warn!(batch = %id, "batch abandoned mid-acceptance: failed")),
            Err(e) => tracing::warn!(error = %e, "feeder: failing abandoned batches failed"),
        }
        match store.expire_jobs(namespace).await {
            Ok(ids) => {
                ids.iter().for_each(|id| tracing::info!(job = %id, "job expired"));
                ids.len()
            }
            Err(e) => {
                tracing::warn!(error = %e, "feeder: expiring jobs failed");
                0
            }
        }
    }

    /// One round: fills each prefill queue's free window from the active jobs, fairly.
    async fn top_up(
        &mut self,
        store: &Store,
        broker: &Broker,
        cfg: &FeederConfig,
        metrics: &metrics::Labels,
    ) -> Result<(), ProducerError> {
        let Some(shape) = self.shape else { return Ok(()) };
        let jobs = store.feed_jobs(&cfg.namespace).await?;
        if jobs.is_empty() {
            metrics.outbox(0, 0);
            return Ok(());
        }
        self.pending.retain(|id, _| jobs.iter().any(|j| j.id == *id));
        for j in &jobs {
            if let std::collections::hash_map::Entry::Vacant(new) = self.pending.entry(j.id) {
                new.insert(store.unpublished_pins(j.id).await?.into_iter().collect());
            }
        }
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let mut flight: HashMap<(Uuid, Option<i32>), u64> = HashMap::new();
        let mut job_flight: HashMap<Uuid, u64> = HashMap::new();
        for f in store.in_flight(&ids).await? {
            flight.insert((f.job_id, f.prefill_pin), f.count as u64);
            *job_flight.entry(f.job_id).or_default() += f.count as u64;
        }
        metrics.outbox(jobs.len(), job_flight.values().sum());
        let feeding: Vec<&FeedJob> =
            jobs.iter().filter(|j| self.pending.get(&j.id).is_some_and(|p| !p.is_empty())).collect();
        if feeding.is_empty() {
            return Ok(());
        }
        let mut queues: Vec<Option<i32>> = feeding
            .iter()
            .flat_map(|j| self.pending[&j.id].iter().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        queues.sort();
        // Slots left under each job's own cap, shared by its queues this round.
        let mut room: HashMap<Uuid, u64> = feeding
            .iter()
            .map(|j| {
                (
                    j.id,
                    j.max_in_flight.map_or(u64::MAX, |cap| {
                        (cap as u64).saturating_sub(job_flight.get(&j.id).copied().unwrap_or(0))
                    }),
                )
            })
            .collect();
        let mut asks = Vec::new();
        let mut order: Vec<Uuid> = Vec::new();
        for pin in queues {
            let window = cfg.window as u64 * if pin.is_none() { shape.prefill_dp.max(1) as u64 } else { 1 };
            let used: u64 = jobs.iter().map(|j| flight.get(&(j.id, pin)).copied().unwrap_or(0)).sum();
            let free = window.saturating_sub(used);
            let here: Vec<&FeedJob> = feeding.iter().copied().filter(|j| self.pending[&j.id].contains(&pin)).collect();
            let claimants: Vec<Claimant> = here
                .iter()
                .map(|j| Claimant {
                    in_flight: flight.get(&(j.id, pin)).copied().unwrap_or(0),
                    weight: weight(j.priority),
                    room: room[&j.id],
                })
                .collect();
            let given = allot(free, &claimants);
            let mut n = vec![0i64; here.len()];
            for &i in &given {
                n[i] += 1;
                order.push(here[i].id);
            }
            for (j, n) in here.iter().zip(n) {
                if n > 0 {
                    asks.push(Ask { job_id: j.id, prefill_pin: pin, n });
                    *room.get_mut(&j.id).expect("every feeding job has room") -= n as u64;
                }
            }
        }
        if asks.is_empty() {
            return Ok(());
        }
        let rows = store.unpublished(&asks).await?;
        for ask in &asks {
            let got = rows.iter().filter(|r| r.job_id == ask.job_id && r.prefill_pin == ask.prefill_pin).count();
            if (got as i64) < ask.n {
                self.pending.get_mut(&ask.job_id).map(|p| p.remove(&ask.prefill_pin));
            }
        }
        let rows = interleave(rows, &order);
        let policies: HashMap<Uuid, Policy> =
            jobs.iter().map(|j| (j.id, j.dispatch.parse().unwrap_or(Policy::Shared))).collect();
        let msgs = self.messages(broker, &shape, &rows, &policies).await?;
        // A key no queue is bound to (a rank the cluster no longer has) still lands: the
        // prefill exchange's alternate exchange hands it to a worker, which fails it naming
        // the rank, so one such request never stops the namespace's feeding.
        broker.publisher().publish_all(&msgs).await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        store.mark_published(&ids).await?;
        metrics.published(ids.len());
        tracing::debug!(published = ids.len(), "feeder: topped up");
        Ok(())
    }

    /// The messages of `rows`, each to the queue its pins (or its job's policy) name.
    async fn messages(
        &mut self,
        broker: &Broker,
        shape: &ClusterShape,
        rows: &[Unpublished],
        policies: &HashMap<Uuid, Policy>,
    ) -> Result<Vec<Outgoing>, ProducerError> {
        let colocated = shape.mode == Mode::Colocated;
        // Least-loaded and prefix start from the queues' depths, read once a round.
        let uses = |policy| policies.values().any(|p| *p == policy);
        let loads = match uses(Policy::LeastLoaded) || uses(Policy::Prefix) {
            true => Some(queue_loads(broker, shape).await?),
            false => None,
        };
        let loaded = |policy| loads.clone().map(|(prefill, decode)| Dispatcher::with_loads(policy, prefill, decode));
        let (mut least_loaded, mut by_prefix) = (loaded(Policy::LeastLoaded), loaded(Policy::Prefix));
        let rr = self.round_robin.get_or_insert_with(|| Dispatcher::new(Policy::RoundRobin, shape));
        let mut shared = Dispatcher::new(Policy::Shared, shape);
        let enqueued_at_ms = chrono::Utc::now().timestamp_millis();
        Ok(rows
            .iter()
            .map(|r| {
                let pins = Pins { prefill: r.prefill_pin.map(|p| p as u32), decode: r.decode_pin.map(|d| d as u32) };
                let d = match policies.get(&r.job_id).copied().unwrap_or_default() {
                    Policy::Shared => &mut shared,
                    Policy::RoundRobin => &mut *rr,
                    Policy::LeastLoaded => least_loaded.as_mut().expect("built when a job asks for it"),
                    Policy::Prefix => by_prefix.as_mut().expect("built when a job asks for it"),
                };
                let a = d.assign(pins, colocated, r.prefix_key.map(|k| k as u64));
                Outgoing {
                    exchange: broker.topology.prefill_exchange(),
                    key: a.prefill_key,
                    body: r.line.as_bytes().to_vec(),
                    meta: MessageMeta {
                        request_id: Some(r.id),
                        job_id: Some(r.job_id),
                        line_no: Some(r.line_no as i64),
                        attempt: 0,
                        deliveries: 0,
                        enqueued_at_ms: Some(enqueued_at_ms),
                        dispatch_prefill: a.dispatch_prefill,
                        dispatch_decode: a.dispatch_decode,
                        rank_header: None,
                        first_route: None,
                    },
                }
            })
            .collect())
    }
}

/// Orders fetched rows as the slots were given (`order` names each slot's job), so jobs'
/// messages enter a queue interleaved by share, not one job's after another's.
fn interleave(rows: Vec<Unpublished>, order: &[Uuid]) -> Vec<Unpublished> {
    let mut by_job: HashMap<Uuid, std::collections::VecDeque<Unpublished>> = HashMap::new();
    for r in rows {
        by_job.entry(r.job_id).or_default().push_back(r);
    }
    let mut out = Vec::new();
    for job in order {
        if let Some(r) = by_job.get_mut(job).and_then(|q| q.pop_front()) {
            out.push(r);
        }
    }
    out
}

/// Messages waiting per prefill rank and per decode rank (pinned handle queues).
async fn queue_loads(broker: &Broker, shape: &ClusterShape) -> Result<(Vec<u64>, Vec<u64>), ProducerError> {
    let t = &broker.topology;
    let mut prefill = Vec::new();
    for p in 0..shape.prefill_dp {
        prefill.push(broker.queue_depth(&t.prefill_rank_queue(p)).await? as u64);
    }
    let mut decode = vec![0u64; shape.decode_dp as usize];
    for p in 0..shape.prefill_dp {
        for (d, load) in decode.iter_mut().enumerate() {
            *load += broker.queue_depth(&t.kv_pinned_queue(p, d as u32)).await? as u64;
        }
    }
    Ok((prefill, decode))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
