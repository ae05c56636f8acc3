//! [`DockerConfig`]: how sandboxes are made and hardened. It is also the executor's builder.

use std::collections::BTreeMap;
use std::time::Duration;

use agent_core::{ResourceLimits, SandboxError, SandboxErrorKind};

/// The image used when a job names none (override with env `AGENT_IMAGE`).
pub const DEFAULT_IMAGE: &str = "containerized-agent:latest";

/// The image for jobs that ask for services (a desktop, Jupyter Lab) and name no image (override
/// with env `AGENT_DESKTOP_IMAGE`; `none` turns services off).
pub const DEFAULT_DESKTOP_IMAGE: &str = "containerized-agent-desktop:latest";

/// The seccomp profile of job containers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// The engine's default profile (recommended).
    #[default]
    Default,
    /// No seccomp filtering at all (weakens isolation).
    Unconfined,
    /// A custom profile: the JSON text of the profile (not a path).
    Custom(String),
}

/// Configuration of a [`DockerExecutor`](crate::DockerExecutor); also its builder.
///
/// Every hardening setting is here, with the safe value as the default; nothing set here is
/// silently dropped — it is sent to the engine as is, and the engine refuses what it cannot do.
///
/// ```
/// use agent_docker::DockerConfig;
/// let config = DockerConfig::default()
///     .with_image("containerized-agent:latest")
///     .with_warm_pool(2)
///     .with_max_concurrent_creates(4);
/// assert_eq!(config.user, "1000:1000");
/// assert!(config.read_only_rootfs);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DockerConfig {
    /// Engine address: `unix:///path`, a socket path, or `tcp://host:port`. `None`: env
    /// `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// Image for jobs that name none. Default [`DEFAULT_IMAGE`].
    pub image: String,
    /// `uid:gid` the container runs as. Default `1000:1000` (never root).
    pub user: String,
    /// Run containers privileged. Default false; `true` removes nearly all isolation.
    pub privileged: bool,
    /// Mount the image's root filesystem read-only. Default true.
    pub read_only_rootfs: bool,
    /// Capabilities dropped. Default `["ALL"]`.
    pub cap_drop: Vec<String>,
    /// Capabilities added back. Default none.
    pub cap_add: Vec<String>,
    /// Set `no-new-privileges` (setuid binaries gain nothing). Default true.
    pub no_new_privileges: bool,
    /// Seccomp profile. Default: the engine's default profile.
    pub seccomp: SeccompProfile,
    /// Run an init process as PID 1 (reaps zombies, forwards signals). Default true.
    pub init: bool,
    /// `RLIMIT_NOFILE` (soft = hard). Default 4096.
    pub nofile: u64,
    /// `RLIMIT_FSIZE` in bytes: the largest file a step can write. `None`: the job's workspace
    /// size. Default `None`.
    pub fsize_bytes: Option<u64>,
    /// `RLIMIT_CORE` in bytes. Default 0 (no core dumps).
    pub core_bytes: u64,
    /// Swap allowed on top of the memory limit. Default 0 (memory-swap = memory).
    pub extra_swap_bytes: u64,
    /// Overrides the job's `limits.pids`. Default `None` (use the job's, 256 by default).
    pub pids_limit: Option<u32>,
    /// Allow executing files in `/workspace`. Default true (scripts the steps write must run).
    pub workspace_exec: bool,
    /// Allow executing files in `/tmp`. Default true.
    pub tmp_exec: bool,
    /// OCI runtime (`runc`, `crun`, ...). `None`: the engine's default.
    pub runtime: Option<String>,
    /// Log driver of job containers. Default `none`: output travels over the attach stream and
    /// is capped there; the engine keeps no second copy on disk.
    pub log_driver: String,
    /// Whether jobs may ask for the `bridge` network. Default true; when false such a job is
    /// refused (never silently run with another network).
    pub allow_bridge_network: bool,
    /// The limits warm-pool containers are made with; jobs with other limits get a cold
    /// container. Default [`ResourceLimits::default`].
    pub default_limits: ResourceLimits,
    /// At most this many containers are being created and started at once. Default 8.
    pub max_concurrent_creates: usize,
    /// Number of pre-started containers kept ready (0 = no pool). Default 0.
    pub warm_pool_size: usize,
    /// Number of containers kept **created but not started** (0 = none). Default 0.
    ///
    /// Such a container runs no process and holds no memory (only its empty writable layer), so
    /// keeping a few costs next to nothing; a job that takes one skips the engine's create and
    /// only starts it. Taken after the warm pool, under the same conditions (default image,
    /// limits and network, no services, no labels). Each is replaced after 4 minutes unused, well
    /// before another server's reaper would take an unstarted container for abandoned.
    pub prepared_pool_size: usize,
    /// How long a new container may take to report ready. Default 60 s.
    pub startup_timeout: Duration,
    /// Build the default image with the offline build script when it is missing. Default true.
    pub auto_build_image: bool,
    /// Extra labels for every container (the `agent.*` labels cannot be overridden).
    pub labels: BTreeMap<String, String>,
    /// A scope for sharing one engine between several independent servers (or test runs):
    /// containers get the label `agent.scope=<scope>` and [`reap`](agent_core::Executor::reap)
    /// only considers containers of the same scope. `None` (default): reap every
    /// `agent.managed` container. Env `AGENT_DOCKER_SCOPE`.
    pub scope: Option<String>,
    /// Ports inside every sandbox that [`Sandbox::connect`](agent_core::Sandbox::connect) may
    /// open besides those of the sandbox's services. Default none.
    pub tunnel_ports: Vec<u16>,
    /// The image for jobs that ask for services and name no image. Default
    /// [`DEFAULT_DESKTOP_IMAGE`]; `None`: this executor runs no services. The executor offers
    /// services ([`Capabilities::services`](agent_core::executor::Capabilities)) only when the
    /// image is on the engine when it connects.
    pub services_image: Option<String>,
    /// How long a service may take to listen once started. Default 120 s.
    pub services_timeout: Duration,
    /// How tunnels ([`Sandbox::connect`](agent_core::Sandbox::connect)) reach the host. Default
    /// [`TunnelSockets::Auto`]. Env `AGENT_TUNNEL_SOCKETS` (`auto`, `off` or a directory).
    pub tunnel_sockets: TunnelSockets,
}

/// How a sandbox's tunnels reach the host ([`DockerConfig::tunnel_sockets`]).
///
/// A tunnel either has a unix-socket connection of its own, handed over through a directory
/// bind-mounted read-only into the sandbox ([`agent_core::supervisor::Handoff`]; the sandbox
/// keeps its network, `none` by default), or is multiplexed on the supervisor's attach stream.
/// Own connections are several times faster; they need the engine on this host, as the
/// directory must be the same on both sides. Only sandboxes with ports open to tunnels (services,
/// [`DockerConfig::tunnel_ports`]) get the mount, and a sandbox whose socket cannot be reached
/// uses the attach stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelSockets {
    /// Own connections, in a private temporary directory, when the engine is reached through a
    /// unix socket (a local engine); else the attach stream.
    #[default]
    Auto,
    /// Own connections, under this directory on the engine's host (created if missing).
    Dir(std::path::PathBuf),
    /// Always the attach stream.
    Off,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            docker_host: None,
            image: DEFAULT_IMAGE.to_string(),
            user: "1000:1000".to_string(),
            privileged: false,
            read_only_rootfs: true,
            cap_drop: vec!["ALL".to_string()],
            cap_add: Vec::new(),
            no_new_privileges: true,
            seccomp: SeccompProfile::Default,
            init: true,
            nofile: 4096,
            fsize_bytes: None,
            core_bytes: 0,
            extra_swap_bytes: 0,
            pids_limit: None,
            workspace_exec: true,
            tmp_exec: true,
            runtime: None,
            log_driver: "none".to_string(),
            allow_bridge_network: true,
            default_limits: ResourceLimits::default(),
            max_concurrent_creates: 8,
            warm_pool_size: 0,
            prepared_pool_size: 0,
            startup_timeout: Duration::from_secs(60),
            auto_build_image: true,
            labels: BTreeMap::new(),
            scope: None,
            tunnel_ports: Vec::new(),
            services_image: Some(DEFAULT_DESKTOP_IMAGE.to_string()),
            services_timeout: Duration::from_secs(120),
            tunnel_sockets: TunnelSockets::Auto,
        }
    }
}

impl DockerConfig {
    /// Defaults, with `DOCKER_HOST`, `AGENT_IMAGE`, `AGENT_WARM_POOL` (pool size), `AGENT_PREPARED_POOL`,
    /// `AGENT_DOCKER_RUNTIME`, `AGENT_DOCKER_SCOPE`, `AGENT_DESKTOP_IMAGE` and `AGENT_TUNNEL_SOCKETS` taken from the
    /// environment when set.
    pub fn from_env() -> Self {
        let mut config = Self::default();
        if let Some(host) = non_empty_env("DOCKER_HOST") {
            config.docker_host = Some(host);
        }
        if let Some(image) = non_empty_env("AGENT_IMAGE") {
            config.image = image;
        }
        if let Some(n) = non_empty_env("AGENT_WARM_POOL").and_then(|v| v.parse().ok()) {
            config.warm_pool_size = n;
        }
        if let Some(n) = non_empty_env("AGENT_PREPARED_POOL").and_then(|v| v.parse().ok()) {
            config.prepared_pool_size = n;
        }
        if let Some(runtime) = non_empty_env("AGENT_DOCKER_RUNTIME") {
            config.runtime = Some(runtime);
        }
        if let Some(scope) = non_empty_env("AGENT_DOCKER_SCOPE") {
            config.scope = Some(scope);
        }
        if let Some(image) = non_empty_env("AGENT_DESKTOP_IMAGE") {
            config.services_image = (image != "none").then_some(image);
        }
        if let Some(sockets) = non_empty_env("AGENT_TUNNEL_SOCKETS") {
            config.tunnel_sockets = match sockets.as_str() {
                "auto" => TunnelSockets::Auto,
                "off" => TunnelSockets::Off,
                dir => TunnelSockets::Dir(dir.into()),
            };
        }
        config
    }

    /// Sets how tunnels reach the host.
    pub fn with_tunnel_sockets(mut self, sockets: TunnelSockets) -> Self {
        self.tunnel_sockets = sockets;
        self
    }
    /// Sets the engine address.
    pub fn with_docker_host(mut self, host: impl Into<String>) -> Self {
        self.docker_host = Some(host.into());
        self
    }
    /// Sets the default image.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = image.into();
        self
    }
    /// Sets the `uid:gid` containers run as.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }
    /// Runs containers privileged (dangerous; off by default).
    pub fn with_privileged(mut self, privileged: bool) -> Self {
        self.privileged = privileged;
        self
    }
    /// Read-only root filesystem on or off.
    pub fn with_read_only_rootfs(mut self, read_only: bool) -> Self {
        self.read_only_rootfs = read_only;
        self
    }
    /// Sets the dropped capabilities.
    pub fn with_cap_drop<I, S>(mut self, caps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cap_drop = caps.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the capabilities added back.
    pub fn with_cap_add<I, S>(mut self, caps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cap_add = caps.into_iter().map(Into::into).collect();
        self
    }
    /// `no-new-privileges` on or off.
    pub fn with_no_new_privileges(mut self, on: bool) -> Self {
        self.no_new_privileges = on;
        self
    }
    /// Sets the seccomp profile.
    pub fn with_seccomp(mut self, profile: SeccompProfile) -> Self {
        self.seccomp = profile;
        self
    }
    /// Init process on or off. Without it the supervisor is PID 1 and orphans stay zombies.
    pub fn with_init(mut self, init: bool) -> Self {
        self.init = init;
        self
    }
    /// Sets `RLIMIT_NOFILE`.
    pub fn with_nofile(mut self, nofile: u64) -> Self {
        self.nofile = nofile;
        self
    }
    /// Sets `RLIMIT_FSIZE` in bytes.
    pub fn with_fsize_bytes(mut self, bytes: u64) -> Self {
        self.fsize_bytes = Some(bytes);
        self
    }
    /// Sets `RLIMIT_CORE` in bytes.
    pub fn with_core_bytes(mut self, bytes: u64) -> Self {
        self.core_bytes = bytes;
        self
    }
    /// Allows swap on top of the memory limit.
    pub fn with_extra_swap_bytes(mut self, bytes: u64) -> Self {
        self.extra_swap_bytes = bytes;
        self
    }
    /// Overrides every job's pids limit.
    pub fn with_pids_limit(mut self, pids: u32) -> Self {
        self.pids_limit = Some(pids);
        self
    }
    /// Allows or forbids executing files in `/workspace`.
    pub fn with_workspace_exec(mut self, exec: bool) -> Self {
        self.workspace_exec = exec;
        self
    }
    /// Allows or forbids executing files in `/tmp`.
    pub fn with_tmp_exec(mut self, exec: bool) -> Self {
        self.tmp_exec = exec;
        self
    }
    /// Sets the OCI runtime (e.g. `crun`).
    pub fn with_runtime(mut self, runtime: impl Into<String>) -> Self {
        self.runtime = Some(runtime.into());
        self
    }
    /// Sets the log driver of job containers.
    pub fn with_log_driver(mut self, driver: impl Into<String>) -> Self {
        self.log_driver = driver.into();
        self
    }
    /// Allows or refuses jobs asking for the bridge network.
    pub fn with_allow_bridge_network(mut self, allow: bool) -> Self {
        self.allow_bridge_network = allow;
        self
    }
    /// Sets the limits of warm-pool containers.
    pub fn with_default_limits(mut self, limits: ResourceLimits) -> Self {
        self.default_limits = limits;
        self
    }
    /// Sets how many containers may be created at once.
    pub fn with_max_concurrent_creates(mut self, n: usize) -> Self {
        self.max_concurrent_creates = n;
        self
    }
    /// Sets the image of jobs with services (`None`: no services).
    pub fn with_services_image(mut self, image: Option<String>) -> Self {
        self.services_image = image;
        self
    }

    /// Sets how long a service may take to listen.
    pub fn with_services_timeout(mut self, timeout: Duration) -> Self {
        self.services_timeout = timeout;
        self
    }

    /// Allows tunnels to these ports of every sandbox (besides its services' ports).
    pub fn with_tunnel_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.tunnel_ports = ports.into_iter().collect();
        self
    }
    /// Sets how many containers are kept created but not started (0 = none).
    pub fn with_prepared_pool(mut self, size: usize) -> Self {
        self.prepared_pool_size = size;
        self
    }
    /// Sets the warm pool size (0 = off).
    pub fn with_warm_pool(mut self, size: usize) -> Self {
        self.warm_pool_size = size;
        self
    }
    /// Sets how long a container may take to become ready.
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
    /// Turns building the missing default image on or off.
    pub fn with_auto_build_image(mut self, on: bool) -> Self {
        self.auto_build_image = on;
        self
    }
    /// Sets the reaping scope (see [`DockerConfig::scope`]).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
    /// Adds a label to every container.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Connects to the engine and returns the executor (same as
    /// [`DockerExecutor::connect`](crate::DockerExecutor::connect)).
    pub async fn build(self) -> Result<crate::DockerExecutor, SandboxError> {
        crate::DockerExecutor::connect(self).await
    }

    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |m: String| Err(SandboxError::new(SandboxErrorKind::Invalid, m));
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return invalid(format!("image {:?} is not an image reference", self.image));
        }
        if self.numeric_ids().is_none() {
            return invalid(format!(
                "user {:?} is not a numeric `uid[:gid]` (it also owns the tmpfs /workspace)",
                self.user
            ));
        }
        if self.max_concurrent_creates == 0 {
            return invalid("max_concurrent_creates must be at least 1".into());
        }
        if self.nofile == 0 {
            return invalid("nofile must be at least 1".into());
        }
        if self.log_driver.trim().is_empty() {
            return invalid("log_driver must not be empty".into());
        }
        if let Some(scope) = &self.scope {
            if scope.is_empty()
                || scope.contains(['=', ','])
                || scope.chars().any(char::is_whitespace)
            {
                return invalid(format!("scope {scope:?} must be a non-empty word"));
            }
        }
        if let TunnelSockets::Dir(dir) = &self.tunnel_sockets {
            let text = dir.to_string_lossy();
            if !dir.is_absolute() || text.contains([':', ',']) {
                return invalid(format!(
                    "tunnel socket directory {text:?} must be an absolute path without ':' or ','"
                ));
            }
        }
        for key in self.labels.keys() {
            if key.starts_with("agent.") {
                return invalid(format!("label {key:?} is reserved (agent.*)"));
            }
        }
        self.default_limits
            .validate()
            .map_err(|e| SandboxError::new(SandboxErrorKind::Invalid, e.to_string()))
    }

    /// The numeric uid and gid, when `user` is numeric (used to own the tmpfs mounts).
    pub(crate) fn numeric_ids(&self) -> Option<(u32, u32)> {
        let mut it = self.user.split(':');
        let uid: u32 = it.next()?.parse().ok()?;
        let gid: u32 = match it.next() {
            Some(g) => g.parse().ok()?,
            None => uid,
        };
        if it.next().is_some() {
            return None;
        }
        Some((uid, gid))
    }
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_hardened_and_valid() {
        let c = DockerConfig::default();
        c.validate().unwrap();
        assert!(!c.privileged && c.read_only_rootfs && c.no_new_privileges && c.init);
        assert_eq!(c.cap_drop, vec!["ALL"]);
        assert_eq!(c.numeric_ids(), Some((1000, 1000)));
        assert_eq!(c.core_bytes, 0);
        assert_eq!(c.seccomp, SeccompProfile::Default);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(DockerConfig::default()
            .with_image("a b")
            .validate()
            .is_err());
        assert!(DockerConfig::default().with_user("").validate().is_err());
        assert!(DockerConfig::default()
            .with_user("1:2:3")
            .validate()
            .is_err());
        assert!(DockerConfig::default()
            .with_max_concurrent_creates(0)
            .validate()
            .is_err());
        assert!(DockerConfig::default()
            .with_label("agent.managed", "false")
            .validate()
            .is_err());
        assert_eq!(
            DockerConfig::default().with_user("1001").numeric_ids(),
            Some((1001, 1001))
        );
        assert_eq!(
            DockerConfig::default().with_user("agent").numeric_ids(),
            None
        );
    }
}
