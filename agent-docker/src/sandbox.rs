//! [`DockerSandbox`]: one job's container, driven through its supervisor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use agent_core::executor::{
    normalize_workspace_path, ExecRequest, FileListing, TarStream, MAX_GET_FILE_BYTES,
};
use agent_core::supervisor::Link;
use agent_core::{
    JobId, OutputSink, Sandbox, SandboxError, SandboxErrorKind, Service, ServiceEndpoint,
    StepResult,
};
use async_trait::async_trait;
use bollard::Docker;
use bytes::Bytes;

use crate::executor::{lock, ExecInner, RefillTrigger};
use crate::sockets::SandboxSockets;

/// The first 12 characters of a container id.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A started container with a live supervisor (not yet tied to a job when it sits in the pool).
pub(crate) struct Core {
    pub(crate) container_id: String,
    pub(crate) docker: Docker,
    pub(crate) link: Link,
    pub(crate) removed: AtomicBool,
    /// The socket its tunnels are handed over on, when it has one (until it is removed).
    pub(crate) sockets: std::sync::Mutex<Option<Arc<SandboxSockets>>>,
}

impl Core {
    /// Force-removes the container (idempotent; a container already gone is fine).
    pub(crate) async fn remove(&self) -> Result<(), SandboxError> {
        if self.removed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        drop(lock(&self.sockets).take());
        remove_container(&self.docker, &self.container_id).await
    }
}

/// How long a removal already in progress elsewhere is waited for.
const REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Force-removes a container by id or name; a container already gone is not an error.
pub(crate) async fn remove_container(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // 409: removal already in progress (e.g. the engine is still tearing down a container
        // whose attached owner died). Wait, bounded, until it is really gone, so a caller that
        // was told "removed" never sees it listed afterwards.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {
            let opts = bollard::query_parameters::WaitContainerOptionsBuilder::new()
                .condition("removed")
                .build();
            let mut wait = docker.wait_container(id, Some(opts));
            // Any answer ends the wait: gone (404), removed, or an exit reported as an error.
            let _ = tokio::time::timeout(REMOVAL_WAIT, futures::StreamExt::next(&mut wait)).await;
            Ok(())
        }
        Err(e) => Err(SandboxError::new(
            SandboxErrorKind::Backend,
            format!("could not remove container {}: {e}", short(id)),
        )
        .with_source(e)),
    }
}

/// A job's sandbox: a hardened container with a supervisor inside.
///
/// Dropping it without [`Sandbox::destroy`] removes the container in the background (a
/// fallback; call `destroy`). Containers left by a crash are removed by
/// [`DockerExecutor::reap`](agent_core::Executor::reap).
pub struct DockerSandbox {
    core: Arc<Core>,
    job_id: JobId,
    name: String,
    env: Vec<(String, String)>,
    executor: Weak<ExecInner>,
    destroyed: AtomicBool,
    services: Vec<ServiceEndpoint>,
    /// For a warm container: starts its replacement once this sandbox is destroyed (or dropped).
    refill: std::sync::Mutex<Option<RefillTrigger>>,
}

impl std::fmt::Debug for DockerSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSandbox")
            .field("container", &short(&self.core.container_id))
            .field("name", &self.name)
            .field("job_id", &self.job_id)
            .finish()
    }
}

impl DockerSandbox {
    pub(crate) fn new(
        core: Arc<Core>,
        job_id: JobId,
        name: String,
        env: Vec<(String, String)>,
        executor: Weak<ExecInner>,
    ) -> Self {
        Self {
            core,
            job_id,
            name,
            env,
            executor,
            destroyed: AtomicBool::new(false),
            services: Vec::new(),
            refill: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn set_refill(&mut self, refill: RefillTrigger) {
        *self
            .refill
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(refill);
    }

    pub(crate) fn link(&self) -> &Link {
        &self.core.link
    }

    pub(crate) fn set_services(&mut self, services: Vec<ServiceEndpoint>) {
        self.services = services;
    }

    /// The container's name (`agent-<job_id>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job this sandbox belongs to.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    fn check_alive(&self) -> Result<(), SandboxError> {
        if self.destroyed.load(Ordering::Acquire) {
            return Err(SandboxError::new(
                SandboxErrorKind::Gone,
                format!("sandbox {} was destroyed", self.name),
            ));
        }
        Ok(())
    }

    /// Whether a tunnel to `port` is allowed: a port of the sandbox's services, or one the
    /// executor was configured to allow.
    fn tunnel_allowed(&self, port: u16) -> bool {
        self.services.iter().any(|s| s.ports.contains(&port))
            || self
                .executor
                .upgrade()
                .is_some_and(|e| e.config.tunnel_ports.contains(&port))
    }

    async fn write(&self, path: &str, content: &[u8]) -> Result<(), SandboxError> {
        self.check_alive()?;
        let rel = normalize_workspace_path(path)?;
        self.core.link.write_file(&rel, content, path).await
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.core.container_id
    }

    async fn exec(
        &self,
        request: ExecRequest,
        output: OutputSink,
    ) -> Result<StepResult, SandboxError> {
        self.check_alive()?;
        let mut request = request;
        if !self.env.is_empty() {
            // The sandbox's environment first, so the request's wins.
            let mut env = self.env.clone();
            env.append(&mut request.env);
            request.env = env;
        }
        self.core.link.exec(&request, output).await
    }

    async fn put_file(&self, path: &str, content: Bytes) -> Result<(), SandboxError> {
        self.write(path, &content).await
    }

    async fn get_file(&self, path: &str) -> Result<Bytes, SandboxError> {
        self.check_alive()?;
        let rel = normalize_workspace_path(path)?;
        self.core
            .link
            .read_file(&rel, MAX_GET_FILE_BYTES, path)
            .await
    }

    async fn export(&self) -> Result<TarStream, SandboxError> {
        self.check_alive()?;
        self.core.link.export().await
    }

    async fn list_files(&self, dir: &str, max: usize) -> Result<FileListing, SandboxError> {
        self.check_alive()?;
        let trimmed = dir.trim_end_matches('/');
        let rel = if trimmed.is_empty() || trimmed == "." || trimmed == "/workspace" {
            String::new()
        } else {
            normalize_workspace_path(trimmed)?
        };
        let shown = format!("/workspace/{rel}");
        self.core
            .link
            .list_files(&rel, max, shown.trim_end_matches('/'))
            .await
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // The job is over: the warm pool may start this container's replacement now, beside
        // its removal.
        drop(lock(&self.refill).take());
        let res = self.core.remove().await;
        if let Some(exec) = self.executor.upgrade() {
            exec.forget_container(&self.core.container_id);
        }
        res
    }

    async fn connect(
        &self,
        port: u16,
    ) -> Result<agent_core::executor::SandboxStream, SandboxError> {
        self.check_alive()?;
        if !self.tunnel_allowed(port) {
            return Err(SandboxError::new(
                SandboxErrorKind::Refused,
                format!(
                    "port {port} of sandbox {} is not open to tunnels (not a port of its services)",
                    self.name
                ),
            ));
        }
        let sockets = lock(&self.core.sockets).clone();
        if let Some(sockets) = sockets {
            match sockets.handoff().connect(&self.core.link, port).await {
                Ok(stream) => return Ok(Box::new(stream)),
                // The supervisor could not reach the socket: the attach stream still works, for
                // this tunnel and the sandbox's next ones.
                Err(e)
                    if e.kind == SandboxErrorKind::Unavailable && !self.core.link.is_closed() =>
                {
                    tracing::debug!(sandbox = %self.name, "tunnels over the attach stream: {e}");
                    drop(lock(&self.core.sockets).take());
                }
                Err(e) => return Err(e),
            }
        }
        let tunnel = self
            .core
            .link
            .connect(port, agent_core::supervisor::DEFAULT_TUNNEL_WINDOW)
            .await?;
        Ok(Box::new(tunnel))
    }

    fn service(&self, service: Service) -> Option<ServiceEndpoint> {
        self.services.iter().find(|s| s.service == service).cloned()
    }
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        if self.destroyed.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let core = self.core.clone();
        let executor = self.executor.clone();
        handle.spawn(async move {
            if let Err(e) = core.remove().await {
                tracing::warn!("dropped sandbox: {e}");
            }
            if let Some(exec) = executor.upgrade() {
                exec.forget_container(&core.container_id);
            }
        });
    }
}
