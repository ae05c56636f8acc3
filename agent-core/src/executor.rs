//! The [`Executor`] and [`Sandbox`] traits: where processes run.
//!
//! An executor creates sandboxes from a [`SandboxSpec`] (image, limits, network, environment,
//! labels). A sandbox runs processes in its workspace ([`Sandbox::exec`]), streams their output,
//! enforces timeouts, output caps and cancellation, moves files in and out, exports the workspace
//! as a tar stream, and is destroyed at the end. It knows nothing of job steps: the agent lowers
//! them to this surface once ([`RunStep`](crate::RunStep)). `agent-docker` is the real
//! implementation; `testing::FakeExecutor` (feature `test-util`) runs processes locally for
//! tests and is **not** a sandbox.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::job::{JobId, JobSpec, NetworkMode, OutputStream, ResourceLimits, Service, StepResult};
use crate::secret::SecretString;

/// Default cap on a step's output (stdout + stderr): 10 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 10 << 20;

/// Default size of the stdout/stderr tails kept in a [`StepResult`]: 8 KiB each.
pub const DEFAULT_TAIL_BYTES: usize = 8 << 10;

/// The largest file [`Sandbox::get_file`] returns: 16 MiB.
pub const MAX_GET_FILE_BYTES: u64 = 16 << 20;

/// Receives a process's output as it is produced, in order per stream.
pub type OutputSink = Arc<dyn Fn(OutputStream, Bytes) + Send + Sync>;

/// A sink that drops everything.
pub fn discard_output() -> OutputSink {
    Arc::new(|_, _| {})
}

/// A byte stream into a sandbox ([`Sandbox::connect`]).
pub trait SandboxIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> SandboxIo for T {}

/// A boxed [`SandboxIo`]: what [`Sandbox::connect`] returns.
pub type SandboxStream = Box<dyn SandboxIo>;

/// A workspace archive: tar bytes, streamed.
pub type TarStream = BoxStream<'static, Result<Bytes, SandboxError>>;

/// What a sandbox is made of: given once, at [`Executor::create`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SandboxSpec {
    /// The job it is for (names and labels the sandbox; the reaper spares live jobs' sandboxes).
    /// `None`: a sandbox not tied to a job.
    pub job_id: Option<JobId>,
    /// The image; `None` is the executor's default.
    pub image: Option<String>,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// Network access.
    pub network: NetworkMode,
    /// Environment variables every process in the sandbox gets.
    pub env: BTreeMap<String, String>,
    /// Labels attached to the sandbox (e.g. container labels), for operators' own tooling.
    pub labels: BTreeMap<String, String>,
    /// Services started before the first process runs ([`Sandbox::service`]).
    pub services: Vec<Service>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            job_id: None,
            image: None,
            limits: ResourceLimits::default(),
            network: NetworkMode::None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            services: Vec::new(),
        }
    }
}

impl SandboxSpec {
    /// A sandbox with the executor's default image and limits, network `none`, no environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sandbox a job's spec asks for (image, limits, network, environment).
    pub fn for_job(job_id: JobId, job: &JobSpec) -> Self {
        Self {
            job_id: Some(job_id),
            image: job.image.clone(),
            limits: job.limits.clone(),
            network: job.network,
            env: job.env.clone(),
            labels: BTreeMap::new(),
            services: job.services.clone(),
        }
    }

    /// Asks for a service.
    pub fn with_service(mut self, service: Service) -> Self {
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        self
    }

    /// Sets the job.
    pub fn with_job(mut self, job_id: JobId) -> Self {
        self.job_id = Some(job_id);
        self
    }

    /// Sets the image.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Sets the resource limits.
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the network mode.
    pub fn with_network(mut self, network: NetworkMode) -> Self {
        self.network = network;
        self
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// A request to run one process in a sandbox's workspace.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in the sandbox's `PATH`.
    pub argv: Vec<String>,
    /// Environment variables added to the sandbox's own (those given at create).
    pub env: Vec<(String, String)>,
    /// Working directory relative to the workspace root; `None` is the root.
    pub cwd: Option<String>,
    /// Kill the process (and everything it started) after this long.
    pub timeout: Duration,
    /// Stop the process once it has written this many bytes (stdout + stderr).
    pub max_output_bytes: u64,
    /// How many bytes of each stream to keep in the result's tails.
    pub tail_bytes: usize,
    /// Cancelled → the process is killed and the result says `Cancelled`.
    pub cancel: CancellationToken,
}

impl ExecRequest {
    /// A request with default caps, the workspace root as working directory and a fresh
    /// cancellation token.
    pub fn new(argv: Vec<String>, timeout: Duration) -> Self {
        Self {
            argv,
            env: Vec::new(),
            cwd: None,
            timeout,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            tail_bytes: DEFAULT_TAIL_BYTES,
            cancel: CancellationToken::new(),
        }
    }
}

/// What an executor can do. The job manager refuses, at submit, a job whose sandbox asks for
/// something its executor cannot honour ([`Capabilities::check`]), and executors refuse such a
/// [`SandboxSpec`] at create.
///
/// A new kind of request a sandbox can make (ports and tunnels, desktop or notebook services)
/// comes with a new field here, `false` in [`Capabilities::NONE`], and a rule in `check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Processes are isolated from the host (false for the fake executor).
    pub isolated: bool,
    /// Network modes other than `none` are honoured.
    pub network: bool,
    /// Resource limits are enforced.
    pub resource_limits: bool,
    /// [`Sandbox::connect`] opens byte streams to ports inside sandboxes.
    pub tunnels: bool,
    /// Sandboxes can run [`Service`]s (a desktop, Jupyter Lab).
    pub services: bool,
}

impl Capabilities {
    /// A fully isolating executor.
    pub const ISOLATED: Capabilities = Capabilities {
        isolated: true,
        network: true,
        resource_limits: true,
        tunnels: true,
        services: true,
    };
    /// No isolation at all.
    pub const NONE: Capabilities = Capabilities {
        isolated: false,
        network: false,
        resource_limits: false,
        tunnels: false,
        services: false,
    };

    /// Sets whether network modes other than `none` are honoured.
    pub const fn with_network(mut self, network: bool) -> Self {
        self.network = network;
        self
    }

    /// Sets whether resource limits are enforced.
    pub const fn with_resource_limits(mut self, enforced: bool) -> Self {
        self.resource_limits = enforced;
        self
    }

    /// Sets whether sandboxes can run services.
    pub const fn with_services(mut self, services: bool) -> Self {
        self.services = services;
        self
    }

    /// Whether a sandbox made from `spec` can be what it asks for: a network other than `none`
    /// needs [`Capabilities::network`]; limits other than the defaults need
    /// [`Capabilities::resource_limits`]; services need [`Capabilities::services`] and
    /// [`Capabilities::tunnels`]. The error names the field (`network`, `limits`, `services`).
    pub fn check(&self, spec: &SandboxSpec) -> crate::Result<()> {
        if let Some(service) = spec.services.first() {
            if !(self.services && self.tunnels) {
                return Err(crate::Error::invalid(
                    "services",
                    format!(
                        "this server's executor cannot run services in sandboxes (asked for \
                         {service}); the Docker executor needs a desktop image \
                         (AGENT_DESKTOP_IMAGE, built by images/desktop/build-offline.sh)"
                    ),
                ));
            }
        }
        if spec.network != NetworkMode::None && !self.network {
            return Err(crate::Error::invalid(
                "network",
                format!(
                    "this server's executor cannot give sandboxes network access \
                     (asked for {:?}); use \"none\"",
                    spec.network.to_string()
                ),
            ));
        }
        if spec.limits != ResourceLimits::default() && !self.resource_limits {
            return Err(crate::Error::invalid(
                "limits",
                "this server's executor does not enforce resource limits; leave them at their \
                 defaults",
            ));
        }
        Ok(())
    }
}

/// How to reach a [`Service`] running in a sandbox ([`Sandbox::service`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceEndpoint {
    /// Which service.
    pub service: Service,
    /// Its ports on the sandbox's loopback, open to [`Sandbox::connect`]: the main one first
    /// (the desktop's second is a view-only VNC server).
    pub ports: Vec<u16>,
    /// The secret a client presents to it (Jupyter's token), never shown to users.
    pub secret: Option<SecretString>,
}

impl ServiceEndpoint {
    /// An endpoint on these ports, without a secret.
    pub fn new(service: Service, ports: Vec<u16>) -> Self {
        Self {
            service,
            ports,
            secret: None,
        }
    }

    /// Sets the secret.
    pub fn with_secret(mut self, secret: SecretString) -> Self {
        self.secret = Some(secret);
        self
    }
}

/// What kind of failure a [`SandboxError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SandboxErrorKind {
    /// The backend (e.g. the Docker engine) cannot be reached.
    Unavailable,
    /// The image does not exist or cannot be used.
    Image,
    /// A path was refused (outside the workspace, `..`, a link pointing out).
    PathRefused,
    /// The file does not exist.
    NotFound,
    /// A file or archive was larger than allowed.
    TooLarge,
    /// The sandbox is gone (destroyed, died).
    Gone,
    /// Invalid request.
    Invalid,
    /// The backend failed in some other way.
    Backend,
    /// A connection was refused: nothing listens on the port, or the port is not allowed.
    Refused,
    /// The backend cannot do this (see [`Capabilities`]).
    Unsupported,
}

/// A failure of the executor or sandbox itself — not a step that exited non-zero (that is a
/// [`StepResult`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct SandboxError {
    /// What kind.
    pub kind: SandboxErrorKind,
    /// What happened, for people.
    pub message: String,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SandboxError {
    /// A new error.
    pub fn new(kind: SandboxErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Sets the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// A refused path.
    pub fn path_refused(path: &str, why: &str) -> Self {
        Self::new(
            SandboxErrorKind::PathRefused,
            format!("path {path:?} refused: {why}"),
        )
    }

    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            SandboxErrorKind::Unavailable | SandboxErrorKind::Backend
        )
    }
}

/// Creates sandboxes.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// A short name (`"docker"`, `"fake"`).
    fn name(&self) -> &str;

    /// What this executor can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates and starts a sandbox, ready to run processes.
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError>;

    /// Removes sandboxes whose owner (the executor instance that created them) is gone — never
    /// one a live owner, on this server or another, still uses — except those of jobs in `live`
    /// (jobs this process will resume). Returns how many were removed.
    async fn reap(&self, live: &HashSet<JobId>) -> Result<usize, SandboxError> {
        let _ = live;
        Ok(0)
    }

    /// Removes the sandboxes of `jobs` whatever state they are in, even running: the caller
    /// knows their owner is gone (the jobs were running when the last process on this job store
    /// stopped, and are now interrupted, or their finished job's sandbox was kept by it), though
    /// a sandbox may not have noticed yet. Returns how
    /// many were removed. The default removes nothing.
    async fn reap_jobs(&self, jobs: &HashSet<JobId>) -> Result<usize, SandboxError> {
        let _ = jobs;
        Ok(0)
    }

    /// The jobs that have a sandbox in the backend that this instance did not create, in
    /// whatever state (for restart recovery: a finished job's kept sandbox left by the last
    /// process shows up here). The default knows of none.
    async fn sandbox_jobs(&self) -> Result<HashSet<JobId>, SandboxError> {
        Ok(HashSet::new())
    }

    /// Whether the backend answers (for health checks).
    async fn ping(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    /// Removes everything this executor created. Call before exiting.
    async fn shutdown(&self) -> Result<(), SandboxError> {
        Ok(())
    }
}

/// An isolated place where one job's processes run: a process-level surface that knows nothing
/// of job steps.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// The backend's id for it (a container id, a directory).
    fn id(&self) -> &str;

    /// Runs a process to its end, streaming its output to `output` (in order per stream) while
    /// it runs, and kills it and everything it started at its timeout, on cancellation, at the
    /// output cap, or when the future is dropped.
    ///
    /// A process that exits non-zero, times out, is cancelled, runs out of memory or floods its
    /// output is an `Ok` [`StepResult`] saying so; `Err` means the sandbox itself failed. Job
    /// steps are lowered to this by [`RunStep`](crate::RunStep).
    async fn exec(
        &self,
        request: ExecRequest,
        output: OutputSink,
    ) -> Result<StepResult, SandboxError>;

    /// Writes a file under the workspace (creating parent directories).
    async fn put_file(&self, path: &str, content: Bytes) -> Result<(), SandboxError>;

    /// Reads a file under the workspace (at most [`MAX_GET_FILE_BYTES`]).
    async fn get_file(&self, path: &str) -> Result<Bytes, SandboxError>;

    /// Streams the workspace as a tar archive (paths relative to the workspace root, links stored
    /// as links, never followed).
    async fn export(&self) -> Result<TarStream, SandboxError>;

    /// The regular files under the workspace directory `dir` (`""`: the whole workspace), with
    /// their sizes, without reading them: the first `max` in the export's order (sorted, depth
    /// first; paths relative to `dir`) and how many there are. Links are neither followed nor
    /// listed. A missing directory (or a file) is [`SandboxErrorKind::NotFound`].
    ///
    /// The default answers [`SandboxErrorKind::Unsupported`]; callers then list an
    /// [`export`](Sandbox::export) instead, which reads every file.
    async fn list_files(&self, dir: &str, max: usize) -> Result<FileListing, SandboxError> {
        let _ = (dir, max);
        Err(SandboxError::new(
            SandboxErrorKind::Unsupported,
            "this sandbox lists files only through an export",
        ))
    }

    /// Kills everything and removes the sandbox. Idempotent.
    async fn destroy(&self) -> Result<(), SandboxError>;

    /// Opens a byte stream to `127.0.0.1:port` inside the sandbox, through the backend's own link
    /// (the sandbox keeps network `none`). Only the ports its services declare, or that the
    /// backend was configured to allow, may be opened ([`SandboxErrorKind::Refused`] otherwise,
    /// as when nothing listens). Backends without tunnels ([`Capabilities::tunnels`]) answer
    /// [`SandboxErrorKind::Unsupported`].
    async fn connect(&self, port: u16) -> Result<SandboxStream, SandboxError> {
        Err(SandboxError::new(
            SandboxErrorKind::Unsupported,
            format!("this sandbox cannot open tunnels (asked for port {port})"),
        ))
    }

    /// Where a service the sandbox was created with ([`SandboxSpec::services`]) listens, once it
    /// is up; `None` when it was not asked for or the backend has no services.
    fn service(&self, service: Service) -> Option<ServiceEndpoint> {
        let _ = service;
        None
    }
}

/// The regular files under a workspace directory ([`Sandbox::list_files`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileListing {
    /// The first files, in the export's order, with paths relative to the directory listed.
    pub files: Vec<crate::inputs::InputFile>,
    /// How many regular files there are under it in all.
    pub total: usize,
}

/// Forwards every method, provided ones too (the lint names any left out).
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: Executor + ?Sized> Executor for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError> {
        (**self).create(spec).await
    }
    async fn reap(&self, live: &HashSet<JobId>) -> Result<usize, SandboxError> {
        (**self).reap(live).await
    }
    async fn reap_jobs(&self, jobs: &HashSet<JobId>) -> Result<usize, SandboxError> {
        (**self).reap_jobs(jobs).await
    }
    async fn sandbox_jobs(&self) -> Result<HashSet<JobId>, SandboxError> {
        (**self).sandbox_jobs().await
    }
    async fn ping(&self) -> Result<(), SandboxError> {
        (**self).ping().await
    }
    async fn shutdown(&self) -> Result<(), SandboxError> {
        (**self).shutdown().await
    }
}

/// Checks a workspace-relative path lexically: returns the normalised relative path, or refuses
/// absolute paths outside `/workspace`, `..` components, empty paths and NUL bytes.
///
/// Symlinks must still be checked by the sandbox, where the files are.
pub fn normalize_workspace_path(path: &str) -> Result<String, SandboxError> {
    if path.contains('\0') {
        return Err(SandboxError::path_refused(path, "contains a NUL byte"));
    }
    let rel = if let Some(rest) = path.strip_prefix("/workspace") {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(SandboxError::path_refused(path, "outside /workspace"));
        }
        rest.trim_start_matches('/')
    } else if path.starts_with('/') {
        return Err(SandboxError::path_refused(
            path,
            "absolute path outside /workspace",
        ));
    } else {
        path
    };
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(SandboxError::path_refused(path, "contains '..'")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(SandboxError::path_refused(path, "names no file"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths_are_confined() {
        assert_eq!(normalize_workspace_path("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(normalize_workspace_path("./a//b.txt").unwrap(), "a/b.txt");
        assert_eq!(normalize_workspace_path("/workspace/x").unwrap(), "x");
        for bad in [
            "../x",
            "a/../../x",
            "/etc/x",
            "/workspacex/y",
            "",
            "/workspace",
            "a\0b",
        ] {
            let err = normalize_workspace_path(bad).unwrap_err();
            assert_eq!(err.kind, SandboxErrorKind::PathRefused, "{bad:?}");
        }
    }
}
