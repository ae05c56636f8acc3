//! Start-up recovery of the jobs a previous process left queued or running (a queued job keeps
//! its input files; input files no queued job owns are removed).

use std::collections::HashSet;

use tracing::{info, warn};

use super::JobManager;
use crate::error::Result;
use crate::job::{JobId, JobStatus};
use crate::store::{JobFilter, MAX_PAGE_SIZE};

impl JobManager {
    /// Running jobs become interrupted, queued ones are queued again (oldest first: they are
    /// live now, so the reaper spares their sandboxes). Returns the interrupted ones.
    pub(super) async fn recover(&self) -> Result<Recovered> {
        let store = &self.inner.store;
        let mut interrupted = HashSet::new();
        let mut queued = HashSet::new();
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
                    interrupted.insert(job.id);
                    // A live sandbox continuing a job runs in that job's container (labelled
                    // with the job's id).
                    interrupted.extend(job.continues);
                } else {
                    info!(job_id = %job.id, "re-queueing a job from the last run");
                    queued.insert(job.id);
                    self.enqueue(&job, events);
                }
            }
        }
        // A queued job keeps its input files; any other's are left by a crash.
        self.sweep_inputs(&queued);
        Ok(Recovered { interrupted })
    }
}

/// What [`JobManager::recover`] did.
pub(super) struct Recovered {
    /// Running jobs now interrupted: their sandboxes' owner is gone, running or not.
    pub interrupted: HashSet<JobId>,
}
