//! The whole broker stopped and started mid-batch (`rabbitmqctl stop_app` / `start_app`). It
//! takes the broker from every other test, so it is ignored in the parallel run and
//! `scripts/test.sh` runs it alone, after the rest:
//! `cargo test --test broker_restart -- --ignored`.

mod common;

use std::time::Duration;

use common::{batch, rabbit, Harness};
use pdq_producer::Policy;
use pdq_protocol::ClusterShape;
use sqlx::PgPool;

#[ignore = "stops the broker: run alone (scripts/test.sh does)"]
#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn a_broker_restart_mid_batch_delays_it_but_loses_nothing(pool: PgPool) {
    let h = Harness::start(pool.clone(), ClusterShape::disagg(2, 2)).await;
    let n = 2000usize;
    let lines = batch(n, "r", 16);
    let job = h.submit(&lines, Policy::Shared).await;
    h.wait_count(&format!("SELECT count(*) FROM results WHERE job_id = '{job}'"), (n / 4) as i64).await;
    rabbit::stop_app();
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbit::start_app();
    let row = h.wait(job).await;
    assert_eq!((row.total, row.completed, row.failed), (n as i32, n as i32, 0));
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT custom_id) FROM results WHERE job_id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (n as i64, n as i64), "one row per request");
    // The same process, reconnected, takes a new job.
    let results = h.run(&lines[..100], Policy::Shared).await;
    assert!(results.values().all(|r| r.status == "completed"));
    h.finish().await;
}
