//! The `pdq` binary as a user runs it: ranks as separate processes, `submit --wait`, `status`,
//! `results`, `jobs`, `cancel`, graceful SIGTERM, and the one-line errors of CONTRACT §1.

use crate::common;

use std::path::Path;

use common::generate_line;
use common::procs::{delete_namespace, stderr, stdout, terminate, wait_for_workers, Env, Ranks};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn ranks_as_processes_serve_a_submitted_job(pool: PgPool) {
    let env = Env::new(&pool).await;
    let mut workers = Ranks(vec![
        env.spawn_rank("prefill", 0, 1, 2, &[]),
        env.spawn_rank("decode", 0, 1, 2, &[]),
        env.spawn_rank("decode", 1, 1, 2, &[]),
    ]);
    wait_for_workers(&pool, 3).await;

    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.jsonl", env.namespace));
    let lines = [
        generate_line("a", json!({"routed_dp_rank": 1, "disagg_prefill_dp_rank": 0})),
        generate_line("b", json!({"data_parallel_rank": 0, "disagg_prefill_dp_rank": 0})),
        json!({"custom_id": "c", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}}),
        json!({"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 0}}),
    ];
    std::fs::write(&file, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let out = env.run(&["submit", file.to_str().unwrap(), "--wait", "--name", "cli"]);
    assert!(out.status.success(), "submit failed: {}", stderr(&out));
    let job = stdout(&out).lines().next().unwrap().trim().to_string();
    Uuid::parse_str(&job).expect("the job id alone on the first line");

    let status = env.run(&["status", &job, "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(
        (status["status"].as_str(), status["completed"].as_i64(), status["failed"].as_i64()),
        (Some("completed"), Some(3), Some(1))
    );
    // The job's tokens, as the batch object's `usage` (CONTRACT §15), from its result rows.
    let (prompt, completion): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(prompt_tokens), 0), COALESCE(sum(completion_tokens), 0) FROM results WHERE job_id = $1::uuid",
    )
    .bind(&job)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(prompt > 0 && completion > 0, "three requests completed");
    assert_eq!(
        (status["usage"]["input_tokens"].as_i64(), status["usage"]["output_tokens"].as_i64()),
        (Some(prompt), Some(completion))
    );
    assert_eq!(status["usage"]["total_tokens"].as_i64(), Some(prompt + completion));

    let results = env.run(&["results", &job]);
    let results: Vec<Value> = stdout(&results).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 3);
    let a = results.iter().find(|r| r["custom_id"] == "a").unwrap();
    assert_eq!(a["response"]["status_code"], 200);
    assert_eq!(a["response"]["body"]["meta_info"]["dp_rank"], 1);
    let b = results.iter().find(|r| r["custom_id"] == "b").unwrap();
    assert_eq!(b["response"]["body"]["meta_info"]["warnings"][0], pdq_protocol::DEPRECATION_WARNING);
    let c = results.iter().find(|r| r["custom_id"] == "c").unwrap();
    assert_eq!(c["response"]["body"]["object"], "chat.completion");
    let errors = env.run(&["results", &job, "--errors"]);
    let errors: Vec<Value> = stdout(&errors).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0]["custom_id"].as_str(), errors[0]["error"]["code"].as_str()),
        (Some("d"), Some("invalid_request"))
    );
    assert!(stdout(&env.run(&["jobs"])).contains(&job));

    for w in workers.iter_mut() {
        assert!(terminate(w).success(), "a worker drains and exits 0 on SIGTERM");
    }
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM workers").fetch_one(&pool).await.unwrap();
    assert_eq!(live, 0, "stopped workers deregister");
    std::fs::remove_file(&file).ok();
    delete_namespace(&env.namespace, pdq_protocol::ClusterShape::disagg(1, 2)).await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn errors_are_one_line_naming_the_service_without_its_password(pool: PgPool) {
    let env = Env::new(&pool).await;
    let out = env.pdq(&["jobs"]).env("DATABASE_URL", "postgres://postgres:hunter2@127.0.0.1:1/pdq").output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1:1") && !err.contains("hunter2"), "{err}");

    // `pdq submit` needs no broker (the feeder publishes); a worker does.
    let worker = ["worker", "--role", "decode", "--dp-rank", "0", "--feeder", "off"];
    let out = env.pdq(&worker).env("PDQ_AMQP_URL", "amqp://guest:hunter2@127.0.0.1:1/%2f").output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1:1") && !err.contains("hunter2"), "{err}");

    // Several broker nodes: the error names every one tried, none with its password; a list with
    // an empty entry is refused as the flag is read, naming the entry.
    let nodes = "amqp://guest:hunter2@127.0.0.1:1/%2f, amqp://guest:hunter2@127.0.0.1:2/%2f";
    let out = env.pdq(&worker).env("PDQ_AMQP_URL", nodes).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("pdq: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("127.0.0.1:1") && errors[0].contains("127.0.0.1:2"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let out = env.pdq(&worker).env("PDQ_AMQP_URL", "amqp://guest:hunter2@127.0.0.1:1/%2f,,").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("empty entry (number 2 of 3)") && !err.contains("hunter2"), "{err}");

    let out = env.run(&["serve", "--model", "/nonexistent/model"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/model"), "{err}");

    let out = env.run(&["submit", "x.jsonl"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no live workers"), "{}", stderr(&out));

    // `--device cuda` where the build has no CUDA: one error line saying how to get it, before
    // the worker registers anywhere.
    if !pdq_engine::cuda_built() {
        let out = env.run(&["worker", "--role", "decode", "--dp-rank", "0", "--device", "cuda"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("pdq: ")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains("built without CUDA; rebuild with --features cuda"), "{err}");
    }

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tiny-{}", env.namespace));
    let out = env.run(&["model", "tiny", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `pdq bench`, small: every scenario completes, every figure is there, and the chart is a PNG.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn bench_reports_every_scenario_and_draws_its_chart(pool: PgPool) {
    let env = Env::new(&pool).await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (json_path, png_path) =
        (dir.join(format!("{}.json", env.namespace)), dir.join(format!("{}.png", env.namespace)));
    let out = env.run(&[
        "bench",
        "--requests",
        "40",
        "--long-requests",
        "4",
        "--long-prompt",
        "200",
        "--latency-requests",
        "2",
        "--json",
        json_path.to_str().unwrap(),
        "--chart",
        png_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 10, "five shapes (one with a shared prefix), each disaggregated and colocated");
    for s in scenarios {
        assert_eq!(s["completed"], s["requests"], "{s}");
        assert!(s["requests_per_s"].as_f64().unwrap() > 0.0 && s["e2e"]["p99"].as_f64().unwrap() > 0.0, "{s}");
    }
    let c = &report["ceilings"];
    for figure in
        ["/request_msg/msgs_per_s", "/handle_msg/msgs_per_s", "/database_copy/rows_per_s", "/writer_rows_per_s"]
    {
        assert!(c.pointer(figure).and_then(Value::as_f64).unwrap() > 0.0, "{figure}");
    }
    // Over TCP, over shared memory where the machine has /dev/shm, and colocated.
    let latency = report["latency"].as_array().unwrap().len();
    assert!(latency == 2 || latency == 3, "{latency} latency runs");
    assert_eq!(report["aims"].as_array().unwrap().len(), 2 + latency);
    assert!(stdout(&out).contains("disaggregated / colocated"));
    assert!(std::fs::read(&png_path).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    // The bench's queues and scratch table are gone.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pdq_bench_copy_%'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// `docs/cli.md` is `pdq --help` and every command's `--help`, so the reference cannot drift
/// from the flags. After changing a flag, regenerate it:
/// `PDQ_BLESS=1 cargo test --test e2e cli::the_cli_reference_is_current`.
#[test]
fn the_cli_reference_is_current() {
    let help = |args: &[&str]| {
        // No environment: clap shows the values of set variables, which are not defaults.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pdq")).args(args).env_clear().output().unwrap();
        assert!(out.status.success(), "pdq {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let top = help(&["--help"]);
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 5, "commands parsed from --help: {commands:?}");
    let mut md = String::from(
        "# CLI reference\n\nEvery flag also reads the environment variable shown beside it. Generated from \
         `pdq --help` by `tests/e2e/cli.rs` (`the_cli_reference_is_current`), which CI runs: do not edit by hand; \
         regenerate with `PDQ_BLESS=1 cargo test --test e2e cli::the_cli_reference_is_current`.\n\n",
    );
    md += &format!("## pdq\n\n```text\n{top}```\n");
    for c in &commands {
        md += &format!("\n## pdq {c}\n\n```text\n{}```\n", help(&[c, "--help"]));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    if std::env::var_os("PDQ_BLESS").is_some() {
        std::fs::write(&path, &md).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == md,
        "docs/cli.md differs from `pdq --help`: regenerate it with \
         PDQ_BLESS=1 cargo test --test e2e cli::the_cli_reference_is_current"
    );
}
