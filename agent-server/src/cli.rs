//! The `agent` command line: run a job locally, serve the API, or talk to a server.
//!
//! Exit codes: 0 success; 1 the job ended but did not succeed (failed, cancelled, timed out,
//! interrupted); 2 usage error or a request the server refused (400/401/409/413/415/422);
//! 3 the server (or the Docker engine, for `agent run`) cannot be reached; 4 no such job;
//! 5 an internal error.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use agent_core::executor::Capabilities;
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::{
    EventKind, Executor, JobEvent, JobId, JobStatus, NetworkMode, Plan, Sandbox, SandboxError, Step,
};
use agent_llm::SecretString;

use crate::api::{ScheduleRequest, StatusResponse};
use crate::client::{Client, ClientError};
use crate::config::{init_tracing, init_tracing_with_default, LogFormat, ServerConfig};
use crate::logs::{describe_step, LogFormatter};
use crate::metrics::Metrics;

/// Process exit codes of `agent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The job ended without succeeding.
    JobFailed = 1,
    /// Bad usage or a refused request.
    Usage = 2,
    /// The server or the Docker engine cannot be reached.
    Unreachable = 3,
    /// No such job.
    NotFound = 4,
    /// Anything else.
    Internal = 5,
}

impl Exit {
    /// The exit code for a job's final status.
    pub fn for_status(status: JobStatus) -> Self {
        if status == JobStatus::Succeeded {
            Exit::Ok
        } else {
            Exit::JobFailed
        }
    }
}

impl From<&ClientError> for Exit {
    fn from(e: &ClientError) -> Self {
        match e {
            ClientError::Unreachable { .. } => Exit::Unreachable,
            ClientError::Api { status: 404, .. } => Exit::NotFound,
            ClientError::Api { status, .. } if (400..500).contains(status) => Exit::Usage,
            ClientError::Io { .. } => Exit::Usage,
            _ => Exit::Internal,
        }
    }
}

/// `agent`: run agent jobs in Docker sandboxes, locally or through an agent server.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about, long_about = None)]
pub struct Cli {
    /// The server for submit/status/jobs/logs/cancel/download.
    #[arg(
        long,
        global = true,
        env = "AGENT_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
    /// Bearer token for the server.
    #[arg(long, global = true, env = "AGENT_API_TOKEN", hide_env_values = true)]
    pub token: Option<SecretString>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options describing a job (shared by `run` and `submit`).
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// The task, planned by the LLM (needs a provider key, e.g. ALCHEMYST_API_KEY or GEMINI_API_KEY).
    pub prompt: Option<String>,
    /// A plan file: `{"steps":[…]}` or a bare array of steps; runs without an LLM.
    #[arg(long, value_name = "FILE")]
    pub steps: Option<PathBuf>,
    /// Timeout of the whole job, in seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Timeout of each step, in seconds.
    #[arg(long, value_name = "SECS")]
    pub step_timeout: Option<u64>,
    /// Sandbox network: none or bridge.
    #[arg(long)]
    pub network: Option<NetworkMode>,
    /// Container image.
    #[arg(long)]
    pub image: Option<String>,
    /// Environment variable for the steps (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the REST server (same as the `agent-server` binary).
    Serve(ServerConfig),
    /// Run one job here, without a server: a sandbox on the local Docker engine; writes the ZIP.
    Run {
        /// The job.
        #[command(flatten)]
        job: JobArgs,
        /// Where to write the result ZIP (default: `./job-<id>.zip`).
        #[arg(long, short = 'o', value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Check the server: exit 0 when it and its Docker engine answer, 3 otherwise.
    Health,
    /// Submit a job to the server and print its id.
    Submit {
        /// The job.
        #[command(flatten)]
        job: JobArgs,
        /// Follow the job's log until it ends; the exit code reflects its status.
        #[arg(long)]
        wait: bool,
    },
    /// Show a job's status.
    Status {
        /// The job id.
        id: String,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs with this status (comma-separated for several).
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// How many to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Print a job's log.
    Logs {
        /// The job id.
        id: String,
        /// Follow it live until the job ends (Server-Sent Events).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Download a job's result ZIP.
    Download {
        /// The job id.
        id: String,
        /// Where to write it (default: `./job-<id>.zip`).
        #[arg(long, short = 'o', value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

fn fail(exit: Exit, message: impl std::fmt::Display) -> Exit {
    eprintln!("error: {message}");
    exit
}

fn client_fail(e: &ClientError) -> Exit {
    let exit = Exit::from(e);
    match e {
        ClientError::Api { error, .. } if error.field.is_some() => eprintln!(
            "error: {} (field: {})",
            error.message,
            error.field.as_deref().unwrap_or("")
        ),
        _ => eprintln!("error: {e}"),
    }
    exit
}

/// A client call's result, its error reported on stderr and turned into the exit code.
fn reported<T>(result: Result<T, ClientError>) -> Result<T, Exit> {
    result.map_err(|e| client_fail(&e))
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: {e}"),
    }
}

/// Reads a plan file: `{"steps":[…]}` (a plan, the summary optional) or a bare array of steps.
pub fn read_plan(path: &Path) -> Result<Vec<Step>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let steps = if value.is_array() {
        serde_path_to_error::deserialize::<_, Vec<Step>>(value).map_err(|e| {
            format!(
                "{}: steps{}: {}",
                path.display(),
                path_suffix(e.path()),
                e.inner()
            )
        })?
    } else {
        serde_path_to_error::deserialize::<_, Plan>(value)
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))?
            .steps
    };
    if steps.is_empty() {
        return Err(format!("{} has no steps", path.display()));
    }
    Ok(steps)
}

fn path_suffix(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

impl JobArgs {
    fn request(&self) -> Result<ScheduleRequest, String> {
        if self.prompt.is_none() && self.steps.is_none() {
            return Err("give a prompt or --steps FILE".into());
        }
        let steps = self.steps.as_deref().map(read_plan).transpose()?;
        let mut env = BTreeMap::new();
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
            env.insert(k.to_string(), v.to_string());
        }
        Ok(ScheduleRequest {
            prompt: self.prompt.clone(),
            steps,
            timeout_secs: self.timeout,
            step_timeout_secs: self.step_timeout,
            network: self.network,
            image: self.image.clone(),
            env: (!env.is_empty()).then_some(env),
        })
    }
}

fn parse_id(id: &str) -> Result<JobId, Exit> {
    id.parse::<JobId>().map_err(|e| fail(Exit::Usage, e))
}

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> Exit {
    run_command(cli).await.unwrap_or_else(|exit| exit)
}

/// The CLI's work; `Err` carries the exit code of a failure already reported on stderr.
async fn run_command(cli: Cli) -> Result<Exit, Exit> {
    let client = || Client::new(&cli.url, cli.token.clone()).map_err(|e| client_fail(&e));
    let exit = match cli.command {
        Command::Serve(config) => {
            init_tracing(config.log_format);
            match crate::server::serve(config).await {
                Ok(()) => Exit::Ok,
                Err(e) => fail(Exit::Internal, e),
            }
        }
        Command::Run { ref job, ref out } => run_local(job, out.as_deref(), cli.json).await,
        Command::Health => {
            let h = reported(client()?.health().await)?;
            if cli.json {
                print_json(&h);
            } else {
                let llm = if h.llm_providers.is_empty() {
                    "none".to_string()
                } else {
                    h.llm_providers.join(" -> ")
                };
                println!(
                    "{} {} (version {}): {} {}, LLM: {llm}, {} queued, {} running",
                    h.service,
                    h.status,
                    h.version,
                    h.executor.name,
                    if h.executor.ok { "ok" } else { "NOT answering" },
                    h.queued,
                    h.running
                );
                if let Some(e) = &h.executor.error {
                    println!("  {e}");
                }
            }
            if h.executor.ok {
                Exit::Ok
            } else {
                Exit::Unreachable
            }
        }
        Command::Submit { ref job, wait } => {
            let req = job.request().map_err(|e| fail(Exit::Usage, e))?;
            let client = client()?;
            let resp = reported(client.schedule(&req).await)?;
            if !wait {
                if cli.json {
                    print_json(&resp);
                } else {
                    println!("{}", resp.job_id);
                }
                return Ok(Exit::Ok);
            }
            if !cli.json {
                eprintln!("job {} queued", resp.job_id);
            }
            follow_remote(&client, resp.job_id, cli.json, !cli.json).await
        }
        Command::Status { ref id } => {
            let id = parse_id(id)?;
            let client = client()?;
            let status = reported(client.status(id).await)?;
            if cli.json {
                print_json(&status);
            } else {
                print_status(&status, client.base_url());
            }
            Exit::Ok
        }
        Command::Jobs {
            ref status,
            limit,
            offset,
        } => {
            let page = reported(client()?.jobs(status.as_deref(), limit, offset).await)?;
            if cli.json {
                print_json(&page);
            } else {
                println!(
                    "{:<36}  {:<11}  {:<20}  {:>5}  PROMPT",
                    "JOB", "STATUS", "CREATED", "STEPS"
                );
                for j in &page.jobs {
                    let prompt: String = j.prompt.chars().take(60).collect();
                    println!(
                        "{:<36}  {:<11}  {:<20}  {:>5}  {}",
                        j.job_id,
                        j.status,
                        j.created_at.format("%Y-%m-%d %H:%M:%S"),
                        j.steps,
                        prompt.replace('\n', " ")
                    );
                }
                println!("({} of {} jobs)", page.jobs.len(), page.total);
            }
            Exit::Ok
        }
        Command::Logs { ref id, follow } => {
            let id = parse_id(id)?;
            let client = client()?;
            if follow {
                follow_remote(&client, id, cli.json, true).await
            } else {
                let mut stdout = tokio::io::stdout();
                reported(client.logs_to(id, &mut stdout).await)?;
                Exit::Ok
            }
        }
        Command::Cancel { ref id } => {
            let id = parse_id(id)?;
            let r = reported(client()?.cancel(id).await)?;
            if cli.json {
                print_json(&r);
            } else {
                println!("job {} {}", r.job_id, r.status);
            }
            Exit::Ok
        }
        Command::Download { ref id, ref out } => {
            let id = parse_id(id)?;
            let path = out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("job-{id}.zip")));
            let bytes = reported(client()?.download(id, &path).await)?;
            if cli.json {
                print_json(&serde_json::json!({"job_id": id, "path": path, "bytes": bytes}));
            } else {
                println!("{} ({bytes} bytes)", path.display());
            }
            Exit::Ok
        }
    };
    Ok(exit)
}

async fn follow_remote(client: &Client, id: JobId, json: bool, print_text: bool) -> Exit {
    let mut events = match client.follow(id, 0).await {
        Ok(s) => Box::pin(s),
        Err(e) => return client_fail(&e),
    };
    let mut fmt = LogFormatter::new();
    let mut last_status = None;
    let mut stdout = std::io::stdout();
    while let Some(item) = events.next().await {
        match item {
            Ok(ev) => {
                if let EventKind::Status { status, .. } = &ev.kind {
                    last_status = Some(*status);
                }
                if json {
                    if let Ok(line) = serde_json::to_string(&ev) {
                        let _ = writeln!(stdout, "{line}");
                    }
                } else if print_text {
                    let _ = write!(stdout, "{}", fmt.format(&ev));
                    let _ = stdout.flush();
                }
                if ev.is_final() {
                    break;
                }
            }
            Err(e) => return client_fail(&e),
        }
    }
    match last_status {
        Some(st) if st.is_terminal() => Exit::for_status(st),
        // The stream ended early (server shutting down): report the status as it is now.
        _ => match client.status(id).await {
            Ok(s) if s.status.is_terminal() => Exit::for_status(s.status),
            Ok(s) => fail(
                Exit::Unreachable,
                format!("the log stream ended while the job is {}", s.status),
            ),
            Err(e) => client_fail(&e),
        },
    }
}

fn print_status(s: &StatusResponse, base: &str) {
    let provider = s
        .provider
        .as_deref()
        .map(|p| format!("  (planned by {p})"))
        .unwrap_or_default();
    println!("job {}  {}{provider}", s.job_id, s.status);
    if !s.prompt.is_empty() {
        println!("prompt: {}", s.prompt.lines().next().unwrap_or(""));
    }
    let fmt_t = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "created {}  started {}  finished {}",
        fmt_t(Some(s.created_at)),
        fmt_t(s.started_at),
        fmt_t(s.finished_at)
    );
    if let Some(err) = &s.error {
        println!("error: {err}");
    }
    for st in &s.steps {
        println!(
            "  {:>3}  {:<10}  {:<9}  exit {:>4}  {:>8}  {}",
            st.index,
            st.kind,
            format!("{:?}", st.status).to_lowercase(),
            st.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            st.duration_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_else(|| "-".into()),
            st.description.as_deref().unwrap_or("")
        );
    }
    if let Some(link) = &s.download_link {
        println!("download: {base}{link}");
    }
    println!("logs: {base}{}", s.logs_link);
}

/// An executor wrapper for `agent run` that never reaps: a local run must not remove the
/// sandboxes of a server running on the same engine.
struct NoReap(Arc<dyn Executor>);

#[async_trait]
impl Executor for NoReap {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn create(
        &self,
        job_id: JobId,
        spec: &agent_core::JobSpec,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        self.0.create(job_id, spec).await
    }
    async fn ping(&self) -> Result<(), SandboxError> {
        self.0.ping().await
    }
    async fn shutdown(&self) -> Result<(), SandboxError> {
        self.0.shutdown().await
    }
}

/// The longest unfinished output line [`Progress`] holds before printing it anyway.
const MAX_PARTIAL_LINE: usize = 64 << 10;

/// Live progress of a local run: a spinner per step, step output above the bars, elapsed time.
struct Progress {
    multi: MultiProgress,
    main: ProgressBar,
    step: Option<(usize, ProgressBar, Instant)>,
    partial: String,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let multi = if quiet {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
        };
        let main = multi.add(ProgressBar::new_spinner());
        main.set_style(
            ProgressStyle::with_template("{spinner:.cyan} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        main.enable_steady_tick(Duration::from_millis(120));
        main.set_message("starting a sandbox…");
        Self {
            multi,
            main,
            step: None,
            partial: String::new(),
            quiet,
        }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }

    fn output(&mut self, text: &str) {
        self.partial.push_str(text);
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            self.line(&format!("  │ {}", line.trim_end_matches(['\n', '\r'])));
        }
        // Output that never ends its line is printed in pieces rather than held without bound.
        if self.partial.len() >= MAX_PARTIAL_LINE {
            self.flush_output();
        }
    }

    fn flush_output(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.line(&format!("  │ {rest}"));
        }
    }

    fn event(&mut self, ev: &JobEvent) {
        match &ev.kind {
            EventKind::Status { status, error } => match status {
                JobStatus::Running => self.main.set_message("running"),
                st if st.is_terminal() => {
                    self.flush_output();
                    if let Some((_, bar, _)) = self.step.take() {
                        bar.abandon();
                    }
                    let msg = match error {
                        Some(e) => format!("{st}: {e}"),
                        None => st.to_string(),
                    };
                    self.main.finish_with_message(msg);
                }
                _ => {}
            },
            EventKind::Planning { .. } => self.main.set_message("planning with the LLM…"),
            EventKind::Plan {
                steps,
                provider,
                attempt,
                ..
            } => {
                let by = provider.as_deref().unwrap_or("the plan file");
                let what = if *attempt == 0 { "plan" } else { "repair" };
                self.line(&format!("{what} from {by}: {} step(s)", steps.len()));
                self.main.set_message("running");
            }
            EventKind::StepStarted { index, step } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "  {spinner:.green} step {prefix} [{elapsed}] {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(index.to_string());
                let desc = step
                    .description
                    .clone()
                    .unwrap_or_else(|| describe_step(&step.kind));
                bar.set_message(desc);
                bar.enable_steady_tick(Duration::from_millis(100));
                self.main.set_message(format!("step {index}"));
                self.step = Some((*index, bar, Instant::now()));
            }
            EventKind::Output { text, .. } => self.output(text),
            EventKind::StepFinished { index, result } => {
                self.flush_output();
                let mark = if result.success() { "✔" } else { "✘" };
                let how = match result.termination {
                    agent_core::Termination::Exited => format!("exit {}", result.exit_code),
                    other => format!("{other:?} (exit {})", result.exit_code).to_lowercase(),
                };
                let line = format!(
                    "{mark} step {index} {how} in {} ms",
                    result.duration.as_millis()
                );
                match self.step.take() {
                    Some((_, bar, _)) => {
                        bar.finish_and_clear();
                        self.line(&line);
                    }
                    None => self.line(&line),
                }
            }
            EventKind::Log { message } => self.line(message),
        }
    }
}

/// `agent run`: one job on the local Docker engine, with live progress; writes the ZIP.
async fn run_local(args: &JobArgs, out: Option<&Path>, json: bool) -> Exit {
    // Progress goes to the terminal; only warnings from the libraries.
    init_tracing_with_default(LogFormat::Text, "warn");
    let req = match args.request() {
        Ok(r) => r,
        Err(e) => return fail(Exit::Usage, e),
    };
    let config = match ServerConfig::from_env() {
        Ok(c) => c,
        Err(e) => return fail(Exit::Usage, e),
    };
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
        match tokio::fs::copy(&artifact.path, &dest).await {
            Ok(_) => zip_path = Some(dest.clone()),
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
        match &zip_path {
            Some(p) => {
                eprintln!(
                    "job {id} {} in {:.1}s; result:",
                    job.status,
                    started.elapsed().as_secs_f64()
                );
                println!("{}", p.display());
            }
            None => eprintln!(
                "job {id} {} in {:.1}s; no result archive",
                job.status,
                started.elapsed().as_secs_f64()
            ),
        }
    }
    Exit::for_status(job.status)
}
