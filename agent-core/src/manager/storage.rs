//! A full disk: admission control below a free-space threshold, and the watchdog that finishes a
//! job whose final status could not be stored once it can be.
//!
//! A job whose last write failed (the disk or the database is full) is not forgotten: it stays
//! in the manager as *unsettled* ([`ManagerStats::unsettled`](super::ManagerStats::unsettled)),
//! and the watchdog tries again with backoff (500 ms doubling to 5 s) to store it as failed,
//! with the reason. Only then do its waiters wake. So no job stays `running` in the store while
//! the manager has finished with it (short of the process dying, after which start-up recovery
//! marks it interrupted).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::live::Phase;
use super::JobManager;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::job::{JobId, JobStatus};

/// First pause of the watchdog between attempts.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often the storage directories are measured for
/// [`max_stored_bytes`](super::JobManagerConfig::max_stored_bytes).
pub const STORED_BYTES_REFRESH: Duration = Duration::from_secs(2);

/// How long start-up waits for the storage directories' first measure.
const FIRST_WALK_WAIT: Duration = Duration::from_millis(250);

/// Bytes of the regular files under `dir` (links not followed; what cannot be read counts 0).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => {
                    total = total.saturating_add(entry.metadata().map_or(0, |m| m.len()));
                }
                _ => {}
            }
        }
    }
    total
}

/// Bytes free (to unprivileged users) on the file system of `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl JobManager {
    /// The least free space, in bytes, on the file systems where jobs and ZIPs are stored
    /// ([`JobManagerConfig::storage_dirs`](super::JobManagerConfig::storage_dirs), else the
    /// artifact directory), with the directory; `None` when none can be measured.
    pub fn free_space(&self) -> Option<(u64, &Path)> {
        self.storage_dirs()
            .iter()
            .filter_map(|d| free_bytes(d).ok().map(|free| (free, d.as_path())))
            .min_by_key(|(free, _)| *free)
    }

    /// The directories where jobs and ZIPs are stored.
    fn storage_dirs(&self) -> &[std::path::PathBuf] {
        let config = &self.inner.config;
        if config.storage_dirs.is_empty() {
            std::slice::from_ref(&config.artifact_dir)
        } else {
            &config.storage_dirs[..]
        }
    }

    /// Bytes the storage directories held together at the last measure (taken every
    /// [`STORED_BYTES_REFRESH`] while
    /// [`max_stored_bytes`](super::JobManagerConfig::max_stored_bytes) is set); `None` without
    /// a cap.
    pub fn stored_bytes(&self) -> Option<u64> {
        (self.inner.config.max_stored_bytes > 0)
            .then(|| self.inner.stored_bytes.load(Ordering::Relaxed))
    }

    /// Measures the storage directories once, off the runtime's threads; returns how long the
    /// walk took.
    async fn measure_stored_bytes(&self) -> Duration {
        let dirs = self.storage_dirs().to_vec();
        let began = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || dirs.iter().map(|d| tree_bytes(d)).sum()).await {
            Ok(bytes) => self.inner.stored_bytes.store(bytes, Ordering::Relaxed),
            Err(e) => warn!(error = %e, "measuring the storage directories failed"),
        }
        began.elapsed()
    }

    /// With a storage cap, measures the directories in the background, then again every
    /// [`STORED_BYTES_REFRESH`] until shutdown — or, for a tree so large that a walk takes
    /// longer than a tenth of that, ten walks' time apart, so the meter never takes more than
    /// about a tenth of a core. Off the request path: admission reads the last measure. Start-up
    /// waits for the first walk at most [`FIRST_WALK_WAIT`]; a longer one goes on in the
    /// background, and until it ends nothing is counted.
    pub(super) async fn start_storage_meter(&self) {
        if self.inner.config.max_stored_bytes == 0 {
            return;
        }
        let manager = self.clone();
        let (first, measured) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut first = Some(first);
            loop {
                let walk = manager.measure_stored_bytes().await;
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
                let pause = STORED_BYTES_REFRESH.max(walk.saturating_mul(10));
                tokio::select! {
                    () = manager.inner.stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        });
        if tokio::time::timeout(FIRST_WALK_WAIT, measured)
            .await
            .is_err()
        {
            info!("the output directory is large: its first measure goes on in the background");
        }
    }

    /// Refuses a new job while free space is below the threshold, or the storage directories
    /// hold more than their cap.
    pub(super) fn check_free_space(&self) -> Result<()> {
        let cap = self.inner.config.max_stored_bytes;
        if let Some(stored) = self.stored_bytes() {
            if stored > cap {
                let dirs: Vec<String> = self
                    .storage_dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                return Err(Error::StorageCapReached {
                    path: dirs.join(", "),
                    stored_bytes: stored,
                    max_stored_bytes: cap,
                });
            }
        }
        let min = self.inner.config.min_free_bytes;
        if min == 0 {
            return Ok(());
        }
        match self.free_space() {
            Some((free, dir)) if free < min => Err(Error::InsufficientStorage {
                path: dir.display().to_string(),
                free_bytes: free,
                min_free_bytes: min,
            }),
            _ => Ok(()),
        }
    }

    /// Marks a job failed after [`JobManager::run`] returned an error or panicked, unless it
    /// already reached a final status. When that cannot be stored either (a full disk), the job
    /// is left to the watchdog, which tries again until it can: returns whether it is settled
    /// now (then the caller forgets it; otherwise the watchdog will).
    pub(super) async fn settle_failed(&self, id: JobId, error: String, events: &EventSink) -> bool {
        match self.try_settle(id, &error, events).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "could not mark the job failed; the watchdog will try again");
                self.leave_to_watchdog(id, error);
                false
            }
        }
    }

    async fn try_settle(&self, id: JobId, error: &str, events: &EventSink) -> Result<()> {
        let mut job = self.get(id).await?;
        if !job.status.is_terminal() {
            self.finish_unstarted(&mut job, JobStatus::Failed, Some(error.to_string()), events)
                .await?;
        }
        Ok(())
    }

    /// Hands a job whose final status could not be stored to the watchdog (started if need be).
    fn leave_to_watchdog(&self, id: JobId, error: String) {
        if let Some(entry) = self.inner.live().get_mut(&id) {
            entry.phase = Phase::Unsettled;
            entry.unsettled_error = Some(error);
        }
        self.start_watchdog();
    }

    /// Starts the watchdog unless it runs.
    fn start_watchdog(&self) {
        if !self.inner.stop.is_cancelled() && !self.inner.watchdog.swap(true, Ordering::AcqRel) {
            let manager = self.clone();
            tokio::spawn(async move { manager.watchdog().await });
        }
    }

    /// Stores the unsettled jobs as failed, with backoff, until none is left or the manager
    /// stops.
    async fn watchdog(&self) {
        let mut pause = RETRY_FIRST;
        loop {
            tokio::select! {
                () = self.inner.stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            let pending: Vec<(JobId, String, EventSink)> = self
                .inner
                .live()
                .iter()
                .filter(|(_, e)| e.phase == Phase::Unsettled)
                .map(|(id, e)| {
                    let error = e.unsettled_error.clone().unwrap_or_default();
                    (*id, error, e.events.clone())
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            let mut progress = false;
            for (id, error, events) in pending {
                match self.try_settle(id, &error, &events).await {
                    Ok(()) => {
                        info!(job_id = %id, "stored the final status the job could not store before");
                        self.forget(id);
                        progress = true;
                    }
                    Err(e) => tracing::debug!(job_id = %id, error = %e, "still cannot settle"),
                }
            }
            pause = if progress {
                RETRY_FIRST
            } else {
                (pause * 2).min(RETRY_MAX)
            };
        }
        self.inner.watchdog.store(false, Ordering::Release);
        // A job left to it between the last look and now.
        let left = self
            .inner
            .live()
            .values()
            .any(|e| e.phase == Phase::Unsettled);
        if left {
            self.start_watchdog();
        }
    }
}
