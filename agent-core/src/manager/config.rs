//! The manager's settings and counters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::artifacts::ArtifactStore;
use crate::executor::{DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TAIL_BYTES};

/// Settings of a [`JobManager`](super::JobManager).
#[derive(Clone, Debug)]
pub struct JobManagerConfig {
    /// Jobs that run at once. Default 4.
    pub max_concurrent_jobs: usize,
    /// Jobs that may wait for a worker; past it [`JobManager::submit`](super::JobManager::submit)
    /// answers [`Error::QueueFull`](crate::Error::QueueFull). Default 10,000.
    pub max_queued_jobs: usize,
    /// The local artifact directory (`<dir>/<job_id>.zip`) when `artifacts` is `None`; else the
    /// scratch directory where ZIPs are built before they are uploaded.
    pub artifact_dir: PathBuf,
    /// Where result ZIPs are kept; `None` = the local store at `artifact_dir`.
    pub artifacts: Option<ArtifactStore>,
    /// How long finished jobs, their events and artifacts are kept (`None` = forever). Default 1 day.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs. Default 10 minutes.
    pub sweep_interval: Duration,
    /// Output cap per step. Default 10 MiB.
    pub max_output_bytes: u64,
    /// Largest workspace export turned into a ZIP. Default 2 GiB.
    pub max_export_bytes: u64,
    /// Bytes of step output a job's stored log keeps (see
    /// [`EventSink::with_log_cap`](crate::events::EventSink::with_log_cap)); 0: no cap.
    /// Default 64 MiB.
    pub max_log_bytes: u64,
    /// How much of each output stream a step result keeps. Default 8 KiB.
    pub tail_bytes: usize,
    /// How long [`JobManager::shutdown`](super::JobManager::shutdown) lets running jobs finish by
    /// default. Default 10 s.
    pub shutdown_grace: Duration,
    /// How long packaging the partial workspace of a cancelled or timed-out job may take.
    /// Default 2 minutes.
    pub packaging_timeout: Duration,
    /// The longest `keep_alive` a job may ask for. Default 1 hour.
    pub max_keep_alive: Duration,
    /// How often sandboxes whose owner is gone are removed ([`JobManager::reap`](super::JobManager::reap)),
    /// besides at start-up and when the executor answers again after an outage. `None`: only
    /// then. Default 60 s.
    pub reap_interval: Option<Duration>,
    /// How long queued jobs wait for an executor that stopped answering (the Docker engine is
    /// down or restarting), counted from when it stopped: while it is shorter, jobs wait (their
    /// status stays `queued`) and new ones are accepted; an outage longer than this fails the
    /// jobs waiting for it and [`JobManager::submit`](super::JobManager::submit) refuses new ones
    /// with a [`SandboxErrorKind::Unavailable`](crate::SandboxErrorKind::Unavailable) error until
    /// it answers again. Default 10 minutes.
    pub executor_wait: Duration,
    /// [`JobManager::submit`](super::JobManager::submit) refuses new jobs
    /// ([`Error::InsufficientStorage`](crate::Error::InsufficientStorage)) while a file system of
    /// `storage_dirs` has less than this many bytes free. 0: no check. Default 0.
    pub min_free_bytes: u64,
    /// The directories whose file systems must keep `min_free_bytes` free (the store's, the
    /// artifacts'). Empty: `artifact_dir`.
    pub storage_dirs: Vec<PathBuf>,
    /// The longest timeout a planned step (from the LLM's plan or a repair) may have: a
    /// planned step asking for more is lowered to it (the job's log says so). `None`: no
    /// maximum. Default `None`. (Explicit steps are checked where they are sent.)
    pub max_step_timeout: Option<Duration>,
    /// [`JobManager::submit`](super::JobManager::submit) and live sandboxes refuse new jobs
    /// ([`Error::StorageCapReached`](crate::Error::StorageCapReached)) while `storage_dirs`
    /// together hold more than this many bytes (measured in the background every
    /// [`STORED_BYTES_REFRESH`](super::STORED_BYTES_REFRESH), so a job may go over by what
    /// it writes before the next measure). 0: no cap. Default 0.
    pub max_stored_bytes: u64,
}

impl Default for JobManagerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_jobs: 4,
            max_queued_jobs: 10_000,
            artifact_dir: std::env::temp_dir().join("agent_jobs").join("artifacts"),
            artifacts: None,
            retention: Some(Duration::from_secs(24 * 3600)),
            sweep_interval: Duration::from_secs(600),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_export_bytes: 2 << 30,
            max_log_bytes: 64 << 20,
            tail_bytes: DEFAULT_TAIL_BYTES,
            shutdown_grace: Duration::from_secs(10),
            packaging_timeout: Duration::from_secs(120),
            max_keep_alive: Duration::from_secs(3600),
            reap_interval: Some(Duration::from_secs(60)),
            executor_wait: Duration::from_secs(600),
            min_free_bytes: 0,
            storage_dirs: Vec::new(),
            max_step_timeout: None,
            max_stored_bytes: 0,
        }
    }
}

impl JobManagerConfig {
    /// The default settings, with the manager's files (result ZIPs, staged inputs) under
    /// `dir/artifacts`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            artifact_dir: dir.join("artifacts"),
            ..Self::default()
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
    /// Queued jobs waiting for the executor to answer again (part of `queued`, or of `running`
    /// for a job that found the outage while creating its sandbox).
    pub waiting_for_executor: usize,
    /// Finished jobs whose final status could not be stored yet (a full disk); the watchdog
    /// stores them as failed once it can.
    pub unsettled: usize,
    /// Bytes of step output not stored in job logs because of
    /// [`JobManagerConfig::max_log_bytes`], since the manager started.
    pub log_bytes_dropped: u64,
}
