//! The retention sweep: finished jobs older than the retention period go, with their artifacts.

use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use super::JobManager;
use crate::error::{Error, Result};
use crate::job::JobId;

/// Jobs the retention sweep deletes per batch (one store transaction each).
const SWEEP_BATCH: usize = 500;

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
        let mut removed = 0;
        loop {
            // A batch at a time, oldest first, each deleted in one transaction, with a yield
            // between batches: a sweep of a backlog does not hold the store for long.
            let ids = self
                .inner
                .store
                .finished_before(cutoff, SWEEP_BATCH)
                .await?;
            let mut deletable = Vec::with_capacity(ids.len());
            for &id in &ids {
                if self.remove_artifact(id).await? {
                    deletable.push(id);
                }
            }
            for &id in &deletable {
                self.release(id);
            }
            removed += self.inner.store.delete_jobs(&deletable).await?;
            if ids.len() < SWEEP_BATCH || deletable.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(removed)
    }

    /// Removes a job's ZIP before the job goes; false if the job must stay (the ZIP could not
    /// be removed and may be retried at the next sweep).
    async fn remove_artifact(&self, id: JobId) -> Result<bool> {
        let Some(job) = self.inner.store.get_job(id).await? else {
            return Ok(true);
        };
        let Some(artifact) = &job.artifact else {
            return Ok(true);
        };
        match self.inner.artifacts.delete(&artifact.path).await {
            Ok(_) => Ok(true),
            // Recorded under another store (the configuration changed): not ours.
            Err(e @ Error::InvalidInput { .. }) => {
                warn!(job_id = %id, error = %e, "the artifact is not in this store; removing the job only");
                Ok(true)
            }
            Err(e) => {
                warn!(job_id = %id, error = %e, "could not remove an artifact; keeping the job");
                Ok(false)
            }
        }
    }
}
