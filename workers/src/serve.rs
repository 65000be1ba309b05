//! Running workers: one rank (`pdq worker`) or a whole cluster in one process (`pdq serve`).
//!
//! Shutdown drains instead of dropping work: a worker stops consuming, finishes the messages it
//! holds, flushes its results, and only then closes its channel (unacked leftovers are requeued by
//! the broker). A prefill rank keeps serving KV until its decoders have fetched it all, so a
//! cluster stops its request-side ranks first and its decoders last.
//!
//! A rank fault (`fault.rs`) stops the worker the same way, except that the messages its broken
//! engine held go back to their queues for other ranks, and the worker ends with the fault as
//! its error (`pdq worker` exits non-zero, so a supervisor restarts it).

use std::sync::Arc;
use std::time::Instant;

use pdq_broker::Broker;
use pdq_engine::Device;
use pdq_protocol::Mode;
use pdq_protocol::WorkerRole;
use pdq_store::Store;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::actors::closed_jobs::ClosedJobs;
use crate::actors::engine_loop::{EngineHandle, EngineLoopConfig};
use crate::actors::kv_store::KvStore;
use crate::actors::registry;
use crate::actors::writer::ResultWriter;
use crate::config::{DRAIN_IDLE, DRAIN_TIMEOUT};
use crate::context::Ctx;
use crate::data_plane::KvClient;
use crate::fault::Fault;
use crate::metrics::Labels;
use crate::roles::prefill::PrefillState;
use crate::roles::{colocated, decode, prefill};
use crate::{data_plane, ClusterConfig, WorkerConfig, WorkerError};

/// A started worker: stop it with [`RunningWorker::stop`].
pub struct RunningWorker {
    pub cfg: WorkerConfig,
    fault: Fault,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Everything that can fail at start (broker, data plane, registration, the executor's KV
    /// pool) fails here. `device` is the model on its device (an `Arc<Model>` is the CPU).
    pub async fn start(
        cfg: WorkerConfig,
        device: impl Into<Device>,
        store: Store,
    ) -> Result<RunningWorker, WorkerError> {
        let device = device.into();
        let model = device.model().clone();
        let opts = cfg.cluster.broker.clone().named(format!("pdq:{}:{}", cfg.namespace(), cfg.tag()));
        let broker = Broker::connect_with(opts).await?;
        broker.declare(&cfg.cluster.shape).await?;
        let publisher = broker.publisher();
        let (stop, stop_rx) = watch::channel(false);
        let prefill_state = if cfg.role == WorkerRole::Prefill {
            let kv = KvStore::spawn(cfg.cluster.kv_budget_bytes, cfg.cluster.kv_ttl);
            let addr =
                data_plane::serve(cfg.cluster.data_plane_bind, kv.clone(), &cfg.cluster.data_plane, stop_rx.clone())
                    .await
                    .map_err(|source| WorkerError::DataPlane {
                        endpoint: cfg.cluster.data_plane_bind.to_string(),
                        source,
                    })?;
            let endpoint = format!("{}:{}", cfg.cluster.advertise_host, addr.port());
            let shm_dir = cfg.cluster.data_plane.shm_dir.clone().filter(|dir| {
                let ok = data_plane::shm_usable(dir) && data_plane::shm_host_id().is_some();
                if !ok {
                    tracing::warn!(dir = %dir.display(), "the KV shared-memory directory is unusable; every KV goes over TCP");
                }
                ok
            });
            Some(Arc::new(PrefillState { kv, endpoint, shm_dir }))
        } else {
            None
        };
        let metrics = Labels::new(cfg.role.as_str(), cfg.rank);
        // Registered at start, so a scrape shows every series before the first request.
        metrics.engine(0, 0, 0.0);
        metrics.reconnects(0);
        if let Some(state) = &prefill_state {
            spawn_kv_store_gauges(state.kv.clone(), metrics.clone(), stop_rx.clone());
        }
        registry::register(&store, &cfg, prefill_state.as_ref().map(|s| s.endpoint.clone()), model.name()).await?;
        let mut exec = device.executor(cfg.cluster.kv_pool_bytes)?;
        // A decode rank imports every prompt's pages: it has no prompt blocks of its own to keep.
        let cache = cfg.cluster.prefix_cache && cfg.role != WorkerRole::Decode;
        // An executor with a prefix cache is one whose KV does not depend on how a prompt was
        // split into steps: there, and only there, a preempted sequence resumes exactly.
        let exact_recompute = exec.set_prefix_cache(cache);
        if cache && !exact_recompute {
            tracing::info!(device = exec.device(), "no prefix cache on this device: every prompt is computed whole");
        }
        let kv_by_need = cfg.cluster.kv_by_need && exact_recompute;
        if cfg.cluster.kv_by_need && !exact_recompute {
            tracing::info!(
                device = exec.device(),
                "KV by need is CPU-only: each request reserves its whole generation"
            );
        }
        let engine = EngineHandle::spawn(
            exec,
            EngineLoopConfig {
                max_running: cfg.cluster.max_running,
                prefill_token_budget: cfg.cluster.prefill_token_budget,
                metrics: metrics.clone(),
                kv_by_need,
            },
            format!("engine-{}", cfg.tag()),
        );
        let (writer, writer_task) = ResultWriter::spawn(store.clone());
        let t = broker.topology.clone();
        let queues = match cfg.role {
            WorkerRole::Prefill | WorkerRole::Colocated => t.request_queues(cfg.rank),
            WorkerRole::Decode => t.decode_queues(cfg.cluster.shape.prefill_dp, cfg.rank),
        };
        let tag = format!("{}-{}", cfg.tag(), uuid::Uuid::new_v4().simple());
        let mut subscription = broker.subscribe(&queues, cfg.cluster.prefetch, &tag).await?;
        let reconnects = broker.reconnect_counter();
        let heartbeat =
            registry::spawn_heartbeat(store.clone(), cfg.clone(), stop_rx.clone(), reconnects, metrics.clone());
        let kv = KvClient::new(cfg.cluster.data_plane.clone());
        let closed = ClosedJobs::spawn(store.clone(), cfg.namespace().to_string(), stop_rx.clone());
        let fault = engine.fault().clone();
        let (cancelled_tx, consumers_cancelled) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            cfg: cfg.clone(),
            store,
            publisher,
            topology: t,
            engine,
            writer,
            kv,
            metrics,
            closed,
            fault: fault.clone(),
            consumers_cancelled,
        });
        tracing::info!(worker = %cfg.tag(), queues = ?queues, "worker started");
        ctx.metrics.ready(true);

        let cfg_tag = cfg.tag();
        // A rank fault ends the loop without a stop request: the task sends one itself, so the
        // heartbeat, the data plane and the closed-jobs poller wind down as on a normal stop.
        let stopper = stop.clone();
        let task = tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            let mut tasks = JoinSet::new();
            let result = loop {
                tokio::select! {
                    _ = stop_rx.changed() => break Ok(()),
                    reason = ctx.fault.raised() => {
                        tracing::error!(worker = %cfg_tag, %reason, "rank fault: stopping, handing held messages back");
                        break Err(WorkerError::RankFault(reason));
                    }
                    next = subscription.next() => match next {
                        Some(Ok(msg)) => {
                            let ctx = ctx.clone();
                            let span = message_span(&ctx.cfg, &msg);
                            match &prefill_state {
                                Some(state) => tasks.spawn(prefill::handle(ctx, state.clone(), msg).instrument(span)),
                                None if ctx.cfg.role == WorkerRole::Decode => {
                                    tasks.spawn(decode::handle(ctx, msg).instrument(span))
                                }
                                None => tasks.spawn(colocated::handle(ctx, msg).instrument(span)),
                            };
                        }
                        // Only what reconnecting cannot fix ends the subscription.
                        Some(Err(e)) => break Err(WorkerError::from(e)),
                        None => break Err(WorkerError::Config("the broker subscription ended".into())),
                    },
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            };
            let worker = cfg_tag.as_str();
            ctx.metrics.ready(false);
            tracing::debug!(worker, "draining: consumers cancelled");
            subscription.cancel().await;
            let _ = stopper.send(true);
            // Only now can a broken rank hand messages back without being given them again.
            let _ = cancelled_tx.send(true);
            tracing::debug!(worker, tasks = tasks.len(), "draining: finishing the messages held");
            while tasks.join_next().await.is_some() {}
            if let Some(state) = &prefill_state {
                tracing::debug!(worker, "draining: serving the KV still held");
                drain_kv(&state.kv).await;
            }
            drop(ctx);
            tracing::debug!(worker, "draining: flushing results");
            writer_task.await.ok();
            heartbeat.await.ok();
            broker.close().await;
            tracing::debug!(worker, "drained");
            result
        });
        Ok(RunningWorker { cfg, fault, stop, task })
    }

    /// Raised when this rank breaks; it then stops by itself.
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    pub async fn join(self) -> Result<(), WorkerError> {
        self.task.await.map_err(|e| WorkerError::Config(format!("worker task panicked: {e}")))?
    }

    pub async fn stop(self) -> Result<(), WorkerError> {
        self.request_stop();
        self.join().await
    }
}

/// One span per message, so `RUST_LOG` (or `--log-format json`) follows a request from intake
/// to its row: every event a handler logs carries these fields. A direct producer's message
/// has no request id until intake gives it one, and `custom_id` is known only once the line
/// is read: handlers record both then.
fn message_span(cfg: &WorkerConfig, msg: &pdq_broker::Inbound) -> tracing::Span {
    let span = tracing::info_span!(
        "message",
        role = cfg.role.as_str(),
        rank = cfg.rank,
        request_id = tracing::field::Empty,
        job_id = tracing::field::Empty,
        custom_id = tracing::field::Empty,
        queue = %msg.queue,
    );
    if let Some(id) = msg.meta.request_id {
        span.record("request_id", tracing::field::display(id));
    }
    if let Some(id) = msg.meta.job_id {
        span.record("job_id", tracing::field::display(id));
    }
    span
}

/// Reports what the KV store holds, once a second, until the worker stops.
fn spawn_kv_store_gauges(kv: KvStore, metrics: Labels, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    let stats = kv.stats().await;
                    metrics.kv_store(stats.entries, stats.used);
                }
            }
        }
    });
}

/// Keeps serving KV until decoders have taken it all, stopped asking for it, or the drain
/// timeout passes.
async fn drain_kv(kv: &KvStore) {
    let started = Instant::now();
    loop {
        let stats = kv.stats().await;
        if stats.entries == 0 && stats.waiting == 0 {
            return;
        }
        if stats.waiting == 0 && stats.idle > DRAIN_IDLE {
            tracing::info!(entries = stats.entries, "no decoder asked for KV lately; dropping what is left");
            return;
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            tracing::warn!(entries = stats.entries, "drain timeout: dropping KV still held");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A whole cluster in one process: N prefill + M decode ranks, or M colocated ranks.
pub struct Cluster {
    request_side: Vec<RunningWorker>,
    decoders: Vec<RunningWorker>,
}

impl Cluster {
    /// Every rank's engine opens its own executor (and KV pool) on the one `device`.
    pub async fn start(
        cluster: &ClusterConfig,
        device: impl Into<Device>,
        store: Store,
    ) -> Result<Cluster, WorkerError> {
        let device = device.into();
        let shape = cluster.shape;
        let ranks = |role, n| (0..n).map(move |rank| cluster.rank(role, rank));
        let (request_cfgs, decode_cfgs): (Vec<_>, Vec<_>) = match shape.mode {
            Mode::Disagg => (
                ranks(WorkerRole::Prefill, shape.prefill_dp).collect(),
                ranks(WorkerRole::Decode, shape.decode_dp).collect(),
            ),
            Mode::Colocated => (ranks(WorkerRole::Colocated, shape.decode_dp).collect(), Vec::new()),
        };
        let mut cluster = Cluster { request_side: Vec::new(), decoders: Vec::new() };
        for cfg in decode_cfgs {
            cluster.decoders.push(RunningWorker::start(cfg, device.clone(), store.clone()).await?);
        }
        for cfg in request_cfgs {
            cluster.request_side.push(RunningWorker::start(cfg, device.clone(), store.clone()).await?);
        }
        Ok(cluster)
    }

    /// The first rank fault of any rank (pending forever while none breaks).
    pub async fn faulted(&self) -> String {
        let waits: Vec<_> =
            self.request_side.iter().chain(&self.decoders).map(|w| Box::pin(w.fault.raised())).collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures_util::future::select_all(waits).await.0
    }

    /// Drains request-side ranks first (their KV must reach the decoders), then the decoders.
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        let mut first_error = None;
        for w in &self.request_side {
            w.request_stop();
        }
        for w in self.request_side {
            if let Err(e) = w.join().await {
                first_error.get_or_insert(e);
            }
        }
        for w in &self.decoders {
            w.request_stop();
        }
        for w in self.decoders {
            if let Err(e) = w.join().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// `pdq serve`: runs until `shutdown` resolves, then drains. A rank fault drains every rank and
/// ends with the fault: the ranks share one device, and a supervisor restarts the process.
pub async fn serve(
    cluster: &ClusterConfig,
    device: impl Into<Device>,
    store: Store,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let cluster = Cluster::start(cluster, device, store).await?;
    let fault = tokio::select! {
        _ = shutdown => None,
        reason = cluster.faulted() => Some(reason),
    };
    tracing::info!("draining");
    let drained = cluster.shutdown().await;
    match fault {
        Some(reason) => Err(WorkerError::RankFault(reason)),
        None => drained,
    }
}

/// `pdq worker`: one rank until `shutdown` resolves, then drains.
pub async fn run_worker(
    cfg: WorkerConfig,
    device: impl Into<Device>,
    store: Store,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let RunningWorker { cfg, stop, mut task, .. } = RunningWorker::start(cfg, device, store).await?;
    let joined = |r: Result<Result<(), WorkerError>, tokio::task::JoinError>| {
        r.map_err(|e| WorkerError::Config(format!("worker task panicked: {e}")))?
    };
    tokio::select! {
        _ = shutdown => {
            tracing::info!(worker = %cfg.tag(), "draining");
            let _ = stop.send(true);
            joined(task.await)
        }
        // A worker whose broker connection died exits, so a supervisor can restart it.
        r = &mut task => joined(r),
    }
}
