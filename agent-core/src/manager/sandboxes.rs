//! Live sandboxes: jobs of their own kind that keep their sandbox open and run steps as they are
//! sent, one at a time.
//!
//! A live sandbox is a [`Job`] whose spec has [`JobSpec::live`] set. It is stored, numbered,
//! logged and listed like any job: each step is a [`StepRecord`] of the job with its
//! `step_started`, `output` and `step_finished` events, so `GET /status`, the logs, metrics and
//! retention see it as they see a planned job. It holds one of the manager's
//! `max_concurrent_jobs` slots for its whole life (past the limit, creating one fails with
//! [`Error::AtCapacity`]).
//!
//! Its spec's `services` (a desktop, Jupyter) start with its sandbox and are reached through
//! [`JobManager::job_sandbox`] while it is live, as a job's are.
//!
//! It ends when it is destroyed (`succeeded`), cancelled (`cancelled`), idle longer than its
//! [`LiveSettings::idle_timeout`] or older than the spec's `job_timeout` (`timed_out`), when the
//! manager shuts down (`interrupted`), or when its sandbox dies (`failed`); its sandbox is then
//! destroyed. A restart finds it `running` in the store and marks it `interrupted` like any job,
//! and the executor's reaper removes its container.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::JobManager;
use crate::agent::step::{RunStep, StepRequest};
use crate::agent::Utf8Carry;
use crate::archive::package;
use crate::artifacts::ArtifactStore;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::executor::{
    normalize_workspace_path, FileListing, OutputSink, Sandbox, SandboxError, SandboxErrorKind,
    SandboxSpec,
};
use crate::job::{
    Artifact, EventKind, Job, JobId, JobSpec, JobStatus, LiveSettings, OutputStream, Service, Step,
    StepRecord, StepResult, StepStatus,
};

/// The largest file [`JobManager::sandbox_put_file`] accepts: 16 MiB.
pub const MAX_PUT_FILE_BYTES: usize = 16 << 20;

/// Receives a live step's output as text while it runs (in order per stream, UTF-8 sequences
/// never split), besides the job's `output` events.
pub type TextSink = Arc<dyn Fn(OutputStream, &str) + Send + Sync>;

/// The live sandboxes of a manager.
pub(super) type Registry = Mutex<HashMap<JobId, Arc<Session>>>;

/// What is known about a live sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxInfo {
    /// Its id (a job id).
    pub id: JobId,
    /// `running` while it is live, then how it ended.
    pub status: JobStatus,
    /// The image it runs (`None`: the executor's default).
    pub image: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The idle timeout: it ends after this long without a step or a file operation.
    pub idle_timeout: Duration,
    /// When it ends if left idle (live sandboxes only; a running step keeps it alive).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it ends whatever happens: creation plus the spec's `job_timeout`.
    pub deadline: DateTime<Utc>,
    /// Steps run so far.
    pub steps: usize,
    /// Why it ended, when it did not end by being destroyed.
    pub error: Option<String>,
    /// The services it runs (desktop, Jupyter), reached as a job's are (`/access/{id}`).
    pub services: Vec<Service>,
    /// The finished job whose sandbox it continues ([`JobSpec::keep_sandbox`]), if any.
    pub continues: Option<JobId>,
    /// The tenant that owns it ([`JobSpec::tenant`]).
    pub tenant: Option<String>,
}

impl SandboxInfo {
    fn from_job(job: &Job, expires_at: Option<DateTime<Utc>>) -> Self {
        let live = job.spec.live.unwrap_or_default();
        let deadline = chrono::Duration::from_std(job.spec.job_timeout)
            .ok()
            .and_then(|d| job.created_at.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Self {
            id: job.id,
            status: job.status,
            image: job.spec.image.clone(),
            created_at: job.created_at,
            idle_timeout: live.idle_timeout,
            expires_at,
            deadline,
            steps: job.steps.len(),
            error: job.error.clone(),
            services: job.spec.services.clone(),
            continues: job.continues,
            tenant: job.spec.tenant.clone(),
        }
    }
}

/// When a live sandbox ends by itself.
struct Clock {
    idle_timeout: Duration,
    idle_until: Instant,
    hard_until: Instant,
    /// The hard maximum lifetime (the spec's `job_timeout`).
    lifetime: Duration,
    /// Operations (steps, file transfers, exports) in progress: while any is, it is not idle.
    busy: usize,
}

impl Clock {
    fn idle_expiry(&self) -> Option<DateTime<Utc>> {
        let left = self.idle_until.saturating_duration_since(Instant::now());
        chrono::Duration::from_std(left)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
    }
}

/// One live sandbox.
pub(super) struct Session {
    pub(super) id: JobId,
    pub(super) sandbox: Arc<dyn Sandbox>,
    /// The job record; held while a step runs, so steps run one at a time and in order.
    pub(super) job: tokio::sync::Mutex<Job>,
    pub(super) events: EventSink,
    /// The job's cancel token (the one [`JobManager::cancel`] cancels): ends the sandbox.
    pub(super) cancel: CancellationToken,
    clock: Mutex<Clock>,
    /// Woken when the clock changes.
    wake: Notify,
    /// The sandbox slot, given back when the sandbox ends.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Session {
    fn clock(&self) -> MutexGuard<'_, Clock> {
        // The guarded sections cannot panic; recover the data rather than cascading.
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks an operation in progress until the guard is dropped, which restarts the idle timer.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.clock().busy += 1;
        Busy(self.clone())
    }
}

pub(super) struct Busy(Arc<Session>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut clock = self.0.clock();
        clock.busy = clock.busy.saturating_sub(1);
        clock.idle_until = later(Instant::now(), clock.idle_timeout);
        drop(clock);
        self.0.wake.notify_one();
    }
}

/// Counts a sandbox in the manager's `live_sandboxes` until dropped.
pub(super) struct Counted(Arc<super::Inner>);

impl Counted {
    /// Counts one more sandbox.
    pub(super) fn new(inner: &Arc<super::Inner>) -> Self {
        inner.live_sandboxes.fetch_add(1, Ordering::Relaxed);
        Counted(Arc::clone(inner))
    }

    /// Takes over the count of a sandbox already counted (a job's, handed over to a live
    /// sandbox): it stays counted without a gap.
    pub(super) fn adopt(inner: &Arc<super::Inner>) -> Self {
        Counted(Arc::clone(inner))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.live_sandboxes.fetch_sub(1, Ordering::Relaxed);
    }
}

impl JobManager {
    /// Creates a live sandbox from `spec` (image, limits, network, env, `step_timeout` as the
    /// default step timeout, `job_timeout` as its hard maximum lifetime, `live` for the idle
    /// timeout; a spec without `live` gets the default idle timeout) and returns its job once the
    /// sandbox is ready.
    ///
    /// Fails with [`Error::AtCapacity`] when every sandbox slot is taken: a live sandbox does not
    /// wait in the queue.
    pub async fn create_sandbox(&self, mut spec: JobSpec) -> Result<Job> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        if spec.steps.is_some() {
            return Err(Error::invalid(
                "steps",
                "a live sandbox takes its steps one at a time, not in its spec",
            ));
        }
        spec.live.get_or_insert_with(LiveSettings::default);
        spec.validate()?;
        self.check_free_space()?;
        // Refused at the door, as for a job: what the executor cannot honour (services without
        // a services image, a network it does not give).
        self.inner
            .executor
            .capabilities()
            .check(&SandboxSpec::for_job(JobId::new(), &spec))?;
        let permit = self
            .inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::AtCapacity {
                limit: self.inner.config.max_concurrent_jobs,
            })?;
        let mut job = Job::new(JobId::new(), spec);
        let (events, cancel) = self.open_sandbox_record(&mut job).await?;
        let id = job.id;
        let sandbox: Arc<dyn Sandbox> = match self
            .inner
            .executor
            .create(&SandboxSpec::for_job(id, &job.spec))
            .await
        {
            Ok(s) => Arc::from(s),
            Err(e) => {
                let error = Error::from(e);
                self.finish_live(
                    &mut job,
                    JobStatus::Failed,
                    Some(error.to_string()),
                    &events,
                )
                .await;
                self.forget(id);
                return Err(error);
            }
        };
        let counted = Counted::new(&self.inner);
        self.start_session(job.clone(), sandbox, counted, permit, events, cancel);
        Ok(job)
    }

    /// Stores a new live sandbox's record as running (a restart interrupts it rather than
    /// queueing it), emits its status and tracks it; returns its events and cancel token.
    pub(super) async fn open_sandbox_record(
        &self,
        job: &mut Job,
    ) -> Result<(EventSink, CancellationToken)> {
        job.transition(JobStatus::Running)?;
        self.inner.store.insert_job(job).await?;
        let id = job.id;
        let events = self.new_sink(id, 0);
        events.emit(EventKind::Status {
            status: JobStatus::Running,
            error: None,
        });
        let cancel = self.track(id, events.clone());
        self.mark_running(id);
        Ok((events, cancel))
    }

    /// Makes `sandbox` the live sandbox of `job` (stored by [`Self::open_sandbox_record`]),
    /// keeps it counted in `live_sandboxes` (`counted`) until it ends, and watches its clock
    /// until then.
    pub(super) fn start_session(
        &self,
        job: Job,
        sandbox: Arc<dyn Sandbox>,
        counted: Counted,
        permit: OwnedSemaphorePermit,
        events: EventSink,
        cancel: CancellationToken,
    ) {
        let id = job.id;
        let idle_timeout = job.spec.live.unwrap_or_default().idle_timeout;
        let lifetime = job.spec.job_timeout;
        let job_tenant = job.spec.tenant.clone();
        let now = Instant::now();
        let session = Arc::new(Session {
            id,
            sandbox,
            job: tokio::sync::Mutex::new(job),
            events,
            cancel,
            clock: Mutex::new(Clock {
                idle_timeout,
                idle_until: later(now, idle_timeout),
                hard_until: later(now, lifetime),
                lifetime,
                busy: 0,
            }),
            wake: Notify::new(),
            permit: Mutex::new(Some(permit)),
        });
        self.registry().insert(id, session.clone());
        let manager = self.clone();
        self.inner.tasks.spawn(
            async move {
                let _counted = counted;
                let (status, error) = manager.watch(&session).await;
                manager.end_session(&session, status, error).await;
            }
            .instrument(info_span!(
                "sandbox",
                job_id = %id,
                tenant = job_tenant.as_deref().unwrap_or_default()
            )),
        );
        info!(job_id = %id, "live sandbox ready");
    }

    /// The live sandboxes, oldest first.
    pub async fn sandboxes(&self) -> Vec<SandboxInfo> {
        let sessions: Vec<Arc<Session>> = self.registry().values().cloned().collect();
        let mut out = Vec::with_capacity(sessions.len());
        for session in sessions {
            let expires = session.clock().idle_expiry();
            let job = session.job.lock().await;
            out.push(SandboxInfo::from_job(&job, expires));
        }
        out.sort_by_key(|i| i.created_at);
        out
    }

    /// A live sandbox, or one that has ended (then `expires_at` is `None`).
    pub async fn sandbox(&self, id: JobId) -> Result<SandboxInfo> {
        let session = self.registry().get(&id).cloned();
        if let Some(session) = session {
            let expires = session.clock().idle_expiry();
            let job = session.job.lock().await;
            return Ok(SandboxInfo::from_job(&job, expires));
        }
        let job = self.get(id).await?;
        if job.spec.live.is_none() {
            return Err(not_a_sandbox(id));
        }
        Ok(SandboxInfo::from_job(&job, None))
    }

    /// Runs one step in a live sandbox and returns its record once it has finished. The step's
    /// timeout is its own or the sandbox's step timeout; `max_output_bytes` lowers the output
    /// cap (never above the manager's). `output` also receives the output as it comes.
    ///
    /// The step runs in a task of its own: a caller that goes away does not abandon it half
    /// recorded. A step the sandbox refuses (a path outside the workspace) is a failed step.
    pub async fn sandbox_step(
        &self,
        id: JobId,
        step: Step,
        max_output_bytes: Option<u64>,
        output: Option<TextSink>,
    ) -> Result<StepRecord> {
        step.validate()?;
        if max_output_bytes == Some(0) {
            return Err(Error::invalid("max_output_bytes", "must be at least 1"));
        }
        let session = self.session(id).await?;
        let manager = self.clone();
        self.detached("step", async move {
            manager
                .run_live_step(&session, step, max_output_bytes, output)
                .await
        })
        .await
    }

    /// Runs `work` in a task of its own (tracked for shutdown), so that a caller that goes away
    /// does not abandon it half recorded.
    pub(super) async fn detached<T: Send + 'static>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.inner
            .tasks
            .spawn(work)
            .await
            .map_err(|e| Error::other(format!("the {what}'s task failed: {e}")))?
    }

    /// Writes a file (at most [`MAX_PUT_FILE_BYTES`]) under a live sandbox's workspace.
    pub async fn sandbox_put_file(&self, id: JobId, path: &str, content: Bytes) -> Result<()> {
        let rel = normalize_workspace_path(path)?;
        if content.len() > MAX_PUT_FILE_BYTES {
            return Err(SandboxError::new(
                SandboxErrorKind::TooLarge,
                format!(
                    "{} bytes is more than the {MAX_PUT_FILE_BYTES} bytes a file may have",
                    content.len()
                ),
            )
            .into());
        }
        let session = self.session(id).await?;
        let _busy = session.busy();
        let len = content.len();
        session.sandbox.put_file(&rel, content).await?;
        session.events.emit(EventKind::Log {
            message: format!("wrote /workspace/{rel} ({len} bytes)"),
        });
        Ok(())
    }

    /// Reads a file from a live sandbox's workspace (at most
    /// [`MAX_GET_FILE_BYTES`](crate::executor::MAX_GET_FILE_BYTES)).
    pub async fn sandbox_get_file(&self, id: JobId, path: &str) -> Result<Bytes> {
        let rel = normalize_workspace_path(path)?;
        let session = self.session(id).await?;
        let _busy = session.busy();
        Ok(session.sandbox.get_file(&rel).await?)
    }

    /// Writes staged files ([`StagedInputs`](crate::inputs::StagedInputs), finished at
    /// `staged`) under the directory `root` of a live sandbox's workspace (`""`: the workspace).
    pub async fn sandbox_put_archive(
        &self,
        id: JobId,
        root: &str,
        staged: &std::path::Path,
    ) -> Result<crate::inputs::Placed> {
        let session = self.session(id).await?;
        let _busy = session.busy();
        let placed = crate::inputs::place(&*session.sandbox, staged, root).await?;
        session.events.emit(EventKind::Log {
            message: format!(
                "wrote {} files ({} bytes) under /workspace/{root}",
                placed.files, placed.bytes
            ),
        });
        Ok(placed)
    }

    /// The directory `root` of a live sandbox's workspace (`""`: all of it) as a tar or ZIP in a
    /// temporary file (in [`JobManager::inputs_dir`]); a 404-kind error when there is no such
    /// directory.
    pub async fn sandbox_get_archive(
        &self,
        id: JobId,
        root: &str,
        format: crate::archive::SubtreeFormat,
    ) -> Result<(tempfile::NamedTempFile, crate::archive::ArchiveSummary)> {
        let session = self.session(id).await?;
        let _busy = session.busy();
        let tar = session.sandbox.export().await?;
        let dir = self.inputs_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("creating the staging directory", e))?;
        let max = self.inner.config.max_export_bytes;
        crate::archive::subtree(tar, root, format, &dir, max)
            .await?
            .ok_or_else(|| {
                SandboxError::new(
                    SandboxErrorKind::NotFound,
                    format!("/workspace/{root} is not a directory"),
                )
                .into()
            })
    }

    /// The regular files under the directory `root` of a live sandbox's workspace (`""`: all of
    /// it) with their sizes: the first `max` and how many there are. Read from the sandbox's
    /// directory entries when it can list them ([`Sandbox::list_files`]), else from an export;
    /// a 404-kind error when there is no such directory.
    pub async fn sandbox_list_files(
        &self,
        id: JobId,
        root: &str,
        max: usize,
    ) -> Result<FileListing> {
        let session = self.session(id).await?;
        let busy = session.busy();
        match session.sandbox.list_files(root, max).await {
            Err(e) if e.kind == SandboxErrorKind::Unsupported => {}
            listed => return Ok(listed?),
        }
        // The export below marks the sandbox busy itself.
        drop(busy);
        let (tar, _) = self
            .sandbox_get_archive(id, root, crate::archive::SubtreeFormat::Tar)
            .await?;
        let (files, total) =
            tokio::task::spawn_blocking(move || crate::inputs::list_files(tar.path(), max))
                .await
                .map_err(|e| Error::other(format!("listing the files failed: {e}")))??;
        Ok(FileListing { files, total })
    }

    /// Exports a live sandbox's workspace as the job's ZIP (as `/download` serves it), replacing
    /// an earlier export; waits for a running step to finish first.
    pub async fn sandbox_export(&self, id: JobId) -> Result<Artifact> {
        let session = self.session(id).await?;
        let _busy = session.busy();
        let mut job = session.job.lock().await;
        if job.status.is_terminal() {
            return Err(Error::AlreadyFinished {
                job_id: id,
                status: job.status,
            });
        }
        let key = ArtifactStore::key_for(id);
        let tar = session.sandbox.export().await?;
        let summary = package(
            tar,
            &[],
            &self.inner.artifacts,
            &key,
            self.inner.config.max_export_bytes,
        )
        .await?;
        let artifact = Artifact {
            path: key,
            size_bytes: summary.zip_bytes,
            files: summary.files,
        };
        job.artifact = Some(artifact.clone());
        self.inner.store.update_job(&job).await?;
        session.events.emit(EventKind::Log {
            message: format!(
                "exported the workspace ({} files, {} bytes zipped)",
                summary.files, summary.zip_bytes
            ),
        });
        Ok(artifact)
    }

    /// Sets a live sandbox's idle timeout and restarts its idle timer; it still ends at its
    /// hard deadline.
    pub async fn extend_sandbox(&self, id: JobId, idle_timeout: Duration) -> Result<SandboxInfo> {
        if idle_timeout.is_zero() {
            return Err(Error::invalid("idle_timeout_secs", "must be at least 1"));
        }
        let session = self.session(id).await?;
        let mut job = session.job.lock().await;
        job.spec.live = Some(LiveSettings { idle_timeout });
        self.inner.store.update_job(&job).await?;
        let expires = {
            let mut clock = session.clock();
            clock.idle_timeout = idle_timeout;
            clock.idle_until = later(Instant::now(), idle_timeout);
            clock.idle_expiry()
        };
        session.wake.notify_one();
        session.events.emit(EventKind::Log {
            message: format!("idle timeout set to {} s", idle_timeout.as_secs()),
        });
        Ok(SandboxInfo::from_job(&job, expires))
    }

    /// Destroys a live sandbox (a running step is killed) and returns its job, now `succeeded`.
    pub async fn destroy_sandbox(&self, id: JobId) -> Result<Job> {
        let session = self.session(id).await?;
        self.set_stop_reason(id, JobStatus::Succeeded);
        session.cancel.cancel();
        self.wait(id).await
    }

    /// The sandbox of a live sandbox, while it is live (its services are reached through it).
    pub(super) fn live_sandbox(&self, id: JobId) -> Option<Arc<dyn Sandbox>> {
        self.registry().get(&id).map(|s| s.sandbox.clone())
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Session>>> {
        self.inner
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The live session of `id`, or the error that says why there is none.
    pub(super) async fn session(&self, id: JobId) -> Result<Arc<Session>> {
        let session = self.registry().get(&id).cloned();
        match session {
            Some(s) if !s.cancel.is_cancelled() => Ok(s),
            _ => Err(self.not_live(id).await),
        }
    }

    /// Why `id` is not a live sandbox: unknown, not a sandbox, or finished (after waiting for an
    /// ending one to settle).
    pub(super) async fn not_live(&self, id: JobId) -> Error {
        match self.wait(id).await {
            Err(e) => e,
            Ok(job) if job.spec.live.is_none() => not_a_sandbox(id),
            Ok(job) => Error::AlreadyFinished {
                job_id: id,
                status: job.status,
            },
        }
    }

    /// Waits until the sandbox must end; returns how it ends.
    async fn watch(&self, session: &Session) -> (JobStatus, Option<String>) {
        loop {
            let (deadline, idle) = {
                let clock = session.clock();
                if clock.busy == 0 && clock.idle_until < clock.hard_until {
                    (clock.idle_until, true)
                } else {
                    (clock.hard_until, false)
                }
            };
            tokio::select! {
                biased;
                () = session.cancel.cancelled() => {
                    let status = self.stop_reason(session.id).unwrap_or(JobStatus::Cancelled);
                    let error = (status == JobStatus::Cancelled).then(|| "cancelled".to_string());
                    return (status, error);
                }
                () = self.inner.stop.cancelled() => {
                    return (JobStatus::Interrupted, Some("interrupted by a shutdown".into()));
                }
                () = session.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    let clock = session.clock();
                    let now = Instant::now();
                    if now >= clock.hard_until {
                        return (
                            JobStatus::TimedOut,
                            Some(format!(
                                "the sandbox reached its maximum lifetime of {} s",
                                clock.lifetime.as_secs()
                            )),
                        );
                    }
                    if idle && clock.busy == 0 && now >= clock.idle_until {
                        return (
                            JobStatus::TimedOut,
                            Some(format!(
                                "the sandbox was idle for its idle timeout of {} s",
                                clock.idle_timeout.as_secs()
                            )),
                        );
                    }
                }
            }
        }
    }

    /// Ends a session: kills a running step, destroys the sandbox, stores the final status and
    /// gives the slot back.
    async fn end_session(&self, session: &Session, status: JobStatus, error: Option<String>) {
        let id = session.id;
        self.set_stop_reason(id, status);
        session.cancel.cancel();
        let mut job = session.job.lock().await;
        if let Err(e) = session.sandbox.destroy().await {
            warn!(error = %e, "could not destroy the sandbox");
        }
        self.finish_live(&mut job, status, error, &session.events)
            .await;
        drop(job);
        self.registry().remove(&id);
        session
            .permit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.forget(id);
        info!(status = %status, "live sandbox ended");
    }

    /// Stores a live sandbox's final status and emits it (best effort: a store failure is
    /// logged, the sandbox ends anyway).
    async fn finish_live(
        &self,
        job: &mut Job,
        status: JobStatus,
        error: Option<String>,
        events: &EventSink,
    ) {
        for record in &mut job.steps {
            if matches!(record.status, StepStatus::Pending | StepStatus::Running) {
                record.status = StepStatus::Skipped;
            }
        }
        if let Err(e) = job.transition(status) {
            warn!(error = %e, "a live sandbox in an unexpected state");
        }
        job.error = error.clone();
        if let Err(e) = self.inner.store.update_job(job).await {
            warn!(error = %e, "could not store the end of a live sandbox");
        }
        events.emit(EventKind::Status { status, error });
        events.flush().await;
    }

    /// Runs and records one step (steps of a session run one at a time).
    async fn run_live_step(
        &self,
        session: &Arc<Session>,
        step: Step,
        max_output_bytes: Option<u64>,
        output: Option<TextSink>,
    ) -> Result<StepRecord> {
        let _busy = session.busy();
        let mut job = session.job.lock().await;
        if job.status.is_terminal() || session.cancel.is_cancelled() {
            drop(job);
            return Err(self.not_live(session.id).await);
        }
        let index = job.steps.len();
        job.steps.push(StepRecord {
            index,
            step: step.clone(),
            status: StepStatus::Running,
            result: None,
            attempt: 0,
        });
        session.events.emit(EventKind::StepStarted {
            index,
            step: step.clone(),
        });
        self.inner.store.update_job(&job).await?;
        let cap = self.inner.config.max_output_bytes;
        let request = StepRequest {
            index,
            timeout: step.timeout.unwrap_or(job.spec.step_timeout),
            step,
            max_output_bytes: max_output_bytes.map_or(cap, |m| m.min(cap)),
            tail_bytes: self.inner.config.tail_bytes,
            // The sandbox's environment was given to it once, at create.
            env: Vec::new(),
            cancel: session.cancel.child_token(),
        };
        let sink = output_sink(session.events.clone(), index, output);
        let started = std::time::Instant::now();
        let outcome = match session.sandbox.run_step(request, sink).await {
            Err(e) if refused(&e) => Ok(StepResult::refused(&e, started.elapsed())),
            other => other,
        };
        let record = &mut job.steps[index];
        session.events.emit(record.finish(&outcome));
        let gone = matches!(&outcome, Err(e) if e.kind == SandboxErrorKind::Gone);
        let record = record.clone();
        self.inner.store.update_job(&job).await?;
        drop(job);
        match outcome {
            Ok(_) => Ok(record),
            Err(e) => {
                if gone {
                    // The sandbox died: end it as failed.
                    self.set_stop_reason(session.id, JobStatus::Failed);
                    session.cancel.cancel();
                }
                Err(e.into())
            }
        }
    }
}

/// `now + d`, saturated at about a century (an `Instant` sum that overflows would panic).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

fn not_a_sandbox(id: JobId) -> Error {
    Error::invalid("id", format!("job {id} is not a live sandbox"))
}

/// Refusals that are the step's fault (a bad path, a file too large): a failed step, not a
/// broken sandbox.
fn refused(e: &SandboxError) -> bool {
    matches!(
        e.kind,
        SandboxErrorKind::PathRefused
            | SandboxErrorKind::NotFound
            | SandboxErrorKind::TooLarge
            | SandboxErrorKind::Invalid
    )
}

/// Emits a live step's output as the job's `output` events, and hands it to `extra` too.
fn output_sink(events: EventSink, index: usize, extra: Option<TextSink>) -> OutputSink {
    let carry = Arc::new(Mutex::new(Utf8Carry::default()));
    Arc::new(move |stream, bytes: Bytes| {
        let text = match carry.lock() {
            Ok(mut c) => c.push(stream, &bytes),
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        if text.is_empty() {
            return;
        }
        if let Some(extra) = &extra {
            extra(stream, &text);
        }
        events.emit(EventKind::Output {
            index,
            stream,
            text,
        });
    })
}
