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
use crate::api::StatusResponse;
use crate::config::{init_tracing_with_default, LogFormat, ServerConfig};
use crate::metrics::Metrics;

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
    let mut config = match ServerConfig::from_env() {
        Ok(c) => c,
        Err(e) => return fail(Exit::Usage, e),
    };
    // One job: a warm pool would only start a second container that nobody uses.
    config.warm_pool = 0;
    let defaults = match config.job_defaults() {
        Ok(d) => d,
        Err(e) => return fail(Exit::Usage, e),
    };
    let spec = match req.into_spec(&defaults) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Usage, e.detail.message),
    };
    let metrics = Arc::new(Metrics::new());
    let llm = match crate::server::llm_from_env(&metrics) {
        Ok(l) => l,
        Err(e) => return fail(Exit::Usage, e),
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
    let executor = match crate::server::docker_executor(&config).await {
        Ok(e) => e,
        Err(e) => return fail(Exit::Unreachable, format!("{e} (is Docker running?)")),
    };
    if let Err(e) = executor.ping().await {
        return fail(
            Exit::Unreachable,
            format!("the Docker engine does not answer: {e}"),
        );
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return fail(
                Exit::Internal,
                format!("creating a temporary directory: {e}"),
            )
        }
    };
    let mut builder = JobManager::builder(Arc::new(NoReap(executor)), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig {
            max_concurrent_jobs: 1,
            artifact_dir: scratch.path().join("artifacts"),
            retention: None,
            ..JobManagerConfig::default()
        });
    if let Some((llm, _)) = llm {
        builder = builder.llm(llm);
    }
    let manager = match builder.start().await {
        Ok(m) => m,
        Err(e) => return fail(Exit::Internal, e),
    };
    let exit = run_with_manager(&manager, spec, out, json).await;
    if let Err(e) = manager.shutdown(Duration::from_secs(5)).await {
        eprintln!("warning: shutting down: {e}");
    }
    exit
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
