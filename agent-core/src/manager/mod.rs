//! The job manager: submit, a bounded worker pool, cancel, timeouts, live events, retention and
//! start-up recovery.
//!
//! One module per concern: `config` (settings), `builder` (start-up), `queue` (the worker
//! pool), `run` (one job in its sandbox, ending in an `Outcome`), `timer` (the job timeout),
//! `live` (cancel state of queued and running jobs), `recovery` (after a restart), `retention`
//! (the sweep), `handover` (a finished job's sandbox continued as a live sandbox), `availability` (waiting out an executor outage), `reaper` (removing sandboxes
//! whose owner is gone), `storage` (admission below a free-space threshold, the watchdog of jobs
//! whose final write failed) and `shutdown`.
//!
//! ```no_run
//! # async fn demo(executor: std::sync::Arc<dyn agent_core::Executor>) -> agent_core::Result<()> {
//! use std::sync::Arc;
//! use agent_core::manager::JobManager;
//! use agent_core::store::memory::MemoryStore;
//! use agent_core::{JobSpec, Step};
//!
//! let manager = JobManager::builder(executor, Arc::new(MemoryStore::new())).start().await?;
//! let id = manager
//!     .submit(JobSpec::from_steps(vec![Step::shell("echo hello > hello.txt")]))
//!     .await?;
//! let job = manager.wait(id).await?;
//! println!("{} -> {:?}", job.status, job.artifact);
//! manager.shutdown(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

mod availability;
mod builder;
mod config;
mod handover;
mod inputs;
mod kept;
mod live;
mod queue;
mod reaper;
mod recovery;
mod retention;
mod run;
mod sandbox_plan;
mod sandboxes;
mod shutdown;
mod storage;
mod timer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::AgentState;
use crate::artifacts::ArtifactStore;
use crate::error::{Error, Result};
use crate::events::{replay_then_follow, EventSink};
use crate::executor::{Executor, SandboxSpec};
use crate::flow::Flow;
use crate::job::{EventKind, Job, JobEvent, JobId, JobSpec, JobStatus};
use crate::llm::LlmProvider;
use crate::store::{JobFilter, JobPage, JobStore, SummaryPage, MAX_PAGE_SIZE};

pub use availability::ExecutorStatus;
pub use builder::JobManagerBuilder;
pub use config::{JobManagerConfig, ManagerStats};
pub use kept::JobSandbox;
use live::{LiveJob, Phase};
pub use sandbox_plan::{SandboxPlanRun, MAX_LISTED_FILES};
pub use sandboxes::{SandboxInfo, TextSink, MAX_PUT_FILE_BYTES};
pub use storage::STORED_BYTES_REFRESH;

/// Runs jobs. Cheap to clone; all clones share one manager.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager")
            .field("executor", &self.inner.executor.name())
            .field(
                "llm",
                &self.inner.llm.as_ref().map(|l| l.name().to_string()),
            )
            .field("stats", &self.stats())
            .finish()
    }
}

/// The state all clones of a [`JobManager`] share.
struct Inner {
    store: Arc<dyn JobStore>,
    artifacts: ArtifactStore,
    executor: Arc<dyn Executor>,
    llm: Option<Arc<dyn LlmProvider>>,
    config: JobManagerConfig,
    flow: Flow<AgentState>,
    permits: Arc<Semaphore>,
    /// Queued and running jobs (see [`live`]).
    live: Mutex<HashMap<JobId, LiveJob>>,
    events_tx: broadcast::Sender<JobEvent>,
    accepting: AtomicBool,
    live_sandboxes: AtomicUsize,
    /// Output bytes the log cap kept out of job logs.
    log_bytes_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Live sandboxes (jobs whose steps arrive over time; see [`sandboxes`]).
    sandboxes: sandboxes::Registry,
    /// The sandboxes of running or kept jobs with services or a keep-alive (see [`kept`]).
    kept_sandboxes: Mutex<HashMap<JobId, kept::Entry>>,
    /// Whether the storage watchdog runs.
    watchdog: AtomicBool,
    /// The last measure of the storage directories' size, in bytes (with a storage cap).
    stored_bytes: std::sync::atomic::AtomicU64,
    /// Whether the executor answers; jobs wait out its outages (see [`availability`]).
    availability: availability::Availability,
    /// Cancelled at shutdown: stops the sweeper and queued jobs.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl JobManager {
    /// A builder.
    pub fn builder(executor: Arc<dyn Executor>, store: Arc<dyn JobStore>) -> JobManagerBuilder {
        JobManagerBuilder::new(executor, store)
    }

    /// Validates and queues a job; returns at once.
    pub async fn submit(&self, spec: JobSpec) -> Result<JobId> {
        self.submit_as(JobId::new(), spec).await
    }

    /// [`JobManager::submit`] under a given id.
    async fn submit_as(&self, id: JobId, spec: JobSpec) -> Result<JobId> {
        self.admit(id, &spec)?;
        let job = Job::new(id, spec);
        self.inner.store.insert_job(&job).await?;
        let id = job.id;
        let events = self.new_sink(id, 0);
        events.emit(EventKind::Status {
            status: JobStatus::Queued,
            error: None,
        });
        self.enqueue(&job, events);
        Ok(id)
    }

    /// Whether a job of `spec` would be taken now: every check of a submission but storing it
    /// (cheap, in memory: done before anything is written).
    pub(super) fn admit(&self, id: JobId, spec: &JobSpec) -> Result<()> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        spec.validate()?;
        if spec.live.is_some() {
            return Err(Error::invalid(
                "live",
                "a live sandbox is made by create_sandbox",
            ));
        }
        let max_keep = self.inner.config.max_keep_alive;
        if spec.keep_alive > max_keep {
            return Err(Error::invalid(
                "keep_alive_secs",
                format!(
                    "must be at most {} (this server's maximum)",
                    max_keep.as_secs()
                ),
            ));
        }
        self.check_free_space()?;
        if let Some(refusal) = self.executor_refusal() {
            return Err(refusal.into());
        }
        if spec.needs_llm() && self.inner.llm.is_none() {
            return Err(Error::NoLlm);
        }
        let limit = self.inner.config.max_queued_jobs;
        if self.inner.live().len() >= self.inner.config.max_concurrent_jobs.saturating_add(limit) {
            return Err(Error::QueueFull { limit });
        }
        // Refused at the door: what the executor cannot honour.
        self.inner
            .executor
            .capabilities()
            .check(&SandboxSpec::for_job(id, spec))?;
        Ok(())
    }

    /// A job by id.
    pub async fn get(&self, id: JobId) -> Result<Job> {
        self.inner
            .store
            .get_job(id)
            .await?
            .ok_or(Error::JobNotFound(id))
    }

    /// A job by id, shared (see [`JobStore::get_job_shared`]): the same `Arc` while its
    /// record is unchanged when the store caches records.
    pub async fn get_shared(&self, id: JobId) -> Result<Arc<Job>> {
        self.inner
            .store
            .get_job_shared(id)
            .await?
            .ok_or(Error::JobNotFound(id))
    }

    /// Jobs, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<JobPage> {
        check_page_size(filter)?;
        Ok(self.inner.store.list_jobs(filter).await?)
    }

    /// Summaries of jobs, newest first: what a list shows, without reading whole records.
    pub async fn list_summaries(&self, filter: &JobFilter) -> Result<SummaryPage> {
        check_page_size(filter)?;
        Ok(self.inner.store.list_summaries(filter).await?)
    }

    /// A job's stored events with `seq > after`.
    pub async fn events(&self, id: JobId, after: u64, limit: usize) -> Result<Vec<JobEvent>> {
        self.get(id).await?;
        Ok(self.inner.store.events(id, after, limit).await?)
    }

    /// A job's events with `seq > after`: the stored ones, then live ones as they happen. The
    /// stream ends after the job's final status event.
    pub async fn subscribe(
        &self,
        id: JobId,
        after: u64,
    ) -> Result<BoxStream<'static, Result<JobEvent>>> {
        let live = self.inner.events_tx.subscribe();
        let job = self.get(id).await?;
        Ok(replay_then_follow(
            self.inner.store.clone(),
            id,
            after,
            live,
            job.status.is_terminal() && !self.inner.live().contains_key(&id),
        ))
    }

    /// Every event of every job, live (for metrics and dashboards).
    pub fn subscribe_all(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.events_tx.subscribe()
    }

    /// Waits until a job is finished and returns it.
    pub async fn wait(&self, id: JobId) -> Result<Job> {
        let done = self.inner.live().get(&id).map(|l| l.done.subscribe());
        if let Some(mut done) = done {
            // Err means the sender is gone, which also means the job is finished.
            let _ = done.wait_for(|d| *d).await;
        }
        self.get(id).await
    }

    /// Queue and sandbox counters.
    pub fn stats(&self) -> ManagerStats {
        let live = self.inner.live();
        let mut stats = ManagerStats {
            live_sandboxes: self.inner.live_sandboxes.load(Ordering::Relaxed),
            waiting_for_executor: self.inner.availability.waiting(),
            log_bytes_dropped: self.inner.log_bytes_dropped.load(Ordering::Relaxed),
            ..ManagerStats::default()
        };
        for entry in live.values() {
            match entry.phase {
                Phase::Queued => stats.queued += 1,
                Phase::Running => stats.running += 1,
                Phase::Unsettled => stats.unsettled += 1,
                Phase::Withdrawn => {}
            }
        }
        stats
    }

    /// The LLM, if one is configured.
    pub fn llm(&self) -> Option<&Arc<dyn LlmProvider>> {
        self.inner.llm.as_ref()
    }

    /// The executor.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.inner.executor
    }

    /// The job store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    /// Where result ZIPs are kept (the download route and the CLI read them from here).
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.artifacts
    }

    /// The configuration.
    pub fn config(&self) -> &JobManagerConfig {
        &self.inner.config
    }

    /// An event sink for a job whose last stored event has `last_seq`.
    fn new_sink(&self, id: JobId, last_seq: u64) -> EventSink {
        let sink = EventSink::spawn(
            id,
            last_seq,
            self.inner.store.clone(),
            self.inner.events_tx.clone(),
        );
        match self.inner.config.max_log_bytes {
            0 => sink,
            max_bytes => sink.with_log_cap(crate::events::LogCap {
                max_bytes,
                dropped: self.inner.log_bytes_dropped.clone(),
            }),
        }
    }
}

/// Refuses a page larger than [`MAX_PAGE_SIZE`].
fn check_page_size(filter: &JobFilter) -> Result<()> {
    if filter.limit > MAX_PAGE_SIZE {
        return Err(Error::invalid(
            "limit",
            format!("must be at most {MAX_PAGE_SIZE}"),
        ));
    }
    Ok(())
}
