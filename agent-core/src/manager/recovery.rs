//! Start-up recovery of the jobs a previous process left queued or running (a queued job keeps
//! its input files; input files no queued job owns are removed), and of the finished jobs whose
//! kept sandboxes it left (recorded as gone, their containers removed).

use std::collections::HashSet;

use tracing::{info, warn};

use super::JobManager;
use crate::error::Result;
use crate::job::{JobId, JobStatus, SandboxEnd, SandboxEndReason};
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
        let finished = self.left_sandboxes(&interrupted, &queued).await?;
        Ok(Recovered {
            interrupted,
            finished,
        })
    }

    /// The finished jobs of this store whose sandboxes the last process left in the executor,
    /// above all the kept ones ([`JobSpec::keep_alive`](crate::JobSpec::keep_alive)): a kept
    /// sandbox is not taken over (its link was the old process's Docker attach stream, gone
    /// with it), so its record says it went, [`SandboxEndReason::ServerRestarted`], and the
    /// caller removes its container. The job's status and ZIP stay as they were.
    async fn left_sandboxes(
        &self,
        interrupted: &HashSet<JobId>,
        queued: &HashSet<JobId>,
    ) -> Result<HashSet<JobId>> {
        let store = &self.inner.store;
        let found = match self.inner.executor.sandbox_jobs().await {
            Ok(found) => found,
            Err(e) => {
                // The periodic reaper removes them once the executor answers.
                warn!(error = %e, "could not list the sandboxes the last process left");
                return Ok(HashSet::new());
            }
        };
        let mut finished = HashSet::new();
        for id in found {
            if interrupted.contains(&id) || queued.contains(&id) {
                continue;
            }
            // Another store's job (a server sharing the engine) is not ours to settle.
            let Some(mut job) = store.get_job(id).await? else {
                continue;
            };
            if !job.status.is_terminal() {
                continue;
            }
            if let Some(kept) = job.kept_sandbox.as_mut().filter(|k| k.ended.is_none()) {
                warn!(job_id = %id, "removing a kept sandbox: the server that kept it stopped");
                kept.ended = Some(SandboxEnd::now(SandboxEndReason::ServerRestarted));
                store.update_job(&job).await?;
            }
            finished.insert(id);
        }
        Ok(finished)
    }
}

/// What [`JobManager::recover`] did.
pub(super) struct Recovered {
    /// Running jobs now interrupted: their sandboxes' owner is gone, running or not.
    pub interrupted: HashSet<JobId>,
    /// Finished jobs whose sandboxes (kept ones above all) the last process left.
    pub finished: HashSet<JobId>,
}
