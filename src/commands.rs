//! What each subcommand does, in terms of the library crates.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use pdq_engine::{Device, Model};
use pdq_producer::{export_lines, wait_for_job, ExportKind, SubmitOptions, WaitMode};
use pdq_protocol::{ClusterShape, Mode};
use pdq_store::{JobRow, Store};
use pdq_workers::{ClusterConfig, WorkerRole};

use crate::cli::{Cli, ClusterArgs, Command, Global, ModelArg, ModelCommand, TuningArgs};
use crate::shutdown::feeding_until_shutdown;

pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Serve { cluster, model, tuning, feeder } => {
            let shape = shape(&cluster)?;
            let model = load_model(&model)?;
            let store = Store::connect(&g.database_url).await?;
            let cluster = cluster_config(g, shape, &tuning);
            g.serve_metrics().await?;
            tracing::info!(?shape, model = model.model().name(), "serving");
            let shutdown = feeding_until_shutdown(g, &feeder, &store, Some(shape));
            pdq_workers::serve(&cluster, model, store, shutdown).await?;
        }
        Command::Worker { role, dp_rank, mut cluster, model, tuning, feeder } => {
            if role == WorkerRole::Colocated {
                cluster.mode = Mode::Colocated;
            }
            let shape = shape(&cluster)?;
            let ranks = if role == WorkerRole::Prefill { shape.prefill_dp } else { shape.decode_dp };
            anyhow::ensure!(
                dp_rank < ranks,
                "--dp-rank {dp_rank} out of range [0, {ranks}) for role {}",
                role.as_str()
            );
            let model = load_model(&model)?;
            let store = Store::connect(&g.database_url).await?;
            let cfg = cluster_config(g, shape, &tuning).rank(role, dp_rank);
            g.serve_metrics().await?;
            let shutdown = feeding_until_shutdown(g, &feeder, &store, Some(shape));
            pdq_workers::run_worker(cfg, model, store, shutdown).await?;
        }
        Command::Submit { file, name, wait, policy, priority, max_in_flight, completion_window } => {
            let store = Store::connect(&g.database_url).await?;
            let shape = pdq_producer::cluster_shape(&store, &g.namespace).await?;
            let opts = SubmitOptions { name, policy, priority, max_in_flight, completion_window: completion_window.0 };
            let report = pdq_producer::submit(&store, &g.namespace, &file, &shape, &opts).await?;
            println!("{}", report.job_id);
            eprintln!(
                "{} lines accepted: {} to run, {} failed validation (see `pdq results {} --errors`)",
                report.total, report.enqueued, report.invalid, report.job_id
            );
            warn_without_feeder(&store, &g.namespace).await;
            if wait {
                let job = wait_for_job(&store, report.job_id, WaitMode::Progress).await?;
                print_status(&job, false)?;
            }
        }
        Command::Status { job, json } => {
            let store = Store::connect(&g.database_url).await?;
            print_status(&store.job(job).await?, json)?;
        }
        Command::Wait { job } => {
            let store = Store::connect(&g.database_url).await?;
            let job = wait_for_job(&store, job, WaitMode::Progress).await?;
            print_status(&job, false)?;
        }
        Command::Jobs => {
            let store = Store::connect(&g.database_url).await?;
            println!(
                "{:<36}  {:<12}  {:>7}  {:>9}  {:>6}  {:>9}  {:<20}  name",
                "id", "status", "total", "completed", "failed", "cancelled", "created"
            );
            for j in store.jobs().await? {
                println!(
                    "{:<36}  {:<12}  {:>7}  {:>9}  {:>6}  {:>9}  {:<20}  {}",
                    j.id,
                    j.status,
                    j.total,
                    j.completed,
                    j.failed,
                    j.cancelled,
                    j.created_at.format("%Y-%m-%d %H:%M:%S"),
                    j.name.as_deref().unwrap_or("")
                );
            }
        }
        Command::Cancel { job } => {
            let store = Store::connect(&g.database_url).await?;
            print_status(&store.cancel_job(job).await?, false)?;
        }
        Command::Results { job, output, errors } => {
            let store = Store::connect(&g.database_url).await?;
            store.job(job).await?;
            let kind = if errors { ExportKind::Errors } else { ExportKind::Output };
            let lines = export_lines(&store.export_rows(job).await?, kind);
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let written = lines.iter().try_for_each(|l| writeln!(out, "{l}")).and_then(|_| out.flush());
            // `pdq results JOB | head` closing the pipe early is not an error.
            match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
        Command::Api { api, feeder } => {
            g.serve_metrics().await?;
            crate::api::run(g, api, feeder).await?
        }
        Command::Model { command: ModelCommand::Tiny { dir } } => {
            pdq_engine::tiny::write(&dir)?;
            println!("{}", dir.display());
        }
        Command::Model { command: ModelCommand::Random { preset, seed, dir } } => {
            pdq_engine::random::write(&preset, &dir, seed)?;
            println!("{}", dir.display());
        }
        Command::Model { command: ModelCommand::Presets } => {
            for p in pdq_engine::random::presets() {
                println!(
                    "{:<14} {:<18} {:>6.0}M parameters, {} layers, hidden {}, vocab {}",
                    p.name,
                    p.architecture.hf_class(),
                    p.num_parameters() as f64 / 1e6,
                    p.num_hidden_layers,
                    p.hidden_size,
                    p.vocab_size
                );
            }
        }
        Command::Migrate => {
            Store::connect(&g.database_url).await?;
            println!("migrations applied to {}", pdq_protocol::redact_url(&g.database_url));
        }
        Command::Bench { bench, model } => {
            let model = load_model(&model)?;
            let plan = crate::bench::BenchPlan {
                requests: bench.requests,
                long_requests: bench.long_requests,
                latency_requests: bench.latency_requests,
                long_prompt: bench.long_prompt,
                prefill_dp: bench.prefill_dp,
                decode_dp: bench.decode_dp,
                scenarios: bench.scenarios,
                ceilings: !bench.no_ceilings,
                json: bench.json,
                chart: bench.chart,
            };
            crate::bench::run(g, model, plan).await?;
        }
        Command::Demo { requests, max_tokens, show, cluster, model } => {
            let shape = shape(&cluster)?;
            let model = load_model(&model)?;
            crate::demo::run(g, shape, model, requests, max_tokens, show).await?;
        }
    }
    Ok(())
}

pub fn shape(c: &ClusterArgs) -> Result<ClusterShape> {
    anyhow::ensure!(c.prefill_dp >= 1 && c.decode_dp >= 1, "--prefill-dp and --decode-dp must be >= 1");
    Ok(match c.mode {
        Mode::Disagg => ClusterShape::disagg(c.prefill_dp, c.decode_dp),
        Mode::Colocated => ClusterShape::colocated(c.decode_dp),
    })
}

/// Loads the model `--model` names (the tiny model by default) and places it on the device
/// `--device` chooses: the weights go to the GPU once, and every engine of this process opens
/// its own executor (KV pool) on it.
pub fn load_model(arg: &ModelArg) -> Result<Device> {
    let dir = match &arg.model {
        Some(dir) => dir.clone(),
        None => pdq_engine::tiny::cached()?,
    };
    // `Model::load` takes an HF directory or a `.gguf` file alike.
    let what = if pdq_engine::gguf::is_gguf(&dir) { "GGUF model" } else { "model directory" };
    let mut model = Model::load(&dir).with_context(|| format!("invalid {what} {}", dir.display()))?;
    if arg.int8_activations {
        let (m, changed) = model.with_activations(pdq_engine::Activations::Int8);
        match changed {
            0 => tracing::warn!("--int8-activations: no Q4_0/Q4_1/Q8_0 matrix in this model, every matmul stays exact"),
            n => tracing::info!(matrices = n, "int8 activations on (opt-in, not exact; the CPU executor's)"),
        }
        model = m;
    }
    // One log line says where it runs when `auto` fell back, or which GPU it took.
    Ok(Device::open(Arc::new(model), arg.device)?)
}

pub fn cluster_config(g: &Global, shape: ClusterShape, t: &TuningArgs) -> ClusterConfig {
    let data_plane = pdq_workers::DataPlaneConfig {
        secret: t.kv_secret.as_ref().map(|s| s.as_bytes().to_vec()),
        connect_timeout: t.kv_connect_timeout.0,
        read_timeout: t.kv_read_timeout.0,
        unreachable_wait: t.kv_unreachable_wait.0,
        max_kv_bytes: (t.kv_pool_mb as u64) << 20,
        shm_dir: t.kv_shm_dir.clone(),
    };
    ClusterConfig {
        broker: g.broker(),
        data_plane,
        kv_ttl: t.kv_ttl.0,
        max_prompt_bytes: t.max_prompt_bytes,
        data_plane_bind: t.data_plane_addr,
        advertise_host: t.advertise_host.clone(),
        kv_budget_bytes: t.kv_budget_mb << 20,
        max_running: t.max_running,
        kv_pool_bytes: t.kv_pool_mb << 20,
        prefetch: t.prefetch,
        prefix_cache: t.prefix_cache,
        kv_by_need: t.kv_by_need,
        ..ClusterConfig::new(shape, &g.namespace, &g.amqp_url.to_string())
    }
}

fn print_status(job: &JobRow, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(job)?);
        return Ok(());
    }
    let elapsed = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => format!(", {:.2}s", (f - s).num_milliseconds() as f64 / 1000.0),
        _ => String::new(),
    };
    let u = &job.usage;
    println!(
        "job {} {}: {}/{} done ({} completed, {} failed, {} cancelled){elapsed}; tokens: {} prompt ({} cached), {} generated",
        job.id,
        job.status,
        job.done(),
        job.total,
        job.completed,
        job.failed,
        job.cancelled,
        u.prompt_tokens,
        u.cached_tokens,
        u.completion_tokens
    );
    Ok(())
}

/// A job nobody publishes waits: say so when no feeder holds the namespace's lease.
async fn warn_without_feeder(store: &Store, namespace: &str) {
    let live = match store.feeder_lease(namespace).await {
        Ok(lease) => lease.is_some_and(|l| l.heartbeat_age_s < pdq_producer::feeder::LEASE_TTL.as_secs_f64()),
        Err(_) => return,
    };
    if !live {
        eprintln!(
            "note: no feeder is running in namespace '{namespace}': the job starts when a `pdq serve`, \
             `pdq worker` or `pdq api` (with --feeder on) runs"
        );
    }
}
