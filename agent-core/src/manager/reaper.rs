//! The reaper: sandboxes whose owner is gone are removed at start-up, every
//! [`reap_interval`](super::JobManagerConfig::reap_interval), and when the executor answers again
//! after an outage.

use std::collections::HashSet;

use tracing::{debug, info, warn};

use super::JobManager;
use crate::error::Result;
use crate::executor::SandboxErrorKind;
use crate::job::JobId;

impl JobManager {
    /// Removes sandboxes whose owner is gone ([`Executor::reap`](crate::Executor::reap): never
    /// one a live owner, on this server or another, still uses), sparing those of the jobs this
    /// manager has queued or running. Returns how many were removed. Runs at start-up, every
    /// [`reap_interval`](super::JobManagerConfig::reap_interval) and after an executor outage;
    /// public for tools and tests.
    pub async fn reap(&self) -> Result<usize> {
        let live: HashSet<JobId> = self.inner.live().keys().copied().collect();
        match self.inner.executor.reap(&live).await {
            Ok(n) => {
                self.inner.availability.count_reaped(n);
                if n > 0 {
                    info!(removed = n, "removed sandboxes whose owner is gone");
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind == SandboxErrorKind::Unavailable {
                    self.executor_down(&e);
                }
                Err(e.into())
            }
        }
    }

    /// Starts the periodic reaper, unless `reap_interval` is `None`. It stops at shutdown.
    pub(super) fn spawn_reaper(&self) {
        let Some(interval) = self.inner.config.reap_interval else {
            return;
        };
        let manager = self.clone();
        let interval = interval.max(std::time::Duration::from_millis(100));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: start-up already reaped.
            ticker.tick().await;
            loop {
                tokio::select! {
                    () = manager.inner.stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                // While the executor is down the probe watches it; reaping then is pointless.
                if !manager.executor_status().available {
                    continue;
                }
                match manager.reap().await {
                    Ok(_) => {}
                    Err(e) if !manager.executor_status().available => {
                        debug!(error = %e, "periodic reap: the executor does not answer");
                    }
                    Err(e) => warn!(error = %e, "periodic reap failed"),
                }
            }
        });
    }
}
