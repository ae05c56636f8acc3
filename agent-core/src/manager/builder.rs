//! Building and starting a manager.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{Inner, JobManager, JobManagerConfig};
use crate::agent::agent_flow;
use crate::artifacts::ArtifactStore;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::llm::LlmProvider;
use crate::store::JobStore;

/// Capacity of the live event channel shared by all jobs.
const LIVE_CHANNEL: usize = 8192;

/// Builds and starts a [`JobManager`].
pub struct JobManagerBuilder {
    executor: Arc<dyn Executor>,
    store: Arc<dyn JobStore>,
    llm: Option<Arc<dyn LlmProvider>>,
    config: JobManagerConfig,
}

impl JobManagerBuilder {
    /// A builder with the default configuration and no LLM.
    pub fn new(executor: Arc<dyn Executor>, store: Arc<dyn JobStore>) -> Self {
        Self {
            executor,
            store,
            llm: None,
            config: JobManagerConfig::default(),
        }
    }

    /// The LLM that plans and repairs prompt jobs.
    pub fn llm(mut self, llm: Arc<dyn LlmProvider>) -> Self {
        self.llm = Some(llm);
        self
    }

    /// The configuration.
    pub fn config(mut self, config: JobManagerConfig) -> Self {
        self.config = config;
        self
    }

    /// Recovers from a previous run (queued jobs re-queued, running ones marked interrupted),
    /// reaps sandboxes left behind, starts the workers, the periodic reaper and the retention
    /// sweeper.
    pub async fn start(self) -> Result<JobManager> {
        if self.config.max_concurrent_jobs == 0
            || self.config.max_concurrent_jobs > Semaphore::MAX_PERMITS
        {
            return Err(Error::invalid(
                "max_concurrent_jobs",
                format!("must be between 1 and {}", Semaphore::MAX_PERMITS),
            ));
        }
        let artifacts = match &self.config.artifacts {
            Some(store) => store.clone(),
            None => {
                let dir = self.config.artifact_dir.clone();
                tokio::task::spawn_blocking(move || ArtifactStore::local(dir))
                    .await
                    .map_err(|e| Error::other(format!("opening the artifact store: {e}")))??
            }
        };
        let (events_tx, _) = broadcast::channel(LIVE_CHANNEL);
        let inner = Arc::new(Inner {
            flow: agent_flow()?,
            permits: Arc::new(Semaphore::new(self.config.max_concurrent_jobs)),
            store: self.store,
            artifacts,
            executor: self.executor,
            llm: self.llm,
            config: self.config,
            live: Mutex::new(HashMap::new()),
            events_tx,
            accepting: AtomicBool::new(true),
            live_sandboxes: AtomicUsize::new(0),
            log_bytes_dropped: Default::default(),
            sandboxes: Default::default(),
            kept_sandboxes: Mutex::new(HashMap::new()),
            availability: super::availability::Availability::new(),
            watchdog: AtomicBool::new(false),
            stored_bytes: Default::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let manager = JobManager { inner };
        let recovered = manager.recover().await?;
        // The interrupted jobs' sandboxes and the finished jobs' kept ones first: their owner
        // was the last process on this store, so they go even if they have not noticed yet and
        // still run.
        let left: std::collections::HashSet<_> = recovered
            .interrupted
            .union(&recovered.finished)
            .copied()
            .collect();
        match manager.inner.executor.reap_jobs(&left).await {
            Ok(0) => {}
            Ok(n) => info!(
                removed = n,
                "removed the sandboxes of interrupted jobs and kept ones"
            ),
            Err(e) => warn!(error = %e, "could not remove the sandboxes the last process left"),
        }
        // The re-queued jobs are live now: the reaper spares their sandboxes.
        if let Err(e) = manager.reap().await {
            warn!(error = %e, "could not reap old sandboxes");
        }
        manager.start_storage_meter().await;
        manager.spawn_reaper();
        manager.spawn_sweeper();
        Ok(manager)
    }
}
