//! The `agent` command line: run a job locally, serve the API, or talk to a server.
//!
//! Exit codes: 0 success; 1 the job ended but did not succeed (failed, cancelled, timed out,
//! interrupted); 2 usage error or a request the server refused (400/401/409/413/415/422);
//! 3 the server (or the Docker engine, for `agent run`) cannot be reached; 4 no such job;
//! 5 an internal error; 6 the job exists but has no result archive (none was made, or it was
//! removed).

mod args;
mod live;
mod local;
mod progress;
mod remote;
mod sandbox;

pub use args::{read_plan, Cli, Command, JobArgs, SandboxCommand, TokenCommand};

use agent_core::JobStatus;

use crate::access::AccessService;
use crate::client::{Client, ClientError};
use crate::config::init_tracing;

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
    /// The job has no result archive.
    NoArtifact = 6,
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
            ClientError::Api { status: 404, error } if error.code == "no_artifact" => {
                Exit::NoArtifact
            }
            ClientError::Api { status: 404, .. } => Exit::NotFound,
            ClientError::Api { status, .. } if (400..500).contains(status) => Exit::Usage,
            ClientError::Io { .. } => Exit::Usage,
            _ => Exit::Internal,
        }
    }
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

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> Exit {
    run_command(cli).await.unwrap_or_else(|exit| exit)
}

/// The CLI's work; `Err` carries the exit code of a failure already reported on stderr.
async fn run_command(cli: Cli) -> Result<Exit, Exit> {
    let client = || Client::new(&cli.url, cli.token.clone()).map_err(|e| client_fail(&e));
    let json = cli.json;
    match cli.command {
        Command::Serve(config) => {
            init_tracing(config.log_format);
            Ok(match crate::server::serve(*config).await {
                Ok(()) => Exit::Ok,
                Err(e) => fail(Exit::Internal, e),
            })
        }
        Command::Run { ref job, ref out } => Ok(local::run_local(job, out.as_deref(), json).await),
        Command::Mcp => Ok(local::mcp_stdio().await),
        Command::Health => remote::health(&client()?, json).await,
        Command::Submit { ref job, wait } => {
            let req = job.request().map_err(|e| fail(Exit::Usage, e))?;
            remote::submit(&client()?, &req, wait, json).await
        }
        Command::Status { id } => remote::status(&client()?, id, json).await,
        Command::Jobs {
            ref status,
            limit,
            offset,
        } => remote::jobs(&client()?, status.as_deref(), limit, offset, json).await,
        Command::Logs { id, follow, raw } => remote::logs(&client()?, id, follow, json, raw).await,
        Command::Cancel { id } => remote::cancel(&client()?, id, json).await,
        Command::Desktop {
            id,
            view_only,
            listen,
        } => match listen {
            Some(addr) => live::forward_desktop(client()?, id, view_only, addr, json).await,
            None => live::open(&client()?, id, AccessService::Desktop, view_only, json).await,
        },
        Command::Jupyter { id } => {
            live::open(&client()?, id, AccessService::Jupyter, false, json).await
        }
        Command::Release { id } => live::release(&client()?, id, json).await,
        Command::Sandbox(ref cmd) => sandbox_command(&client()?, cmd, json).await,
        Command::Download { id, ref out } => {
            remote::download(&client()?, id, out.as_deref(), json).await
        }
        Command::Token(TokenCommand::New { ref name, admin }) => new_token(name, admin, json),
    }
}

/// `agent token new`: the token on stdout's first line, the file entry on the second.
fn new_token(name: &str, admin: bool, json: bool) -> Result<Exit, Exit> {
    let token = crate::tenants::new_token();
    let entry =
        crate::tenants::file_entry(name, &token, admin).map_err(|e| fail(Exit::Usage, e))?;
    if json {
        let entry: serde_json::Value =
            serde_json::from_str(&entry).map_err(|e| fail(Exit::Internal, e))?;
        println!("{}", serde_json::json!({"token": token, "entry": entry}));
    } else {
        println!("{token}\n{entry}");
        eprintln!(
            "The first line is {name}'s token: give it to them now, it is not stored anywhere.\n\
             Add the second line to the \"tenants\" list of AGENT_API_TOKENS_FILE and restart the server."
        );
    }
    Ok(Exit::Ok)
}

async fn sandbox_command(client: &Client, cmd: &SandboxCommand, json: bool) -> Result<Exit, Exit> {
    match cmd {
        SandboxCommand::Create {
            image,
            network,
            env,
            idle_timeout,
            timeout,
            services,
        } => {
            let req = crate::sandboxes::CreateSandboxRequest {
                image: image.clone(),
                network: *network,
                env: (!env.is_empty()).then(|| env.iter().cloned().collect()),
                idle_timeout_secs: *idle_timeout,
                timeout_secs: *timeout,
                services: (!services.is_empty()).then(|| services.clone()),
                ..Default::default()
            };
            sandbox::create(client, &req, json).await
        }
        SandboxCommand::Exec {
            id,
            python,
            stateful,
            timeout,
            command,
        } => {
            let text = command.join(" ");
            let mut step = match (python, stateful) {
                (true, true) => agent_core::Step::python_stateful(text),
                (true, false) => agent_core::Step::python(text),
                _ => agent_core::Step::shell(text),
            };
            step.timeout = timeout.map(std::time::Duration::from_secs);
            sandbox::exec(client, *id, step, json).await
        }
        SandboxCommand::Cp { src, dst } => sandbox::copy(client, src, dst, json).await,
        SandboxCommand::Shell { id } => sandbox::shell(client, *id).await,
        SandboxCommand::Ls => sandbox::list(client, json).await,
        SandboxCommand::Rm { id } => sandbox::remove(client, *id, json).await,
    }
}
