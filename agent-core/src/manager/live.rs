//! Cancel state: what the manager knows about each queued or running job, and cancelling one.

use std::collections::HashMap;
use std::sync::MutexGuard;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Inner, JobManager};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::job::{Job, JobId, JobStatus};

/// Where a live job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Queued,
    Running,
    /// Cancelled while queued: the worker must not start it.
    Withdrawn,
    /// Finished, but its final status could not be stored yet (see [`storage`](super::storage)).
    Unsettled,
}

/// A queued or running job.
pub(super) struct LiveJob {
    pub(super) phase: Phase,
    pub(super) cancel: CancellationToken,
    /// Why the job is being stopped (cancelled, timed out, interrupted).
    pub(super) stop_reason: Option<JobStatus>,
    pub(super) events: EventSink,
    pub(super) done: watch::Sender<bool>,
    /// For an unsettled job: the error to store with its failed status.
    pub(super) unsettled_error: Option<String>,
}

impl Inner {
    pub(super) fn live(&self) -> MutexGuard<'_, HashMap<JobId, LiveJob>> {
        // A panic while holding this lock would be a bug; recover the data rather than cascading.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl JobManager {
    /// Cancels a queued or running job and returns it once it is stopped. A running job's sandbox
    /// is removed (right after its final status is published); its partial workspace (ZIP) and
    /// logs are kept.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        enum Action {
            Withdraw(EventSink),
            Stop(watch::Receiver<bool>),
        }
        let action = {
            let mut live = self.inner.live();
            match live.get_mut(&id) {
                Some(entry) if entry.phase == Phase::Queued => {
                    entry.phase = Phase::Withdrawn;
                    entry.cancel.cancel();
                    Some(Action::Withdraw(entry.events.clone()))
                }
                Some(entry) if entry.phase == Phase::Running => {
                    entry.stop_reason.get_or_insert(JobStatus::Cancelled);
                    entry.cancel.cancel();
                    Some(Action::Stop(entry.done.subscribe()))
                }
                Some(entry) => Some(Action::Stop(entry.done.subscribe())),
                None => None,
            }
        };
        match action {
            Some(Action::Withdraw(events)) => {
                let mut job = self.get(id).await?;
                self.finish_unstarted(&mut job, JobStatus::Cancelled, None, &events)
                    .await?;
                self.forget(id);
                Ok(job)
            }
            Some(Action::Stop(mut done)) => {
                let _ = done.wait_for(|d| *d).await;
                self.get(id).await
            }
            None => {
                let mut job = self.get(id).await?;
                if job.status.is_terminal() && self.release(id) {
                    // A finished job's kept sandbox: cancelling it ends the sandbox.
                    return Ok(job);
                }
                if job.status.is_terminal() {
                    return Err(Error::AlreadyFinished {
                        job_id: id,
                        status: job.status,
                    });
                }
                // Stored as live but not owned by this manager (should not happen after
                // recovery): settle it here.
                let last = self.inner.store.last_seq(id).await?;
                let events = self.new_sink(id, last);
                self.finish_unstarted(&mut job, JobStatus::Cancelled, None, &events)
                    .await?;
                Ok(job)
            }
        }
    }

    /// Starts tracking a queued job; returns its cancel token.
    pub(super) fn track(&self, id: JobId, events: EventSink) -> CancellationToken {
        let cancel = CancellationToken::new();
        let (done, _) = watch::channel(false);
        self.inner.live().insert(
            id,
            LiveJob {
                phase: Phase::Queued,
                cancel: cancel.clone(),
                stop_reason: None,
                events,
                done,
                unsettled_error: None,
            },
        );
        cancel
    }

    /// Moves a queued job to running; false if it was withdrawn or is gone.
    pub(super) fn mark_running(&self, id: JobId) -> bool {
        let mut live = self.inner.live();
        match live.get_mut(&id) {
            Some(entry) if entry.phase == Phase::Queued => {
                entry.phase = Phase::Running;
                true
            }
            _ => false,
        }
    }

    /// Records why a live job is being stopped, unless a reason is already set.
    pub(super) fn set_stop_reason(&self, id: JobId, reason: JobStatus) {
        if let Some(entry) = self.inner.live().get_mut(&id) {
            entry.stop_reason.get_or_insert(reason);
        }
    }

    /// Why a live job is being stopped, if it is.
    pub(super) fn stop_reason(&self, id: JobId) -> Option<JobStatus> {
        self.inner.live().get(&id).and_then(|e| e.stop_reason)
    }

    /// Stops tracking a job and wakes its waiters.
    pub(super) fn forget(&self, id: JobId) {
        if let Some(entry) = self.inner.live().remove(&id) {
            let _ = entry.done.send(true);
        }
    }
}
