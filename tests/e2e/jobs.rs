//! Jobs outlive their submitter and share the cluster fairly (CONTRACT §13), tested by causing
//! it: `kill -9` of `pdq submit` and of the process whose feeder holds the lease, a small job
//! behind a big one, priorities, cancel and expiry, on real RabbitMQ and PostgreSQL.

use crate::common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::procs::{delete_namespace, stderr, terminate, wait_for_workers, Env, Ranks};
use common::{batch, generate_line, Harness};
use pdq_producer::feeder::TAKEOVER_BOUND;
use pdq_producer::SubmitOptions;
use pdq_protocol::ClusterShape;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| l.to_string() + "\n").collect()
}

fn write_file(env: &Env, lines: &[Value]) -> PathBuf {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{}.jsonl", env.namespace, Uuid::new_v4()));
    std::fs::write(&file, jsonl(lines)).unwrap();
    file
}

/// One row per request, every one with the expected status, and the job's counters agree.
async fn assert_one_row_each(pool: &PgPool, job: Uuid, n: usize, status: &str) {
    let (rows, distinct, with_status): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status = $2) FROM results WHERE job_id = $1",
    )
    .bind(job)
    .bind(status)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((rows, distinct, with_status), (n as i64, n as i64, n as i64), "one {status} row per request");
    let (total, done): (i32, i32) =
        sqlx::query_as("SELECT total, completed + failed + cancelled FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((total, done), (n as i32, n as i32), "the job's counters count each row once");
}

/// Waits for the job to reach a terminal status; returns how long that took.
async fn wait_job(pool: &PgPool, job: Uuid, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1").bind(job).fetch_optional(pool).await.unwrap();
        if let Some(s) = status.filter(|s| ["completed", "failed", "cancelled", "expired"].contains(&s.as_str())) {
            return (s, started.elapsed());
        }
        assert!(started.elapsed() < within, "job {job} not finished after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn results_of(pool: &PgPool, job: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM results WHERE job_id = $1").bind(job).fetch_one(pool).await.unwrap()
}

async fn wait_results(pool: &PgPool, job: Uuid, at_least: i64) {
    let started = Instant::now();
    while results_of(pool, job).await < at_least {
        assert!(started.elapsed() < Duration::from_secs(120), "fewer than {at_least} results after 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `pdq submit --wait` of 30,000 lines, killed with SIGKILL mid-acceptance (nothing of it stays,
/// or all of it) and again once it printed the job id: the job completes with no one waiting
/// on it, every request exactly once, within a bound.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_killed_submitter_leaves_a_job_that_completes(pool: PgPool) {
    const N: usize = 30_000;
    const BOUND: Duration = Duration::from_secs(240);
    let env = Env::new(&pool).await;
    let mut serve = Ranks(vec![env
        .pdq(&["serve", "--mode", "colocated", "--decode-dp", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts")]);
    wait_for_workers(&pool, 1).await;
    let file = write_file(&env, &batch(N, "k", 1));

    // Killed while its rows stream in: a job is accepted whole or not at all.
    let mut early = env.pdq(&["submit", file.to_str().unwrap()]).stdout(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    early.kill().unwrap();
    early.wait().unwrap();
    let partial: Vec<(i32, i64)> =
        sqlx::query_as("SELECT j.total, (SELECT count(*) FROM requests r WHERE r.job_id = j.id) FROM jobs j")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(partial.iter().all(|&(total, rows)| total as i64 == rows && rows == N as i64), "{partial:?}");
    let early_jobs: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs").fetch_all(&pool).await.unwrap();

    // Killed once the job is accepted (its id printed), while `--wait` follows it.
    let mut submit = env.pdq(&["submit", "--wait", file.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(submit.stdout.take().unwrap()).read_line(&mut first).unwrap();
    submit.kill().unwrap();
    submit.wait().unwrap();
    let killed_at = Instant::now();
    let job: Uuid = first.trim().parse().expect("the job id on the first line");
    let done_at_kill = results_of(&pool, job).await;
    let (status, took) = wait_job(&pool, job, BOUND).await;
    assert_eq!(status, "completed");
    assert_one_row_each(&pool, job, N, "completed").await;
    eprintln!(
        "submitter killed with {done_at_kill}/{N} results written: the job completed {:.1?} later",
        killed_at.elapsed().min(took)
    );
    for early in early_jobs {
        // A job the early kill left behind was accepted whole: it completes too.
        wait_job(&pool, early, BOUND).await;
        assert_one_row_each(&pool, early, N, "completed").await;
    }
    std::fs::remove_file(&file).ok();
    assert!(terminate(&mut serve[0]).success(), "serve drains and exits 0");
    delete_namespace(&env.namespace, ClusterShape::colocated(1)).await;
}

/// The process whose feeder holds the lease is killed with SIGKILL mid-job: another process's
/// feeder takes the lease over within the stated bound, and the job completes exactly once.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_killed_feeder_is_replaced_and_the_job_completes(pool: PgPool) {
    const N: usize = 4000;
    let mut h = Harness::without_feeder(pool.clone(), ClusterShape::colocated(1)).await;
    h.start_cluster().await;
    let env = Env { namespace: h.ns.clone(), ..Env::new(&pool).await };
    // Two `pdq api` processes: each runs a feeder, one holds the lease. A small window keeps
    // most of the job unpublished when the holder dies.
    let apis = Ranks(
        (0..2)
            .map(|_| {
                env.pdq(&["api", "--addr", "127.0.0.1:0", "--feeder-window", "64"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("pdq api starts")
            })
            .collect(),
    );
    let holder = lease_holder(&pool, &h.ns, None).await;
    let job = h.submit_opts(&jsonl(&batch(N, "f", 1)), &SubmitOptions::default()).await.unwrap();
    wait_results(&pool, job, 500).await;
    let victim = apis.iter().position(|c| c.id() as i32 == holder).expect("the holder is one of the two");
    common::procs::signal(&apis[victim], "KILL");
    let killed_at = Instant::now();
    let done_at_kill = results_of(&pool, job).await;
    let successor = lease_holder(&pool, &h.ns, Some(holder)).await;
    let takeover = killed_at.elapsed();
    assert_eq!(successor, apis[1 - victim].id() as i32);
    assert!(takeover <= TAKEOVER_BOUND + Duration::from_secs(2), "takeover took {takeover:?}");
    let (status, _) = wait_job(&pool, job, Duration::from_secs(180)).await;
    assert_eq!(status, "completed");
    assert_one_row_each(&pool, job, N, "completed").await;
    eprintln!(
        "feeder holder killed at {done_at_kill}/{N}: lease taken over in {takeover:.1?}, job done {:.1?} after the kill",
        killed_at.elapsed()
    );
    drop(apis);
    h.finish().await;
}

/// The pid holding the namespace's feeder lease, once it is not `not`.
async fn lease_holder(pool: &PgPool, ns: &str, not: Option<i32>) -> i32 {
    let started = Instant::now();
    loop {
        let pid: Option<i32> = sqlx::query_scalar("SELECT pid FROM feeders WHERE namespace = $1")
            .bind(ns)
            .fetch_optional(pool)
            .await
            .unwrap();
        if let Some(pid) = pid.filter(|p| Some(*p) != not) {
            return pid;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no (new) feeder lease holder in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Job B (50 lines) submitted while job A (8,000 lines) runs finishes in a small fraction of
/// A's time: B's requests enter the queue beside A's, not behind A's whole backlog.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_small_job_is_not_served_after_a_big_one(pool: PgPool) {
    let mut h = Harness::without_feeder(pool.clone(), ClusterShape::colocated(1)).await;
    h.start_feeder(256);
    h.start_cluster().await;
    let started = Instant::now();
    let a = h.submit_opts(&jsonl(&batch(8000, "a", 1)), &SubmitOptions::default()).await.unwrap();
    wait_results(&pool, a, 400).await;
    let b = h.submit_opts(&jsonl(&batch(50, "b", 1)), &SubmitOptions::default()).await.unwrap();
    let (_, b_took) = wait_job(&pool, b, Duration::from_secs(120)).await;
    let (_, _) = wait_job(&pool, a, Duration::from_secs(180)).await;
    let a_took = started.elapsed();
    let a_left_when_b_ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM results WHERE job_id = $1 AND created_at > (SELECT finished_at FROM jobs WHERE id = $2)",
    )
    .bind(a)
    .bind(b)
    .fetch_one(&pool)
    .await
    .unwrap();
    let ratio = b_took.as_secs_f64() / a_took.as_secs_f64();
    eprintln!(
        "job B (50) took {b_took:.2?} of job A's (8,000) {a_took:.2?}: {ratio:.3}; A still had {a_left_when_b_ended} to go"
    );
    assert!(ratio < 0.25, "B took {ratio:.3} of A's time");
    assert!(a_left_when_b_ended > 2000, "B ended while most of A was still to run");
    assert_one_row_each(&pool, a, 8000, "completed").await;
    assert_one_row_each(&pool, b, 50, "completed").await;
    h.finish().await;
}

/// A job of priority 4 submitted after a job of priority 0 of the same size overtakes it.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_high_priority_job_overtakes_a_low_one(pool: PgPool) {
    let mut h = Harness::without_feeder(pool.clone(), ClusterShape::colocated(1)).await;
    h.start_feeder(128);
    h.start_cluster().await;
    let low = h.submit_opts(&jsonl(&batch(3000, "lo", 1)), &SubmitOptions::default()).await.unwrap();
    wait_results(&pool, low, 200).await;
    let high = h
        .submit_opts(&jsonl(&batch(3000, "hi", 1)), &SubmitOptions { priority: 4, ..SubmitOptions::default() })
        .await
        .unwrap();
    wait_job(&pool, high, Duration::from_secs(180)).await;
    let low_done = results_of(&pool, low).await;
    wait_job(&pool, low, Duration::from_secs(180)).await;
    eprintln!("priority 4 job done while the priority 0 job had {low_done}/3000");
    assert!(low_done < 2000, "the high-priority job finished first, by a margin (low at {low_done})");
    let priorities: Vec<i32> =
        sqlx::query_scalar("SELECT priority FROM jobs ORDER BY created_at").fetch_all(&pool).await.unwrap();
    assert_eq!(priorities, [0, 4], "jobs.priority records it");
    assert_one_row_each(&pool, low, 3000, "completed").await;
    assert_one_row_each(&pool, high, 3000, "completed").await;
    h.finish().await;
}

/// Cancelling mid-job: every unpublished request is a `cancelled` row at once, nothing more is
/// published, and the broker never held more than the feeder's window of the job.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn cancel_stops_unpublished_requests_at_once(pool: PgPool) {
    const N: usize = 3000;
    const WINDOW: u32 = 64;
    let mut h = Harness::without_feeder(pool.clone(), ClusterShape::colocated(1)).await;
    h.start_feeder(WINDOW);
    h.start_cluster().await;
    let job = h.submit_opts(&jsonl(&batch(N, "c", 4)), &SubmitOptions::default()).await.unwrap();
    let queue = h.broker.topology.prefill_any_queue();
    let mut deepest = 0;
    while results_of(&pool, job).await < 300 {
        deepest = deepest.max(h.broker.queue_depth(&queue).await.unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(deepest <= WINDOW, "the broker held {deepest} messages, more than the window of {WINDOW}");
    let row = h.store.cancel_job(job).await.unwrap();
    assert_eq!((row.status.as_str(), row.done()), ("cancelled", N as i32), "every request has its row at once");
    let published = |pool: PgPool| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM requests WHERE job_id = $1 AND published_at IS NOT NULL")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    let at_cancel = published(pool.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(published(pool.clone()).await, at_cancel, "nothing is published after the cancel");
    assert!(at_cancel < N as i64 / 2, "most of the job was never published ({at_cancel} of {N})");
    let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM results WHERE job_id = $1 AND status = 'cancelled'")
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(cancelled >= N as i64 - at_cancel, "each unpublished request is a cancelled row");
    // What was in flight finishes or is skipped; either way no request gets a second row.
    h.wait_queue_drained(&queue).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT request_id) FROM results WHERE job_id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (N as i64, N as i64));
    h.finish().await;
}

/// A job whose completion window passes before its requests run ends `expired`: each
/// unfinished request is a `batch_expired` row, and workers that reach the messages later
/// write nothing more.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_job_past_its_window_expires(pool: PgPool) {
    const N: usize = 40;
    // The namespace declared and fed, but nothing consumes until the window has passed.
    let mut h = Harness::idle(pool.clone(), ClusterShape::colocated(1)).await;
    let opts = SubmitOptions { completion_window: Duration::from_secs(2), ..SubmitOptions::default() };
    let job = h.submit_opts(&jsonl(&batch(N, "e", 2)), &opts).await.unwrap();
    let (status, took) = wait_job(&pool, job, Duration::from_secs(30)).await;
    assert_eq!(status, "expired");
    assert!(took >= Duration::from_millis(1500), "expired only once its window passed ({took:?})");
    let codes: Vec<String> = sqlx::query_scalar("SELECT error->>'code' FROM results WHERE job_id = $1")
        .bind(job)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(codes, vec!["batch_expired".to_string(); N]);
    // Workers now reach the published messages: they skip them, or their write is a no-op.
    h.start_cluster().await;
    h.wait_queue_drained(&h.broker.topology.prefill_any_queue()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_one_row_each(&pool, job, N, "cancelled").await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1").bind(job).fetch_one(&pool).await.unwrap();
    assert_eq!(status, "expired");
    h.finish().await;
}

/// `pdq submit` without any feeder running says the job waits, and the job still runs once a
/// long-lived process starts.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn submit_without_a_feeder_says_so(pool: PgPool) {
    let env = Env::new(&pool).await;
    let mut serve = env
        .pdq(&["serve", "--mode", "colocated", "--decode-dp", "1", "--feeder", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_workers(&pool, 1).await;
    let file = write_file(&env, &batch(20, "w", 1));
    let out = env.run(&["submit", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no feeder is running"), "{}", stderr(&out));
    let job: Uuid = String::from_utf8_lossy(&out.stdout).lines().next().unwrap().trim().parse().unwrap();
    let api = env.pdq(&["api", "--addr", "127.0.0.1:0"]).stdout(Stdio::null()).spawn().unwrap();
    let _api = Ranks(vec![api]);
    let (status, _) = wait_job(&pool, job, Duration::from_secs(60)).await;
    assert_eq!(status, "completed");
    std::fs::remove_file(&file).ok();
    assert!(terminate(&mut serve).success());
    delete_namespace(&env.namespace, ClusterShape::colocated(1)).await;
}

/// A request pinned to a rank the cluster no longer has (it shrank after the job was accepted)
/// fails naming the rank; the rest of the job runs, and the feeder does not stall on it.
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_request_for_a_rank_gone_fails_and_the_rest_runs(pool: PgPool) {
    let mut h = Harness::without_feeder(pool.clone(), ClusterShape::disagg(1, 1)).await;
    h.start_cluster().await;
    h.start_feeder(64);
    let mut lines = batch(10, "u", 1);
    lines.extend((0..10).map(|i| {
        let body = json!({"text": "pinned", "disagg_prefill_dp_rank": 1, "sampling_params": {"max_new_tokens": 1}});
        generate_line(&format!("p{i}"), body)
    }));
    // Accepted against a 2 x 1 cluster; the 1 x 1 one running now has no `{ns}.prefill.1`.
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.jsonl", h.ns));
    std::fs::write(&path, jsonl(&lines)).unwrap();
    let opts = SubmitOptions::default();
    let report = pdq_producer::submit(&h.store, &h.ns, path.to_str().unwrap(), &ClusterShape::disagg(2, 1), &opts)
        .await
        .unwrap();
    std::fs::remove_file(&path).ok();
    let (status, _) = wait_job(&pool, report.job_id, Duration::from_secs(60)).await;
    assert_eq!(status, "completed");
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT custom_id, status, error->>'message' FROM results WHERE job_id = $1 ORDER BY custom_id")
            .bind(report.job_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 20);
    for (cid, status, message) in rows {
        if cid.starts_with('p') {
            let expected = "`routing key` '1' names no prefill queue: use 'any' or a prefill rank in [0, 1)";
            assert_eq!((status.as_deref(), message.as_deref()), (Some("failed"), Some(expected)), "{cid}");
        } else {
            assert_eq!(status.as_deref(), Some("completed"), "{cid}");
        }
    }
    h.finish().await;
}
