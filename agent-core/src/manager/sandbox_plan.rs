//! A live sandbox handed to the planner ("now do this"): the agent flow plans a task with the
//! LLM, runs its steps in the sandbox and repairs failed ones, as for a job — without packaging,
//! and with the planner told that the sandbox is not new (the files in its workspace, that
//! stateful Python variables persist). The steps are the sandbox's own ([`StepRecord`]s of its
//! job with their events), as if they had been sent one by one; the sandbox lives on after.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::sandboxes::Session;
use super::JobManager;
use crate::agent::plan::sandbox_context;
use crate::agent::{sandbox_flow, AgentState, Task};
use crate::error::{Error, Result};
use crate::executor::{discard_output, ExecRequest, Sandbox, SandboxErrorKind};
use crate::flow::Ctx;
use crate::inputs::InputFile;
use crate::job::{
    EventKind, JobId, JobStatus, Plan, StepRecord, TokenUsage, MAX_PROMPT_BYTES, MAX_REPAIRS,
};
use crate::llm::LlmProvider;

/// The most workspace files the planner is told of.
pub const MAX_LISTED_FILES: usize = crate::agent::plan::LISTED_FILES;

/// How one planned run in a live sandbox went ([`JobManager::sandbox_plan`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SandboxPlanRun {
    /// The sandbox.
    pub id: JobId,
    /// `Succeeded` when every step of the (last repaired) plan succeeded, `Failed` otherwise.
    pub status: JobStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The plan, with the steps repairs added.
    pub plan: Option<Plan>,
    /// The steps this run added to the sandbox (in order; their indexes are the sandbox's).
    pub steps: Vec<StepRecord>,
    /// Repairs asked for.
    pub repairs: u32,
    /// The LLM provider that answered last.
    pub provider: Option<String>,
    /// LLM tokens this run used.
    pub usage: TokenUsage,
}

impl JobManager {
    /// Plans `prompt` with the LLM and runs the plan in live sandbox `id`, repairing failed steps
    /// up to `max_repairs` times (default: the sandbox's `max_repairs`); returns once the plan
    /// has run. Steps sent meanwhile wait for it; the sandbox is never idle while it runs.
    ///
    /// Fails with [`Error::NoLlm`] when the manager has no LLM, as [`JobManager::sandbox_step`]
    /// does for an unknown or ended sandbox; an LLM that fails is an [`Error::Llm`] (the steps
    /// run until then are recorded).
    pub async fn sandbox_plan(
        &self,
        id: JobId,
        prompt: String,
        max_repairs: Option<u32>,
    ) -> Result<SandboxPlanRun> {
        if prompt.trim().is_empty() {
            return Err(Error::invalid("prompt", "must not be empty"));
        }
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(Error::invalid(
                "prompt",
                format!("longer than {MAX_PROMPT_BYTES} bytes"),
            ));
        }
        if max_repairs.is_some_and(|m| m > MAX_REPAIRS) {
            return Err(Error::invalid(
                "max_repairs",
                format!("must be at most {MAX_REPAIRS}"),
            ));
        }
        let session = self.session(id).await?;
        let llm = self.inner.llm.clone().ok_or(Error::NoLlm)?;
        let manager = self.clone();
        self.detached("planned run", async move {
            manager
                .run_sandbox_plan(&session, llm, prompt, max_repairs)
                .await
        })
        .await
    }

    async fn run_sandbox_plan(
        &self,
        session: &Arc<Session>,
        llm: Arc<dyn LlmProvider>,
        prompt: String,
        max_repairs: Option<u32>,
    ) -> Result<SandboxPlanRun> {
        let id = session.id;
        let _busy = session.busy();
        let mut job = session.job.lock().await;
        if job.status.is_terminal() || session.cancel.is_cancelled() {
            drop(job);
            return Err(self.not_live(id).await);
        }
        let first = job.steps.len();
        let usage_before = job.usage;
        let (files, more) = list_workspace(&*session.sandbox, &session.cancel).await;
        let task = Task::planned(prompt.clone(), max_repairs.unwrap_or(job.spec.max_repairs))
            .with_context(sandbox_context(&files, more, first));
        session.events.emit(EventKind::Log {
            message: format!("planning in the sandbox: {}", headline(&prompt)),
        });
        let inner = &self.inner;
        let settings = self.agent_settings(id);
        let cancel = session.cancel.child_token();
        let mut state = AgentState::new(
            job.clone(),
            inner.store.clone(),
            session.sandbox.clone(),
            Some(llm),
            session.events.clone(),
            cancel.clone(),
            settings,
        )
        .with_task(task);
        let outcome = match sandbox_flow() {
            Ok(flow) => flow.run(&mut state, &Ctx::with_cancel(cancel)).await,
            Err(e) => Err(e),
        };
        let repairs = state.repairs_used();
        let failure = state.failure().map(str::to_string);
        *job = state.job;
        self.inner.store.update_job(&job).await?;
        let run = SandboxPlanRun {
            id,
            status: if failure.is_some() {
                JobStatus::Failed
            } else {
                JobStatus::Succeeded
            },
            error: failure,
            plan: job.plan.clone(),
            steps: job.steps.get(first..).unwrap_or_default().to_vec(),
            repairs,
            provider: job.provider.clone(),
            usage: job.usage.since(usage_before),
        };
        drop(job);
        match outcome {
            Ok(_) => {
                info!(job_id = %id, status = %run.status, steps = run.steps.len(), "planned run in the sandbox ended");
                Ok(run)
            }
            Err(_) if session.cancel.is_cancelled() => Err(self.not_live(id).await),
            Err(e) => {
                if matches!(&e, Error::Sandbox(s) if s.kind == SandboxErrorKind::Gone) {
                    // The sandbox died: end it as failed.
                    self.set_stop_reason(id, JobStatus::Failed);
                    session.cancel.cancel();
                }
                Err(e)
            }
        }
    }
}

/// The first line of a prompt, shortened, for the log.
fn headline(prompt: &str) -> String {
    let line = prompt.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(120).collect();
    if out.len() < line.len() || prompt.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

/// The files of a sandbox's workspace (without the agent's scratch directory), sorted, at most
/// [`MAX_LISTED_FILES`], and whether there are more. A sandbox that cannot list them gives none
/// (the planner is then told of no files).
async fn list_workspace(
    sandbox: &dyn Sandbox,
    cancel: &tokio_util::sync::CancellationToken,
) -> (Vec<InputFile>, bool) {
    let script = format!(
        "find . -path ./{scratch} -prune -o -type f -printf '%s\\t%P\\n' 2>/dev/null \
         | LC_ALL=C sort -t \"$(printf '\\t')\" -k2 | head -n {limit}",
        scratch = crate::archive::SCRATCH_DIR,
        limit = MAX_LISTED_FILES + 1
    );
    let mut request = ExecRequest::new(
        vec!["bash".into(), "-c".into(), script],
        Duration::from_secs(15),
    );
    request.max_output_bytes = 256 << 10;
    request.tail_bytes = 256 << 10;
    request.cancel = cancel.child_token();
    let Ok(result) = sandbox.exec(request, discard_output()).await else {
        return (Vec::new(), false);
    };
    let mut files: Vec<InputFile> = result
        .stdout_tail
        .lines()
        .filter_map(|line| {
            let (size, path) = line.split_once('\t')?;
            Some(InputFile {
                path: path.to_string(),
                size_bytes: size.parse().ok()?,
            })
        })
        .collect();
    let more = files.len() > MAX_LISTED_FILES;
    files.truncate(MAX_LISTED_FILES);
    (files, more)
}
