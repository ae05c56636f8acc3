//! Whether the executor's backend (the Docker engine) answers, as jobs see it.
//!
//! When it stops answering, jobs wait for it instead of failing: a queued job waits before it
//! starts (its status stays `queued`), a job that finds the outage while creating its sandbox
//! waits there and tries again. One probe pings the executor with backoff (250 ms doubling to
//! 2 s) until it answers; then every waiting job goes on and the reaper removes what the outage
//! left. An outage longer than [`JobManagerConfig::executor_wait`](super::JobManagerConfig)
//! fails the jobs waiting for it and makes [`JobManager::submit`] refuse new ones until the
//! executor answers again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::JobManager;
use crate::executor::{SandboxError, SandboxErrorKind};

/// First pause between probes of an executor that stopped answering.
const PROBE_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between probes.
const PROBE_MAX: Duration = Duration::from_secs(2);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// An outage: since when the executor has not answered, and why.
#[derive(Clone, Debug)]
struct Outage {
    since: Instant,
    at: DateTime<Utc>,
    error: String,
}

/// The executor's availability, shared by the manager's jobs.
pub(super) struct Availability {
    /// `None` while the executor answers.
    outage: watch::Sender<Option<Outage>>,
    waiting: AtomicUsize,
    outages: AtomicU64,
    reaped: AtomicU64,
}

impl Availability {
    pub(super) fn new() -> Self {
        Self {
            outage: watch::Sender::new(None),
            waiting: AtomicUsize::new(0),
            outages: AtomicU64::new(0),
            reaped: AtomicU64::new(0),
        }
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(super) fn count_reaped(&self, n: usize) {
        self.reaped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What [`JobManager::executor_status`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutorStatus {
    /// Whether the executor answered when last asked (by a job, the probe, the reaper or a
    /// health check).
    pub available: bool,
    /// Since when it has not answered.
    pub down_since: Option<DateTime<Utc>>,
    /// Why (the last error seen).
    pub error: Option<String>,
    /// Whether the outage has lasted longer than the configured wait, so that new jobs are
    /// refused and waiting jobs have failed.
    pub refusing: bool,
    /// How long jobs wait for it ([`JobManagerConfig::executor_wait`](super::JobManagerConfig)).
    pub wait_limit: Duration,
    /// Jobs waiting for it now.
    pub waiting_jobs: usize,
    /// Outages seen since the manager started.
    pub outages: u64,
    /// Sandboxes removed by the reaper since the manager started.
    pub reaped: u64,
}

/// How a wait for the executor ended.
pub(super) enum Wait {
    /// It answers: go on.
    Ready,
    /// The job was cancelled or the manager is stopping.
    Stopped,
    /// The outage lasted longer than the configured wait; the message says so.
    GaveUp(String),
}

/// Counts a job in [`ExecutorStatus::waiting_jobs`] until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl JobManager {
    /// Whether the executor answers, since when it has not, and how many jobs wait for it.
    pub fn executor_status(&self) -> ExecutorStatus {
        let a = &self.inner.availability;
        let outage = a.outage.borrow().clone();
        let wait_limit = self.inner.config.executor_wait;
        ExecutorStatus {
            available: outage.is_none(),
            refusing: outage
                .as_ref()
                .is_some_and(|o| o.since.elapsed() > wait_limit),
            down_since: outage.as_ref().map(|o| o.at),
            error: outage.map(|o| o.error),
            wait_limit,
            waiting_jobs: a.waiting(),
            outages: a.outages.load(Ordering::Relaxed),
            reaped: a.reaped.load(Ordering::Relaxed),
        }
    }

    /// Pings the executor (for health checks) and records the answer: a failure starts an
    /// outage (jobs wait), a success ends one.
    pub async fn check_executor(&self) -> Result<(), SandboxError> {
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, self.inner.executor.ping()).await {
            Ok(answer) => answer,
            Err(_) => Err(SandboxError::new(
                SandboxErrorKind::Unavailable,
                format!("the executor did not answer within {PROBE_TIMEOUT:?}"),
            )),
        };
        match &answer {
            Ok(()) => self.executor_answers(),
            Err(e) if e.kind == SandboxErrorKind::Unavailable => self.executor_down(e),
            Err(_) => {}
        }
        answer
    }

    /// The error [`JobManager::submit`] answers while an outage is older than the wait.
    pub(super) fn executor_refusal(&self) -> Option<SandboxError> {
        let status = self.executor_status();
        status.refusing.then(|| {
            SandboxError::new(
                SandboxErrorKind::Unavailable,
                format!(
                    "the executor has not answered for more than {}s ({}); no job is accepted \
                     until it does — try again later",
                    status.wait_limit.as_secs(),
                    status.error.unwrap_or_default()
                ),
            )
        })
    }

    /// Records that the executor does not answer: starts an outage (and its probe) unless one
    /// is on.
    pub(super) fn executor_down(&self, error: &SandboxError) {
        let started = self
            .inner
            .availability
            .outage
            .send_if_modified(|o| match o {
                Some(outage) => {
                    outage.error = error.to_string();
                    false
                }
                None => {
                    *o = Some(Outage {
                        since: Instant::now(),
                        at: Utc::now(),
                        error: error.to_string(),
                    });
                    true
                }
            });
        if started {
            self.inner
                .availability
                .outages
                .fetch_add(1, Ordering::Relaxed);
            warn!(error = %error, "the executor does not answer; jobs wait for it");
            self.spawn_probe();
        }
    }

    /// Records that the executor answers: ends an outage, then reaps what it left.
    fn executor_answers(&self) {
        let mut lasted = None;
        self.inner.availability.outage.send_if_modified(|o| {
            lasted = o.take().map(|o| o.since.elapsed());
            lasted.is_some()
        });
        if let Some(lasted) = lasted {
            info!(after = ?lasted, "the executor answers again");
            let manager = self.clone();
            tokio::spawn(async move {
                if let Err(e) = manager.reap().await {
                    warn!(error = %e, "could not reap after the outage");
                }
            });
        }
    }

    /// Pings with backoff until the executor answers or the manager stops.
    fn spawn_probe(&self) {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut pause = PROBE_FIRST;
            loop {
                tokio::select! {
                    () = manager.inner.stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                if manager.inner.availability.outage.borrow().is_none()
                    || manager.check_executor().await.is_ok()
                {
                    return;
                }
                pause = (pause * 2).min(PROBE_MAX);
            }
        });
    }

    /// Waits until the executor answers, the job is cancelled or the manager stops, or the
    /// outage has lasted longer than the configured wait. Returns at once when it answers.
    pub(super) async fn wait_for_executor(&self, cancel: &CancellationToken) -> Wait {
        let a = &self.inner.availability;
        let mut rx = a.outage.subscribe();
        let Some(mut outage) = rx.borrow_and_update().clone() else {
            return Wait::Ready;
        };
        let _counted = Waiting::new(&a.waiting);
        let limit = self.inner.config.executor_wait;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Wait::Stopped,
                () = self.inner.stop.cancelled() => return Wait::Stopped,
                () = sleep_until(outage.since.checked_add(limit)) => {
                    return Wait::GaveUp(format!(
                        "the executor did not answer for {}s ({}); the job was not started",
                        limit.as_secs(),
                        outage.error
                    ));
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Wait::Stopped;
                    }
                    match rx.borrow_and_update().clone() {
                        None => return Wait::Ready,
                        Some(next) => outage = next,
                    }
                }
            }
        }
    }
}

/// Sleeps until `deadline`; for ever when there is none (a wait too long for an `Instant`).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
