//! The sandboxes of jobs with services or a keep-alive: reachable while their job runs (its
//! desktop, its notebook) and, with `keep_alive`, for a while after its steps end.
//!
//! A kept sandbox leaves the job's status as it was (succeeded, failed, timed out) and its ZIP as
//! it was made when the steps ended; it gives its worker back, still counts in
//! `live_sandboxes`, and is removed when its keep-alive expires, when it is released
//! ([`JobManager::release`], or a cancel of the finished job), when its job is swept by
//! retention, or at shutdown. The job's record says that its sandbox is kept, until when, and
//! once it is gone, when and why ([`Job::kept_sandbox`]).
//!
//! A kept sandbox is not taken over by a restarted server: its link (the supervisor's stdio, a
//! Docker attach stream) belonged to the process that started it and went with it, and the
//! supervisor ends when that stream closes. Restart recovery ([`JobManager::recover`]) instead
//! finds the finished jobs whose sandboxes the last process left, records theirs as gone
//! ([`SandboxEndReason::ServerRestarted`]) and removes their containers before the server takes
//! requests; the job keeps its status and its ZIP.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Inner, JobManager};
use crate::executor::Sandbox;
use crate::job::{Job, JobId, JobSpec, JobStatus, KeptSandbox, SandboxEnd, SandboxEndReason};
use crate::store::StoreErrorKind;

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

    /// Keeps a finished job's sandbox for `keep`, or until it is released or the manager stops,
    /// and writes into the job's record that it is kept ([`Job::kept_sandbox`]): restart
    /// recovery reads that back. Returns why the keeping ended (`None`: nothing was kept).
    pub(super) async fn keep_sandbox(&self, id: JobId, keep: Duration) -> Option<SandboxEndReason> {
        let until = chrono::Duration::from_std(keep)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let release = {
            let mut kept = self.inner.kept();
            let entry = kept.get_mut(&id)?;
            entry.view.kept_until = Some(until);
            entry.release.clone()
        };
        self.update_record(id, |job| job.kept_sandbox = Some(KeptSandbox::new(until)))
            .await;
        tracing::info!(keep_secs = keep.as_secs(), "keeping the sandbox");
        Some(tokio::select! {
            () = tokio::time::sleep(keep) => SandboxEndReason::Expired,
            () = release.cancelled() => SandboxEndReason::Released,
            () = self.inner.stop.cancelled() => SandboxEndReason::ServerStopped,
        })
    }

    /// Writes into a job's record that its kept sandbox is gone, and why.
    pub(super) async fn record_sandbox_end(&self, id: JobId, reason: SandboxEndReason) {
        tracing::info!(reason = reason.as_str(), "the kept sandbox is gone");
        self.update_record(id, |job| {
            if let Some(kept) = &mut job.kept_sandbox {
                kept.ended.get_or_insert_with(|| SandboxEnd::now(reason));
            }
        })
        .await;
    }

    /// Changes a finished job's stored record. A job no longer stored (swept by retention) is
    /// left so; a store error is logged (the record then says less than it could, no more).
    async fn update_record(&self, id: JobId, change: impl FnOnce(&mut Job)) {
        let store = &self.inner.store;
        let result = match store.get_job(id).await {
            Ok(Some(mut job)) => {
                change(&mut job);
                store.update_job(&job).await
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind == StoreErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "could not record the kept sandbox in the job"),
        }
    }

    /// Makes a job's sandbox unreachable (before it is removed).
    pub(super) fn unregister_sandbox(&self, id: JobId) {
        self.inner.kept().remove(&id);
    }
}
