//! The job timeout.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::JobManager;
use crate::job::{JobId, JobStatus};

/// Stops a job (reason: timed out) when its timeout passes; disarmed when dropped.
pub(super) struct JobTimer(JoinHandle<()>);

impl JobTimer {
    /// Arms the timer for job `id`, whose run is stopped through `cancel`.
    pub(super) fn start(
        manager: &JobManager,
        id: JobId,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let manager = manager.clone();
        Self(tokio::spawn(async move {
            // `sleep` saturates a timeout too large for an `Instant` (`now + timeout` would
            // panic on overflow).
            tokio::time::sleep(timeout).await;
            manager.set_stop_reason(id, JobStatus::TimedOut);
            cancel.cancel();
        }))
    }
}

impl Drop for JobTimer {
    fn drop(&mut self) {
        self.0.abort();
    }
}
