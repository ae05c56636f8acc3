//! The job manager: submit, a bounded worker pool, cancel, timeouts, live events, retention and
//! start-up recovery.
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

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use futures::stream::BoxStream;
use futures::FutureExt;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::agent::{agent_flow, AgentSettings, AgentState};
use crate::error::{Error, Result};
use crate::events::{replay_then_follow, EventSink};
use crate::executor::{Executor, Sandbox, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TAIL_BYTES};
use crate::flow::{Ctx, Flow};
use crate::job::{EventKind, Job, JobEvent, JobId, JobSpec, JobStatus};
use crate::llm::LlmProvider;
use crate::store::{JobFilter, JobPage, JobStore, MAX_PAGE_SIZE};

/// Capacity of the live event channel shared by all jobs.
const LIVE_CHANNEL: usize = 8192;

/// Settings of a [`JobManager`].
#[derive(Clone, Debug)]
pub struct JobManagerConfig {
    /// Jobs that run at once. Default 4.
    pub max_concurrent_jobs: usize,
    /// Jobs that may wait for a worker; past it [`JobManager::submit`] answers
    /// [`Error::QueueFull`]. Default 10,000.
    pub max_queued_jobs: usize,
    /// Where result ZIPs are written (`<dir>/<job_id>.zip`).
    pub artifact_dir: PathBuf,
    /// How long finished jobs, their events and artifacts are kept (`None` = forever). Default 1 day.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs. Default 10 minutes.
    pub sweep_interval: Duration,
    /// Output cap per step. Default 10 MiB.
    pub max_output_bytes: u64,
    /// Largest workspace export turned into a ZIP. Default 2 GiB.
    pub max_export_bytes: u64,
    /// How much of each output stream a step result keeps. Default 8 KiB.
    pub tail_bytes: usize,
    /// How long [`JobManager::shutdown`] lets running jobs finish by default. Default 10 s.
    pub shutdown_grace: Duration,
    /// How long packaging the partial workspace of a cancelled or timed-out job may take.
    /// Default 2 minutes.
    pub packaging_timeout: Duration,
}

impl Default for JobManagerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_jobs: 4,
            max_queued_jobs: 10_000,
            artifact_dir: std::env::temp_dir().join("agent_jobs").join("artifacts"),
            retention: Some(Duration::from_secs(24 * 3600)),
            sweep_interval: Duration::from_secs(600),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_export_bytes: 2 << 30,
            tail_bytes: DEFAULT_TAIL_BYTES,
            shutdown_grace: Duration::from_secs(10),
            packaging_timeout: Duration::from_secs(120),
        }
    }
}

/// Counters for health checks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManagerStats {
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Jobs running now.
    pub running: usize,
    /// Sandboxes that exist now.
    pub live_sandboxes: usize,
}

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
    /// reaps sandboxes left behind, starts the workers and the retention sweeper.
    pub async fn start(self) -> Result<JobManager> {
        if self.config.max_concurrent_jobs == 0
            || self.config.max_concurrent_jobs > Semaphore::MAX_PERMITS
        {
            return Err(Error::invalid(
                "max_concurrent_jobs",
                format!("must be between 1 and {}", Semaphore::MAX_PERMITS),
            ));
        }
        tokio::fs::create_dir_all(&self.config.artifact_dir)
            .await
            .map_err(|e| {
                Error::io(
                    format!("creating {}", self.config.artifact_dir.display()),
                    e,
                )
            })?;
        let (events_tx, _) = broadcast::channel(LIVE_CHANNEL);
        let inner = Arc::new(Inner {
            flow: agent_flow()?,
            permits: Arc::new(Semaphore::new(self.config.max_concurrent_jobs)),
            store: self.store,
            executor: self.executor,
            llm: self.llm,
            config: self.config,
            live: Mutex::new(HashMap::new()),
            events_tx,
            accepting: AtomicBool::new(true),
            live_sandboxes: AtomicUsize::new(0),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let manager = JobManager { inner };
        let requeued = manager.recover().await?;
        match manager.inner.executor.reap(&requeued).await {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "removed sandboxes left by an earlier run"),
            Err(e) => warn!(error = %e, "could not reap old sandboxes"),
        }
        manager.spawn_sweeper();
        Ok(manager)
    }
}

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

struct Inner {
    store: Arc<dyn JobStore>,
    executor: Arc<dyn Executor>,
    llm: Option<Arc<dyn LlmProvider>>,
    config: JobManagerConfig,
    flow: Flow<AgentState>,
    permits: Arc<Semaphore>,
    live: Mutex<HashMap<JobId, LiveJob>>,
    events_tx: broadcast::Sender<JobEvent>,
    accepting: AtomicBool,
    live_sandboxes: AtomicUsize,
    /// Cancelled at shutdown: stops the sweeper and queued jobs.
    stop: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Queued,
    Running,
    /// Cancelled while queued: the worker must not start it.
    Withdrawn,
}

struct LiveJob {
    phase: Phase,
    cancel: CancellationToken,
    /// Why the job is being stopped (cancelled, timed out, interrupted).
    stop_reason: Option<JobStatus>,
    events: EventSink,
    done: watch::Sender<bool>,
}

impl Inner {
    fn live(&self) -> MutexGuard<'_, HashMap<JobId, LiveJob>> {
        // A panic while holding this lock would be a bug; recover the data rather than cascading.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl JobManager {
    /// A builder.
    pub fn builder(executor: Arc<dyn Executor>, store: Arc<dyn JobStore>) -> JobManagerBuilder {
        JobManagerBuilder::new(executor, store)
    }

    /// Validates and queues a job; returns at once.
    pub async fn submit(&self, spec: JobSpec) -> Result<JobId> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        spec.validate()?;
        if spec.needs_llm() && self.inner.llm.is_none() {
            return Err(Error::NoLlm);
        }
        let limit = self.inner.config.max_queued_jobs;
        if self.inner.live().len() >= self.inner.config.max_concurrent_jobs.saturating_add(limit) {
            return Err(Error::QueueFull { limit });
        }
        let job = Job::new(JobId::new(), spec);
        self.inner.store.insert_job(&job).await?;
        let id = job.id;
        let events = self.new_sink(id, 0);
        events.emit(EventKind::Status {
            status: JobStatus::Queued,
            error: None,
        });
        self.enqueue(id, events);
        Ok(id)
    }

    /// A job by id.
    pub async fn get(&self, id: JobId) -> Result<Job> {
        self.inner
            .store
            .get_job(id)
            .await?
            .ok_or(Error::JobNotFound(id))
    }

    /// Jobs, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<JobPage> {
        if filter.limit > MAX_PAGE_SIZE {
            return Err(Error::invalid(
                "limit",
                format!("must be at most {MAX_PAGE_SIZE}"),
            ));
        }
        Ok(self.inner.store.list_jobs(filter).await?)
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

    /// Cancels a queued or running job and returns it once it is stopped. A running job's sandbox
    /// is destroyed; its partial workspace (ZIP) and logs are kept.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        enum Action {
            Withdraw(EventSink),
            Stop(watch::Receiver<bool>),
        }
        let action = {
            let mut live = self.inner.live();
            match live.get_mut(&id) {
                Some(entry) if entry.phase == Phase::Queued => {
                    entry.phase = Phase::Withdrawn;
                    entry.cancel.cancel();
                    Some(Action::Withdraw(entry.events.clone()))
                }
                Some(entry) if entry.phase == Phase::Running => {
                    entry.stop_reason.get_or_insert(JobStatus::Cancelled);
                    entry.cancel.cancel();
                    Some(Action::Stop(entry.done.subscribe()))
                }
                Some(entry) => Some(Action::Stop(entry.done.subscribe())),
                None => None,
            }
        };
        match action {
            Some(Action::Withdraw(events)) => {
                let mut job = self.get(id).await?;
                self.finish_unstarted(&mut job, JobStatus::Cancelled, None, &events)
                    .await?;
                self.forget(id);
                Ok(job)
            }
            Some(Action::Stop(mut done)) => {
                let _ = done.wait_for(|d| *d).await;
                self.get(id).await
            }
            None => {
                let mut job = self.get(id).await?;
                if job.status.is_terminal() {
                    return Err(Error::AlreadyFinished {
                        job_id: id,
                        status: job.status,
                    });
                }
                // Stored as live but not owned by this manager (should not happen after
                // recovery): settle it here.
                let last = self.inner.store.last_seq(id).await?;
                let events = self.new_sink(id, last);
                self.finish_unstarted(&mut job, JobStatus::Cancelled, None, &events)
                    .await?;
                Ok(job)
            }
        }
    }

    /// Queue and sandbox counters.
    pub fn stats(&self) -> ManagerStats {
        let live = self.inner.live();
        let mut stats = ManagerStats {
            live_sandboxes: self.inner.live_sandboxes.load(Ordering::Relaxed),
            ..ManagerStats::default()
        };
        for entry in live.values() {
            match entry.phase {
                Phase::Queued => stats.queued += 1,
                Phase::Running => stats.running += 1,
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

    /// The configuration.
    pub fn config(&self) -> &JobManagerConfig {
        &self.inner.config
    }

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

    fn new_sink(&self, id: JobId, last_seq: u64) -> EventSink {
        EventSink::spawn(
            id,
            last_seq,
            self.inner.store.clone(),
            self.inner.events_tx.clone(),
        )
    }

    fn forget(&self, id: JobId) {
        if let Some(entry) = self.inner.live().remove(&id) {
            let _ = entry.done.send(true);
        }
    }

    fn enqueue(&self, id: JobId, events: EventSink) {
        let cancel = CancellationToken::new();
        let (done, _) = watch::channel(false);
        self.inner.live().insert(
            id,
            LiveJob {
                phase: Phase::Queued,
                cancel: cancel.clone(),
                stop_reason: None,
                events: events.clone(),
                done,
            },
        );
        let manager = self.clone();
        let span = info_span!("job", job_id = %id);
        self.inner.tasks.spawn(
            async move {
                let permit = tokio::select! {
                    biased;
                    // Withdrawn by cancel(), which settles the job itself.
                    () = cancel.cancelled() => return,
                    // Shutting down: the job stays queued for the next start.
                    () = manager.inner.stop.cancelled() => {
                        events.flush().await;
                        manager.forget(id);
                        return;
                    }
                    p = manager.inner.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                {
                    let mut live = manager.inner.live();
                    match live.get_mut(&id) {
                        Some(entry) if entry.phase == Phase::Queued => entry.phase = Phase::Running,
                        _ => return,
                    }
                }
                // A failure or a panic outside the flow must still end the job: otherwise it
                // would stay `running` in the store and its waiters would never wake.
                let outcome = AssertUnwindSafe(manager.run(id, cancel, events.clone()))
                    .catch_unwind()
                    .await;
                let error = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(panic) => Some(format!("internal error: {}", panic_message(&*panic))),
                };
                if let Some(error) = error {
                    warn!(error = %error, "job failed to run");
                    manager.settle_failed(id, error, &events).await;
                }
                drop(permit);
                manager.forget(id);
            }
            .instrument(span),
        );
    }

    /// Runs one job to its final status.
    async fn run(&self, id: JobId, cancel: CancellationToken, events: EventSink) -> Result<()> {
        let inner = &self.inner;
        let mut job = self.get(id).await?;
        job.transition(JobStatus::Running)?;
        inner.store.update_job(&job).await?;
        events.emit(EventKind::Status {
            status: JobStatus::Running,
            error: None,
        });
        let timer = {
            let manager = self.clone();
            let cancel = cancel.clone();
            let timeout = job.spec.job_timeout;
            tokio::spawn(async move {
                // `sleep` saturates a timeout too large for an `Instant` (`now + timeout` would
                // panic on overflow).
                tokio::time::sleep(timeout).await;
                if let Some(entry) = manager.inner.live().get_mut(&id) {
                    entry.stop_reason.get_or_insert(JobStatus::TimedOut);
                }
                cancel.cancel();
            })
        };
        let result = self.run_in_sandbox(job, cancel, events.clone()).await;
        timer.abort();
        let (mut job, flow_error, status) = match result {
            Ok(outcome) => outcome,
            Err((mut job, e)) => {
                // No sandbox could be created.
                let reason = self.stop_reason(id);
                let status = reason.unwrap_or(JobStatus::Failed);
                job.error = Some(match reason {
                    Some(_) => stop_message(status, job.spec.job_timeout),
                    None => e.to_string(),
                });
                (job, None, status)
            }
        };
        if let Some(e) = flow_error {
            job.error.get_or_insert(e);
        }
        job.transition(status)?;
        inner.store.update_job(&job).await?;
        events.emit(EventKind::Status {
            status,
            error: job.error.clone(),
        });
        events.flush().await;
        info!(status = %status, "job finished");
        Ok(())
    }

    /// Marks a job failed after [`JobManager::run`] returned an error or panicked, unless it
    /// already reached a final status. Best effort: a store that keeps failing is logged.
    async fn settle_failed(&self, id: JobId, error: String, events: &EventSink) {
        let settled = async {
            let mut job = self.get(id).await?;
            if !job.status.is_terminal() {
                self.finish_unstarted(&mut job, JobStatus::Failed, Some(error), events)
                    .await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = settled {
            warn!(error = %e, "could not mark the job failed");
        }
    }

    fn stop_reason(&self, id: JobId) -> Option<JobStatus> {
        self.inner.live().get(&id).and_then(|e| e.stop_reason)
    }

    /// Creates the sandbox, runs the agent flow, compiles results, destroys the sandbox.
    /// Returns the job, an error message, and the final status.
    #[allow(clippy::type_complexity)]
    async fn run_in_sandbox(
        &self,
        job: Job,
        cancel: CancellationToken,
        events: EventSink,
    ) -> std::result::Result<(Job, Option<String>, JobStatus), (Job, Error)> {
        let inner = &self.inner;
        let id = job.id;
        let sandbox: Arc<dyn Sandbox> = match inner.executor.create(id, &job.spec).await {
            Ok(s) => Arc::from(s),
            Err(e) => return Err((job, e.into())),
        };
        let _counted = LiveSandbox::new(&inner.live_sandboxes);
        debug!(sandbox = sandbox.id(), "sandbox ready");
        let settings = AgentSettings {
            max_output_bytes: inner.config.max_output_bytes,
            tail_bytes: inner.config.tail_bytes,
            max_export_bytes: inner.config.max_export_bytes,
            artifact_path: inner.config.artifact_dir.join(format!("{id}.zip")),
        };
        let job_timeout = job.spec.job_timeout;
        let mut state = AgentState::new(
            job,
            inner.store.clone(),
            sandbox.clone(),
            inner.llm.clone(),
            events.clone(),
            cancel.clone(),
            settings,
        );
        let ctx = Ctx::with_cancel(cancel.clone());
        let outcome = inner.flow.run(&mut state, &ctx).await;
        let (status, message) = match outcome {
            Ok(_) => (state.outcome(), state.failure().map(str::to_string)),
            Err(e) => {
                let status = match self.stop_reason(id) {
                    Some(reason) if cancel.is_cancelled() => reason,
                    _ => JobStatus::Failed,
                };
                let message = match status {
                    JobStatus::Failed => e.to_string(),
                    other => stop_message(other, job_timeout),
                };
                state.fail(message.clone());
                if status == JobStatus::TimedOut {
                    state.mark_running_step_timed_out();
                }
                // Keep what the job produced so far.
                if state.job.artifact.is_none() {
                    let deadline = inner.config.packaging_timeout;
                    let packaged = tokio::time::timeout(deadline, state.compile(status))
                        .await
                        .unwrap_or(Err(Error::Timeout(deadline)));
                    if let Err(e) = packaged {
                        warn!(error = %e, "could not package the partial workspace");
                        events.emit(EventKind::Log {
                            message: format!("could not package the workspace: {e}"),
                        });
                    }
                }
                (status, Some(message))
            }
        };
        if let Err(e) = sandbox.destroy().await {
            warn!(error = %e, "could not destroy the sandbox");
        }
        Ok((state.job, message, status))
    }

    /// Moves a job that never ran to a final status.
    async fn finish_unstarted(
        &self,
        job: &mut Job,
        status: JobStatus,
        error: Option<String>,
        events: &EventSink,
    ) -> Result<()> {
        job.transition(status)?;
        job.error = error.clone();
        self.inner.store.update_job(job).await?;
        events.emit(EventKind::Status { status, error });
        events.flush().await;
        Ok(())
    }

    /// Start-up recovery: running jobs become interrupted, queued ones are queued again (oldest
    /// first). Returns the re-queued ids.
    async fn recover(&self) -> Result<HashSet<JobId>> {
        let store = &self.inner.store;
        let mut requeued = HashSet::new();
        for status in [JobStatus::Running, JobStatus::Queued] {
            let mut jobs = Vec::new();
            loop {
                let page = store
                    .list_jobs(
                        &JobFilter::default()
                            .with_status(status)
                            .page(MAX_PAGE_SIZE, jobs.len()),
                    )
                    .await?;
                let n = page.jobs.len();
                jobs.extend(page.jobs);
                if n < MAX_PAGE_SIZE {
                    break;
                }
            }
            jobs.reverse();
            for mut job in jobs {
                let last = store.last_seq(job.id).await?;
                let events = self.new_sink(job.id, last);
                if status == JobStatus::Running {
                    warn!(job_id = %job.id, "marking a job interrupted: it was running when the last process stopped");
                    self.finish_unstarted(
                        &mut job,
                        JobStatus::Interrupted,
                        Some("the server stopped while this job was running".into()),
                        &events,
                    )
                    .await?;
                } else {
                    info!(job_id = %job.id, "re-queueing a job from the last run");
                    requeued.insert(job.id);
                    self.enqueue(job.id, events);
                }
            }
        }
        Ok(requeued)
    }

    fn spawn_sweeper(&self) {
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
                    match tokio::fs::remove_file(&artifact.path).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
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

/// Counts a sandbox in [`ManagerStats::live_sandboxes`] until dropped (also when a panic
/// unwinds through the job).
struct LiveSandbox<'a>(&'a AtomicUsize);

impl<'a> LiveSandbox<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for LiveSandbox<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

fn stop_message(status: JobStatus, timeout: Duration) -> String {
    match status {
        JobStatus::TimedOut => {
            format!("the job ran longer than its {}s timeout", timeout.as_secs())
        }
        JobStatus::Cancelled => "cancelled".to_string(),
        JobStatus::Interrupted => "interrupted by a shutdown".to_string(),
        other => other.to_string(),
    }
}
