//! Live sandboxes over REST: `/sandboxes` and its sub-resources.
//!
//! A live sandbox is a job of its own kind ([`agent_core::manager::JobManager::create_sandbox`]):
//! its id is a job id, so `GET /status/{id}`, `/logs/{id}`, `/logs/{id}/stream`, `/cancel/{id}`
//! and `/download/{id}` (after an export) work on it as on any job.
//!
//! - `POST /sandboxes` creates one (201; with `services`, a desktop and/or Jupyter Lab reached
//!   as a job's are: `POST /access/{id}`, `/desktop/{id}/`, `/jupyter/{id}/lab`),
//!   `GET /sandboxes` lists the live ones,
//!   `GET /sandboxes/{id}` shows one, `DELETE /sandboxes/{id}` destroys it;
//! - `POST /sandboxes/{id}/steps` runs a step: the JSON result, or with
//!   `Accept: application/x-ndjson` / `text/event-stream` the output while it runs, then the result;
//! - `POST /sandboxes/{id}/plan` hands it to the planner: the LLM plans a task, its steps run
//!   in the sandbox (repaired when they fail) and are recorded as the sandbox's steps;
//! - `GET`/`PUT /sandboxes/{id}/files?path=…` read and write one file;
//! - `GET /sandboxes/{id}/workspace` exports the workspace as a ZIP;
//! - `POST /sandboxes/{id}/extend` sets the idle timeout and restarts it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};

use agent_core::manager::{JobManager, SandboxInfo, TextSink, MAX_PUT_FILE_BYTES};
use agent_core::{
    JobId, JobSpec, JobStatus, LiveSettings, NetworkMode, OutputStream, ResourceLimits, Service,
    Step, StepRecord, StepResult, StepStatus,
};

use crate::api::timeout;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, JobIdParam};
use crate::routes::AppState;

/// The largest request body of these routes (`PUT /sandboxes/{id}/files`): one byte over the
/// file cap, so that an oversize file is refused by its size with a clear message.
pub const MAX_UPLOAD_BODY_BYTES: usize = MAX_PUT_FILE_BYTES + 1;

/// The routes of live sandboxes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(show).delete(destroy))
        .route("/sandboxes/{id}/steps", post(run_step))
        .route("/sandboxes/{id}/plan", post(plan))
        .route(
            "/sandboxes/{id}/files",
            get(get_file)
                .put(put_file)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BODY_BYTES)),
        )
        .route("/sandboxes/{id}/workspace", get(export))
        .route("/sandboxes/{id}/extend", post(extend))
}

/// The live-sandbox part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(create, list, show, destroy, run_step, plan, get_file, put_file, export, extend),
    components(schemas(
        CreateSandboxRequest,
        SandboxView,
        SandboxList,
        RunStepRequest,
        StepRunView,
        PlanRequest,
        PlanRunView,
        PlannedStepView,
        StepResultView,
        PutFileResponse,
        ExtendRequest,
        LimitsView
    )),
    tags((name = "sandboxes", description = "Live sandboxes: create one, run steps in it over time, move files, destroy it"))
)]
pub struct SandboxesDoc;

/// The longest image reference a sandbox may name (the repository name's own limit).
pub const MAX_IMAGE_CHARS: usize = 255;

/// The largest memory, `/workspace` or `/tmp` size a sandbox may ask for: 1 TiB.
pub const MAX_LIMIT_BYTES: u64 = 1 << 40;
/// The most processes a sandbox may ask for.
pub const MAX_PIDS: u64 = 1 << 20;

/// Resource limits of a sandbox (every field optional; defaults as for jobs).
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct LimitsView {
    /// Memory in bytes (default 2 GiB; at least 16 MiB, at most 1 TiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    #[schema(minimum = 16777216, maximum = 1099511627776.0)]
    pub memory_bytes: Option<u64>,
    /// CPU cores (default 1.0; at least 0.01; more than the host has means all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01, maximum = 1024.0)]
    pub cpus: Option<f64>,
    /// Maximum number of processes (default 256; at least 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    #[schema(minimum = 8, maximum = 1048576)]
    pub pids: Option<u64>,
    /// Size of `/workspace` in bytes (default 1 GiB; at least 1 MiB, at most 1 TiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    #[schema(minimum = 1048576, maximum = 1099511627776.0)]
    pub workspace_bytes: Option<u64>,
    /// Size of `/tmp` in bytes (default 256 MiB; at least 1 MiB, at most 1 TiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    #[schema(minimum = 1048576, maximum = 1099511627776.0)]
    pub tmp_bytes: Option<u64>,
}

impl LimitsView {
    /// The limits, `defaults` filled in; out-of-range values are a 422 naming the field. CPUs
    /// above what the host has are lowered to that (the engine refuses more).
    pub fn into_limits(self, defaults: &ResourceLimits) -> ApiResult<ResourceLimits> {
        let d = defaults;
        let bytes = |field: &str, v: Option<u64>, min: u64, default: u64| match v {
            None => Ok(default),
            Some(v) if (min..=MAX_LIMIT_BYTES).contains(&v) => Ok(v),
            Some(_) => Err(ApiError::invalid(
                field,
                format!("{field}: must be between {min} and {MAX_LIMIT_BYTES}"),
            )),
        };
        let pids = match self.pids {
            None => d.pids,
            Some(p) if (8..=MAX_PIDS).contains(&p) => u32::try_from(p).unwrap_or(u32::MAX),
            Some(_) => {
                return Err(ApiError::invalid(
                    "limits.pids",
                    format!("limits.pids: must be between 8 and {MAX_PIDS}"),
                ))
            }
        };
        let cpus = match self.cpus {
            None => d.cpus,
            Some(c) if c.is_finite() && (0.01..=1024.0).contains(&c) => {
                let host = std::thread::available_parallelism().map_or(1, usize::from);
                #[allow(clippy::cast_precision_loss)]
                c.min(host as f64)
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "limits.cpus",
                    "limits.cpus: must be between 0.01 and 1024",
                ))
            }
        };
        Ok(ResourceLimits {
            memory_bytes: bytes(
                "limits.memory_bytes",
                self.memory_bytes,
                16 << 20,
                d.memory_bytes,
            )?,
            cpus,
            pids,
            workspace_bytes: bytes(
                "limits.workspace_bytes",
                self.workspace_bytes,
                1 << 20,
                d.workspace_bytes,
            )?,
            tmp_bytes: bytes("limits.tmp_bytes", self.tmp_bytes, 1 << 20, d.tmp_bytes)?,
        })
    }
}

/// `POST /sandboxes` (and the MCP tool `create_sandbox`).
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Container image (default: the server's `AGENT_IMAGE`; at most 255 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsView>,
    /// Network: `none` (default) or `bridge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::api::NetworkDoc>, example = "none")]
    #[schemars(with = "Option<String>")]
    pub network: Option<NetworkMode>,
    /// Environment variables of every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Ended after this many seconds without a step or file operation (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 604800)]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    pub idle_timeout_secs: Option<u64>,
    /// Hard maximum lifetime in seconds (default: the server's `AGENT_JOB_TIMEOUT_SECS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 604800)]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    pub timeout_secs: Option<u64>,
    /// Default timeout of each step in seconds (default: the server's `AGENT_STEP_TIMEOUT_SECS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 604800)]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    pub step_timeout_secs: Option<u64>,
    /// Services started with the sandbox: `desktop` (a desktop every step draws on, seen through
    /// noVNC at `/desktop/{id}/`) and/or `jupyter` (Jupyter Lab in the workspace, at
    /// `/jupyter/{id}/lab`); `POST /access/{id}` gives a signed URL. A sandbox with services runs
    /// on the server's desktop image unless it names an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::access::AccessService>>, example = json!(["jupyter"]))]
    #[schemars(with = "Option<Vec<ServiceName>>")]
    pub services: Option<Vec<Service>>,
}

/// A service's name in the MCP tools' schema.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // only its schema is used
#[serde(rename_all = "lowercase")]
enum ServiceName {
    /// A desktop every step draws on.
    Desktop,
    /// Jupyter Lab in the workspace.
    Jupyter,
}

impl CreateSandboxRequest {
    /// The job spec of the sandbox, with the server's defaults filled in.
    pub fn into_spec(self, defaults: &crate::api::JobDefaults) -> ApiResult<JobSpec> {
        let idle_timeout = timeout(
            "idle_timeout_secs",
            self.idle_timeout_secs,
            defaults.idle_timeout,
        )?;
        if self
            .image
            .as_ref()
            .is_some_and(|i| i.chars().count() > MAX_IMAGE_CHARS)
        {
            return Err(ApiError::invalid(
                "image",
                format!("image: at most {MAX_IMAGE_CHARS} characters"),
            ));
        }
        Ok(JobSpec {
            image: self.image,
            limits: self
                .limits
                .unwrap_or_default()
                .into_limits(&defaults.limits)?,
            network: self.network.unwrap_or(defaults.network),
            env: self.env.unwrap_or_default(),
            job_timeout: timeout("timeout_secs", self.timeout_secs, defaults.job_timeout)?,
            step_timeout: timeout(
                "step_timeout_secs",
                self.step_timeout_secs,
                defaults.step_timeout,
            )?,
            live: Some(LiveSettings { idle_timeout }),
            services: crate::api::unique_services(self.services),
            ..JobSpec::default()
        })
    }
}

/// A live sandbox (or one that has ended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = LiveSandbox)]
pub struct SandboxView {
    /// Its id (a job id: `/status/{id}` and `/logs/{id}` work on it).
    #[schema(value_type = String, format = Uuid)]
    pub sandbox_id: JobId,
    /// `running` while live; then `succeeded` (destroyed), `timed_out` (idle or too old),
    /// `cancelled`, `interrupted` (server stopped) or `failed`.
    #[schema(value_type = String, example = "running")]
    pub status: JobStatus,
    /// Its image (`null`: the server's default).
    pub image: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The idle timeout in seconds.
    pub idle_timeout_secs: u64,
    /// When it ends if left idle (live sandboxes only).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it ends whatever happens.
    pub deadline: DateTime<Utc>,
    /// Steps run so far.
    pub steps: usize,
    /// Why it ended, unless destroyed.
    pub error: Option<String>,
    /// The services it runs (`desktop`, `jupyter`): `POST /access/{id}` gives a signed URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::access::AccessService>)]
    pub services: Vec<Service>,
    /// The finished job whose sandbox (workspace, Python state) it continues
    /// (`keep_sandbox` of `POST /schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub continues: Option<JobId>,
    /// Its job status.
    pub status_link: String,
    /// Its log.
    pub logs_link: String,
}

impl SandboxView {
    pub(crate) fn from_info(info: &SandboxInfo) -> Self {
        Self {
            sandbox_id: info.id,
            status: info.status,
            image: info.image.clone(),
            created_at: info.created_at,
            idle_timeout_secs: info.idle_timeout.as_secs(),
            expires_at: info.expires_at,
            deadline: info.deadline,
            steps: info.steps,
            error: info.error.clone(),
            services: info.services.clone(),
            continues: info.continues,
            status_link: format!("/status/{}", info.id),
            logs_link: format!("/logs/{}", info.id),
        }
    }
}

/// `GET /sandboxes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// The live sandboxes, oldest first.
    pub sandboxes: Vec<SandboxView>,
}

impl SandboxList {
    /// The live sandboxes `caller` may see, oldest first.
    pub async fn of(manager: &JobManager, caller: &crate::tenants::Caller) -> Self {
        let sandboxes = manager.sandboxes().await;
        Self {
            sandboxes: sandboxes
                .iter()
                .filter(|s| caller.owns(s.tenant.as_deref()))
                .map(SandboxView::from_info)
                .collect(),
        }
    }
}

/// `POST /sandboxes/{id}/steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunStepRequest {
    /// The step (`shell`, `python` or `write_file`; `timeout_secs` overrides the sandbox's step
    /// timeout).
    #[schema(value_type = crate::openapi::StepComponent)]
    pub step: Step,
    /// Stop the step after this much output (stdout + stderr; never above the server's cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    pub max_output_bytes: Option<u64>,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepResultView {
    /// Exit code; 128+N for a process killed by signal N; -1 when there was no process.
    pub exit_code: i32,
    /// `exited`, `timed_out`, `cancelled`, `out_of_memory` or `output_limit`.
    pub termination: String,
    /// The last bytes of stdout.
    pub stdout_tail: String,
    /// The last bytes of stderr.
    pub stderr_tail: String,
    /// Whether stdout was longer than its tail.
    pub stdout_truncated: bool,
    /// Whether stderr was longer than its tail.
    pub stderr_truncated: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// A stateful Python step's outcome: `value` (repr of the final expression), `error`,
    /// `files` (created or changed, e.g. plots), `fresh_interpreter`, `state_lost`, `note`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub python: Option<Box<agent_core::PythonOutcome>>,
}

impl StepResultView {
    fn from_result(r: &StepResult) -> Self {
        let termination = serde_json::to_value(r.termination)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Self {
            exit_code: r.exit_code,
            termination,
            stdout_tail: r.stdout_tail.clone(),
            stderr_tail: r.stderr_tail.clone(),
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            python: r.python.clone(),
        }
    }
}

/// A step run in a live sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepRunView {
    /// Its index in the sandbox's job.
    pub index: usize,
    /// `succeeded` or `failed`.
    #[schema(value_type = String, example = "succeeded")]
    pub status: StepStatus,
    /// How it ended.
    pub result: Option<StepResultView>,
}

impl StepRunView {
    fn from_record(r: &StepRecord) -> Self {
        Self {
            index: r.index,
            status: r.status,
            result: r.result.as_ref().map(StepResultView::from_result),
        }
    }
}

/// `POST /sandboxes/{id}/plan` (and the MCP tool `plan_in_sandbox`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// What to do now, in plain language (at most 262 144 bytes). The planner is told the files
    /// the workspace holds and that stateful Python variables persist.
    #[schema(min_length = 1, max_length = 262144)]
    pub prompt: String,
    /// How many times a failed step may go back to the LLM for a repair (default: 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "agent_core::job::optional_whole_number")]
    #[schema(minimum = 0, maximum = 20)]
    pub max_repairs: Option<u64>,
}

/// A step a planned run added to a sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlannedStepView {
    /// Its index in the sandbox's job.
    pub index: usize,
    /// The step the planner wrote.
    #[schema(value_type = crate::openapi::StepComponent)]
    pub step: Step,
    /// Repair round that produced it (0 = the first plan).
    pub attempt: u32,
    /// `succeeded`, `failed` or `skipped`.
    #[schema(value_type = String, example = "succeeded")]
    pub status: StepStatus,
    /// How it ended (`null` when skipped).
    pub result: Option<StepResultView>,
}

/// The answer to `POST /sandboxes/{id}/plan`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanRunView {
    /// The sandbox.
    #[schema(value_type = String, format = Uuid)]
    pub sandbox_id: JobId,
    /// `succeeded` when every step of the (repaired) plan succeeded, else `failed`.
    #[schema(value_type = String, example = "succeeded")]
    pub status: JobStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The planner's summary.
    pub summary: Option<String>,
    /// The steps it ran, in order (also in `/status/{id}` and the log).
    pub steps: Vec<PlannedStepView>,
    /// Repairs asked for.
    pub repairs: u32,
    /// The LLM provider that answered last.
    pub provider: Option<String>,
    /// LLM tokens it used.
    pub usage: crate::api::UsageView,
}

impl PlanRunView {
    pub(crate) fn from_run(run: &agent_core::manager::SandboxPlanRun) -> Self {
        Self {
            sandbox_id: run.id,
            status: run.status,
            error: run.error.clone(),
            summary: run
                .plan
                .as_ref()
                .map(|p| p.summary.clone())
                .filter(|s| !s.is_empty()),
            steps: run
                .steps
                .iter()
                .map(|r| PlannedStepView {
                    index: r.index,
                    step: r.step.clone(),
                    attempt: r.attempt,
                    status: r.status,
                    result: r.result.as_ref().map(StepResultView::from_result),
                })
                .collect(),
            repairs: run.repairs,
            provider: run.provider.clone(),
            usage: run.usage.into(),
        }
    }
}

impl PlanRequest {
    /// The repair budget as the manager takes it (422 over 20).
    pub fn max_repairs(&self) -> ApiResult<Option<u32>> {
        match self.max_repairs {
            None => Ok(None),
            Some(m) if m <= u64::from(agent_core::job::MAX_REPAIRS) => Ok(u32::try_from(m).ok()),
            Some(_) => Err(ApiError::invalid(
                "max_repairs",
                format!(
                    "max_repairs: must be at most {}",
                    agent_core::job::MAX_REPAIRS
                ),
            )),
        }
    }
}

/// `PUT /sandboxes/{id}/files`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PutFileResponse {
    /// The file written, under `/workspace`.
    pub path: String,
    /// Its size.
    pub size_bytes: u64,
}

/// `POST /sandboxes/{id}/extend`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// The new idle timeout in seconds, counted from now.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 604800)]
    pub idle_timeout_secs: u64,
}

/// A whole number, also when written `289.0`.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    agent_core::job::optional_whole_number(d)?
        .ok_or_else(|| serde::de::Error::custom("expected a whole number, found null"))
}

/// `?path=` of the file endpoints.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PathQuery {
    /// The file, relative to `/workspace` (or absolute under it).
    #[param(required = true, min_length = 1)]
    path: Option<String>,
}

fn file_path(query: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<String> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("path", e.body_text()))?;
    q.path.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad_request("path", "path: the `path` query parameter is required")
    })
}

/// Creates a live sandbox and waits until it is ready.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    responses((status = 201, description = "Ready", body = SandboxView),
              (status = 400, description = "Malformed JSON", body = ErrorBody),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 403, description = "Refused by the operator's policy (`policy_refused`: an image not allowed, a network, a limit over its maximum; the field in `error.field`)", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 404, description = "The image is not on the engine (`image_not_found`)", body = ErrorBody),
              (status = 422, description = "Invalid field (named in `error.field`)", body = ErrorBody),
              (status = 503, description = "Every sandbox slot is taken (`at_capacity`; jobs and sandboxes count alike), or shutting down", body = ErrorBody),
              (status = 507, description = "The server's disk is below its free-space threshold (`insufficient_storage`) or its output directory over `AGENT_MAX_OUTPUT_BYTES` (`storage_cap_reached`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::tenants::Caller>,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, HeaderMap, Json<SandboxView>)> {
    let mut spec = req.into_spec(&state.settings().defaults)?;
    state.admit(&caller, &mut spec)?;
    let job = state.manager().create_sandbox(spec).await?;
    let info = state.manager().sandbox(job.id).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/sandboxes/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(SandboxView::from_info(&info)),
    ))
}

/// Lists the live sandboxes (a tenant's: its own).
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes",
    responses((status = 200, body = SandboxList)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::tenants::Caller>,
) -> Json<SandboxList> {
    Json(SandboxList::of(state.manager(), &caller).await)
}

/// One live sandbox (an ended one is a 409 that says how it ended; `/status/{id}` keeps its
/// record).
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (UUID v4)")),
    responses((status = 200, body = SandboxView),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "The sandbox has ended (its status in `error.status`)", body = ErrorBody),
              (status = 422, description = "The id is a job, not a sandbox", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn show(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<SandboxView>> {
    let info = state.manager().sandbox(id).await?;
    if info.status.is_terminal() {
        let why = info.error.as_deref().unwrap_or("destroyed");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!(
                "sandbox {id} has ended ({}: {why}); its record stays at /status/{id}",
                info.status
            ),
        )
        .with_status(info.status));
    }
    Ok(Json(SandboxView::from_info(&info)))
}

/// Destroys a sandbox: a running step is killed, the container removed; it ends `succeeded`.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (UUID v4)")),
    responses((status = 200, description = "Destroyed", body = SandboxView),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "Already ended (its status in `error.status`)", body = ErrorBody),
              (status = 422, description = "The id is a job, not a sandbox", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn destroy(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<SandboxView>> {
    state.manager().destroy_sandbox(id).await?;
    let info = state.manager().sandbox(id).await?;
    Ok(Json(SandboxView::from_info(&info)))
}

/// How the client wants a step's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Json,
    Ndjson,
    Sse,
}

fn answer_kind(headers: &HeaderMap) -> Answer {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if accept.contains("text/event-stream") {
        Answer::Sse
    } else if accept.contains("application/x-ndjson") || accept.contains("application/jsonl") {
        Answer::Ndjson
    } else {
        Answer::Json
    }
}

/// One item of a streamed step: output, then the result (or an error).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamItem {
    Output { stream: OutputStream, text: String },
    Result(StepRunView),
    Error(crate::error::ErrorDetail),
}

impl StreamItem {
    fn name(&self) -> &'static str {
        match self {
            StreamItem::Output { .. } => "output",
            StreamItem::Result(_) => "result",
            StreamItem::Error(_) => "error",
        }
    }
    fn is_last(&self) -> bool {
        !matches!(self, StreamItem::Output { .. })
    }
}

/// Runs a step. Without streaming the answer is the step's result once it has finished. With
/// `Accept: application/x-ndjson` (one JSON object a line) or `Accept: text/event-stream` (SSE,
/// event names `output`, `result`, `error`) the output comes as it is produced:
/// `{"type":"output","stream":"stdout","text":"…"}`, then `{"type":"result",…}` (the
/// non-streaming answer with `"type":"result"` added) or `{"type":"error",…}`.
/// A step that exits non-zero is a 200 with `status: failed`.
#[utoipa::path(post, path = "/sandboxes/{id}/steps", tag = "sandboxes", request_body = RunStepRequest,
    params(("id" = String, Path, description = "Sandbox id (UUID v4)")),
    responses((status = 200, description = "The step's result (JSON), or its output and result streamed",
                content((StepRunView = "application/json"), (String = "application/x-ndjson"), (String = "text/event-stream"))),
              (status = 400, description = "Malformed id or JSON", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 403, description = "The step's timeout is over the operator's maximum (`policy_refused`)", body = ErrorBody),
              (status = 409, description = "The sandbox has ended (its status in `error.status`)", body = ErrorBody),
              (status = 422, description = "Invalid step (named in `error.field`), or the id is a job", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn run_step(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RunStepRequest>,
) -> ApiResult<Response> {
    req.step.validate()?;
    if let Some(t) = req.step.timeout {
        timeout("step.timeout_secs", Some(t.as_secs()), Duration::ZERO)?;
    }
    state.policy().check_step("step.timeout_secs", &req.step)?;
    let manager = state.manager().clone();
    let answer = answer_kind(&headers);
    if answer == Answer::Json {
        let record = manager
            .sandbox_step(id, req.step, req.max_output_bytes, None)
            .await?;
        return Ok(Json(StepRunView::from_record(&record)).into_response());
    }
    // Refuse an unknown or ended sandbox with a status code while we still can.
    let info = manager.sandbox(id).await?;
    if info.status.is_terminal() {
        return Err(agent_core::Error::AlreadyFinished {
            job_id: id,
            status: info.status,
        }
        .into());
    }
    let (tx, rx) = mpsc::unbounded_channel::<StreamItem>();
    let out = tx.clone();
    let sink: TextSink = std::sync::Arc::new(move |stream, text: &str| {
        let _ = out.send(StreamItem::Output {
            stream,
            text: text.to_string(),
        });
    });
    tokio::spawn(async move {
        let item = match manager
            .sandbox_step(id, req.step, req.max_output_bytes, Some(sink))
            .await
        {
            Ok(record) => StreamItem::Result(StepRunView::from_record(&record)),
            Err(e) => StreamItem::Error(ApiError::from(e).detail),
        };
        let _ = tx.send(item);
    });
    let items = until_last(rx, state.shutdown_token().clone());
    Ok(match answer {
        Answer::Sse => {
            let events = items.map(|item| {
                let data = serde_json::to_string(&item).unwrap_or_else(|_| "{}".into());
                Ok::<_, Infallible>(Event::default().event(item.name()).data(data))
            });
            Sse::new(events)
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response()
        }
        _ => {
            let lines = items.map(|item| {
                let mut line = serde_json::to_vec(&item).unwrap_or_else(|_| b"{}".to_vec());
                line.push(b'\n');
                Ok::<_, Infallible>(Bytes::from(line))
            });
            let mut resp = Response::new(Body::from_stream(lines));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            resp
        }
    })
}

/// Hands the sandbox to the planner: the server's LLM plans `prompt` (told the workspace's files
/// and that stateful Python variables persist), the steps run in the sandbox one after the
/// other, a failed step goes back to the LLM for a repair (up to `max_repairs`), and the answer
/// comes once the plan has run. The steps are the sandbox's like any other (`/status/{id}`, its
/// log, its events); steps sent meanwhile wait. A plan whose steps fail is a 200 with
/// `status: failed`.
#[utoipa::path(post, path = "/sandboxes/{id}/plan", tag = "sandboxes", request_body = PlanRequest,
    params(("id" = String, Path, description = "Sandbox id (UUID v4)")),
    responses((status = 200, description = "The plan ran", body = PlanRunView),
              (status = 400, description = "Malformed id or JSON", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "The sandbox has ended (its status in `error.status`)", body = ErrorBody),
              (status = 422, description = "Invalid field (named in `error.field`), the id is a job, or the server has no LLM (`no_llm`)", body = ErrorBody),
              (status = 502, description = "The LLM failed (`llm_failed`); the steps run until then are recorded", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn plan(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    ApiJson(req): ApiJson<PlanRequest>,
) -> ApiResult<Json<PlanRunView>> {
    let max_repairs = req.max_repairs()?;
    let run = state
        .manager()
        .sandbox_plan(id, req.prompt, max_repairs)
        .await
        .map_err(sandbox_plan_error)?;
    Ok(Json(PlanRunView::from_run(&run)))
}

/// A planned run's error: without an LLM, say what to do instead.
pub(crate) fn sandbox_plan_error(e: agent_core::Error) -> ApiError {
    match e {
        agent_core::Error::NoLlm => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_llm",
            "this server has no LLM to plan with (configure a provider: ALCHEMYST_API_KEY, \
             GEMINI_API_KEY, …); run the steps yourself with POST /sandboxes/{id}/steps",
        ),
        other => other.into(),
    }
}

/// The items of `rx` up to and including the result or error (or until shutdown).
fn until_last(
    rx: mpsc::UnboundedReceiver<StreamItem>,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = StreamItem> {
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .scan(false, |done, item| {
            if *done {
                return futures::future::ready(None);
            }
            *done = item.is_last();
            futures::future::ready(Some(item))
        })
        .take_until(shutdown.cancelled_owned())
}

/// Reads one file (at most 16 MiB).
#[utoipa::path(get, path = "/sandboxes/{id}/files", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (UUID v4)"), PathQuery),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 400, description = "Malformed id or no `path`", body = ErrorBody),
              (status = 404, description = "Unknown id, or no such file", body = ErrorBody),
              (status = 409, description = "The sandbox has ended", body = ErrorBody),
              (status = 413, description = "The file is larger than 16 MiB", body = ErrorBody),
              (status = 422, description = "Path refused (outside /workspace, `..`, a link out)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_file(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    query: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let path = file_path(query)?;
    let bytes = state.manager().sandbox_get_file(id, &path).await?;
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// Writes one file (the raw body, at most 16 MiB), creating parent directories.
#[utoipa::path(put, path = "/sandboxes/{id}/files", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (UUID v4)"), PathQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Written", body = PutFileResponse),
              (status = 400, description = "Malformed id or no `path`", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "The sandbox has ended", body = ErrorBody),
              (status = 413, description = "Larger than 16 MiB", body = ErrorBody),
              (status = 422, description = "Path refused (outside /workspace, `..`, a link out)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn put_file(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    query: Result<Query<PathQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PutFileResponse>> {
    let path = file_path(query)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a file may have at most {MAX_PUT_FILE_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(
                "body",
                format!("could not read the body: {}", e.body_text()),
            )
        }
    })?;
    let size_bytes = body.len() as u64;
    let rel =
        agent_core::executor::normalize_workspace_path(&path).map_err(agent_core::Error::from)?;
    state.manager().sandbox_put_file(id, &rel, body).await?;
    Ok(Json(PutFileResponse {
        path: format!("/workspace/{rel}"),
        size_bytes,
    }))
}

/// Exports the workspace as a ZIP (also kept as the sandbox's `/download/{id}` archive).
#[utoipa::path(get, path = "/sandboxes/{id}/workspace", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (UUID v4)")),
    responses((status = 200, description = "The ZIP", content_type = "application/zip", body = Vec<u8>),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "The sandbox has ended (use `/download/{id}` for an earlier export)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn export(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Response> {
    let artifact = state.manager().sandbox_export(id).await?;
    let opened = state
        .manager()
        .artifacts()
        .open(&artifact.path)
        .await
        .map_err(|e| {
            tracing::error!(job_id = %id, error = %e, "opening an export failed");
            ApiError::internal("could not open the exported archive")
        })?;
    let reader = opened.ok_or_else(|| ApiError::internal("the exported archive is missing"))?;
    let size = reader.size;
    let mut resp = Response::new(Body::from_stream(reader.stream));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"sandbox-{id}.zip\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(resp)
}

/// Sets the idle timeout, counted from now (the hard deadline stays).
#[utoipa::path(post, path = "/sandboxes/{id}/extend", tag = "sandboxes", request_body = ExtendRequest,
    params(("id" = String, Path, description = "Sandbox id (UUID v4)")),
    responses((status = 200, body = SandboxView),
              (status = 400, description = "Malformed id or JSON", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 403, description = "Over the operator's maximum idle timeout (`policy_refused`)", body = ErrorBody),
              (status = 409, description = "The sandbox has ended", body = ErrorBody),
              (status = 422, description = "Invalid `idle_timeout_secs`", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn extend(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    ApiJson(req): ApiJson<ExtendRequest>,
) -> ApiResult<Json<SandboxView>> {
    let ttl = timeout(
        "idle_timeout_secs",
        Some(req.idle_timeout_secs),
        Duration::ZERO,
    )?;
    state.policy().check_idle_timeout(ttl)?;
    let info = state.manager().extend_sandbox(id, ttl).await?;
    Ok(Json(SandboxView::from_info(&info)))
}
