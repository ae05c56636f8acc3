//! The sandboxes of jobs with services or a keep-alive: reachable while their job runs (its
//! desktop, its notebook) and, with `keep_alive`, for a while after its steps end.
//!
//! A kept sandbox leaves the job's status as it was (succeeded, failed, timed out) and its ZIP as
//! it was made when the steps ended; it gives its worker back, still counts in
//! `live_sandboxes`, and is removed when its keep-alive expires, when it is released
//! ([`JobManager::release`], or a cancel of the finished job), when its job is swept by
//! retention, or at shutdown. Kept sandboxes live in memory only: after a restart their
//! containers are gone with their owner (the reaper removes what is left) and the job's status
//! shows no sandbox.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Inner, JobManager};
use crate::executor::Sandbox;
use crate::job::{JobId, JobSpec, JobStatus};

/// A job's sandbox while it can be reached ([`JobManager::job_sandbox`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct JobSandbox {
    /// The sandbox (for its services and tunnels).
    pub sandbox: Arc<dyn Sandbox>,
    /// `None` while the job runs; once its steps ended, when the kept sandbox goes.
    pub kept_until: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for JobSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSandbox")
            .field("sandbox", &self.sandbox.id())
            .field("kept_until", &self.kept_until)
            .finish()
    }
}

pub(super) struct Entry {
    view: JobSandbox,
    keep_alive: Duration,
    release: CancellationToken,
}

/// Whether a job's sandbox is worth registering: it has services or is to be kept.
pub(super) fn registers(spec: &JobSpec) -> bool {
    !spec.services.is_empty() || !spec.keep_alive.is_zero()
}

impl Inner {
    pub(super) fn kept(&self) -> MutexGuard<'_, HashMap<JobId, Entry>> {
        self.kept_sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl JobManager {
    /// A job's sandbox, while its job runs or it is kept after, or a live sandbox's while it is
    /// live; `None` otherwise (queued, or removed, or a job without services or keep-alive).
    pub fn job_sandbox(&self, id: JobId) -> Option<JobSandbox> {
        if let Some(entry) = self.inner.kept().get(&id) {
            return Some(entry.view.clone());
        }
        self.live_sandbox(id).map(|sandbox| JobSandbox {
            sandbox,
            kept_until: None,
        })
    }

    /// Ends a job's kept sandbox now (or, while the job runs, asks for it not to be kept).
    /// Returns whether the job had a sandbox.
    pub fn release(&self, id: JobId) -> bool {
        match self.inner.kept().get(&id) {
            Some(entry) => {
                entry.release.cancel();
                true
            }
            None => false,
        }
    }

    /// Makes a running job's sandbox reachable.
    pub(super) fn register_sandbox(&self, id: JobId, spec: &JobSpec, sandbox: Arc<dyn Sandbox>) {
        self.inner.kept().insert(
            id,
            Entry {
                view: JobSandbox {
                    sandbox,
                    kept_until: None,
                },
                keep_alive: spec.keep_alive,
                release: CancellationToken::new(),
            },
        );
    }

    /// How long a job's sandbox is to be kept after its steps, if at all: not when the job was
    /// cancelled or interrupted, nor when the manager is stopping. Call before `forget`.
    pub(super) fn keep_for(&self, id: JobId) -> Option<Duration> {
        if self.inner.stop.is_cancelled()
            || matches!(
                self.stop_reason(id),
                Some(JobStatus::Cancelled | JobStatus::Interrupted)
            )
        {
            return None;
        }
        let kept = self.inner.kept();
        let entry = kept.get(&id)?;
        (!entry.keep_alive.is_zero() && !entry.release.is_cancelled()).then_some(entry.keep_alive)
    }

    /// Keeps a finished job's sandbox for `keep`, or until it is released or the manager stops.
    pub(super) async fn keep_sandbox(&self, id: JobId, keep: Duration) {
        let release = {
            let mut kept = self.inner.kept();
            let Some(entry) = kept.get_mut(&id) else {
                return;
            };
            entry.view.kept_until = chrono::Duration::from_std(keep)
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d));
            entry.release.clone()
        };
        tracing::info!(keep_secs = keep.as_secs(), "keeping the sandbox");
        tokio::select! {
            () = tokio::time::sleep(keep) => {}
            () = release.cancelled() => {}
            () = self.inner.stop.cancelled() => {}
        }
    }

    /// Makes a job's sandbox unreachable (before it is removed).
    pub(super) fn unregister_sandbox(&self, id: JobId) {
        self.inner.kept().remove(&id);
    }
}
