//! The retention sweep: finished jobs older than the retention period go, with their artifacts.

use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use super::JobManager;
use crate::error::{Error, Result};

impl JobManager {
    /// Starts the periodic sweep, unless retention is off. It stops at shutdown.
    pub(super) fn spawn_sweeper(&self) {
        let Some(retention) = self.inner.config.retention else {
            return;
        };
        let manager = self.clone();
        let interval = self
            .inner
            .config
            .sweep_interval
            .max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    () = manager.inner.stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                match manager.sweep(retention).await {
                    Ok(0) => {}
                    Ok(n) => info!(removed = n, "retention sweep"),
                    Err(e) => warn!(error = %e, "retention sweep failed"),
                }
            }
        });
    }

    /// Removes jobs (with their events and ZIPs) that finished longer than `retention` ago.
    /// Returns how many were removed. Runs periodically; public for tools and tests.
    pub async fn sweep(&self, retention: Duration) -> Result<usize> {
        let retention = chrono::Duration::from_std(retention)
            .map_err(|_| Error::invalid("retention", "too large"))?;
        let cutoff = Utc::now() - retention;
        let ids = self.inner.store.finished_before(cutoff).await?;
        let mut removed = 0;
        for id in ids {
            if let Some(job) = self.inner.store.get_job(id).await? {
                if let Some(artifact) = &job.artifact {
                    match self.inner.artifacts.delete(&artifact.path).await {
                        Ok(_) => {}
                        // Recorded under another store (the configuration changed): not ours.
                        Err(e @ Error::InvalidInput { .. }) => {
                            warn!(job_id = %id, error = %e, "the artifact is not in this store; removing the job only");
                        }
                        Err(e) => {
                            warn!(job_id = %id, error = %e, "could not remove an artifact; keeping the job");
                            continue;
                        }
                    }
                }
            }
            if self.inner.store.delete_job(id).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
