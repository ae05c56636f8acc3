//! One job from running to its final status: the sandbox, the agent flow, packaging.
//!
//! The final status is published as soon as the result is durable (the job record and its
//! ZIP stored); the sandbox is removed after that by the queue, which keeps the job's worker
//! permit and counts the sandbox in `live_sandboxes` until it is gone (see [`SandboxSlot`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::availability::Wait;
use super::timer::JobTimer;
use super::JobManager;
use crate::agent::{AgentSettings, AgentState};
use crate::artifacts::ArtifactStore;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::executor::{Sandbox, SandboxErrorKind, SandboxSpec};
use crate::flow::Ctx;
use crate::job::{EventKind, Job, JobId, JobStatus};

/// How a job's run ended: the job as it stands, the status it ends in and why it did not succeed.
struct Outcome {
    job: Job,
    status: JobStatus,
    /// Kept as the job's error unless the job already has one.
    error: Option<String>,
}

impl JobManager {
    /// Runs one job to its final status; its sandbox is left in `slot` for the caller to remove.
    pub(super) async fn run(
        &self,
        id: JobId,
        cancel: CancellationToken,
        events: EventSink,
        slot: &mut SandboxSlot<'_>,
    ) -> Result<()> {
        let inner = &self.inner;
        let mut job = self.get(id).await?;
        job.transition(JobStatus::Running)?;
        inner.store.update_job(&job).await?;
        events.emit(EventKind::Status {
            status: JobStatus::Running,
            error: None,
        });
        let timer = JobTimer::start(self, id, job.spec.job_timeout, cancel.clone());
        let outcome = self.run_in_sandbox(job, cancel, events.clone(), slot).await;
        drop(timer);
        let Outcome {
            mut job,
            status,
            error,
        } = outcome;
        if let Some(e) = error {
            job.error.get_or_insert(e);
        }
        if let Some(keep) = job.spec.keep_sandbox {
            if matches!(status, JobStatus::Succeeded | JobStatus::Failed) {
                self.continue_sandbox(&mut job, keep, slot, &events).await;
            }
        }
        if status == JobStatus::Failed {
            // If it failed because the executor went away, the jobs after it wait for it.
            let manager = self.clone();
            tokio::spawn(async move {
                let _ = manager.check_executor().await;
            });
        }
        job.transition(status)?;
        inner.store.update_job(&job).await?;
        self.drop_inputs(id);
        events.emit(EventKind::Status {
            status,
            error: job.error.clone(),
        });
        events.flush().await;
        info!(status = %status, "job finished");
        Ok(())
    }

    /// Creates the sandbox (kept in `slot`), runs the agent flow, compiles results.
    async fn run_in_sandbox(
        &self,
        mut job: Job,
        cancel: CancellationToken,
        events: EventSink,
        slot: &mut SandboxSlot<'_>,
    ) -> Outcome {
        let inner = &self.inner;
        let id = job.id;
        let sandbox: Arc<dyn Sandbox> = match self.make_job_sandbox(&job, &cancel, &events).await {
            Ok(s) => Arc::from(s),
            Err(message) => {
                // No sandbox could be created.
                let reason = self.stop_reason(id);
                let status = reason.unwrap_or(JobStatus::Failed);
                job.error = Some(match reason {
                    Some(_) => stop_message(status, job.spec.job_timeout),
                    None => message,
                });
                return Outcome {
                    job,
                    status,
                    error: None,
                };
            }
        };
        slot.hold(sandbox.clone());
        let placed = tokio::select! {
            placed = self.place_inputs(&job, &*sandbox, &events) => placed,
            () = cancel.cancelled() => Err(Error::Cancelled),
        };
        if let Err(e) = placed {
            let reason = self.stop_reason(id);
            let status = reason.unwrap_or(JobStatus::Failed);
            job.error = Some(match reason {
                Some(_) => stop_message(status, job.spec.job_timeout),
                None => format!("could not place the job's input files: {e}"),
            });
            return Outcome {
                job,
                status,
                error: None,
            };
        }
        if super::kept::registers(&job.spec) {
            self.register_sandbox(id, &job.spec, sandbox.clone());
        }
        debug!(sandbox = sandbox.id(), "sandbox ready");
        let settings = self.agent_settings(id);
        let job_timeout = job.spec.job_timeout;
        let mut state = AgentState::new(
            job,
            inner.store.clone(),
            sandbox.clone(),
            inner.llm.clone(),
            events.clone(),
            cancel.clone(),
            settings,
        );
        let ctx = Ctx::with_cancel(cancel.clone());
        let (status, error) = match inner.flow.run(&mut state, &ctx).await {
            Ok(_) => (state.outcome(), state.failure().map(str::to_string)),
            Err(e) => {
                let status = match self.stop_reason(id) {
                    Some(reason) if cancel.is_cancelled() => reason,
                    _ => JobStatus::Failed,
                };
                let message = match status {
                    JobStatus::Failed => e.to_string(),
                    other => stop_message(other, job_timeout),
                };
                state.fail(message.clone());
                if status == JobStatus::TimedOut {
                    state.mark_running_step_timed_out();
                }
                self.package_partial(&mut state, status, &events).await;
                (status, Some(message))
            }
        };
        Outcome {
            job: state.job,
            status,
            error,
        }
    }

    /// The agent flow's settings for job `id` (caps, where its ZIP goes).
    pub(super) fn agent_settings(&self, id: JobId) -> AgentSettings {
        let config = &self.inner.config;
        AgentSettings {
            max_output_bytes: config.max_output_bytes,
            tail_bytes: config.tail_bytes,
            max_export_bytes: config.max_export_bytes,
            artifacts: self.inner.artifacts.clone(),
            artifact_key: ArtifactStore::key_for(id),
            max_step_timeout: config.max_step_timeout,
        }
    }

    /// Creates the job's sandbox; while the executor does not answer, waits for it (bounded,
    /// see [`availability`](super::availability)) and tries again. `Err`: why there is none.
    async fn make_job_sandbox(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        events: &EventSink,
    ) -> std::result::Result<Box<dyn Sandbox>, String> {
        let spec = SandboxSpec::for_job(job.id, &job.spec);
        loop {
            let e = match self.inner.executor.create(&spec).await {
                Ok(sandbox) => return Ok(sandbox),
                Err(e) => e,
            };
            if e.kind != SandboxErrorKind::Unavailable || cancel.is_cancelled() {
                return Err(Error::from(e).to_string());
            }
            self.executor_down(&e);
            events.emit(EventKind::Log {
                message: format!("waiting for the executor to answer again: {e}"),
            });
            match self.wait_for_executor(cancel).await {
                Wait::Ready => continue,
                Wait::Stopped => return Err(Error::from(e).to_string()),
                Wait::GaveUp(message) => return Err(message),
            }
        }
    }

    /// Keeps what a stopped or failed job produced so far, within the packaging deadline.
    async fn package_partial(&self, state: &mut AgentState, status: JobStatus, events: &EventSink) {
        if state.job.artifact.is_some() {
            return;
        }
        let deadline = self.inner.config.packaging_timeout;
        let packaged = tokio::time::timeout(deadline, state.compile(status))
            .await
            .unwrap_or(Err(Error::Timeout(deadline)));
        if let Err(e) = packaged {
            warn!(error = %e, "could not package the partial workspace");
            events.emit(EventKind::Log {
                message: format!("could not package the workspace: {e}"),
            });
        }
    }

    /// Moves a job that never ran to a final status.
    pub(super) async fn finish_unstarted(
        &self,
        job: &mut Job,
        status: JobStatus,
        error: Option<String>,
        events: &EventSink,
    ) -> Result<()> {
        job.transition(status)?;
        job.error = error.clone();
        self.inner.store.update_job(job).await?;
        self.drop_inputs(job.id);
        events.emit(EventKind::Status { status, error });
        events.flush().await;
        Ok(())
    }
}

/// A job's sandbox from its creation until it is removed, with the job's worker permit. It
/// counts in [`ManagerStats::live_sandboxes`](super::ManagerStats::live_sandboxes) all that time
/// (also when a panic unwinds through the job: dropping the slot uncounts it, and the sandbox's
/// own drop removes it in the background).
pub(super) struct SandboxSlot<'a> {
    counter: &'a AtomicUsize,
    sandbox: Option<Arc<dyn Sandbox>>,
    /// Held until the sandbox is removed (or handed over with it), unless given back earlier.
    permit: Option<OwnedSemaphorePermit>,
}

impl<'a> SandboxSlot<'a> {
    /// An empty slot counting in `counter`, holding the job's worker `permit`.
    pub(super) fn new(counter: &'a AtomicUsize, permit: OwnedSemaphorePermit) -> Self {
        Self {
            counter,
            sandbox: None,
            permit: Some(permit),
        }
    }

    /// Gives the worker permit back while the sandbox stays (a kept sandbox).
    pub(super) fn release_permit(&mut self) {
        self.permit.take();
    }

    /// Takes the sandbox and the permit out (a handover to a live sandbox), with the sandbox's
    /// count in `inner.live_sandboxes` (this slot's counter) handed over too, so it never
    /// drops out of the count; `None` when there is no sandbox.
    pub(super) fn take_over(
        &mut self,
        inner: &Arc<super::Inner>,
    ) -> Option<(
        Arc<dyn Sandbox>,
        OwnedSemaphorePermit,
        super::sandboxes::Counted,
    )> {
        debug_assert!(std::ptr::eq(self.counter, &inner.live_sandboxes));
        self.sandbox.as_ref()?;
        let permit = self.permit.take()?;
        let sandbox = self.sandbox.take()?;
        Some((sandbox, permit, super::sandboxes::Counted::adopt(inner)))
    }

    /// Keeps a job's new sandbox (and counts it).
    fn hold(&mut self, sandbox: Arc<dyn Sandbox>) {
        self.counter.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = self.sandbox.replace(sandbox) {
            // Not reached (one sandbox per job); dropping it removes it in the background.
            self.counter.fetch_sub(1, Ordering::Relaxed);
            drop(old);
        }
    }

    /// Removes the sandbox, if one was made; it stops counting once it is gone, and the permit
    /// is given back after that.
    pub(super) async fn remove(mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            if let Err(e) = sandbox.destroy().await {
                warn!(error = %e, "could not destroy the sandbox");
            }
            self.counter.fetch_sub(1, Ordering::Relaxed);
        }
        self.permit.take();
    }
}

impl Drop for SandboxSlot<'_> {
    fn drop(&mut self) {
        if self.sandbox.take().is_some() {
            self.counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The error message of a job stopped for `status`.
fn stop_message(status: JobStatus, timeout: Duration) -> String {
    match status {
        JobStatus::TimedOut => {
            format!("the job ran longer than its {}s timeout", timeout.as_secs())
        }
        JobStatus::Cancelled => "cancelled".to_string(),
        JobStatus::Interrupted => "interrupted by a shutdown".to_string(),
        other => other.to_string(),
    }
}
