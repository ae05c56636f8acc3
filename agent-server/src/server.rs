//! Wiring: the store, the Docker executor, the LLM chain and the job manager behind the router;
//! graceful shutdown on SIGTERM/SIGINT.

use std::future::Future;
use std::sync::Arc;

use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::cached::CachedStore;
use agent_core::store::sqlite::SqliteStore;
use agent_core::{Executor, JobStore, LlmProvider};
use agent_docker::DockerConfig;
use tokio::net::TcpListener;

use crate::accept::ConnectionLimits;
use crate::config::ServerConfig;
use crate::metrics::{MeteredLlm, Metrics};
use crate::routes::{app, ApiSettings, AppState};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding the address or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Docker executor could not be set up.
    #[error("docker executor: {0}")]
    Executor(#[from] agent_core::SandboxError),
    /// The LLM configuration is invalid.
    #[error("LLM configuration: {0}")]
    Llm(#[from] agent_core::LlmError),
    /// The job store or manager failed.
    #[error(transparent)]
    Core(#[from] agent_core::Error),
}

/// An LLM chain and the names of its providers, in order.
pub type LlmChain = (Arc<dyn LlmProvider>, Vec<String>);

/// The LLM chain from agent-llm's environment variables, each provider wrapped to record metrics.
/// `Ok(None)` when no provider is configured (explicit-steps jobs still run).
pub fn llm_from_env(metrics: &Arc<Metrics>) -> Result<Option<LlmChain>, agent_core::LlmError> {
    // A malformed variable is an error; no provider at all is not (explicit-steps jobs still run).
    let config = agent_llm::LlmConfig::from_env()?;
    if config.configured().is_empty() {
        return Ok(None);
    }
    let chain = config.build()?;
    let names = chain.provider_names();
    let metered: Vec<Arc<dyn LlmProvider>> = chain
        .providers()
        .iter()
        .map(|p| {
            Arc::new(MeteredLlm::new(Arc::clone(p), Arc::clone(metrics))) as Arc<dyn LlmProvider>
        })
        .collect();
    Ok(Some((
        Arc::new(agent_llm::Fallback::new(metered)) as Arc<dyn LlmProvider>,
        names,
    )))
}

/// The Docker executor configured from `config` (and `DOCKER_HOST`, `AGENT_DOCKER_RUNTIME`).
pub async fn docker_executor(config: &ServerConfig) -> Result<Arc<dyn Executor>, ServeError> {
    Ok(Arc::new(build_docker(config).await?))
}

async fn build_docker(config: &ServerConfig) -> Result<agent_docker::DockerExecutor, ServeError> {
    Ok(DockerConfig::from_env()
        .with_image(config.image.clone())
        .with_warm_pool(config.warm_pool)
        .build()
        .await?)
}

/// Opens the store, connects to Docker, reads the LLM chain, starts the job manager (with
/// start-up recovery and the reaper) and returns the handlers' state.
pub async fn build_state(config: &ServerConfig) -> Result<AppState, ServeError> {
    // The job manager's semaphore panics above `MAX_PERMITS`; refuse that here instead.
    if !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&config.max_concurrent_jobs) {
        return Err(ServeError::Config(format!(
            "AGENT_MAX_CONCURRENT_JOBS must be between 1 and {}, not {}",
            tokio::sync::Semaphore::MAX_PERMITS,
            config.max_concurrent_jobs
        )));
    }
    let defaults = config.job_defaults().map_err(ServeError::Config)?;
    let tokens = config.tokens().map_err(ServeError::Config)?;
    let policy = config.operator_policy().map_err(ServeError::Config)?;
    tokio::fs::create_dir_all(&config.output_dir)
        .await
        .map_err(|source| ServeError::Io {
            context: format!("creating {}", config.output_dir.display()),
            source,
        })?;
    restrict(&config.output_dir, 0o700)?;
    let db = config.database_path();
    let sqlite = SqliteStore::open(&db).map_err(agent_core::Error::from)?;
    let (records_bytes, _) = config.record_cache_split();
    let store: Arc<dyn JobStore> = Arc::new(CachedStore::new(sqlite, records_bytes));
    restrict(&db, 0o600)?;
    let docker = build_docker(config).await?;
    let warm = docker.clone();
    let executor: Arc<dyn Executor> = Arc::new(docker);
    let metrics = Arc::new(Metrics::new());
    let llm = llm_from_env(&metrics)?;
    let manager_config = JobManagerConfig {
        max_concurrent_jobs: config.max_concurrent_jobs,
        max_queued_jobs: config.max_queued_jobs,
        artifact_dir: config.artifact_dir(),
        artifacts: config.artifact_store().map_err(ServeError::Config)?,
        retention: config.retention(),
        shutdown_grace: config.shutdown_grace(),
        max_keep_alive: std::time::Duration::from_secs(config.max_keep_alive_secs),
        max_log_bytes: config.policy.max_log_bytes,
        max_export_bytes: config.policy.max_archive_bytes,
        reap_interval: config.reap_interval(),
        executor_wait: config.engine_wait(),
        min_free_bytes: config.min_free_mb.saturating_mul(1 << 20),
        storage_dirs: vec![config.output_dir.clone()],
        max_stored_bytes: config.max_output_bytes,
        // Planned steps are held to the operator's step-timeout maximum, as sent ones are.
        max_step_timeout: Some(policy.maxima().step_timeout),
        ..JobManagerConfig::default()
    };
    let mut builder = JobManager::builder(executor, store).config(manager_config);
    let mut names = Vec::new();
    if let Some((llm, provider_names)) = llm {
        builder = builder.llm(llm);
        names = provider_names;
    }
    let manager = builder.start().await?;
    tracing::info!(
        output_dir = %config.output_dir.display(),
        image = %config.image,
        llm = %if names.is_empty() { "none (explicit steps only)".to_string() } else { names.join(" -> ") },
        auth = tokens.required(),
        tenants = tokens.has_tenants(),
        allowed_images = %policy.images().collect::<Vec<_>>().join(","),
        allow_network = policy.allows_network(),
        "job manager started"
    );
    let settings = ApiSettings {
        api_token: config.token().cloned(),
        tokens,
        public_docs: config.public_docs,
        max_body_bytes: config.max_body_bytes,
        defaults,
        image: Some(config.image.clone()),
        warm_pool: config.warm_pool,
        warm_ready: Some(crate::routes::WarmProbe::new(move || warm.warm_ready())),
        policy,
        inputs: config.input_limits(),
        status_cache_bytes: config.record_cache_split().1,
    };
    Ok(AppState::new(manager, settings, metrics, names))
}

/// Makes `path` readable by its owner only (the output directory holds every job's commands,
/// environment, logs and results).
fn restrict(path: &std::path::Path, mode: u32) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ServeError::Io {
            context: format!("making {} private (mode {mode:o})", path.display()),
            source,
        }
    })
}

/// Threads of the blocking pool when `AGENT_BLOCKING_THREADS` is unset. Store reads run there;
/// the SQLite store keeps 4 idle read connections, so more threads would open and close extra
/// connections under load.
pub const DEFAULT_BLOCKING_THREADS: usize = 4;

/// The Tokio runtime the binaries use: one worker per core, a small blocking pool
/// (`AGENT_BLOCKING_THREADS`, default [`DEFAULT_BLOCKING_THREADS`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let blocking = std::env::var("AGENT_BLOCKING_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(DEFAULT_BLOCKING_THREADS);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking)
        .build()
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting connections,
/// ends live log streams, gives running jobs `grace` to finish (then marks them interrupted and
/// removes their sandboxes) and shuts the executor down. Connections are handled as
/// [`crate::accept`] describes, within `limits`.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    grace: std::time::Duration,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let token = state.shutdown_token().clone();
    let manager = state.manager().clone();
    let router = app(state);
    let stop = token.clone();
    let server = tokio::spawn(crate::accept::serve(listener, router, limits, stop));
    shutdown.await;
    token.cancel();
    if let Err(e) = manager.shutdown(grace).await {
        tracing::error!(error = %e, "job manager shutdown failed");
    }
    // Open connections (a slow download, a keep-alive) get a few seconds more, then we leave.
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("connections still open after shutdown; closing them"),
    }
    tracing::info!("shut down");
    Ok(())
}

/// The connection limits of `config`, after raising the open-files limit.
pub fn connection_limits(config: &ServerConfig) -> Result<ConnectionLimits, ServeError> {
    if config.header_timeout_secs == 0 || config.header_timeout_secs > 3600 {
        return Err(ServeError::Config(format!(
            "AGENT_HEADER_TIMEOUT_SECS must be between 1 and 3600, not {}",
            config.header_timeout_secs
        )));
    }
    let fd_limit = crate::accept::raise_fd_limit();
    let fit = crate::accept::max_connections_for(fd_limit);
    let max_connections = match config.max_connections {
        Some(0) => {
            return Err(ServeError::Config(
                "AGENT_MAX_CONNECTIONS must be at least 1".into(),
            ))
        }
        Some(n) if n > fit => {
            tracing::warn!(
                asked = n,
                fd_limit,
                using = fit,
                "AGENT_MAX_CONNECTIONS is above what the open-files limit allows"
            );
            fit
        }
        Some(n) => n,
        None => fit,
    };
    Ok(ConnectionLimits {
        max_connections,
        header_timeout: std::time::Duration::from_secs(config.header_timeout_secs),
        // The largest body any route takes: a live sandbox's file upload and input files may
        // exceed the JSON limit (each route still enforces its own).
        max_body_bytes: config
            .max_body_bytes
            .max(crate::sandboxes::MAX_UPLOAD_BODY_BYTES)
            .max(
                usize::try_from(crate::uploads::max_upload_bytes(
                    &config.input_limits(),
                    config.max_body_bytes,
                ))
                .unwrap_or(usize::MAX),
            ),
    })
}

/// Runs the server until SIGTERM/SIGINT: builds the state, binds `config.bind`, logs
/// `listening on http://ADDR` and serves.
pub async fn serve(config: ServerConfig) -> Result<(), ServeError> {
    let limits = connection_limits(&config)?;
    let state = build_state(&config).await?;
    let listener = TcpListener::bind(&config.bind)
        .await
        .map_err(|source| ServeError::Io {
            context: format!("binding {}", config.bind),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    tracing::info!(
        %addr,
        max_connections = limits.max_connections,
        header_timeout_secs = limits.header_timeout.as_secs(),
        "listening on http://{addr}"
    );
    serve_on(
        listener,
        state,
        config.shutdown_grace(),
        limits,
        shutdown_signal(),
    )
    .await
}
