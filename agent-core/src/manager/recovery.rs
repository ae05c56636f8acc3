//! Start-up recovery of the jobs a previous process left queued or running.

use std::collections::HashSet;

use tracing::{info, warn};

use super::JobManager;
use crate::error::Result;
use crate::job::{JobId, JobStatus};
use crate::store::{JobFilter, MAX_PAGE_SIZE};

impl JobManager {
    /// Running jobs become interrupted, queued ones are queued again (oldest first). Returns the
    /// re-queued ids.
    pub(super) async fn recover(&self) -> Result<HashSet<JobId>> {
        let store = &self.inner.store;
        let mut requeued = HashSet::new();
        for status in [JobStatus::Running, JobStatus::Queued] {
            let mut jobs = Vec::new();
            loop {
                let page = store
                    .list_jobs(
                        &JobFilter::default()
                            .with_status(status)
                            .page(MAX_PAGE_SIZE, jobs.len()),
                    )
                    .await?;
                let n = page.jobs.len();
                jobs.extend(page.jobs);
                if n < MAX_PAGE_SIZE {
                    break;
                }
            }
            jobs.reverse();
            for mut job in jobs {
                let last = store.last_seq(job.id).await?;
                let events = self.new_sink(job.id, last);
                if status == JobStatus::Running {
                    warn!(job_id = %job.id, "marking a job interrupted: it was running when the last process stopped");
                    self.finish_unstarted(
                        &mut job,
                        JobStatus::Interrupted,
                        Some("the server stopped while this job was running".into()),
                        &events,
                    )
                    .await?;
                } else {
                    info!(job_id = %job.id, "re-queueing a job from the last run");
                    requeued.insert(job.id);
                    self.enqueue(job.id, events);
                }
            }
        }
        Ok(requeued)
    }
}
