//! `agent run`: one job on the local Docker engine, without a server.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;

use agent_core::executor::Capabilities;
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::{Executor, JobId, Sandbox, SandboxError};

use super::args::JobArgs;
use super::progress::Progress;
use super::{fail, print_json, Exit};
use crate::api::{JobDefaults, StatusResponse};
use crate::config::{init_tracing_with_default, LogFormat, ServerConfig};
use crate::metrics::Metrics;
use crate::server::LlmChain;

/// An executor wrapper for `agent run` that never reaps: a local run must not remove the
/// sandboxes of a server running on the same engine.
struct NoReap(Arc<dyn Executor>);

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl Executor for NoReap {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn create(
        &self,
        spec: &agent_core::SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        self.0.create(spec).await
    }
    /// Not forwarded: reaps nothing.
    async fn reap(&self, _live: &HashSet<JobId>) -> Result<usize, SandboxError> {
        Ok(0)
    }
    /// Not forwarded either: removes nothing.
    async fn reap_jobs(&self, _jobs: &HashSet<JobId>) -> Result<usize, SandboxError> {
        Ok(0)
    }
    /// Not forwarded: the engine's other containers are not this run's to settle.
    async fn sandbox_jobs(&self) -> Result<HashSet<JobId>, SandboxError> {
        Ok(HashSet::new())
    }
    async fn ping(&self) -> Result<(), SandboxError> {
        self.0.ping().await
    }
    async fn shutdown(&self) -> Result<(), SandboxError> {
        self.0.shutdown().await
    }
}

/// `agent run`: one job on the local Docker engine, with live progress; writes the ZIP.
pub(super) async fn run_local(args: &JobArgs, out: Option<&Path>, json: bool) -> Exit {
    // Progress goes to the terminal; only warnings from the libraries.
    init_tracing_with_default(LogFormat::Text, "warn");
    let req = match args.request() {
        Ok(r) => r,
        Err(e) => return fail(Exit::Usage, e),
    };
    let (config, defaults, llm) = match local_setup() {
        Ok(setup) => setup,
        Err(exit) => return exit,
    };
    let spec = match req.into_spec(&defaults) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Usage, e.detail.message),
    };
    if spec.needs_llm() && llm.is_none() {
        return fail(
            Exit::Usage,
            format!(
                "a prompt needs an LLM: {}; or run explicit steps with --steps FILE",
                agent_llm::NOT_CONFIGURED_HELP
            ),
        );
    }
    let local = match LocalManager::start(&config, 1, llm).await {
        Ok(m) => m,
        Err(exit) => return exit,
    };
    let manager = local.manager.clone();
    let exit = run_with_manager(&manager, spec, out, json).await;
    local.shutdown().await;
    exit
}

/// `agent mcp`: the MCP tools over stdio, on a job manager of this process (see
/// [`crate::mcp`]); ends when the client closes stdin or on SIGTERM/SIGINT, destroying the
/// sandboxes left.
pub(super) async fn mcp_stdio() -> Exit {
    // stdout carries the protocol: logs (warnings only by default) go to stderr.
    init_tracing_with_default(LogFormat::Text, "warn");
    let (config, defaults, llm) = match local_setup() {
        Ok(setup) => setup,
        Err(exit) => return exit,
    };
    let policy = match config.operator_policy() {
        Ok(p) => p,
        Err(e) => return fail(Exit::Usage, e),
    };
    let max = config
        .max_concurrent_jobs
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let local = match LocalManager::start(&config, max, llm).await {
        Ok(m) => m,
        Err(exit) => return exit,
    };
    let tools = crate::mcp::McpTools::new(local.manager.clone(), defaults).with_policy(policy);
    // A desktop client may end it with a signal rather than by closing stdin: the sandboxes it
    // left are removed either way (nothing else would: this process's executor never reaps).
    let exit = tokio::select! {
        served = crate::mcp::serve_stdio(tools) => match served {
            Ok(()) => Exit::Ok,
            Err(e) => fail(Exit::Internal, e),
        },
        () = crate::server::shutdown_signal() => Exit::Ok,
    };
    local.shutdown().await;
    exit
}

/// The server's settings from the environment (without a warm pool: it would only start
/// containers nobody uses), the job defaults, and the LLM chain if one is configured.
fn local_setup() -> Result<(ServerConfig, JobDefaults, Option<LlmChain>), Exit> {
    let mut config = ServerConfig::from_env().map_err(|e| fail(Exit::Usage, e))?;
    config.warm_pool = 0;
    let defaults = config.job_defaults().map_err(|e| fail(Exit::Usage, e))?;
    let llm =
        crate::server::llm_from_env(&Arc::new(Metrics::new())).map_err(|e| fail(Exit::Usage, e))?;
    Ok((config, defaults, llm))
}

/// A job manager of this process on the local Docker engine: jobs in memory, archives in a
/// temporary directory, and an executor that never reaps (a server on the same engine keeps its
/// sandboxes).
struct LocalManager {
    manager: JobManager,
    /// Holds the archives; removed on drop.
    _scratch: tempfile::TempDir,
}

impl LocalManager {
    /// Connects to Docker (exit 3 when it does not answer) and starts the manager.
    async fn start(
        config: &ServerConfig,
        max_concurrent_jobs: usize,
        llm: Option<LlmChain>,
    ) -> Result<Self, Exit> {
        let executor = crate::server::docker_executor(config)
            .await
            .map_err(|e| fail(Exit::Unreachable, format!("{e} (is Docker running?)")))?;
        executor.ping().await.map_err(|e| {
            fail(
                Exit::Unreachable,
                format!("the Docker engine does not answer: {e}"),
            )
        })?;
        let scratch = tempfile::tempdir().map_err(|e| {
            fail(
                Exit::Internal,
                format!("creating a temporary directory: {e}"),
            )
        })?;
        let mut builder =
            JobManager::builder(Arc::new(NoReap(executor)), Arc::new(MemoryStore::new())).config(
                JobManagerConfig {
                    max_concurrent_jobs,
                    retention: None,
                    ..JobManagerConfig::in_dir(scratch.path())
                },
            );
        if let Some((llm, _)) = llm {
            builder = builder.llm(llm);
        }
        let manager = builder.start().await.map_err(|e| fail(Exit::Internal, e))?;
        Ok(Self {
            manager,
            _scratch: scratch,
        })
    }

    /// Ends what still runs (live sandboxes end `interrupted`, their containers removed).
    async fn shutdown(self) {
        if let Err(e) = self.manager.shutdown(Duration::from_secs(5)).await {
            eprintln!("warning: shutting down: {e}");
        }
    }
}

async fn run_with_manager(
    manager: &JobManager,
    spec: agent_core::JobSpec,
    out: Option<&Path>,
    json: bool,
) -> Exit {
    let id = match manager.submit(spec).await {
        Ok(id) => id,
        Err(e) => return fail(Exit::Usage, e),
    };
    let mut events = match manager.subscribe(id, 0).await {
        Ok(s) => s,
        Err(e) => return fail(Exit::Internal, e),
    };
    let mut progress = Progress::new(json);
    let started = Instant::now();
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut cancelling = false;
    loop {
        tokio::select! {
            item = events.next() => match item {
                Some(Ok(ev)) => {
                    progress.event(&ev);
                    if ev.is_final() {
                        break;
                    }
                }
                Some(Err(e)) => return fail(Exit::Internal, e),
                None => break,
            },
            _ = &mut ctrl_c, if !cancelling => {
                cancelling = true;
                progress.line("cancelling (Ctrl-C)…");
                let m = manager.clone();
                tokio::spawn(async move { let _ = m.cancel(id).await; });
            }
        }
    }
    let job = match manager.wait(id).await {
        Ok(j) => j,
        Err(e) => return fail(Exit::Internal, e),
    };
    let dest = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("job-{id}.zip")));
    let mut zip_path = None;
    if let Some(artifact) = &job.artifact {
        match manager.artifacts().download_to(&artifact.path, &dest).await {
            Ok(Some(_)) => zip_path = Some(dest.clone()),
            Ok(None) => eprintln!("error: the job's archive is missing from its store"),
            Err(e) => eprintln!("error: writing {}: {e}", dest.display()),
        }
    }
    let status = StatusResponse::from_job(&job);
    if json {
        print_json(&serde_json::json!({
            "job": status,
            "zip": zip_path,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }));
    } else {
        // The reason is part of the final message whether or not stderr is a terminal: scripts
        // and CI logs see no progress bars.
        let why = job
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let elapsed = started.elapsed().as_secs_f64();
        match &zip_path {
            Some(p) => {
                eprintln!("job {id} {} in {elapsed:.1}s{why}; result:", job.status);
                println!("{}", p.display());
            }
            None => eprintln!(
                "job {id} {} in {elapsed:.1}s{why}; no result archive",
                job.status
            ),
        }
    }
    Exit::for_status(job.status)
}
