use std::net::SocketAddr;
use std::time::Duration;

use pdq_broker::BrokerOptions;
use pdq_protocol::ClusterShape;
use pdq_protocol::WorkerRole;

use crate::data_plane::DataPlaneConfig;

/// KV bytes a prefill worker may hold before it waits for decoders to free some.
pub const DEFAULT_KV_BUDGET_BYTES: usize = 1 << 30;
/// A KV nobody fetched in this long is dropped (its decoder died); the request is re-prefilled.
pub const DEFAULT_KV_TTL: Duration = Duration::from_secs(600);
/// Prefill attempts before a request whose KV keeps getting lost fails with `kv_lost`.
pub const MAX_PREFILL_ATTEMPTS: u32 = 3;
pub const DEFAULT_PREFETCH: u16 = 64;
/// Sequences a decode (or colocated) rank generates at once.
pub const DEFAULT_MAX_RUNNING: usize = 64;
/// Prompt tokens one engine iteration may prefill before it runs a decode step again.
pub const DEFAULT_PREFILL_TOKEN_BUDGET: usize = 4096;
/// Bytes of KV blocks each engine preallocates (committed by the OS only as blocks are used).
/// Decode admission waits while the pool cannot hold what a sequence reserves (its prompt by
/// need, else its whole generation).
pub const DEFAULT_KV_POOL_BYTES: usize = 1 << 30;
/// KV by need: answers mostly stop long before a generous `max_tokens`, so reserving every
/// sequence's whole generation leaves most of the pool idle and fewer sequences run (1.27x
/// slower colocated, 1.03x on a decode rank's default pool, `docs/performance.md`). Where the
/// executor's KV does not depend on how a prompt was split (the CPU), preempted sequences
/// resume with the same tokens; elsewhere the rank reserves whole generations whatever this
/// says.
pub const DEFAULT_KV_BY_NEED: bool = true;
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping prefill worker keeps serving KV to decoders before it gives up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// A stopping prefill worker whose KV no decoder touched for this long stops waiting: what it
/// still holds belongs to handles already answered elsewhere (or that will be re-prefilled).
pub const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// A prompt longer than this fails before it is tokenized (a 10 MB prompt takes seconds to
/// tokenize only to be refused for its length).
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 1 << 20;

/// What every rank of a cluster shares: `pdq serve` starts one worker per rank from it, and
/// `pdq worker` adds its own role and rank ([`ClusterConfig::rank`]).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub shape: ClusterShape,
    /// The broker URL, namespace, heartbeat, queue type and delivery bound.
    pub broker: BrokerOptions,
    pub data_plane: DataPlaneConfig,
    /// Where the data plane listens (prefill only); port 0 picks a free one.
    pub data_plane_bind: SocketAddr,
    /// The host decoders should dial, written into KV handles.
    pub advertise_host: String,
    pub kv_budget_bytes: usize,
    pub kv_ttl: Duration,
    pub prefetch: u16,
    pub max_running: usize,
    pub prefill_token_budget: usize,
    pub kv_pool_bytes: usize,
    pub max_prompt_bytes: usize,
    /// Whether a prefill or colocated rank keeps prompt blocks for reuse (where its executor can).
    pub prefix_cache: bool,
    /// Whether a colocated or decode rank reserves KV blocks by need, preempting when short,
    /// instead of reserving each request's whole generation at admission.
    pub kv_by_need: bool,
}

impl ClusterConfig {
    /// The defaults for a cluster of `shape` in `namespace`.
    pub fn new(shape: ClusterShape, namespace: &str, amqp_url: &str) -> Self {
        ClusterConfig {
            shape,
            broker: BrokerOptions::new(amqp_url, namespace),
            data_plane: DataPlaneConfig::new(None, DEFAULT_KV_POOL_BYTES as u64),
            data_plane_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: "127.0.0.1".to_string(),
            kv_budget_bytes: DEFAULT_KV_BUDGET_BYTES,
            kv_ttl: DEFAULT_KV_TTL,
            prefetch: DEFAULT_PREFETCH,
            max_running: DEFAULT_MAX_RUNNING,
            prefill_token_budget: DEFAULT_PREFILL_TOKEN_BUDGET,
            kv_pool_bytes: DEFAULT_KV_POOL_BYTES,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            prefix_cache: true,
            kv_by_need: DEFAULT_KV_BY_NEED,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.broker.namespace
    }

    /// The worker of this cluster with `role` and `rank`.
    pub fn rank(&self, role: WorkerRole, rank: u32) -> WorkerConfig {
        WorkerConfig { role, rank, cluster: self.clone() }
    }
}

/// One worker: its place in the cluster, and what the whole cluster shares.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub role: WorkerRole,
    pub rank: u32,
    pub cluster: ClusterConfig,
}

impl WorkerConfig {
    pub fn namespace(&self) -> &str {
        self.cluster.namespace()
    }

    pub fn tag(&self) -> String {
        format!("{}-{}", self.role.as_str(), self.rank)
    }
}
