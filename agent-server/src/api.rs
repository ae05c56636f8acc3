//! The request and response bodies of the REST API (shared by the server and the `agent` CLI).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use agent_core::manager::JobSandbox;
use agent_core::{
    Job, JobId, JobSpec, JobStatus, KeepSandbox, NetworkMode, ResourceLimits, Service, Step,
    StepStatus, Termination, TokenUsage,
};

use crate::error::ApiError;

pub use agent_core::job::MAX_TIMEOUT_SECS;

/// `POST /schedule`: a prompt for the LLM to plan, or explicit steps (or both: the steps run and
/// the prompt is kept as the job's description).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// The task in plain language (at most 262 144 bytes of UTF-8). Required unless `steps` are
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 262144)]
    pub prompt: Option<String>,
    /// Explicit steps, run in order without an LLM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::openapi::StepComponent>>, min_items = 1, max_items = 1000)]
    pub steps: Option<Vec<Step>>,
    /// Timeout of the whole job in seconds (default: the server's `AGENT_JOB_TIMEOUT_SECS`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "agent_core::job::optional_whole_number"
    )]
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_secs: Option<u64>,
    /// Timeout of each step in seconds (default: the server's `AGENT_STEP_TIMEOUT_SECS`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "agent_core::job::optional_whole_number"
    )]
    #[schema(minimum = 1, maximum = 604800)]
    pub step_timeout_secs: Option<u64>,
    /// Sandbox network: `none` (default) or `bridge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<NetworkDoc>, example = "none")]
    pub network: Option<NetworkMode>,
    /// Container image (default: the server's `AGENT_IMAGE`): a reference
    /// (`[registry/]name[:tag][@digest]`, lower-case name components) or an image ID. The name
    /// may have up to 255 characters (the document states it as the whole reference's length;
    /// a longer tag or digest is still taken, up to 4096 bytes in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub image: Option<String>,
    /// Extra environment variables for every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Services started before the first step: `desktop` (a live desktop every step draws on,
    /// seen through noVNC) and/or `jupyter` (Jupyter Lab in the workspace). Jobs with services
    /// run on the server's desktop image unless they name an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::access::AccessService>>, example = json!(["desktop"]))]
    pub services: Option<Vec<Service>>,
    /// Keep the sandbox this many seconds after the steps end (at most the server's
    /// `AGENT_MAX_KEEP_ALIVE_SECS`), so its desktop or notebook can still be used; the job's
    /// status is final meanwhile. `POST /release/{id}` ends it early. A server restart ends it
    /// too (it is not taken over by the new process: `sandbox_ended` says `server_restarted`).
    /// (The maximum stated here is the default of `AGENT_MAX_KEEP_ALIVE_SECS`.)
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "agent_core::job::optional_whole_number"
    )]
    #[schema(minimum = 0, maximum = 3600)]
    pub keep_alive_secs: Option<u64>,
    /// Continue the job's sandbox as a live sandbox once its steps end: the job ends as usual
    /// (its status, ZIP and log), and its container — workspace files, stateful Python
    /// variables — becomes a new live sandbox (`continued_in` in its status) driven through
    /// `/sandboxes/{id}`. Only a job that ends `succeeded` or `failed` hands it over. Not with
    /// `keep_alive_secs` or `services`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_sandbox: Option<KeepSandboxRequest>,
}

/// `keep_sandbox` of `POST /schedule`: the live sandbox the job's sandbox becomes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepSandboxRequest {
    /// Its idle timeout in seconds (default: the server's `AGENT_IDLE_TIMEOUT_SECS`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "agent_core::job::optional_whole_number"
    )]
    #[schema(minimum = 1, maximum = 604800)]
    pub idle_timeout_secs: Option<u64>,
    /// Its hard maximum lifetime in seconds, from the handover (default: the server's
    /// `AGENT_JOB_TIMEOUT_SECS`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "agent_core::job::optional_whole_number"
    )]
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_secs: Option<u64>,
}

impl KeepSandboxRequest {
    /// The settings, with the server's defaults filled in (timeouts 1 to [`MAX_TIMEOUT_SECS`]).
    pub fn into_settings(self, defaults: &JobDefaults) -> Result<KeepSandbox, ApiError> {
        Ok(KeepSandbox {
            idle_timeout: timeout(
                "keep_sandbox.idle_timeout_secs",
                self.idle_timeout_secs,
                defaults.idle_timeout,
            )?,
            lifetime: timeout(
                "keep_sandbox.timeout_secs",
                self.timeout_secs,
                defaults.job_timeout,
            )?,
        })
    }
}

/// The sandbox network as the API document names it ([`NetworkMode`]'s JSON form).
#[derive(ToSchema)]
#[schema(as = Network)]
#[allow(dead_code)] // only its schema is used
#[serde(rename_all = "lowercase")]
pub enum NetworkDoc {
    /// No network (only loopback).
    None,
    /// The engine's bridge network.
    Bridge,
}

/// Server-side defaults applied to a [`ScheduleRequest`].
#[derive(Clone, Debug)]
pub struct JobDefaults {
    /// Whole-job timeout.
    pub job_timeout: Duration,
    /// Per-step timeout.
    pub step_timeout: Duration,
    /// Network mode.
    pub network: NetworkMode,
    /// Resource limits of a sandbox (the defaults, lowered to the operator's maxima).
    pub limits: ResourceLimits,
    /// A live sandbox's idle timeout.
    pub idle_timeout: Duration,
}

impl Default for JobDefaults {
    fn default() -> Self {
        let spec = JobSpec::default();
        Self {
            job_timeout: spec.job_timeout,
            step_timeout: spec.step_timeout,
            network: spec.network,
            limits: spec.limits,
            idle_timeout: agent_core::LiveSettings::default().idle_timeout,
        }
    }
}

/// A timeout field in seconds: `None` is `default`; 0 and more than a week are refused, naming
/// the field.
pub(crate) fn timeout(
    field: &str,
    secs: Option<u64>,
    default: Duration,
) -> Result<Duration, ApiError> {
    match secs {
        None => Ok(default),
        Some(0) => Err(ApiError::invalid(
            field,
            format!("{field}: must be at least 1"),
        )),
        Some(s) if s > MAX_TIMEOUT_SECS => Err(ApiError::invalid(
            field,
            format!("{field}: must be at most {MAX_TIMEOUT_SECS}"),
        )),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

/// The services asked for, each once (a service named twice is asked for once).
pub(crate) fn unique_services(services: Option<Vec<Service>>) -> Vec<Service> {
    let mut all = Vec::new();
    for s in services.into_iter().flatten() {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    all
}

impl ScheduleRequest {
    /// A request running explicit steps.
    pub fn from_steps(steps: Vec<Step>) -> Self {
        Self {
            steps: Some(steps),
            ..Self::default()
        }
    }

    /// A request planned from a prompt.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        Self {
            prompt: Some(prompt.into()),
            ..Self::default()
        }
    }

    /// The job spec, with the server's defaults filled in; checks the timeouts' API range (1 to
    /// [`MAX_TIMEOUT_SECS`]); the rest is [`JobSpec::validate`]'s, run when it is submitted.
    pub fn into_spec(self, defaults: &JobDefaults) -> Result<JobSpec, ApiError> {
        let job_timeout = timeout("timeout_secs", self.timeout_secs, defaults.job_timeout)?;
        let step_timeout = timeout(
            "step_timeout_secs",
            self.step_timeout_secs,
            defaults.step_timeout,
        )?;
        let spec = JobSpec {
            prompt: self.prompt.unwrap_or_default(),
            steps: self.steps,
            image: self.image,
            step_timeout,
            job_timeout,
            network: self.network.unwrap_or(defaults.network),
            limits: defaults.limits.clone(),
            env: self.env.unwrap_or_default(),
            services: unique_services(self.services),
            keep_alive: Duration::from_secs(self.keep_alive_secs.unwrap_or(0)),
            keep_sandbox: self
                .keep_sandbox
                .map(|k| k.into_settings(defaults))
                .transpose()?,
            ..JobSpec::default()
        };
        Ok(spec)
    }
}

/// `202` answer to `POST /schedule`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleResponse {
    /// The new job's id.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Always `queued`.
    #[schema(value_type = String, example = "queued")]
    pub status: JobStatus,
    /// Where to poll.
    pub status_link: String,
    /// Something the client should know about its job, e.g. that the Docker engine does not
    /// answer and the job waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

/// One step of a job in `GET /status/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// Position in the job (0-based; repairs continue the numbering).
    pub index: usize,
    /// `shell`, `python` or `write_file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The planner's description.
    pub description: Option<String>,
    /// `pending`, `running`, `succeeded`, `failed` or `skipped`.
    #[schema(value_type = String, example = "succeeded")]
    pub status: StepStatus,
    /// Exit code once finished.
    pub exit_code: Option<i32>,
    /// Wall time once finished.
    pub duration_ms: Option<u64>,
    /// How it ended: `exited`, `timed_out`, `cancelled`, `out_of_memory`, `output_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub termination: Option<Termination>,
    /// Repair round that produced it (0 = the first plan).
    #[serde(default)]
    pub attempt: u32,
    /// A stateful Python step's outcome (the value of its final expression, changed files,
    /// whether the interpreter was new or its state lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub python: Option<Box<agent_core::PythonOutcome>>,
}

/// `GET /status/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`, `timed_out` or `interrupted`.
    #[schema(value_type = String, example = "running")]
    pub status: JobStatus,
    /// The prompt (empty for explicit-steps jobs).
    pub prompt: String,
    /// Submission time (RFC 3339).
    pub created_at: DateTime<Utc>,
    /// When a worker took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached its final status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
    /// The LLM provider that planned it.
    pub provider: Option<String>,
    /// LLM tokens used over the whole job (planning and repairs; zeros for explicit steps).
    #[serde(default)]
    pub usage: UsageView,
    /// The tenant that submitted it (absent: the admin, or a server without tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Every step run so far.
    pub steps: Vec<StepView>,
    /// The result ZIP, once written.
    pub download_link: Option<String>,
    /// The job's log (text; `/stream` appended for Server-Sent Events).
    pub logs_link: String,
    /// The services the job asked for (`desktop`, `jupyter`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::access::AccessService>)]
    pub services: Vec<Service>,
    /// How long the sandbox is kept after the steps, as asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_secs: Option<u64>,
    /// The job's sandbox, while it can be reached (the job runs, or it is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxView>,
    /// When the kept sandbox goes (RFC 3339), once the steps ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_until: Option<DateTime<Utc>>,
    /// Where the services are, while they are up: `desktop` (the noVNC viewer), `jupyter`
    /// (Jupyter Lab) and `access` (with `AGENT_API_TOKEN` set, the viewer and Jupyter paths
    /// need a signed URL: `POST` there gives one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_links: Option<ServiceLinks>,
    /// The live sandbox the job's sandbox was handed over to (`keep_sandbox`):
    /// `/sandboxes/{continued_in}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub continued_in: Option<JobId>,
    /// For a live sandbox made from a finished job's sandbox: that job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub continues: Option<JobId>,
    /// Once the job's kept sandbox is gone: when and why (`sandbox`, `keep_alive_until` and
    /// `service_links` are then absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_ended: Option<SandboxEndView>,
}

/// How a job's kept sandbox went, in `GET /status/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxEndView {
    /// `expired` (its keep-alive ran out), `released` (`POST /release/{id}`, or a cancel of
    /// the finished job), `server_stopped` (a shutdown removed it) or `server_restarted` (the
    /// server that kept it stopped without removing it; the restarted one removed its container:
    /// a kept sandbox is not taken over by a new process).
    #[schema(example = "expired")]
    pub reason: String,
    /// When (RFC 3339).
    pub at: DateTime<Utc>,
}

/// A job's sandbox in `GET /status/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxView {
    /// `running` while the job runs, `kept` after its steps ended.
    pub state: String,
    /// The backend's id (a container id).
    pub id: String,
    /// When a kept sandbox goes (RFC 3339).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Links to a job's services while they are up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceLinks {
    /// The desktop's noVNC viewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<String>,
    /// Jupyter Lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jupyter: Option<String>,
    /// Where to ask for a signed URL (`POST`, body `{"service": "desktop"}`).
    pub access: String,
}

/// The links to the services of `job` that are up in `sandbox`.
fn service_links(job: &Job, sandbox: &JobSandbox) -> Option<ServiceLinks> {
    let id = job.id;
    let up = |s: Service| job.spec.services.contains(&s) && sandbox.sandbox.service(s).is_some();
    let links = ServiceLinks {
        desktop: up(Service::Desktop).then(|| format!("/desktop/{id}/")),
        jupyter: up(Service::Jupyter).then(|| format!("/jupyter/{id}/lab")),
        access: format!("/access/{id}"),
    };
    (links.desktop.is_some() || links.jupyter.is_some()).then_some(links)
}

impl StatusResponse {
    /// The view of a stored job.
    pub fn from_job(job: &Job) -> Self {
        Self::of(job.clone(), None)
    }

    /// The view of a stored job and its sandbox, when it has one now; made from the job by
    /// value (its strings move into the view rather than being copied).
    pub fn of(job: Job, sandbox: Option<&JobSandbox>) -> Self {
        let service_links = sandbox.and_then(|sandbox| service_links(&job, sandbox));
        let id = job.id;
        let download_link = job.artifact.as_ref().map(|_| format!("/download/{id}"));
        let keep_alive_secs =
            (!job.spec.keep_alive.is_zero()).then_some(job.spec.keep_alive.as_secs());
        let sandbox_ended = job
            .kept_sandbox
            .as_ref()
            .and_then(|k| k.ended.as_ref())
            .map(|end| SandboxEndView {
                reason: end.reason.as_str().to_string(),
                at: end.at,
            });
        let view = Self {
            job_id: id,
            status: job.status,
            prompt: job.spec.prompt,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            error: job.error,
            provider: job.provider,
            usage: UsageView::from(job.usage),
            tenant: job.spec.tenant,
            steps: job
                .steps
                .into_iter()
                .map(|rec| {
                    let result = rec.result;
                    StepView {
                        index: rec.index,
                        kind: rec.step.kind.type_name().to_string(),
                        description: rec.step.description,
                        status: rec.status,
                        exit_code: result.as_ref().map(|r| r.exit_code),
                        duration_ms: result
                            .as_ref()
                            .map(|r| u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX)),
                        termination: result.as_ref().map(|r| r.termination),
                        attempt: rec.attempt,
                        python: result.and_then(|r| r.python),
                    }
                })
                .collect(),
            download_link,
            logs_link: format!("/logs/{id}"),
            services: job.spec.services,
            keep_alive_secs,
            sandbox: None,
            keep_alive_until: None,
            service_links: None,
            continued_in: job.continued_in,
            continues: job.continues,
            sandbox_ended,
        };
        match sandbox {
            Some(sandbox) => view.with_sandbox_view(sandbox, service_links),
            None => view,
        }
    }

    /// The view with the job's sandbox (it has one now) and its service links.
    fn with_sandbox_view(mut self, sandbox: &JobSandbox, links: Option<ServiceLinks>) -> Self {
        self.sandbox_ended = None;
        self.sandbox = Some(SandboxView {
            state: if sandbox.kept_until.is_some() {
                "kept"
            } else {
                "running"
            }
            .to_string(),
            id: sandbox.sandbox.id().to_string(),
            expires_at: sandbox.kept_until,
        });
        self.keep_alive_until = sandbox.kept_until;
        self.service_links = links;
        self
    }
}

/// LLM token usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

impl From<TokenUsage> for UsageView {
    fn from(u: TokenUsage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

pub use agent_core::store::step_headline;

/// One job in `GET /jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Its status.
    #[schema(value_type = String, example = "succeeded")]
    pub status: JobStatus,
    /// The prompt (shortened to 200 characters).
    pub prompt: String,
    /// Number of steps run.
    pub steps: usize,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// Start time.
    pub started_at: Option<DateTime<Utc>>,
    /// Finish time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
    /// The LLM provider that planned it.
    #[serde(default)]
    pub provider: Option<String>,
    /// What its first step does (its description, else its command, code or path; at most 120
    /// characters): names an explicit-steps job, whose prompt is empty.
    #[serde(default)]
    pub first_step: Option<String>,
    /// Tokens its LLM calls used.
    #[serde(default)]
    pub usage: UsageView,
    /// The tenant that submitted it (absent: the admin, or a server without tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl JobSummary {
    /// The summary of a stored job.
    pub fn from_job(job: &Job) -> Self {
        Self::from(agent_core::store::JobSummary::from_job(job))
    }
}

impl From<agent_core::store::JobSummary> for JobSummary {
    fn from(s: agent_core::store::JobSummary) -> Self {
        Self {
            job_id: s.id,
            status: s.status,
            prompt: s.prompt,
            steps: s.steps,
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            error: s.error,
            provider: s.provider,
            first_step: s.first_step,
            usage: s.usage.into(),
            tenant: s.tenant,
        }
    }
}

/// `GET /jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobsResponse {
    /// This page, newest first.
    pub jobs: Vec<JobSummary>,
    /// How many jobs match in all.
    pub total: u64,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /cancel/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Always true (a finished job answers 409 instead).
    pub cancelled: bool,
    /// `cancelled`.
    #[schema(value_type = String, example = "cancelled")]
    pub status: JobStatus,
}

/// Whether the Docker engine answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecutorHealth {
    /// The executor (`docker`).
    pub name: String,
    /// Whether it answered a ping.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when it has not answered (jobs wait for it meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since: Option<DateTime<Utc>>,
    /// How long jobs wait for it, in seconds (`AGENT_ENGINE_WAIT_SECS`); past that, waiting
    /// jobs fail and `POST /schedule` answers 503.
    pub wait_limit_secs: u64,
    /// Jobs waiting for it now.
    pub waiting_jobs: usize,
}

/// `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`, or `degraded` when the executor does not answer (then the HTTP status is 503).
    pub status: String,
    /// `containerized-agent`.
    pub service: String,
    /// The server's version.
    pub version: String,
    /// The sandbox executor.
    pub executor: ExecutorHealth,
    /// The LLM providers configured, in the order they are tried (empty: explicit steps only).
    pub llm_providers: Vec<String>,
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs running.
    pub running: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_request_applies_defaults_and_limits() {
        let defaults = JobDefaults {
            job_timeout: Duration::from_secs(60),
            step_timeout: Duration::from_secs(10),
            network: NetworkMode::None,
            ..JobDefaults::default()
        };
        let spec = ScheduleRequest::from_prompt("hi")
            .into_spec(&defaults)
            .unwrap();
        assert_eq!(spec.job_timeout, Duration::from_secs(60));
        assert_eq!(spec.step_timeout, Duration::from_secs(10));
        let mut req = ScheduleRequest::from_prompt("hi");
        req.timeout_secs = Some(0);
        let err = req.into_spec(&defaults).unwrap_err();
        assert_eq!(err.detail.field.as_deref(), Some("timeout_secs"));
        let mut req = ScheduleRequest::from_prompt("hi");
        req.step_timeout_secs = Some(u64::MAX);
        assert!(req.into_spec(&defaults).is_err());
        let req: ScheduleRequest = serde_json::from_str(
            r#"{"steps":[{"type":"shell","command":"echo"}],"network":"bridge","env":{"A":"1"}}"#,
        )
        .unwrap();
        let spec = req.into_spec(&defaults).unwrap();
        assert_eq!(spec.network, NetworkMode::Bridge);
        assert_eq!(spec.steps.as_ref().map(Vec::len), Some(1));
        assert!(serde_json::from_str::<ScheduleRequest>(r#"{"promt":"typo"}"#).is_err());
    }
}
