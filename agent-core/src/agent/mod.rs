//! The agent flow: plan with the LLM, run the steps in a sandbox in plan order, repair failed
//! steps, and package the results.
//!
//! Built from the [`flow`](crate::flow) engine's nodes:
//!
//! ```text
//!            ┌────────────── next ─────────────┐
//!            ▼                                 │
//!  plan ──▶ execute ── failed ──▶ repair ── retry ┘
//!            │                      │
//!           done                 give_up
//!            ▼                      ▼
//!         compile ◀─────────────────┘
//! ```
//!
//! A job with explicit steps skips planning and repair and needs no LLM. Compilation exports the
//! workspace as the job's ZIP, with `result.json` made on the host and added to it (a full
//! workspace cannot stop it); the job manager
//! also runs it after a cancel or a timeout so partial output is kept.

mod nodes;
pub mod plan;
pub mod step;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::archive::{package, ArchiveSummary, HostFile};
use crate::artifacts::ArtifactStore;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::executor::{OutputSink, Sandbox, SandboxError, SandboxErrorKind};
use crate::job::{
    Artifact, EventKind, Job, JobStatus, OutputStream, Plan, Step, StepRecord, StepResult,
    StepStatus, TokenUsage,
};
use crate::llm::{collect_stream, ChatRequest, LlmError, LlmProvider, Message};
use crate::store::JobStore;
use step::{RunStep, StepRequest};

pub use nodes::{agent_flow, sandbox_flow};
pub use plan::{parse_plan, system_prompt, PlanError};

/// The name of the result file written into the workspace.
pub const RESULT_FILE: &str = "result.json";

/// Tunables of one agent run.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Output cap per step.
    pub max_output_bytes: u64,
    /// Tail kept per stream in results.
    pub tail_bytes: usize,
    /// Largest workspace export accepted.
    pub max_export_bytes: u64,
    /// Where the ZIP goes.
    pub artifacts: ArtifactStore,
    /// Its key in the store.
    pub artifact_key: String,
    /// The longest timeout a planned step may have (longer ones are lowered to it).
    pub max_step_timeout: Option<std::time::Duration>,
}

/// What one run of the agent flow is asked to do: a job's prompt (or its explicit steps) and
/// repair budget, or a request made of a live sandbox ("now do this").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Task {
    /// The task in plain language (what the planner and a repair are told).
    pub prompt: String,
    /// Explicit steps: run as given, without planning or repair.
    pub steps: Option<Vec<Step>>,
    /// How many times a failed step may go back to the LLM.
    pub max_repairs: u32,
    /// What the planner is told about the sandbox besides the task (e.g. the files already in
    /// its workspace, [`plan::sandbox_context`]).
    pub context: Option<String>,
}

impl Task {
    /// The task of a job: its prompt, explicit steps and repair budget.
    pub fn of_job(spec: &crate::job::JobSpec) -> Self {
        Self {
            prompt: spec.prompt.clone(),
            steps: spec.steps.clone(),
            max_repairs: spec.max_repairs,
            context: plan::inputs_context(&spec.inputs),
        }
    }

    /// A task planned by the LLM from `prompt`, with `max_repairs` repairs.
    pub fn planned(prompt: impl Into<String>, max_repairs: u32) -> Self {
        Self {
            prompt: prompt.into(),
            steps: None,
            max_repairs,
            context: None,
        }
    }

    /// Tells the planner `context` too.
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// Whether it is planned (and repaired) by the LLM.
    pub fn is_planned(&self) -> bool {
        self.steps.is_none()
    }
}

/// The shared store of the agent flow: one job's state while it runs.
pub struct AgentState {
    /// The job record (plan, steps, provider, usage), saved to the store as it changes.
    pub job: Job,
    /// What this run is asked to do (by default the job's own task).
    task: Task,
    store: Arc<dyn JobStore>,
    sandbox: Arc<dyn Sandbox>,
    llm: Option<Arc<dyn LlmProvider>>,
    events: EventSink,
    cancel: CancellationToken,
    settings: AgentSettings,
    pending: VecDeque<(Step, u32)>,
    repairs_used: u32,
    failure: Option<String>,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("job_id", &self.job.id)
            .field("pending", &self.pending.len())
            .field("repairs_used", &self.repairs_used)
            .finish_non_exhaustive()
    }
}

impl AgentState {
    /// State for running `job` in `sandbox`.
    pub fn new(
        job: Job,
        store: Arc<dyn JobStore>,
        sandbox: Arc<dyn Sandbox>,
        llm: Option<Arc<dyn LlmProvider>>,
        events: EventSink,
        cancel: CancellationToken,
        settings: AgentSettings,
    ) -> Self {
        Self {
            task: Task::of_job(&job.spec),
            job,
            store,
            sandbox,
            llm,
            events,
            cancel,
            settings,
            pending: VecDeque::new(),
            repairs_used: 0,
            failure: None,
        }
    }

    /// Runs `task` instead of the job's own (a live sandbox handed to the planner).
    pub fn with_task(mut self, task: Task) -> Self {
        self.task = task;
        self
    }

    /// How many repairs the run has asked for so far.
    pub fn repairs_used(&self) -> u32 {
        self.repairs_used
    }

    /// Why the job failed, if a node decided it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The status the flow's outcome calls for (succeeded or failed).
    pub fn outcome(&self) -> JobStatus {
        if self.failure.is_some() {
            JobStatus::Failed
        } else {
            JobStatus::Succeeded
        }
    }

    /// The step killed when the whole job ran out of time reads `timed_out`, not `cancelled`.
    pub(crate) fn mark_running_step_timed_out(&mut self) {
        let Some(record) = self.job.steps.last_mut() else {
            return;
        };
        if let Some(result) = record.result.as_mut() {
            if result.termination == crate::job::Termination::Cancelled {
                result.termination = crate::job::Termination::TimedOut;
                self.events.emit(EventKind::Log {
                    message: format!("step {} was stopped by the job's timeout", record.index),
                });
            }
        }
    }

    pub(crate) fn fail(&mut self, why: impl Into<String>) {
        self.failure.get_or_insert_with(|| why.into());
    }

    async fn save(&self) -> Result<()> {
        self.store.update_job(&self.job).await?;
        Ok(())
    }

    /// Marks unfinished steps skipped and writes the ZIP with `result.json`. Runs after every flow,
    /// whatever its outcome; `status` is the job's final status.
    pub async fn compile(&mut self, status: JobStatus) -> Result<Artifact> {
        let packaging = self.prepare_packaging(status)?;
        let artifact = packaging.run().await?;
        self.job.artifact = Some(artifact.clone());
        Ok(artifact)
    }

    /// Marks unfinished steps skipped and renders `result.json` (the compile node's `prep`).
    pub(crate) fn prepare_packaging(&mut self, status: JobStatus) -> Result<Packaging> {
        for record in &mut self.job.steps {
            if matches!(record.status, StepStatus::Pending | StepStatus::Running) {
                record.status = StepStatus::Skipped;
            }
        }
        let doc = ResultDocument {
            job_id: self.job.id.to_string(),
            prompt: &self.job.spec.prompt,
            status,
            error: self.failure.as_deref().or(self.job.error.as_deref()),
            plan: self.job.plan.as_ref(),
            steps: &self.job.steps,
            provider: self.job.provider.as_deref(),
            usage: self.job.usage,
            created_at: self.job.created_at,
            started_at: self.job.started_at,
        };
        let json = serde_json::to_vec_pretty(&doc)
            .map_err(|e| Error::other(format!("serializing {RESULT_FILE}: {e}")))?;
        Ok(Packaging {
            sandbox: self.sandbox.clone(),
            result_json: Bytes::from(json),
            artifacts: self.settings.artifacts.clone(),
            artifact_key: self.settings.artifact_key.clone(),
            max_export_bytes: self.settings.max_export_bytes,
        })
    }

    fn output_sink(&self, index: usize) -> OutputSink {
        let events = self.events.clone();
        let carry = Arc::new(Mutex::new(Utf8Carry::default()));
        Arc::new(move |stream, bytes: Bytes| {
            let text = match carry.lock() {
                Ok(mut c) => c.push(stream, &bytes),
                Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
            };
            if !text.is_empty() {
                events.emit(EventKind::Output {
                    index,
                    stream,
                    text,
                });
            }
        })
    }
}

/// Keeps an incomplete UTF-8 sequence at the end of a chunk for the next chunk of the same stream.
#[derive(Default)]
pub(crate) struct Utf8Carry {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Utf8Carry {
    pub(crate) fn push(&mut self, stream: OutputStream, bytes: &[u8]) -> String {
        let buf = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        buf.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(buf) {
            Ok(_) => buf.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => buf.len(),
        };
        let rest = buf.split_off(valid_up_to);
        let text = String::from_utf8_lossy(buf).into_owned();
        *buf = rest;
        text
    }
}

#[derive(Serialize)]
struct ResultDocument<'a> {
    job_id: String,
    prompt: &'a str,
    status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    plan: Option<&'a Plan>,
    steps: &'a [StepRecord],
    provider: Option<&'a str>,
    usage: TokenUsage,
    created_at: chrono::DateTime<chrono::Utc>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What packaging needs, taken from the state by the compile node's `prep`.
pub(crate) struct Packaging {
    sandbox: Arc<dyn Sandbox>,
    result_json: Bytes,
    artifacts: ArtifactStore,
    artifact_key: String,
    max_export_bytes: u64,
}

impl Packaging {
    /// Exports the workspace as the ZIP, with `result.json` made here and added beside the
    /// workspace's files, so it needs no space in the sandbox (the compile node's `exec`).
    pub(crate) async fn run(&self) -> Result<Artifact> {
        let tar = self.sandbox.export().await?;
        let result = HostFile {
            name: RESULT_FILE.to_string(),
            content: self.result_json.clone(),
        };
        let summary: ArchiveSummary = package(
            tar,
            &[result],
            &self.artifacts,
            &self.artifact_key,
            self.max_export_bytes,
        )
        .await?;
        Ok(Artifact {
            path: self.artifact_key.clone(),
            size_bytes: summary.zip_bytes,
            files: summary.files,
        })
    }
}

/// The answer of a planning or repair call.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) plan: Plan,
    pub(crate) provider: String,
    pub(crate) usage: TokenUsage,
}

/// A planning or repair call that failed, with what the model's answers cost before it did:
/// tokens spent are tokens spent.
#[derive(Debug)]
pub(crate) struct PlanFailed {
    pub(crate) error: Error,
    /// The provider of the last answer, if any answer came.
    pub(crate) provider: Option<String>,
    pub(crate) usage: TokenUsage,
}

/// Asks the LLM for a plan, streaming its text into the job's events; a reply that does not parse
/// gets one more try that tells the model the parse error.
pub(crate) async fn ask_for_plan(
    llm: &dyn LlmProvider,
    events: &EventSink,
    user_message: String,
) -> std::result::Result<Planned, PlanFailed> {
    let mut request = ChatRequest {
        system: plan::system_prompt().to_string(),
        messages: vec![Message::user(user_message)],
        json_mode: true,
        response_schema: Some(crate::schema::plan_schema().clone()),
        temperature: Some(0.2),
        max_tokens: None,
    };
    let mut usage = TokenUsage::default();
    let mut provider = None;
    let mut last_error = None;
    let mut cut_streams = 0;
    let mut attempt = 0;
    while attempt < 2 {
        let response = match chat_streaming(llm, &request, events).await {
            Ok(r) => r,
            // An answer cut off mid-stream (the connection lost after some text came) is asked
            // again: its text was only shown, never used. A failure before any text is the
            // provider wrapper's to retry.
            Err(Streamed {
                error,
                mid_stream: true,
            }) if error.is_retryable() && cut_streams < MAX_CUT_STREAMS => {
                cut_streams += 1;
                events.emit(EventKind::Log {
                    message: format!("the answer was cut off ({error}); asking again"),
                });
                continue;
            }
            Err(Streamed { error, .. }) => {
                return Err(PlanFailed {
                    error: error.into(),
                    provider,
                    usage,
                })
            }
        };
        attempt += 1;
        usage.add(response.usage);
        provider = Some(response.provider.clone());
        match parse_plan(&response.text) {
            Ok(plan) => {
                return Ok(Planned {
                    plan,
                    provider: response.provider,
                    usage,
                })
            }
            Err(e) if attempt == 1 => {
                events.emit(EventKind::Log {
                    message: format!("the plan could not be parsed ({e}); asking again"),
                });
                request.messages.push(Message::assistant(response.text));
                request
                    .messages
                    .push(Message::user(plan::reparse_prompt(&e)));
                last_error = Some(e);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(PlanFailed {
        error: Error::InvalidPlan(last_error.map(|e| e.to_string()).unwrap_or_default()),
        provider,
        usage,
    })
}

/// How many answers cut off mid-stream one planning call asks again.
const MAX_CUT_STREAMS: u32 = 2;

/// A failed streamed answer, and whether it failed after some text had arrived.
struct Streamed {
    error: LlmError,
    mid_stream: bool,
}

async fn chat_streaming(
    llm: &dyn LlmProvider,
    request: &ChatRequest,
    events: &EventSink,
) -> std::result::Result<crate::llm::ChatResponse, Streamed> {
    let stream = llm.chat_stream(request).await.map_err(|error| Streamed {
        error,
        mid_stream: false,
    })?;
    let mut saw_text = false;
    collect_stream(stream, |delta| {
        if !delta.is_empty() {
            saw_text = true;
            events.emit(EventKind::Planning {
                text: delta.to_string(),
            });
        }
    })
    .await
    .map_err(|error| Streamed {
        error,
        mid_stream: saw_text,
    })
}

/// Everything needed to run one step, taken from the state by the execute node's `prep`.
pub(crate) struct StepRun {
    pub(crate) index: usize,
    sandbox: Arc<dyn Sandbox>,
    events: EventSink,
    request: StepRequest,
    sink: OutputSink,
}

impl StepRun {
    /// Runs the step (no access to the state: the execute node's `exec`). A step the sandbox
    /// refuses (a path outside the workspace, a file too large) is a failed step, which a repair
    /// can fix; any other sandbox error is returned as such.
    pub(crate) async fn run(&self) -> std::result::Result<StepResult, SandboxError> {
        let started = std::time::Instant::now();
        match self
            .sandbox
            .run_step(self.request.clone(), self.sink.clone())
            .await
        {
            Err(e)
                if matches!(
                    e.kind,
                    SandboxErrorKind::PathRefused
                        | SandboxErrorKind::NotFound
                        | SandboxErrorKind::TooLarge
                        | SandboxErrorKind::Invalid
                ) =>
            {
                self.events.emit(EventKind::Output {
                    index: self.index,
                    stream: OutputStream::Stderr,
                    text: format!("{e}\n"),
                });
                Ok(StepResult::refused(&e, started.elapsed()))
            }
            other => other,
        }
    }
}

impl AgentState {
    /// Records the next pending step as running and returns what is needed to run it, or `None`
    /// when no step is left.
    pub(crate) async fn begin_next_step(&mut self) -> Result<Option<StepRun>> {
        let Some((step, attempt)) = self.pending.pop_front() else {
            return Ok(None);
        };
        let index = self.job.steps.len();
        self.job.steps.push(StepRecord {
            index,
            step: step.clone(),
            status: StepStatus::Running,
            result: None,
            attempt,
        });
        self.events.emit(EventKind::StepStarted {
            index,
            step: step.clone(),
        });
        self.save().await?;
        let request = StepRequest {
            index,
            timeout: step.timeout.unwrap_or(self.job.spec.step_timeout),
            step,
            max_output_bytes: self.settings.max_output_bytes,
            tail_bytes: self.settings.tail_bytes,
            // The job's environment went to the sandbox once, at create.
            env: Vec::new(),
            cancel: self.cancel.child_token(),
        };
        Ok(Some(StepRun {
            index,
            sandbox: self.sandbox.clone(),
            events: self.events.clone(),
            sink: self.output_sink(index),
            request,
        }))
    }

    /// Records a step's outcome (the execute node's `post`).
    pub(crate) async fn finish_step(
        &mut self,
        index: usize,
        result: &std::result::Result<StepResult, SandboxError>,
    ) -> Result<()> {
        let event = self.job.steps[index].finish(result);
        self.events.emit(event);
        self.save().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures::stream::{self, StreamExt};

    use super::*;
    use crate::job::JobId;
    use crate::llm::{ChatChunk, ChatResponse, ChatStream, LlmErrorKind};
    use crate::store::memory::MemoryStore;

    /// Streams half a plan and then loses the connection `cuts` times; answers in full after.
    struct CutThenAnswer {
        cuts: usize,
        calls: AtomicUsize,
        kind: LlmErrorKind,
    }

    const PLAN: &str = r#"{"summary":"s","steps":[{"type":"shell","command":"true"}]}"#;

    #[async_trait]
    impl LlmProvider for CutThenAnswer {
        fn name(&self) -> &str {
            "cut"
        }
        async fn chat(&self, _: &ChatRequest) -> std::result::Result<ChatResponse, LlmError> {
            Err(LlmError::new(LlmErrorKind::Permanent, "cut", "stream only"))
        }
        async fn chat_stream(&self, _: &ChatRequest) -> std::result::Result<ChatStream, LlmError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let usage = TokenUsage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            };
            let (a, b) = PLAN.split_at(10);
            let items = if n < self.cuts {
                vec![
                    Ok(ChatChunk::Delta(a.into())),
                    Err(LlmError::new(self.kind, "cut", "connection lost")),
                ]
            } else {
                vec![
                    Ok(ChatChunk::Delta(a.into())),
                    Ok(ChatChunk::Delta(b.into())),
                    Ok(ChatChunk::Done {
                        provider: "cut".into(),
                        model: "m".into(),
                        usage,
                    }),
                ]
            };
            Ok(stream::iter(items).boxed())
        }
    }

    fn sink() -> EventSink {
        let (live, _) = tokio::sync::broadcast::channel(64);
        EventSink::spawn(JobId::new(), 0, Arc::new(MemoryStore::new()), live)
    }

    fn provider(cuts: usize, kind: LlmErrorKind) -> CutThenAnswer {
        CutThenAnswer {
            cuts,
            calls: AtomicUsize::new(0),
            kind,
        }
    }

    #[tokio::test]
    async fn an_answer_cut_mid_stream_is_asked_again() {
        let llm = provider(2, LlmErrorKind::Transient);
        let planned = ask_for_plan(&llm, &sink(), "x".into()).await.unwrap();
        assert_eq!(planned.plan.steps.len(), 1);
        assert_eq!(planned.usage.total_tokens, 3);
        assert_eq!(llm.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn cut_streams_are_asked_again_a_bounded_number_of_times() {
        let llm = provider(usize::MAX, LlmErrorKind::Transient);
        let failed = ask_for_plan(&llm, &sink(), "x".into()).await.unwrap_err();
        assert!(matches!(failed.error, Error::Llm(ref e) if e.kind == LlmErrorKind::Transient));
        assert_eq!(
            llm.calls.load(Ordering::SeqCst),
            1 + MAX_CUT_STREAMS as usize
        );
    }

    #[tokio::test]
    async fn a_permanent_failure_mid_stream_is_not_asked_again() {
        let llm = provider(1, LlmErrorKind::InvalidResponse);
        assert!(ask_for_plan(&llm, &sink(), "x".into()).await.is_err());
        assert_eq!(llm.calls.load(Ordering::SeqCst), 1);
    }
}
