//! `--wait` and `pdq wait`: poll the job row until it ends, optionally drawing a progress bar.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pdq_store::{JobRow, Store};
use uuid::Uuid;

use crate::ProducerError;

const POLL_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// A bar on stderr: done/failed/total, rate and ETA.
    Progress,
    Quiet,
}

pub async fn wait_for_job(store: &Store, job_id: Uuid, mode: WaitMode) -> Result<JobRow, ProducerError> {
    let job = store.job(job_id).await?;
    let bar = match mode {
        WaitMode::Progress => ProgressBar::with_draw_target(Some(job.total as u64), ProgressDrawTarget::stderr()),
        WaitMode::Quiet => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} done, {msg} [{elapsed_precise}, {per_sec}, ETA {eta}]")
            .expect("a valid progress template"),
    );
    loop {
        let job = store.job(job_id).await?;
        bar.set_position(job.done() as u64);
        bar.set_message(format!("{} failed, {} cancelled", job.failed, job.cancelled));
        if job.status().is_terminal() {
            bar.finish();
            return Ok(job);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
