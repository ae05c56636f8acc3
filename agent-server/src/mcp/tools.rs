//! The tools: their arguments and what each does, one call of the job manager apiece.

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::model::CallToolResult;
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use serde::Deserialize;
use serde_json::json;

use agent_core::{JobId, NetworkMode, Step};

use super::render::{self, ToolError};
use super::{McpCaller, McpTools, Parameters};
use crate::api::{timeout, ScheduleRequest};
use crate::error::ApiError;
use crate::sandboxes::{
    sandbox_plan_error, CreateSandboxRequest, PlanRequest, SandboxList, SandboxView,
};
use crate::tenants::Caller;

/// What every tool answers: a result, or a tool error (`isError: true`) saying why not.
type ToolResult = Result<CallToolResult, ToolError>;

/// How long `run_job` and `wait_job` wait by default, in seconds.
const DEFAULT_WAIT_SECS: u64 = 300;

/// The longest they wait, in seconds: an MCP client's request should not hang for hours.
const MAX_WAIT_SECS: u64 = 1800;

/// Arguments of `run_command`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandArgs {
    /// The sandbox (`sandbox_id` from create_sandbox).
    sandbox_id: String,
    /// A bash command line, run in /workspace.
    command: String,
    /// Kill it after this many seconds (default: the sandbox's step timeout).
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// Arguments of `run_python`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PythonArgs {
    /// The sandbox (`sandbox_id` from create_sandbox).
    sandbox_id: String,
    /// Python source, run in the sandbox's one long-lived interpreter (cwd /workspace):
    /// variables, imports and open files persist between calls; the value of a final
    /// expression is returned.
    code: String,
    /// Kill it after this many seconds (default: the sandbox's step timeout); a timed-out call
    /// restarts the interpreter and its state is lost.
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WriteArgs {
    /// The sandbox (`sandbox_id` from create_sandbox).
    sandbox_id: String,
    /// Path relative to /workspace (or absolute under it); parent directories are created.
    path: String,
    /// The file's content (UTF-8 text).
    content: String,
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadArgs {
    /// The sandbox (`sandbox_id` from create_sandbox).
    sandbox_id: String,
    /// Path relative to /workspace (or absolute under it).
    path: String,
}

/// Arguments of `list_files`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListArgs {
    /// The sandbox (`sandbox_id` from create_sandbox).
    sandbox_id: String,
    /// A directory relative to /workspace (or absolute under it); default: the whole workspace.
    #[serde(default)]
    path: Option<String>,
}

/// The most files `list_files` names.
const MAX_LISTED_FILES: usize = 1000;

/// Arguments of `destroy_sandbox`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SandboxArgs {
    /// The sandbox (`sandbox_id` from create_sandbox).
    sandbox_id: String,
}

/// Arguments of `list_sandboxes` (none).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

/// Arguments of `run_job`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobArgs {
    /// The task in plain language, planned by the server's LLM (needs a configured provider).
    #[serde(default)]
    prompt: Option<String>,
    /// Explicit steps, run in order without an LLM.
    #[serde(default)]
    steps: Option<Vec<Step>>,
    /// Timeout of the whole job in seconds (default: the server's).
    #[serde(default)]
    timeout_secs: Option<u64>,
    /// Timeout of each step in seconds (default: the server's).
    #[serde(default)]
    step_timeout_secs: Option<u64>,
    /// Network: "none" (default) or "bridge".
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    network: Option<NetworkMode>,
    /// Container image (default: the server's).
    #[serde(default)]
    image: Option<String>,
    /// Environment variables of every step.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// How long to wait for the job to end, in seconds (default 300, at most 1800); past it the
    /// answer gives the job's id and status, and `wait_job` waits on.
    #[serde(default)]
    wait_secs: Option<u64>,
}

/// Arguments of `plan_in_sandbox`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanArgs {
    /// The sandbox (`sandbox_id` from create_sandbox).
    sandbox_id: String,
    /// What to do now, in plain language; the server's LLM plans it (needs a configured
    /// provider), told the workspace's files and that stateful Python variables persist.
    prompt: String,
    /// How many times a failed step may go back to the LLM for a repair (default 2, at most 20).
    #[serde(default)]
    max_repairs: Option<u64>,
}

/// Arguments of `wait_job`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitArgs {
    /// The job (`job_id` from run_job).
    job_id: String,
    /// How long to wait for it to end, in seconds (default 300, at most 1800).
    #[serde(default)]
    wait_secs: Option<u64>,
}

#[tool_router(vis = "pub(super)")]
impl McpTools {
    #[tool(
        description = "Create a live sandbox: an isolated Linux container (no network unless network is \"bridge\") with a persistent /workspace, kept until destroy_sandbox, its idle timeout (default 300 s without a call) or its maximum lifetime. Returns its sandbox_id."
    )]
    async fn create_sandbox(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<CreateSandboxRequest>,
    ) -> ToolResult {
        let mut spec = args?.into_spec(&self.defaults)?;
        self.policy.admit(&spec)?;
        caller.stamp(&mut spec);
        let job = self.manager.create_sandbox(spec).await?;
        let view = SandboxView::from_info(&self.manager.sandbox(job.id).await?);
        let text = format!(
            "sandbox {} is ready; it ends after {} s without a call, at {} at the latest, or when destroyed",
            view.sandbox_id,
            view.idle_timeout_secs,
            view.deadline.to_rfc3339()
        );
        Ok(render::with_structured(text, json!(view)))
    }

    #[tool(
        description = "List the live sandboxes (oldest first).",
        annotations(read_only_hint = true)
    )]
    async fn list_sandboxes(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<NoArgs>,
    ) -> ToolResult {
        args?;
        let SandboxList { sandboxes } = SandboxList::of(&self.manager, &caller).await;
        let mut text = format!("{} live sandbox(es)\n", sandboxes.len());
        for s in &sandboxes {
            text.push_str(&format!(
                "{} ({} steps, created {})\n",
                s.sandbox_id,
                s.steps,
                s.created_at.to_rfc3339()
            ));
        }
        Ok(render::with_structured(
            text,
            json!(SandboxList { sandboxes }),
        ))
    }

    #[tool(
        description = "Run a bash command in a sandbox's /workspace. Returns the exit code and the tails of stdout and stderr (a non-zero exit is a result, not an error)."
    )]
    async fn run_command(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<CommandArgs>,
    ) -> ToolResult {
        let args = args?;
        self.run(
            &caller,
            &args.sandbox_id,
            Step::shell(args.command),
            args.timeout_secs,
        )
        .await
    }

    #[tool(
        description = "Run Python code in a sandbox's persistent interpreter (cwd /workspace): variables, imports and open files survive between run_python calls, and the value of a final expression is returned. Returns the exit code (1 when the code raised), the value or the exception, and the tails of stdout and stderr."
    )]
    async fn run_python(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<PythonArgs>,
    ) -> ToolResult {
        let args = args?;
        let step = Step::python_stateful(args.code);
        self.run(&caller, &args.sandbox_id, step, args.timeout_secs)
            .await
    }

    #[tool(
        description = "Write a text file under a sandbox's /workspace (parent directories are created; at most 16 MiB)."
    )]
    async fn write_file(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<WriteArgs>,
    ) -> ToolResult {
        let args = args?;
        let id = self.own(&caller, &args.sandbox_id).await?;
        let rel = agent_core::executor::normalize_workspace_path(&args.path)
            .map_err(agent_core::Error::from)?;
        let size = args.content.len();
        self.manager
            .sandbox_put_file(id, &rel, args.content.into_bytes().into())
            .await?;
        let path = format!("/workspace/{rel}");
        Ok(render::with_structured(
            format!("wrote {path} ({size} bytes)"),
            json!({"path": path, "size_bytes": size}),
        ))
    }

    #[tool(
        description = "Read a file from a sandbox's /workspace as text (at most 16 MiB; a long file is cut, with a note).",
        annotations(read_only_hint = true)
    )]
    async fn read_file(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<ReadArgs>,
    ) -> ToolResult {
        let args = args?;
        let id = self.own(&caller, &args.sandbox_id).await?;
        let bytes = self.manager.sandbox_get_file(id, &args.path).await?;
        Ok(render::file_text(&bytes))
    }

    #[tool(
        description = "List the files under a directory of a sandbox's /workspace, with their sizes (default: the whole workspace; at most 1000 named).",
        annotations(read_only_hint = true)
    )]
    async fn list_files(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<ListArgs>,
    ) -> ToolResult {
        let args = args?;
        let id = self.own(&caller, &args.sandbox_id).await?;
        let root = crate::sandbox_archive::workspace_dir(args.path.as_deref().unwrap_or(""))?;
        let agent_core::executor::FileListing { files, total } = self
            .manager
            .sandbox_list_files(id, &root, MAX_LISTED_FILES)
            .await?;
        let dir = format!("/workspace/{root}")
            .trim_end_matches('/')
            .to_string();
        let mut text = format!("{total} files under {dir}\n");
        for f in &files {
            text.push_str(&format!("{} ({} bytes)\n", f.path, f.size_bytes));
        }
        if total > files.len() {
            text.push_str(&format!(
                "[truncated: only the first {} are named]\n",
                files.len()
            ));
        }
        Ok(render::with_structured(
            text,
            json!({"path": dir, "files": files, "total": total, "truncated": total > files.len()}),
        ))
    }

    #[tool(
        description = "Destroy a sandbox: kill what runs in it and remove its container. Its record and logs stay (GET /status/{id}).",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    async fn destroy_sandbox(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<SandboxArgs>,
    ) -> ToolResult {
        let id = self.own(&caller, &args?.sandbox_id).await?;
        let job = self.manager.destroy_sandbox(id).await?;
        Ok(render::with_structured(
            format!("sandbox {id} destroyed after {} step(s)", job.steps.len()),
            json!({"sandbox_id": id, "status": job.status, "steps": job.steps.len()}),
        ))
    }

    #[tool(
        description = "Hand a sandbox to the server's planner: its LLM plans the task (told the files in /workspace and that stateful Python variables persist), runs the steps in this sandbox and repairs failed ones (max_repairs, default 2). Returns the status and each step's exit code and output tails; the sandbox lives on."
    )]
    async fn plan_in_sandbox(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<PlanArgs>,
    ) -> ToolResult {
        let args = args?;
        let id = self.own(&caller, &args.sandbox_id).await?;
        let request = PlanRequest {
            prompt: args.prompt,
            max_repairs: args.max_repairs,
        };
        let run = self
            .manager
            .sandbox_plan(id, request.prompt.clone(), request.max_repairs()?)
            .await
            .map_err(sandbox_plan_error)?;
        Ok(render::plan_result(&run))
    }

    #[tool(
        description = "Schedule a job in a fresh sandbox and wait for it (wait_secs, default 300): a prompt the server's LLM plans, or explicit steps such as [{\"type\":\"shell\",\"command\":\"...\"}, {\"type\":\"python\",\"code\":\"...\"}, {\"type\":\"write_file\",\"path\":\"...\",\"content\":\"...\"}]. Returns its status and each step's exit code and output tails, or its job_id if it is still running."
    )]
    async fn run_job(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<JobArgs>,
    ) -> ToolResult {
        let args = args?;
        let wait = wait_time(args.wait_secs)?;
        let request = ScheduleRequest {
            prompt: args.prompt,
            steps: args.steps,
            timeout_secs: args.timeout_secs,
            step_timeout_secs: args.step_timeout_secs,
            network: args.network,
            image: args.image,
            env: args.env,
            ..ScheduleRequest::default()
        };
        let mut spec = request.into_spec(&self.defaults)?;
        self.policy.admit(&spec)?;
        caller.stamp(&mut spec);
        let id = self.manager.submit(spec).await?;
        self.wait_for(id, wait).await
    }

    #[tool(
        description = "Wait for a job from run_job to end (wait_secs, default 300) and return its status and each step's exit code and output tails.",
        annotations(read_only_hint = true)
    )]
    async fn wait_job(
        &self,
        McpCaller(caller): McpCaller,
        Parameters(args): Parameters<WaitArgs>,
    ) -> ToolResult {
        let args = args?;
        let wait = wait_time(args.wait_secs)?;
        let id = args
            .job_id
            .parse::<JobId>()
            .map_err(|e| ApiError::from(e).with_field("job_id"))?;
        caller.check(&self.manager, id).await?;
        self.wait_for(id, wait).await
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "containerized-agent",
    instructions = "Isolated Linux sandboxes in Docker (no network by default). create_sandbox, then run_command / run_python (stateful) / write_file / read_file / plan_in_sandbox on its sandbox_id, then destroy_sandbox. run_job runs a whole job (a prompt or explicit steps) in a throw-away sandbox and waits for it."
)]
impl ServerHandler for McpTools {}

impl McpTools {
    /// Runs one step in a live sandbox and renders its result.
    async fn run(
        &self,
        caller: &Caller,
        sandbox: &str,
        mut step: Step,
        timeout_secs: Option<u64>,
    ) -> ToolResult {
        let id = self.own(caller, sandbox).await?;
        if let Some(secs) = timeout_secs {
            step.timeout = Some(timeout("timeout_secs", Some(secs), Duration::ZERO)?);
        }
        self.policy.check_step("timeout_secs", &step)?;
        let record = self.manager.sandbox_step(id, step, None, None).await?;
        Ok(render::step_result(&record))
    }

    /// The sandbox id `raw`, when `caller` may use it (another tenant's is an unknown id).
    async fn own(&self, caller: &Caller, raw: &str) -> Result<JobId, ToolError> {
        let id = sandbox_id(raw)?;
        caller.check(&self.manager, id).await?;
        Ok(id)
    }

    /// Waits up to `wait` for job `id` to end and renders it (or says it is still going).
    async fn wait_for(&self, id: JobId, wait: Duration) -> ToolResult {
        match tokio::time::timeout(wait, self.manager.wait(id)).await {
            Ok(job) => Ok(render::job_result(&job?)),
            Err(_) => {
                let job = self.manager.get(id).await?;
                Ok(render::with_structured(
                    format!(
                        "job {id} is still {} after {} s; call wait_job with this job_id to wait on",
                        job.status,
                        wait.as_secs()
                    ),
                    json!({"job_id": id, "status": job.status}),
                ))
            }
        }
    }
}

/// A `sandbox_id` argument as a job id.
fn sandbox_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse::<JobId>()
        .map_err(|e| ApiError::from(e).with_field("sandbox_id"))
}

/// A `wait_secs` argument, defaulted and bounded.
fn wait_time(secs: Option<u64>) -> Result<Duration, ApiError> {
    match secs.unwrap_or(DEFAULT_WAIT_SECS) {
        0 => Err(ApiError::invalid(
            "wait_secs",
            "wait_secs: must be at least 1",
        )),
        s if s > MAX_WAIT_SECS => Err(ApiError::invalid(
            "wait_secs",
            format!("wait_secs: must be at most {MAX_WAIT_SECS}"),
        )),
        s => Ok(Duration::from_secs(s)),
    }
}
