//! [`DockerExecutor`]: creates hardened containers, keeps an optional warm pool, reaps leftovers.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use agent_core::executor::Capabilities;
use agent_core::supervisor::HandshakeError;
use agent_core::{
    Executor, JobId, NetworkMode, ResourceLimits, Sandbox, SandboxError, SandboxErrorKind,
    SandboxSpec, Service,
};
use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    RenameContainerOptionsBuilder, StartContainerOptions,
};
use bollard::Docker;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DockerConfig, SeccompProfile};
use crate::sandbox::{remove_container, short, Core, DockerSandbox};
use crate::sockets::{SandboxSockets, SocketRoot};

/// Label on every container this crate creates.
pub const LABEL_MANAGED: &str = "agent.managed";
/// Label naming the job of a container (absent on warm-pool containers).
pub const LABEL_JOB_ID: &str = "agent.job_id";
/// Label on warm-pool containers; their job, once taken, is in their name `agent-<job_id>`.
pub const LABEL_POOL: &str = "agent.pool";
/// Label carrying [`DockerConfig::scope`], when set.
pub const LABEL_SCOPE: &str = "agent.scope";
/// Label naming the executor instance that created a container ([`DockerExecutor::instance_id`]).
pub const LABEL_OWNER: &str = "agent.owner";

/// How long a container that was created but never started is left alone by the reaper (its
/// owner may be about to start it); measured against the container's creation time.
const CREATED_GRACE: Duration = Duration::from_secs(300);

/// A Docker executor: one hardened container per job, steps run by a supervisor inside.
///
/// Cheap to clone (an `Arc` inside). See the crate docs for the design and an example.
#[derive(Clone)]
pub struct DockerExecutor {
    inner: Arc<ExecInner>,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("host", &self.inner.host)
            .field("image", &self.inner.config.image)
            .field("warm_pool", &self.inner.config.warm_pool_size)
            .finish()
    }
}

pub(crate) struct ExecInner {
    docker: Docker,
    /// This instance's identity, on every container it creates.
    instance: String,
    pub(crate) config: DockerConfig,
    host: String,
    create_permits: Semaphore,
    /// Containers created by this executor and not yet removed: id → name.
    owned: Mutex<HashMap<String, String>>,
    pool: Option<Arc<Pool>>,
    build_lock: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    shut_down: AtomicBool,
    /// The pool's refill and the removals of unclaimed containers: [`shutdown`]
    /// (Executor::shutdown) waits for them, so a container whose create was under way when
    /// the executor stopped is removed too, not left behind.
    tasks: TaskTracker,
    /// Whether [`DockerConfig::services_image`] was on the engine when connecting.
    services: bool,
    /// Where sandboxes with ports open to tunnels get their handoff sockets (`None`: tunnels go
    /// over the attach stream).
    sockets: Option<SocketRoot>,
    /// Set when the engine refused a socket directory's bind mount (it is not on this host):
    /// later sandboxes are made without one.
    sockets_refused: AtomicBool,
}

impl ExecInner {
    pub(crate) fn forget_container(&self, id: &str) {
        lock(&self.owned).remove(id);
    }
}

/// The containers made ahead of demand: started ones (the warm pool) and created ones.
struct Pool {
    ready: Mutex<VecDeque<Arc<Core>>>,
    prepared: Mutex<VecDeque<Prepared>>,
    refill: Notify,
}

/// A container created and attached to, not started: no process runs in it.
pub(crate) struct Prepared {
    core: Arc<Core>,
    handshake: agent_core::supervisor::Handshake,
    created: Instant,
    /// Removes the container if it is dropped before it is started and handed out.
    claim: Unclaimed,
}

/// A container this executor made that nobody holds yet: removed (in the background) when
/// dropped armed — e.g. when the `create()` that was making it is cancelled, such as a request
/// whose client went away — rather than left until shutdown.
struct Unclaimed {
    docker: Docker,
    /// Its name, until the engine said its id.
    name: String,
    id: Option<String>,
    exec: Weak<ExecInner>,
    armed: bool,
}

impl Unclaimed {
    /// It is held now (started and handed out, or removed by the caller).
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (docker, exec) = (self.docker.clone(), self.exec.clone());
        let (name, id) = (self.name.clone(), self.id.clone());
        let removal = async move {
            match id {
                Some(id) => {
                    if let Err(e) = remove_container(&docker, &id).await {
                        tracing::warn!("removing an unclaimed container: {e}");
                    }
                    if let Some(exec) = exec.upgrade() {
                        exec.forget_container(&id);
                    }
                }
                // Cut off while the engine was creating it: it may exist under its name, or
                // appear a moment later.
                None => {
                    for pause in [
                        Duration::ZERO,
                        Duration::from_secs(1),
                        Duration::from_secs(3),
                    ] {
                        tokio::time::sleep(pause).await;
                        let _ = remove_container(&docker, &name).await;
                    }
                }
            }
        };
        // Tracked, so a shutdown waits for it.
        match self.exec.upgrade() {
            Some(exec) => drop(exec.tasks.spawn_on(removal, &handle)),
            None => drop(handle.spawn(removal)),
        }
    }
}

/// How long a shutdown waits for the pool's refill (a create under way) and for removals
/// under way to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// How long a prepared container waits for a job before it is replaced: well under
/// [`CREATED_GRACE`], after which another server's reaper would take it for abandoned.
const PREPARED_MAX_AGE: Duration = Duration::from_secs(240);

/// A container taken from the pool for a job.
enum Taken {
    /// Started and ready.
    Warm(Arc<Core>),
    /// Created; to be started.
    Prepared(Prepared),
}

impl Taken {
    fn core(&self) -> &Arc<Core> {
        match self {
            Taken::Warm(core) => core,
            Taken::Prepared(p) => &p.core,
        }
    }
}

/// How long the replacement of a warm container taken by a job waits at most for that job's
/// sandbox to be released before it is started anyway.
///
/// Creating and starting a container keeps the engine (dockerd, containerd, runc) busy for
/// hundreds of ms of CPU; started at once, on a small machine it competes with the very job that
/// took the warm container (measured on 2 cores: that job's one `true` step took 10–35 ms with the
/// replacement starting beside it, 5–17 ms without). So the refill waits until the job's sandbox
/// is destroyed (a short job) or this long (a long one).
const REFILL_DEFER: Duration = Duration::from_secs(1);

/// Starts the refill of the warm pool once fired (dropped), or after [`REFILL_DEFER`]: held by
/// the sandbox that took a warm container, dropped when it is destroyed or dropped.
pub(crate) struct RefillTrigger {
    _fire: tokio::sync::oneshot::Sender<()>,
}

impl RefillTrigger {
    fn new(pool: Arc<Pool>) -> Self {
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // Either way (fired, i.e. dropped, or the time is up), the pool refills.
            let _ = tokio::time::timeout(REFILL_DEFER, fired).await;
            pool.refill.notify_one();
        });
        Self { _fire: fire }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unavailable(host: &str, err: impl std::fmt::Display) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::Unavailable,
        format!(
            "no Docker engine answers at {host} ({err}). Start one with `sudo systemctl start docker` \
             (or `sudo dockerd`, e.g. `(nohup dockerd >/tmp/dockerd.log 2>&1 &)`), or set DOCKER_HOST \
             to a running engine"
        ),
    )
}

fn backend(what: &str, e: bollard::errors::Error) -> SandboxError {
    let kind = match &e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. }
            if *status_code >= 500 =>
        {
            SandboxErrorKind::Backend
        }
        // No connection to the engine (it is down or restarting): `client error (Connect)`.
        bollard::errors::Error::HyperResponseError { .. }
        | bollard::errors::Error::HyperLegacyError { .. }
        | bollard::errors::Error::SocketNotFoundError(_)
        | bollard::errors::Error::IOError { .. }
        | bollard::errors::Error::RequestTimeoutError => SandboxErrorKind::Unavailable,
        _ => SandboxErrorKind::Backend,
    };
    SandboxError::new(kind, format!("{what}: {e}")).with_source(e)
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Which job a managed container belongs to: its `agent.job_id` label, or for a warm-pool
/// container that was taken, its name `agent-<job_id>`.
fn job_of(labels: &HashMap<String, String>, names: &[String]) -> Option<JobId> {
    if let Some(id) = labels.get(LABEL_JOB_ID).and_then(|v| v.parse().ok()) {
        return Some(id);
    }
    names.iter().find_map(|n| {
        n.trim_start_matches('/')
            .strip_prefix("agent-")
            .and_then(|rest| rest.parse().ok())
    })
}

/// Whether a managed container's owner is gone, from what the engine says of it alone.
///
/// A container runs only while the attach of the executor that created it is open (`StdinOnce`:
/// the supervisor exits when it closes), so a running, paused or restarting container has a live
/// owner and is never touched. One created but never started is left alone for
/// [`CREATED_GRACE`] (its owner may be starting it). Anything else — exited, dead — has no live
/// owner.
fn owner_gone(state: &str, created_unix: u64, now_unix: u64) -> bool {
    match state {
        "running" | "paused" | "restarting" | "removing" => false,
        "created" => now_unix.saturating_sub(created_unix) > CREATED_GRACE.as_secs(),
        _ => true,
    }
}

/// What a container is made for.
struct Blueprint<'a> {
    name: String,
    image: &'a str,
    limits: &'a ResourceLimits,
    network: NetworkMode,
    job_id: Option<JobId>,
    /// Labels asked for by the sandbox's spec.
    extra_labels: Option<&'a BTreeMap<String, String>>,
    /// Whether the sandbox has ports open to tunnels (it then gets a handoff socket).
    tunnels: bool,
}

impl DockerExecutor {
    /// Connects with [`DockerConfig::from_env`].
    pub async fn from_env() -> Result<Self, SandboxError> {
        Self::connect(DockerConfig::from_env()).await
    }

    /// Connects to the engine, negotiates the API version and starts the warm pool (if any).
    ///
    /// Fails with [`SandboxErrorKind::Unavailable`] and a message saying how to start an engine
    /// when none answers.
    pub async fn connect(config: DockerConfig) -> Result<Self, SandboxError> {
        config.validate()?;
        let host = config
            .docker_host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let docker = if host.starts_with("unix://") || host.starts_with('/') {
            let path = host.trim_start_matches("unix://");
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(&host, 120, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(SandboxError::new(
                SandboxErrorKind::Invalid,
                format!("DOCKER_HOST {host:?}: expected unix://PATH, tcp://HOST:PORT or http://"),
            ));
        }
        .map_err(|e| unavailable(&host, e))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unavailable(&host, "timed out"))?
            .map_err(|e| unavailable(&host, e))?;
        tracing::debug!(host = %host, api = %docker.client_version(), "connected to the Docker engine");
        let pool = (config.warm_pool_size > 0 || config.prepared_pool_size > 0).then(|| {
            Arc::new(Pool {
                ready: Mutex::new(VecDeque::new()),
                prepared: Mutex::new(VecDeque::new()),
                refill: Notify::new(),
            })
        });
        let services = match &config.services_image {
            Some(image) => {
                let found = docker.inspect_image(image).await.is_ok();
                if !found {
                    tracing::info!(
                        image = %image,
                        "the services image is missing: jobs asking for a desktop or Jupyter are \
                         refused (images/desktop/build-offline.sh builds it)"
                    );
                }
                found
            }
            None => false,
        };
        let local_engine = host.starts_with("unix://") || host.starts_with('/');
        let sockets = SocketRoot::new(&config.tunnel_sockets, local_engine);
        let instance = format!("{:032x}", rand::random::<u128>());
        let inner = Arc::new(ExecInner {
            docker,
            instance,
            create_permits: Semaphore::new(config.max_concurrent_creates),
            config,
            host,
            owned: Mutex::new(HashMap::new()),
            pool,
            build_lock: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
            shut_down: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            services,
            sockets,
            sockets_refused: AtomicBool::new(false),
        });
        if let Some(pool) = &inner.pool {
            inner
                .tasks
                .spawn(refill_loop(Arc::downgrade(&inner), pool.clone()));
        }
        Ok(Self { inner })
    }

    /// The bollard client (for callers that need more of the engine).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// This executor instance's identity (random, per [`DockerExecutor::connect`]), carried by
    /// every container it creates as the `agent.owner` label.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// The configuration.
    pub fn config(&self) -> &DockerConfig {
        &self.inner.config
    }

    /// How many warm containers are ready now.
    pub fn warm_ready(&self) -> usize {
        self.inner.pool.as_ref().map_or(0, |p| lock(&p.ready).len())
    }

    /// How many prepared (created, not started) containers are waiting now.
    pub fn prepared_ready(&self) -> usize {
        self.inner
            .pool
            .as_ref()
            .map_or(0, |p| lock(&p.prepared).len())
    }

    /// Waits until the warm pool and the prepared containers are full (or `timeout` passes);
    /// returns how many warm ones are ready.
    pub async fn wait_warm(&self, timeout: Duration) -> usize {
        // `None`: a timeout too large for an `Instant`, i.e. no deadline.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let config = &self.inner.config;
        while (self.warm_ready() < config.warm_pool_size
            || self.prepared_ready() < config.prepared_pool_size)
            && deadline.is_none_or(|d| tokio::time::Instant::now() < d)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.warm_ready()
    }

    /// Makes sure the default image exists; when it does not, builds it with the offline build
    /// script (`images/agent/build-offline.sh`, embedded in this crate), forwarding its progress
    /// lines to `tracing` (or stderr when no subscriber is installed). Needs root and
    /// `debootstrap` on the machine running the engine's CLI.
    pub async fn ensure_image(&self) -> Result<(), SandboxError> {
        crate::image::ensure_image(
            &self.inner.docker,
            &self.inner.config.image,
            &self.inner.host,
            &self.inner.build_lock,
        )
        .await
    }
}

impl ExecInner {
    fn labels(&self, bp: &Blueprint<'_>) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self
            .config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in bp.extra_labels.into_iter().flatten() {
            labels.insert(k.clone(), v.clone());
        }
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_OWNER.into(), self.instance.clone());
        if let Some(scope) = &self.config.scope {
            labels.insert(LABEL_SCOPE.into(), scope.clone());
        }
        match bp.job_id {
            Some(id) => {
                labels.insert(LABEL_JOB_ID.into(), id.to_string());
            }
            None => {
                labels.insert(LABEL_POOL.into(), "true".into());
            }
        }
        labels
    }

    fn container_body(
        &self,
        bp: &Blueprint<'_>,
        sockets: Option<&SandboxSockets>,
    ) -> ContainerCreateBody {
        let c = &self.config;
        let limits = bp.limits;
        let (uid, gid) = c.numeric_ids().unwrap_or((1000, 1000));
        let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        let swap = i64::try_from(limits.memory_bytes.saturating_add(c.extra_swap_bytes))
            .unwrap_or(i64::MAX);
        let exec = |on: bool| if on { "exec" } else { "noexec" };
        let mut tmpfs = HashMap::new();
        tmpfs.insert(
            "/workspace".to_string(),
            format!(
                "rw,{},nosuid,nodev,size={},uid={uid},gid={gid},mode=0755",
                exec(c.workspace_exec),
                limits.workspace_bytes
            ),
        );
        tmpfs.insert(
            "/tmp".to_string(),
            format!(
                "rw,{},nosuid,nodev,size={},mode=1777",
                exec(c.tmp_exec),
                limits.tmp_bytes
            ),
        );
        let ulimit = |name: &str, v: u64| {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            ResourcesUlimits {
                name: Some(name.to_string()),
                soft: Some(v),
                hard: Some(v),
            }
        };
        let mut security_opt = Vec::new();
        if c.no_new_privileges {
            security_opt.push("no-new-privileges".to_string());
        }
        match &c.seccomp {
            SeccompProfile::Default => {}
            SeccompProfile::Unconfined => security_opt.push("seccomp=unconfined".to_string()),
            SeccompProfile::Custom(json) => security_opt.push(format!("seccomp={json}")),
        }
        let pids = c.pids_limit.unwrap_or(limits.pids);
        let host_config = HostConfig {
            memory: Some(memory),
            memory_swap: Some(swap),
            nano_cpus: Some((limits.cpus * 1e9).round() as i64),
            pids_limit: Some(i64::from(pids)),
            ulimits: Some(vec![
                ulimit("nofile", c.nofile),
                ulimit("fsize", c.fsize_bytes.unwrap_or(limits.workspace_bytes)),
                ulimit("core", c.core_bytes),
            ]),
            init: Some(c.init),
            network_mode: Some(bp.network.to_string()),
            privileged: Some(c.privileged),
            readonly_rootfs: Some(c.read_only_rootfs),
            cap_drop: Some(c.cap_drop.clone()),
            cap_add: (!c.cap_add.is_empty()).then(|| c.cap_add.clone()),
            security_opt: Some(security_opt),
            tmpfs: Some(tmpfs),
            log_config: Some(HostConfigLogConfig {
                typ: Some(c.log_driver.clone()),
                config: None,
            }),
            runtime: c.runtime.clone(),
            oom_kill_disable: Some(false),
            binds: None,
            mounts: sockets.map(|s| vec![s.mount()]),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(bp.image.to_string()),
            user: Some(c.user.clone()),
            entrypoint: Some(agent_core::supervisor::contained_command()),
            cmd: None,
            working_dir: Some("/workspace".into()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            // The owner's liveness, visible to every other server on the engine: when the
            // attach that created the container closes (the owner exited, or was killed with
            // -9), the engine closes the supervisor's stdin and it kills everything and exits.
            // A running container therefore always has a live owner.
            stdin_once: Some(true),
            tty: Some(false),
            labels: Some(self.labels(bp)),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Creates, attaches to and starts a container, and waits for its supervisor.
    async fn start_container(
        self: &Arc<Self>,
        bp: &Blueprint<'_>,
    ) -> Result<Arc<Core>, SandboxError> {
        let prepared = self.prepare_container(bp).await?;
        self.launch(prepared, bp.image).await
    }

    /// Creates a container and attaches to it, without starting it.
    async fn prepare_container(
        self: &Arc<Self>,
        bp: &Blueprint<'_>,
    ) -> Result<Prepared, SandboxError> {
        let docker = &self.docker;
        let sockets = match &self.sockets {
            Some(root) if bp.tunnels && !self.sockets_refused.load(Ordering::Relaxed) => root
                .sandbox()
                .inspect_err(|e| {
                    tracing::warn!("a sandbox's tunnels go over its attach stream: {e}");
                })
                .ok(),
            _ => None,
        };
        let body = self.container_body(bp, sockets.as_ref());
        let permit =
            self.create_permits.acquire().await.map_err(|_| {
                SandboxError::new(SandboxErrorKind::Unavailable, "executor shut down")
            })?;
        let opts = CreateContainerOptionsBuilder::new().name(&bp.name).build();
        let began = std::time::Instant::now();
        let created_at = Instant::now();
        let mut claim = Unclaimed {
            docker: docker.clone(),
            name: bp.name.clone(),
            id: None,
            exec: Arc::downgrade(self),
            armed: true,
        };
        let mut attempt = 0;
        let created = loop {
            attempt += 1;
            // Armed while the engine creates it; an answer that it did not is an end of that.
            claim.armed = true;
            let answer = docker
                .create_container(Some(opts.clone()), body.clone())
                .await;
            if answer.is_err() {
                claim.disarm();
            }
            match answer {
                Ok(c) => break c,
                Err(e) if is_status(&e, 404) && attempt == 1 => {
                    if self.config.auto_build_image && bp.image == self.config.image {
                        drop(permit);
                        crate::image::ensure_image(docker, bp.image, &self.host, &self.build_lock)
                            .await?;
                        return Box::pin(self.prepare_container(bp)).await;
                    }
                    return Err(SandboxError::new(
                        SandboxErrorKind::Image,
                        format!(
                            "image {:?} not found on the engine; build it with \
                             images/agent/build-offline.sh (no registry needed) or \
                             `docker build -t {} images/agent`",
                            bp.image, bp.image
                        ),
                    )
                    .with_source(e));
                }
                Err(e) if sockets.is_some() && (is_status(&e, 400) || is_status(&e, 500)) => {
                    // The engine is not on this host, or cannot see the directory (Docker
                    // Desktop: not a shared path); or the refusal is of something else, which
                    // the next try, without the mount, reports.
                    tracing::warn!(
                        "the engine refused a sandbox with the tunnel sockets' mount, so tunnels \
                         go over the attach stream from now on: {e}"
                    );
                    self.sockets_refused.store(true, Ordering::Relaxed);
                    drop(permit);
                    return Box::pin(self.prepare_container(bp)).await;
                }
                Err(e) if is_status(&e, 409) && attempt == 1 => {
                    // A container left with this name (a crashed run of the same job): replace it.
                    tracing::warn!(name = %bp.name, "replacing a leftover container with the same name");
                    remove_container(docker, &bp.name).await?;
                }
                Err(e) => return Err(backend("creating the container", e)),
            }
        };
        let id = created.id;
        let created_after = began.elapsed();
        lock(&self.owned).insert(id.clone(), bp.name.clone());
        claim.id = Some(id.clone());
        let attached = docker
            .attach_container(
                &id,
                Some(
                    AttachContainerOptionsBuilder::new()
                        .stream(true)
                        .stdin(true)
                        .stdout(true)
                        .stderr(true)
                        .build(),
                ),
            )
            .await;
        drop(permit);
        let attach = match attached {
            Ok(attach) => attach,
            Err(e) => {
                let _ = remove_container(docker, &id).await;
                self.forget_container(&id);
                claim.disarm();
                return Err(backend("attaching to the container", e));
            }
        };
        let (link, handshake) = crate::attach::link(
            format!("container {}", short(&id)),
            attach.output,
            attach.input,
        );
        tracing::debug!(
            container = %short(&id),
            create_ms = created_after.as_millis() as u64,
            attach_ms = (began.elapsed() - created_after).as_millis() as u64,
            "container created"
        );
        Ok(Prepared {
            core: Arc::new(Core {
                container_id: id,
                docker: docker.clone(),
                link,
                removed: AtomicBool::new(false),
                sockets: Mutex::new(sockets.map(Arc::new)),
            }),
            handshake,
            created: created_at,
            claim,
        })
    }

    /// Starts a prepared container and waits for its supervisor (removing it on failure).
    async fn launch(&self, prepared: Prepared, image: &str) -> Result<Arc<Core>, SandboxError> {
        let Prepared {
            core,
            handshake,
            mut claim,
            ..
        } = prepared;
        let id = core.container_id.clone();
        let began = std::time::Instant::now();
        let result = async {
            let permit = self.create_permits.acquire().await.map_err(|_| {
                SandboxError::new(SandboxErrorKind::Unavailable, "executor shut down")
            })?;
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(|e| backend("starting the container", e))?;
            drop(permit);
            let started_after = began.elapsed();
            let ready = handshake
                .wait(self.config.startup_timeout)
                .await
                .map_err(|e| match e {
                    HandshakeError::TimedOut(t) => SandboxError::new(
                        SandboxErrorKind::Backend,
                        format!("container {} did not become ready within {t:?}", short(&id)),
                    ),
                    why => SandboxError::new(
                        SandboxErrorKind::Image,
                        format!(
                            "container {} (image {image:?}) could not start its supervisor: \
                             {why}; the image needs python3",
                            short(&id),
                        ),
                    ),
                })?;
            // Where a sandbox's start goes (the engine's start is most of it).
            tracing::debug!(
                container = %short(&id),
                uid = ?ready.uid,
                start_ms = started_after.as_millis() as u64,
                ready_ms = (began.elapsed() - started_after).as_millis() as u64,
                "sandbox ready"
            );
            Ok::<_, SandboxError>(())
        }
        .await;
        // Held from here: by the caller, or removed below.
        claim.disarm();
        match result {
            Ok(()) => Ok(core),
            Err(e) => {
                let _ = core.remove().await;
                self.forget_container(&id);
                Err(e)
            }
        }
    }

    /// Takes a container made ahead for `spec`, if one fits: a warm one, else a prepared one;
    /// with the trigger that starts its replacement (see [`RefillTrigger`]).
    fn take_pooled(self: &Arc<Self>, spec: &SandboxSpec) -> Option<(Taken, RefillTrigger)> {
        let pool = self.pool.as_ref()?;
        let image_ok = spec.image.as_deref().is_none_or(|i| i == self.config.image);
        if !image_ok
            || !spec.services.is_empty()
            || spec.network != NetworkMode::None
            || spec.limits != self.config.default_limits
            || !spec.labels.is_empty()
        {
            return None;
        }
        let discard = |core: Arc<Core>| {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = core.remove().await;
                me.forget_container(&core.container_id);
            });
        };
        let mut taken = None;
        {
            let mut ready = lock(&pool.ready);
            while let Some(core) = ready.pop_front() {
                if core.link.is_closed() {
                    discard(core);
                    continue;
                }
                taken = Some(Taken::Warm(core));
                break;
            }
        }
        if taken.is_none() {
            let mut prepared = lock(&pool.prepared);
            while let Some(p) = prepared.pop_front() {
                if p.core.link.is_closed() || p.created.elapsed() > PREPARED_MAX_AGE {
                    discard(p.core);
                    continue;
                }
                taken = Some(Taken::Prepared(p));
                break;
            }
        }
        match taken {
            Some(taken) => Some((taken, RefillTrigger::new(pool.clone()))),
            None => {
                // Nothing ready (or only dead ones): refill now.
                pool.refill.notify_one();
                None
            }
        }
    }
}

/// A managed container of this executor's scope that another executor instance created, as
/// [`ExecInner::sweep`] shows it to its predicate.
struct Candidate {
    state: String,
    created: u64,
    job: Option<JobId>,
}

impl ExecInner {
    /// Removes the managed containers of this scope that this instance did not create and that
    /// `doomed` picks. Returns how many were removed; failures to remove one are logged.
    async fn sweep(&self, doomed: impl Fn(&Candidate) -> bool) -> Result<usize, SandboxError> {
        let mut victims = Vec::new();
        for (id, candidate, owner) in self.others().await? {
            if doomed(&candidate) {
                tracing::debug!(
                    container = %short(&id),
                    owner = owner.as_deref().unwrap_or("?"),
                    state = %candidate.state,
                    "removing a container whose owner is gone"
                );
                victims.push(id);
            }
        }
        let removals = victims.iter().map(|id| remove_container(&self.docker, id));
        let mut removed = 0;
        for r in futures::future::join_all(removals).await {
            match r {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("reaper: {e}"),
            }
        }
        Ok(removed)
    }

    /// The managed containers of this scope that this instance did not create: each one's id,
    /// what [`sweep`](Self::sweep) judges it by, and its owner label.
    async fn others(&self) -> Result<Vec<(String, Candidate, Option<String>)>, SandboxError> {
        let mut filters = HashMap::new();
        let mut label_filters = vec![format!("{LABEL_MANAGED}=true")];
        if let Some(scope) = &self.config.scope {
            label_filters.push(format!("{LABEL_SCOPE}={scope}"));
        }
        filters.insert("label".to_string(), label_filters);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| backend("listing containers", e))?;
        let owned: HashSet<String> = lock(&self.owned).keys().cloned().collect();
        let mut others = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            if owned.contains(&id) {
                continue;
            }
            let mut labels = c.labels.unwrap_or_default();
            let candidate = Candidate {
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                created: u64::try_from(c.created.unwrap_or(0)).unwrap_or(0),
                job: job_of(&labels, &c.names.unwrap_or_default()),
            };
            others.push((id, candidate, labels.remove(LABEL_OWNER)));
        }
        Ok(others)
    }
}

async fn refill_loop(exec: Weak<ExecInner>, pool: Arc<Pool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(inner) = exec.upgrade() else {
            return;
        };
        if inner.stop.is_cancelled() {
            return;
        }
        // Prepared containers unused for too long go (and are replaced below).
        let stale: VecDeque<Prepared> = {
            let mut prepared = lock(&pool.prepared);
            let (keep, stale) = prepared
                .drain(..)
                .partition(|p| p.created.elapsed() <= PREPARED_MAX_AGE && !p.core.link.is_closed());
            *prepared = keep;
            stale
        };
        for p in stale {
            let _ = p.core.remove().await;
            inner.forget_container(&p.core.container_id);
        }
        let warm_missing = inner
            .config
            .warm_pool_size
            .saturating_sub(lock(&pool.ready).len());
        let prepared_missing = inner
            .config
            .prepared_pool_size
            .saturating_sub(lock(&pool.prepared).len());
        if warm_missing + prepared_missing == 0 {
            let stop = inner.stop.clone();
            drop(inner);
            tokio::select! {
                _ = pool.refill.notified() => {}
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let limits = inner.config.default_limits.clone();
        let image = inner.config.image.clone();
        let makes = (0..warm_missing + prepared_missing).map(|i| {
            let inner = inner.clone();
            let limits = limits.clone();
            let image = image.clone();
            async move {
                let bp = Blueprint {
                    name: format!("agent-pool-{}", JobId::new()),
                    image: &image,
                    limits: &limits,
                    network: NetworkMode::None,
                    job_id: None,
                    extra_labels: None,
                    tunnels: !inner.config.tunnel_ports.is_empty(),
                };
                if i < warm_missing {
                    inner.start_container(&bp).await.map(Taken::Warm)
                } else {
                    inner.prepare_container(&bp).await.map(Taken::Prepared)
                }
            }
        });
        // A shutdown stops the makes: a container still being made is removed by its
        // unclaimed guard, in a task the shutdown waits for; one already started is among the
        // owned ones the shutdown removes after.
        let stop = inner.stop.clone();
        let results = tokio::select! {
            results = futures::future::join_all(makes) => results,
            _ = stop.cancelled() => return,
        };
        let mut failed = false;
        for r in results {
            match r {
                Ok(made) if inner.stop.is_cancelled() => {
                    let core = made.core();
                    let _ = core.remove().await;
                    inner.forget_container(&core.container_id);
                }
                Ok(Taken::Warm(core)) => lock(&pool.ready).push_back(core),
                Ok(Taken::Prepared(p)) => lock(&pool.prepared).push_back(p),
                Err(e) => {
                    failed = true;
                    tracing::warn!("warm pool: could not make a container: {e}");
                }
            }
        }
        let stop = inner.stop.clone();
        drop(inner);
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(500);
        }
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    fn name(&self) -> &str {
        "docker"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ISOLATED
            .with_network(self.inner.config.allow_bridge_network)
            .with_services(self.inner.services)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError> {
        let inner = &self.inner;
        let job_id = spec.job_id.unwrap_or_default();
        if inner.shut_down.load(Ordering::Acquire) {
            return Err(SandboxError::new(
                SandboxErrorKind::Unavailable,
                "the Docker executor was shut down",
            ));
        }
        spec.limits
            .validate()
            .map_err(|e| SandboxError::new(SandboxErrorKind::Invalid, e.to_string()))?;
        if spec.network == NetworkMode::Bridge && !inner.config.allow_bridge_network {
            return Err(SandboxError::new(
                SandboxErrorKind::Invalid,
                "this executor does not allow the bridge network (allow_bridge_network = false)",
            ));
        }
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !spec.services.is_empty() && !inner.services {
            return Err(SandboxError::new(
                SandboxErrorKind::Unsupported,
                "this executor runs no services (its services image is not configured or not on \
                 the engine; images/desktop/build-offline.sh builds it)",
            ));
        }
        if spec.services.contains(&Service::Desktop) && !spec.env.contains_key("DISPLAY") {
            env.insert(
                0,
                ("DISPLAY".to_string(), crate::services::DISPLAY.to_string()),
            );
        }
        let name = format!("agent-{job_id}");
        if let Some((taken, refill)) = inner.take_pooled(spec) {
            // Give the container its job's name in the background; the reaper also recognises
            // a pool container by this name.
            let docker = inner.docker.clone();
            let id = taken.core().container_id.clone();
            let new_name = name.clone();
            lock(&inner.owned).insert(id.clone(), new_name.clone());
            tokio::spawn(async move {
                let opts = RenameContainerOptionsBuilder::new().name(&new_name).build();
                if let Err(e) = docker.rename_container(&id, opts).await {
                    tracing::debug!(container = %short(&id), "rename to {new_name} failed: {e}");
                }
            });
            let core = match taken {
                Taken::Warm(core) => Some(core),
                // One that cannot start (reaped meanwhile, an engine hiccup) is not the job's
                // failure: the job gets a new container instead.
                Taken::Prepared(prepared) => inner
                    .launch(prepared, &inner.config.image)
                    .await
                    .inspect_err(|e| tracing::warn!("a prepared container did not start: {e}"))
                    .ok(),
            };
            if let Some(core) = core {
                let mut sandbox =
                    DockerSandbox::new(core, job_id, name, env, Arc::downgrade(inner));
                sandbox.set_refill(refill);
                return Ok(Box::new(sandbox));
            }
        }
        let image = match (&spec.image, &inner.config.services_image) {
            (Some(image), _) => image.as_str(),
            (None, Some(services_image)) if !spec.services.is_empty() => services_image.as_str(),
            (None, _) => inner.config.image.as_str(),
        };
        let bp = Blueprint {
            name: name.clone(),
            image,
            limits: &spec.limits,
            network: spec.network,
            job_id: Some(job_id),
            extra_labels: Some(&spec.labels),
            tunnels: !spec.services.is_empty() || !inner.config.tunnel_ports.is_empty(),
        };
        let core = inner.start_container(&bp).await?;
        let mut sandbox = DockerSandbox::new(core, job_id, name, env, Arc::downgrade(inner));
        if !spec.services.is_empty() {
            // Dropping the sandbox on an error removes its container.
            let endpoints = crate::services::start(
                sandbox.link(),
                job_id,
                &spec.services,
                inner.config.services_timeout,
            )
            .await
            .map_err(|e| {
                SandboxError::new(
                    e.kind,
                    format!("sandbox for job {job_id} (image {image:?}): {}", e.message),
                )
            })?;
            sandbox.set_services(endpoints);
        }
        Ok(Box::new(sandbox))
    }

    async fn reap(&self, live: &HashSet<JobId>) -> Result<usize, SandboxError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let removed = self
            .inner
            .sweep(|c| {
                owner_gone(&c.state, c.created, now) && !c.job.is_some_and(|j| live.contains(&j))
            })
            .await?;
        if removed > 0 {
            tracing::info!(removed, "reaped containers left by earlier runs");
        }
        Ok(removed)
    }

    async fn reap_jobs(&self, jobs: &HashSet<JobId>) -> Result<usize, SandboxError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let removed = self
            .inner
            .sweep(|c| c.job.is_some_and(|j| jobs.contains(&j)))
            .await?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed the containers of jobs the last process left"
            );
        }
        Ok(removed)
    }

    async fn sandbox_jobs(&self) -> Result<HashSet<JobId>, SandboxError> {
        Ok(self
            .inner
            .others()
            .await?
            .into_iter()
            .filter_map(|(_, c, _)| c.job)
            .collect())
    }

    async fn ping(&self) -> Result<(), SandboxError> {
        self.inner
            .docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&self.inner.host, e))
    }

    async fn shutdown(&self) -> Result<(), SandboxError> {
        let inner = &self.inner;
        inner.shut_down.store(true, Ordering::Release);
        inner.stop.cancel();
        if let Some(pool) = &inner.pool {
            let mut cores: Vec<_> = lock(&pool.ready).drain(..).collect();
            cores.extend(lock(&pool.prepared).drain(..).map(|p| p.core));
            for core in cores {
                core.removed.store(true, Ordering::Release);
            }
        }
        // The refill may be making containers right now (a server stopped just after it
        // started): it removes them once made. Removals of unclaimed containers end too.
        inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: the warm pool's refill did not end within {SHUTDOWN_WAIT:?}; removing \
                 what it made so far"
            );
        }
        let ids: Vec<String> = lock(&inner.owned).keys().cloned().collect();
        let results =
            futures::future::join_all(ids.iter().map(|id| remove_container(&inner.docker, id)))
                .await;
        let mut first_err = None;
        for (id, r) in ids.iter().zip(results) {
            match r {
                Ok(()) => inner.forget_container(id),
                Err(e) => {
                    tracing::warn!("shutdown: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_containers_that_cannot_be_running_for_an_owner_are_gone() {
        let now = 1_000_000;
        for state in ["running", "paused", "restarting", "removing"] {
            assert!(!owner_gone(state, 0, now), "{state}");
        }
        assert!(!owner_gone("created", now - 10, now), "just created");
        assert!(owner_gone("created", now - 3600, now), "created long ago");
        assert!(
            !owner_gone("created", now + 60, now),
            "a clock behind the engine's"
        );
        for state in ["exited", "dead", ""] {
            assert!(owner_gone(state, now, now), "{state}");
        }
    }

    #[test]
    fn job_of_reads_label_or_name() {
        let id = JobId::new();
        let mut labels = HashMap::new();
        labels.insert(LABEL_JOB_ID.to_string(), id.to_string());
        assert_eq!(job_of(&labels, &[]), Some(id));
        assert_eq!(job_of(&HashMap::new(), &[format!("/agent-{id}")]), Some(id));
        assert_eq!(
            job_of(&HashMap::new(), &[format!("/agent-pool-{id}")]),
            None
        );
    }
}
