//! The command line of CONTRACT §1. Every flag also reads an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "pdq",
    version,
    about = "Batch LLM inference with prefill/decode disaggregation over AMQP and PostgreSQL"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// RabbitMQ URL; for a RabbitMQ cluster, the URLs of several of its nodes, comma-separated
    /// (the first that answers is used; on losing it, a process moves on to the next).
    #[arg(long, env = "PDQ_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", global = true, value_parser = NodesParser)]
    pub amqp_url: pdq_broker::BrokerNodes,
    /// PostgreSQL URL; the database is created if missing and migrated on start.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/pdq", global = true)]
    pub database_url: String,
    /// Prefix of every exchange and queue, so several clusters share one broker.
    #[arg(long, env = "PDQ_NAMESPACE", default_value = "pdq", global = true)]
    pub namespace: String,
    /// AMQP heartbeat: a process silent this long (hung, stopped) loses its connection, and the
    /// broker hands its unacked messages to other ranks.
    #[arg(long, env = "PDQ_AMQP_HEARTBEAT", default_value_t = Human(pdq_broker::DEFAULT_HEARTBEAT), global = true)]
    pub amqp_heartbeat: Human,
    /// RabbitMQ queue type: classic, or quorum (replicated, for multi-node broker clusters).
    /// Every process of a namespace must use the same.
    #[arg(long, env = "PDQ_QUEUE_TYPE", default_value = "classic", global = true)]
    pub queue_type: pdq_broker::QueueType,
    /// A delivery unacked this long makes the broker requeue it (RabbitMQ 3.12+; older
    /// brokers apply their global consumer_timeout).
    #[arg(long, env = "PDQ_CONSUMER_TIMEOUT", default_value_t = Human(pdq_broker::DEFAULT_CONSUMER_TIMEOUT), global = true)]
    pub consumer_timeout: Human,
    /// Deliveries of one message (it killed or hung each worker it reached) before it is
    /// recorded as failed (`delivery_limit`) and dead-lettered.
    #[arg(long, env = "PDQ_MAX_DELIVERIES", default_value_t = pdq_broker::DEFAULT_MAX_DELIVERIES, global = true)]
    pub max_deliveries: u32,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (`serve`, `worker` and `api`).
    #[arg(long, env = "PDQ_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Log lines on stderr as `text`, or as `json` (one object per line, with the message
    /// span's request_id, job_id, custom_id, role and rank) for a log pipeline. `RUST_LOG`
    /// picks what is logged.
    #[arg(long, env = "PDQ_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Global {
    /// Starts the metrics endpoint when `--metrics-addr` is set.
    pub async fn serve_metrics(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_addr {
            pdq_api::serve_metrics(addr).await.map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        }
        Ok(())
    }
}

impl Global {
    pub fn broker(&self) -> pdq_broker::BrokerOptions {
        pdq_broker::BrokerOptions {
            heartbeat: self.amqp_heartbeat.0,
            queue_type: self.queue_type,
            consumer_timeout: self.consumer_timeout.0,
            max_deliveries: self.max_deliveries,
            ..pdq_broker::BrokerOptions::on(self.amqp_url.clone(), &self.namespace)
        }
    }
}

/// Reads `--amqp-url` into [`pdq_broker::BrokerNodes`]. Not clap's `FromStr` parser, whose
/// error repeats the value as given, password included; this one says only what
/// [`pdq_broker::NodeListError`] says, which masks it.
#[derive(Debug, Clone, Copy)]
struct NodesParser;

impl clap::builder::TypedValueParser for NodesParser {
    type Value = pdq_broker::BrokerNodes;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<pdq_broker::BrokerNodes, clap::Error> {
        let fail =
            |kind, msg: String| clap::Error::raw(kind, format!("--amqp-url / PDQ_AMQP_URL: {msg}\n")).with_cmd(cmd);
        let text = value.to_str().ok_or_else(|| fail(clap::error::ErrorKind::InvalidUtf8, "not UTF-8".into()))?;
        text.parse()
            .map_err(|e: pdq_broker::NodeListError| fail(clap::error::ErrorKind::ValueValidation, e.to_string()))
    }
}

/// A duration on the command line, read by [`parse_duration`] and shown the same way, so a
/// default is written once, as a constant, and `--help` shows it as a user would type it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub Duration);

impl std::str::FromStr for Human {
    type Err = String;
    fn from_str(s: &str) -> Result<Human, String> {
        parse_duration(s).map(Human)
    }
}

impl std::fmt::Display for Human {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            _ if !ms.is_multiple_of(1000) => write!(f, "{ms}ms"),
            _ if ms.is_multiple_of(3_600_000) && ms > 0 => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) && ms > 0 => write!(f, "{}m", ms / 60_000),
            _ => write!(f, "{}s", ms / 1000),
        }
    }
}

/// `500ms`, `10s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 10s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit '{other}' in '{s}' (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// HF model directory (config.json, model.safetensors, tokenizer.json) or a `.gguf` file
    /// (llama/qwen2/mistral; weights stay quantized); default: the built-in tiny model.
    #[arg(long, env = "PDQ_MODEL")]
    pub model: Option<PathBuf>,
    /// Compute device: auto (CUDA when this build has it and a GPU is present, else CPU), cpu, cuda.
    #[arg(long, env = "PDQ_DEVICE", default_value = "auto")]
    pub device: pdq_engine::DeviceChoice,
    /// Opt-in, not exact: activations quantized to int8 (two Q8 digits per 32-value block) for
    /// the matmuls on Q4_0/Q4_1/Q8_0 weights, integer dot products (VNNI where present). Greedy
    /// tokens can differ from the exact default's.
    #[arg(long, env = "PDQ_INT8_ACTIVATIONS")]
    pub int8_activations: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Prefill DP ranks (N).
    #[arg(long, env = "PDQ_PREFILL_DP", default_value_t = 1)]
    pub prefill_dp: u32,
    /// Decode DP ranks (M), or colocated ranks in colocated mode.
    #[arg(long, env = "PDQ_DECODE_DP", default_value_t = 1)]
    pub decode_dp: u32,
    #[arg(long, env = "PDQ_MODE", default_value = "disagg")]
    pub mode: pdq_protocol::Mode,
}

/// The feeder that runs in every long-lived process (CONTRACT §13).
#[derive(Args, Debug, Clone)]
pub struct FeederArgs {
    /// Run a feeder here: it publishes accepted jobs' requests while this process holds the
    /// namespace's feeder lease (one process at a time; the others stand by).
    #[arg(long, env = "PDQ_FEEDER", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub feeder: bool,
    /// Requests in flight the feeder keeps per prefill queue (per rank for the shared queue).
    #[arg(long, env = "PDQ_FEEDER_WINDOW", default_value_t = pdq_producer::feeder::DEFAULT_FEEDER_WINDOW)]
    pub feeder_window: u32,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("must be on or off, got '{other}'")),
    }
}

impl FeederArgs {
    /// Starts this process's feeder when `--feeder on`; `stop` ends it and gives its lease up.
    pub fn spawn(
        &self,
        g: &Global,
        store: &pdq_store::Store,
        shape: Option<pdq_protocol::ClusterShape>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let cfg = pdq_producer::feeder::FeederConfig {
            namespace: g.namespace.clone(),
            broker: g.broker(),
            window: self.feeder_window.max(1),
            shape,
        };
        self.feeder.then(|| pdq_producer::feeder::spawn(store.clone(), cfg, stop))
    }
}

#[derive(Args, Debug, Clone)]
pub struct TuningArgs {
    /// Host that decoders dial for this process's KV (set it to this host's address across hosts).
    #[arg(long, env = "PDQ_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// Address the KV data plane listens on (port 0: any free port).
    #[arg(long, env = "PDQ_DATA_PLANE_ADDR", default_value = "127.0.0.1:0")]
    pub data_plane_addr: std::net::SocketAddr,
    /// KV bytes a prefill rank may hold before it waits for decoders (MiB).
    #[arg(long, env = "PDQ_KV_BUDGET_MB", default_value_t = pdq_workers::DEFAULT_KV_BUDGET_BYTES >> 20)]
    pub kv_budget_mb: usize,
    /// Sequences one rank decodes at once.
    #[arg(long, env = "PDQ_MAX_RUNNING", default_value_t = pdq_workers::DEFAULT_MAX_RUNNING)]
    pub max_running: usize,
    /// KV block pool of each engine (MiB); decode admission waits while it is full.
    #[arg(long, env = "PDQ_KV_POOL_MB", default_value_t = pdq_workers::DEFAULT_KV_POOL_BYTES >> 20)]
    pub kv_pool_mb: usize,
    /// Unacked messages per queue per rank.
    #[arg(long, env = "PDQ_PREFETCH", default_value_t = pdq_workers::DEFAULT_PREFETCH)]
    pub prefetch: u16,
    /// A KV no decoder took in this long is dropped (the request is prefilled again).
    #[arg(long, env = "PDQ_KV_TTL", default_value_t = Human(pdq_workers::DEFAULT_KV_TTL))]
    pub kv_ttl: Human,
    /// Shared secret of the KV data plane: peers must prove they hold it. Same on every worker.
    #[arg(long, env = "PDQ_KV_SECRET", hide_env_values = true)]
    pub kv_secret: Option<String>,
    /// Dialing a prefill rank's data plane gives up after this long (then: prefill again).
    #[arg(long, env = "PDQ_KV_CONNECT_TIMEOUT", default_value_t = Human(pdq_workers::DEFAULT_CONNECT_TIMEOUT))]
    pub kv_connect_timeout: Human,
    /// A data-plane peer must start answering within this long (a transfer also gets time for
    /// its size).
    #[arg(long, env = "PDQ_KV_READ_TIMEOUT", default_value_t = Human(pdq_workers::DEFAULT_READ_TIMEOUT))]
    pub kv_read_timeout: Human,
    /// A decoder that cannot reach a handle's prefill rank (partitioned, silent) hands the
    /// handle back, for a decoder that can or until the link heals, for this long after the
    /// handle was published; then the request is prefilled again.
    #[arg(long, env = "PDQ_KV_UNREACHABLE_WAIT", default_value_t = Human(pdq_workers::DEFAULT_UNREACHABLE_WAIT))]
    pub kv_unreachable_wait: Human,
    /// Shared-memory directory (e.g. /dev/shm) for KVs between prefill and decode ranks on one
    /// host; decoders on other hosts still use TCP. Unset, every KV goes over TCP. Prefill and
    /// decode ranks of a host must name the same directory.
    #[arg(long, env = "PDQ_KV_SHM_DIR")]
    pub kv_shm_dir: Option<PathBuf>,
    /// Prompts longer than this fail before tokenization.
    #[arg(long, env = "PDQ_MAX_PROMPT_BYTES", default_value_t = pdq_workers::DEFAULT_MAX_PROMPT_BYTES)]
    pub max_prompt_bytes: usize,
    /// Keep computed prompt blocks in the KV pool and reuse them for prompts that start alike
    /// (prefill and colocated ranks on the CPU; exact: a hit gives a cold run's tokens).
    #[arg(long, env = "PDQ_PREFIX_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub prefix_cache: bool,
    /// Colocated and decode ranks reserve KV blocks as sequences grow instead of for `max_tokens`
    /// up front, preempting and recomputing a sequence when the pool runs short (CPU only; same
    /// tokens; `false` reserves every sequence's whole generation at admission).
    #[arg(long, env = "PDQ_KV_BY_NEED", default_value_t = pdq_workers::DEFAULT_KV_BY_NEED, action = clap::ArgAction::Set)]
    pub kv_by_need: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A whole cluster in one process until SIGINT/SIGTERM, then a graceful drain.
    Serve {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        tuning: TuningArgs,
        #[command(flatten)]
        feeder: FeederArgs,
    },
    /// One worker rank, for ranks in separate processes or on separate hosts.
    Worker {
        #[arg(long, env = "PDQ_ROLE")]
        role: pdq_workers::WorkerRole,
        #[arg(long, env = "PDQ_DP_RANK")]
        dp_rank: u32,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        tuning: TuningArgs,
        #[command(flatten)]
        feeder: FeederArgs,
    },
    /// Validates a batch file (OpenAI Batch JSONL) and accepts it as a job; prints the job id
    /// first. The feeders of the long-lived processes publish it.
    Submit {
        file: String,
        #[arg(long, env = "PDQ_JOB_NAME")]
        name: Option<String>,
        /// Show progress and return when the job ends.
        #[arg(long, env = "PDQ_WAIT")]
        wait: bool,
        /// Dispatch policy for unpinned stages: shared, round-robin, least-loaded, or prefix
        /// (prompts that start alike go to the same rank, for its prefix cache).
        #[arg(long, alias = "dispatch", env = "PDQ_POLICY", default_value = "shared")]
        policy: pdq_producer::Policy,
        /// A larger share of the ranks: the job weighs 2^PRIORITY against the other active jobs.
        #[arg(long, env = "PDQ_PRIORITY", default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// At most this many of the job's requests in the pipeline at once.
        #[arg(long, env = "PDQ_MAX_IN_FLIGHT")]
        max_in_flight: Option<u32>,
        /// Requests not finished this long after acceptance end `batch_expired`, and the job
        /// `expired`.
        #[arg(long, env = "PDQ_COMPLETION_WINDOW", default_value_t = Human(pdq_store::DEFAULT_COMPLETION_WINDOW))]
        completion_window: Human,
    },
    /// A job's status.
    Status {
        job: uuid::Uuid,
        #[arg(long, env = "PDQ_JSON")]
        json: bool,
    },
    /// Waits for a job to end.
    Wait { job: uuid::Uuid },
    /// Lists jobs, newest first.
    Jobs,
    /// Cancels a job: requests without a result are recorded as cancelled.
    Cancel { job: uuid::Uuid },
    /// The OpenAI Batch output (or error) file of a job, as JSONL.
    Results {
        job: uuid::Uuid,
        #[arg(long, env = "PDQ_OUTPUT")]
        output: Option<PathBuf>,
        /// The error file instead: failed and cancelled requests.
        #[arg(long, env = "PDQ_ERRORS")]
        errors: bool,
    },
    /// The OpenAI Batch API over HTTP (files and batches) for this namespace's cluster.
    Api {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        feeder: FeederArgs,
    },
    /// Model utilities.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Applies the migrations and exits.
    Migrate,
    /// pdq against the broker and database ceilings, and disaggregated against colocated, over
    /// scenarios of prompt and output lengths, in one run.
    Bench {
        #[command(flatten)]
        bench: BenchArgs,
        #[command(flatten)]
        model: ModelArg,
    },
    /// The main job: a demo batch through a local in-process cluster, results printed from SQL.
    Demo {
        /// Requests in the demo batch.
        #[arg(long, env = "PDQ_DEMO_REQUESTS", default_value_t = 48)]
        requests: usize,
        /// max_tokens of each request.
        #[arg(long, env = "PDQ_DEMO_MAX_TOKENS", default_value_t = 16)]
        max_tokens: u32,
        /// Rows of the results table to print.
        #[arg(long, env = "PDQ_DEMO_SHOW", default_value_t = 12)]
        show: usize,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        model: ModelArg,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, env = "PDQ_API_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: std::net::SocketAddr,
    /// When set, every request needs `Authorization: Bearer <key>`.
    #[arg(long, env = "PDQ_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest file an upload may hold (OpenAI's limit by default).
    #[arg(long, env = "PDQ_API_MAX_FILE_BYTES", default_value_t = pdq_api::DEFAULT_MAX_FILE_BYTES)]
    pub max_file_bytes: u64,
    /// Most lines an uploaded file may hold (OpenAI's limit by default).
    #[arg(long, env = "PDQ_API_MAX_FILE_LINES", default_value_t = pdq_api::DEFAULT_MAX_FILE_LINES)]
    pub max_file_lines: u64,
    /// Dispatch policy of the jobs that batches create: shared, round-robin, least-loaded, prefix.
    #[arg(long, alias = "dispatch", env = "PDQ_POLICY", default_value = "shared")]
    pub policy: pdq_producer::Policy,
    /// POST a signed event here when a batch ends (`batch.completed`, `batch.failed`,
    /// `batch.cancelled`, `batch.expired`, as OpenAI's webhooks); http:// only.
    #[arg(long, env = "PDQ_WEBHOOK_URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The key webhooks are signed with (Standard Webhooks): `whsec_` then base64, as OpenAI's.
    #[arg(long, env = "PDQ_WEBHOOK_SECRET", hide_env_values = true, requires = "webhook_url")]
    pub webhook_secret: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Requests in each 16-token-prompt scenario.
    #[arg(long, env = "PDQ_BENCH_REQUESTS", default_value_t = 2000)]
    pub requests: usize,
    /// Requests in each long-prompt scenario.
    #[arg(long, env = "PDQ_BENCH_LONG_REQUESTS", default_value_t = 200)]
    pub long_requests: usize,
    /// Long-prompt requests sent one at a time, to time the KV hop without queueing (0 skips).
    #[arg(long, env = "PDQ_BENCH_LATENCY_REQUESTS", default_value_t = 30)]
    pub latency_requests: usize,
    /// Tokens in a long prompt (capped so 32 output tokens still fit the model's context).
    #[arg(long, env = "PDQ_BENCH_LONG_PROMPT", default_value_t = 1000)]
    pub long_prompt: usize,
    #[arg(long, env = "PDQ_PREFILL_DP", default_value_t = 2)]
    pub prefill_dp: u32,
    #[arg(long, env = "PDQ_DECODE_DP", default_value_t = 2)]
    pub decode_dp: u32,
    /// Runs only these scenarios (repeatable): `16x1`, `16x32`, `1kx1`, `1kx32` (prompt x output
    /// tokens), `1kx32s` (the long prompts sharing all but their last 16 tokens); all by default.
    #[arg(long = "scenario", env = "PDQ_BENCH_SCENARIOS", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Skips the broker and database ceilings (for profiling one scenario).
    #[arg(long)]
    pub no_ceilings: bool,
    /// Writes every figure of the run to FILE as JSON.
    #[arg(long, env = "PDQ_BENCH_JSON")]
    pub json: Option<PathBuf>,
    /// Draws throughput and latency per scenario to FILE (PNG).
    #[arg(long, env = "PDQ_BENCH_CHART")]
    pub chart: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Writes the built-in tiny model (config.json, model.safetensors, tokenizer.json) to DIR.
    Tiny { dir: PathBuf },
    /// Writes a random-weight checkpoint in a real model's shapes (HF layout, bf16) to DIR, for
    /// benchmarks and GPU checks.
    Random {
        /// One of the presets (`pdq model presets` lists them).
        #[arg(long, env = "PDQ_PRESET")]
        preset: String,
        #[arg(long, env = "PDQ_SEED", default_value_t = 0)]
        seed: u64,
        dir: PathBuf,
    },
    /// Lists the presets of `pdq model random`.
    Presets,
}
