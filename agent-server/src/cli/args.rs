//! The command line's arguments (clap) and the job options they turn into a request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use agent_core::SecretString;
use agent_core::{JobId, NetworkMode, Plan, Service, Step};

use crate::api::ScheduleRequest;
use crate::config::ServerConfig;

/// `agent`: run agent jobs in Docker sandboxes, locally or through an agent server.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about, long_about = None)]
pub struct Cli {
    /// The server for submit/status/jobs/logs/cancel/download.
    #[arg(
        long,
        global = true,
        env = "AGENT_URL",
        default_value = "http://127.0.0.1:8000",
        value_parser = parse_server_url
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
    /// A service started before the first step: desktop or jupyter (repeatable).
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<Service>,
    /// Keep the sandbox (its desktop, its notebook) this many seconds after the steps end.
    #[arg(long, value_name = "SECS")]
    pub keep_alive: Option<u64>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the REST server (same as the `agent-server` binary).
    Serve(Box<ServerConfig>),
    /// Run one job here, without a server: a sandbox on the local Docker engine; writes the ZIP.
    Run {
        /// The job.
        #[command(flatten)]
        job: JobArgs,
        /// Where to write the result ZIP (default: `./job-<id>.zip`).
        #[arg(long, short = 'o', value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Serve the MCP tools (sandboxes, commands, stateful Python, files, jobs) over stdio for a
    /// desktop MCP client, on the local Docker engine without a server; ends when stdin closes.
    Mcp,
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
        id: JobId,
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
        id: JobId,
        /// Follow it live until the job ends (Server-Sent Events).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print the job's output as it is, terminal escape sequences included (by default they
        /// are removed, so that a job's output cannot drive your terminal).
        #[arg(long)]
        raw: bool,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job id.
        id: JobId,
    },
    /// Print a signed URL of a job's live desktop (noVNC in the browser), or, with `--listen`,
    /// serve the desktop's VNC on a local port for a VNC client.
    Desktop {
        /// The job id.
        id: JobId,
        /// Watch only: keyboard and mouse input are refused.
        #[arg(long)]
        view_only: bool,
        /// Forward this local address (e.g. 127.0.0.1:6080) to the job's VNC server, through
        /// the server, until interrupted.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print a signed URL of a job's Jupyter Lab.
    Jupyter {
        /// The job id.
        id: JobId,
    },
    /// End a finished job's kept sandbox now.
    Release {
        /// The job id.
        id: JobId,
    },
    /// Live sandboxes on the server: create, exec, cp, shell, ls, rm.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Download a job's result ZIP.
    Download {
        /// The job id.
        id: JobId,
        /// Where to write it (default: `./job-<id>.zip`).
        #[arg(long, short = 'o', value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// API tokens of tenants (`AGENT_API_TOKENS_FILE`).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `agent token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a tenant's token: prints the token once (on the first line; it is stored nowhere)
    /// and the entry to add to the `tenants` list of `AGENT_API_TOKENS_FILE` (its SHA-256,
    /// never the token).
    New {
        /// The tenant's name (ASCII letters, digits, `-`, `_`, `.`; at most 64).
        name: String,
        /// Give it the admin scope: it sees and controls every tenant's jobs.
        #[arg(long)]
        admin: bool,
    },
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
    pub(super) fn request(&self) -> Result<ScheduleRequest, String> {
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
            services: (!self.services.is_empty()).then(|| self.services.clone()),
            keep_alive_secs: self.keep_alive,
            keep_sandbox: None,
        })
    }
}

/// `--url`: an `http://` or `https://` URL with a host (a usage error otherwise, exit 2).
fn parse_server_url(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("not a URL ({e}): {value:?}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "expected http://HOST[:PORT] or https://HOST[:PORT], got {value:?}"
        ));
    }
    Ok(value.to_string())
}

/// `--env KEY=VALUE`.
fn parse_env_pair(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {value:?}"))
}

/// `agent sandbox …`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a live sandbox and print its id.
    Create {
        /// Container image (default: the server's).
        #[arg(long)]
        image: Option<String>,
        /// Network: `none` (default) or `bridge`.
        #[arg(long)]
        network: Option<NetworkMode>,
        /// Environment variable of every step, `KEY=VALUE` (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env_pair)]
        env: Vec<(String, String)>,
        /// End it after this many seconds without a step (default 300).
        #[arg(long, value_name = "SECS")]
        idle_timeout: Option<u64>,
        /// End it after this many seconds whatever happens.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// A service started with it: desktop or jupyter (repeatable); `agent jupyter ID` and
        /// `agent desktop ID` then give its URL.
        #[arg(long = "service", value_name = "SERVICE")]
        services: Vec<Service>,
    },
    /// Run a command (or, with `--python`, Python code) in a sandbox; its output is printed as
    /// it comes; exits 0 when it succeeded, 1 when not.
    Exec {
        /// The sandbox id.
        id: JobId,
        /// Run the text as Python code.
        #[arg(long)]
        python: bool,
        /// With `--python`: in the sandbox's long-lived interpreter (variables persist).
        #[arg(long, requires = "python")]
        stateful: bool,
        /// Step timeout in seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// The command (joined by spaces, run by `bash -c`) or the code.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Copy a file or a whole directory into or out of a sandbox: `agent sandbox cp local.txt
    /// ID:path`, `agent sandbox cp ./dir ID:path` (created), `agent sandbox cp ID:path local.txt`,
    /// `agent sandbox cp ID:dir ./out` (the directory's contents into `out`, created).
    Cp {
        /// Source: a local path or `ID:PATH`.
        src: String,
        /// Destination: a local path or `ID:PATH`.
        dst: String,
    },
    /// An interactive shell: each line read from stdin runs as a step; its output and exit code
    /// are printed. Ends at the end of input or `exit`.
    Shell {
        /// The sandbox id.
        id: JobId,
    },
    /// List the live sandboxes.
    Ls,
    /// Destroy a sandbox.
    Rm {
        /// The sandbox id.
        id: JobId,
    },
}
