//! Shutdown: stop accepting, let running jobs finish within a grace period, interrupt the rest.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::{JobManager, Phase};
use crate::error::Result;
use crate::job::{JobId, JobStatus};

impl JobManager {
    /// Stops accepting jobs, lets running jobs finish within `grace`, then stops the rest (their
    /// status becomes interrupted, partial results are kept, sandboxes removed), and shuts the
    /// executor down. Queued jobs stay queued and run after the next start.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.inner.accepting.store(false, Ordering::Release);
        self.inner.stop.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            let running: Vec<JobId> = {
                let mut live = self.inner.live();
                live.iter_mut()
                    .filter(|(_, e)| e.phase == Phase::Running)
                    .map(|(id, e)| {
                        e.stop_reason.get_or_insert(JobStatus::Interrupted);
                        e.cancel.cancel();
                        *id
                    })
                    .collect()
            };
            info!(jobs = running.len(), "interrupting running jobs");
            if tokio::time::timeout(Duration::from_secs(60), self.inner.tasks.wait())
                .await
                .is_err()
            {
                warn!("jobs did not stop within 60 s of being interrupted");
            }
        }
        self.inner.executor.shutdown().await?;
        Ok(())
    }
}
