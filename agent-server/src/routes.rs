//! The router and its handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use utoipa_swagger_ui::SwaggerUi;

use agent_core::manager::JobManager;
use agent_core::{Job, JobFilter, JobStatus};

use crate::api::{
    CancelResponse, ExecutorHealth, HealthResponse, JobDefaults, JobSummary, JobsResponse,
    ScheduleRequest, ScheduleResponse, StatusResponse,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, JobIdParam};
use crate::logs::{event_name, LogFormatter};
use crate::metrics::Metrics;
use crate::openapi::openapi_json;
use crate::tenants::Caller;
use agent_core::SecretString;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// When set, every endpoint but `GET /` needs this bearer token (the admin's).
    pub api_token: Option<SecretString>,
    /// Every token the API takes: the admin's and the tenants' ([`crate::tenants`]). Empty:
    /// made from `api_token` alone.
    pub tokens: crate::tenants::Tokens,
    /// Serve `/docs` and `/openapi.json` without the token.
    pub public_docs: bool,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Defaults for new jobs.
    pub defaults: JobDefaults,
    /// The image jobs run by default (shown by `GET /info`).
    pub image: Option<String>,
    /// Sandboxes kept started ahead of demand (shown by `GET /info`).
    pub warm_pool: usize,
    /// How many warm sandboxes are ready now (shown by `GET /info`), when the executor says.
    pub warm_ready: Option<WarmProbe>,
    /// What requests may ask for.
    pub policy: crate::policy::Policy,
    /// Caps of input files (multipart `POST /schedule`, directory uploads into sandboxes).
    pub inputs: agent_core::inputs::InputLimits,
    /// Bytes of encoded `GET /status` answers of finished jobs kept for the next request (0:
    /// none). They are reused only with a store that shares unchanged records
    /// ([`CachedStore`](agent_core::store::cached::CachedStore)).
    pub status_cache_bytes: u64,
}

/// Asks the executor how many warm sandboxes are ready now.
#[derive(Clone)]
pub struct WarmProbe(Arc<dyn Fn() -> usize + Send + Sync>);

impl WarmProbe {
    /// A probe calling `f`.
    pub fn new(f: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The number ready now.
    pub fn ready(&self) -> usize {
        (self.0)()
    }
}

impl std::fmt::Debug for WarmProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WarmProbe")
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            api_token: None,
            tokens: crate::tenants::Tokens::default(),
            public_docs: false,
            max_body_bytes: 1 << 20,
            defaults: JobDefaults::default(),
            image: None,
            warm_pool: 0,
            warm_ready: None,
            policy: crate::policy::Policy::default(),
            inputs: agent_core::inputs::InputLimits::default(),
            status_cache_bytes: DEFAULT_STATUS_CACHE_BYTES,
        }
    }
}

/// [`ApiSettings::status_cache_bytes`]'s default: 1 MiB (about a thousand answers of a few
/// steps).
pub const DEFAULT_STATUS_CACHE_BYTES: u64 = 1 << 20;

struct Inner {
    manager: JobManager,
    metrics: Arc<Metrics>,
    settings: ApiSettings,
    llm_providers: Vec<String>,
    shutdown: CancellationToken,
    live: crate::live::LiveState,
    answers: crate::answers::StatusAnswers,
}

impl axum::extract::FromRef<AppState> for crate::live::LiveState {
    fn from_ref(state: &AppState) -> Self {
        state.inner.live.clone()
    }
}

/// What the handlers share: the job manager, the metrics and the settings. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    /// The state for a manager. `llm_providers` names the configured providers (for `GET /`).
    /// Starts the metrics collector, so call it inside a Tokio runtime.
    pub fn new(
        manager: JobManager,
        settings: ApiSettings,
        metrics: Arc<Metrics>,
        llm_providers: Vec<String>,
    ) -> Self {
        let mut settings = settings;
        if !settings.tokens.required() {
            // A token that is also a tenant's is refused when the server is configured; here
            // there are no tenants.
            settings.tokens =
                crate::tenants::Tokens::new(settings.api_token.as_ref(), &[]).unwrap_or_default();
        }
        metrics.spawn_collector(&manager, settings.tokens.clone());
        // The live paths take the admin's bearer token themselves, and a tenant's through the
        // auth layer; with tenants but no admin token, theirs is one nobody holds.
        let live_token = match (&settings.api_token, settings.tokens.required()) {
            (Some(token), _) => Some(token.clone()),
            (None, true) => Some(SecretString::new(crate::tenants::new_token())),
            (None, false) => None,
        };
        let live = crate::live::LiveState {
            signer: crate::access::AccessSigner::random(),
            api_token: live_token,
            services: Arc::new(crate::live::ManagerServices::new(manager.clone())),
        };
        let answers = crate::answers::StatusAnswers::new(settings.status_cache_bytes);
        Self {
            inner: Arc::new(Inner {
                answers,
                live,
                manager,
                metrics,
                settings,
                llm_providers,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The job manager.
    pub fn manager(&self) -> &JobManager {
        &self.inner.manager
    }

    /// Cancelled when the server shuts down: ends live log streams.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    pub(crate) fn settings(&self) -> &ApiSettings {
        &self.inner.settings
    }

    /// The API's tokens.
    pub fn tokens(&self) -> &crate::tenants::Tokens {
        &self.inner.settings.tokens
    }

    /// Checks a job's (or live sandbox's) spec against the operator policy before it goes to the
    /// job manager: 403 `policy_refused` naming the field and the limit. Every front end that
    /// makes jobs (`/schedule`, `/sandboxes`, MCP) calls it.
    /// (The spec's own validation runs first, so a malformed value is a 422 naming it, as
    /// before.)
    /// The job is stamped as `caller`'s ([`Caller::stamp`](crate::tenants::Caller::stamp)).
    pub fn admit(
        &self,
        caller: &crate::tenants::Caller,
        spec: &mut agent_core::JobSpec,
    ) -> ApiResult<()> {
        self.inner.settings.policy.admit(spec)?;
        caller.stamp(spec);
        Ok(())
    }

    /// The operator policy.
    pub fn policy(&self) -> &crate::policy::Policy {
        &self.inner.settings.policy
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub(crate) fn llm_providers(&self) -> &[String] {
        &self.inner.llm_providers
    }
}

/// The API's router, with auth, the body limit and the JSON 404/405 fallbacks. (No per-request
/// tracing layer: it cost a noticeable share of `GET /status` throughput; 5xx answers are logged.)
pub fn app(state: AppState) -> Router {
    let sessions = crate::session::Sessions::new(state.tokens().clone());
    let docs: Router<AppState> = SwaggerUi::new("/docs")
        .external_url_unchecked("/openapi.json", openapi_json())
        .into();
    Router::new()
        .route("/", get(health))
        // Multipart uploads have their own caps (`crate::uploads`), a JSON body its limit.
        .route(
            "/schedule",
            post(schedule).layer(DefaultBodyLimit::disable()),
        )
        .route("/status/{id}", get(status))
        .route("/jobs", get(list_jobs))
        .route("/cancel/{id}", post(cancel))
        .route("/release/{id}", post(crate::live::release))
        .route("/download/{id}", get(download))
        .route("/logs/{id}", get(logs_text))
        .route("/logs/{id}/stream", get(logs_stream))
        .route("/metrics", get(metrics))
        .route_service(crate::mcp::MCP_PATH, crate::mcp::service(&state))
        .merge(crate::live::routes())
        .merge(crate::sandboxes::routes())
        .merge(crate::sandbox_archive::routes())
        .merge(docs)
        .merge(crate::ui::api_routes())
        .merge(crate::ui::routes())
        .merge(crate::session::routes(sessions.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            FrontDoor {
                state: state.clone(),
                sessions,
            },
            front_door,
        ))
        .layer(DefaultBodyLimit::max(state.inner.settings.max_body_bytes))
        .with_state(state)
}

/// What the front door needs: the API's state and the login sessions.
#[derive(Clone)]
struct FrontDoor {
    state: AppState,
    sessions: crate::session::Sessions,
}

/// Every request's way in, in one layer (each layer of its own costs every request a boxed
/// future and a clone of the service behind it):
/// 1. `GET /` from a browser is redirected to the dashboard;
/// 2. a login cookie is checked ([`crate::session::authenticate`]);
/// 3. the caller is identified and its access to the route's job checked ([`auth`]);
/// 4. an error answer to a request that came with a body closes the connection
///    (`Connection: close`). The handler may have stopped reading the body part-way — an
///    upload over its cap, a refused archive, an unknown sandbox — and the server then drops
///    the connection after the answer; a client told nothing would put it back in its pool and
///    send its next request into a closed connection.
async fn front_door(State(door): State<FrontDoor>, mut req: Request, next: Next) -> Response {
    if let Some(redirect) = crate::ui::browser_redirect(&req) {
        return redirect;
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = match crate::session::authenticate(&door.sessions, &mut req) {
        None => match auth(&door.state, req).await {
            Ok(req) => next.run(req).await,
            Err(refused) => refused,
        },
        Some(refused) => refused,
    };
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn is_public(settings: &ApiSettings, method: &Method, path: &str) -> bool {
    if path == "/" && (method == Method::GET || method == Method::HEAD) {
        return true;
    }
    if crate::ui::is_public(method, path) || crate::session::is_public(path) {
        return true;
    }
    // A job's desktop and Jupyter paths check a signed access token (or this bearer) themselves.
    if crate::live::checks_own_access(path) {
        return true;
    }
    settings.public_docs
        && (path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/"))
}

/// Whether `headers` carry `Authorization: Bearer <token>`; compares in constant time.
pub fn bearer_matches(headers: &HeaderMap, token: &SecretString) -> bool {
    crate::tenants::bearer_token(headers)
        .is_some_and(|presented| bool::from(presented.ct_eq(token.expose().as_bytes())))
}

/// Identifies the caller (a bearer token, else the login cookie; everyone is the admin on a
/// server without tokens), refuses an unknown one with 401 off the public paths, and puts the
/// [`Caller`](crate::tenants::Caller) in the request's extensions for the handlers. A tenant's
/// request naming a job it does not own (`/{route}/{job id}/…`, every such route) is answered
/// 404 exactly as for an unknown id, before any handler runs. `Err` is the answer to a refusal.
async fn auth(state: &AppState, req: Request) -> Result<Request, Response> {
    let tokens = state.tokens();
    let path = req.uri().path();
    let caller = if !tokens.required() {
        Some(crate::tenants::Caller::admin())
    } else if let Some(caller) = tokens.bearer(req.headers()) {
        Some(caller)
    } else if crate::live::checks_own_access(path) {
        // The desktop and Jupyter paths take a signed access token, or a bearer token; not the
        // login cookie.
        None
    } else {
        req.extensions()
            .get::<crate::session::SessionAuth>()
            .map(|s| s.0.clone())
    };
    let Some(caller) = caller else {
        if is_public(&state.inner.settings, req.method(), path) {
            return Ok(req);
        }
        return Err(ApiError::unauthorized().into_response());
    };
    // An admin may use any id: no path to parse, no record to read.
    if caller.is_admin() {
        let mut req = req;
        req.extensions_mut().insert(caller);
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    if let Some(id) = job_in_path(&mut parts).await {
        match caller.checked(&state.inner.manager, id).await {
            Ok(Some(job)) => {
                parts.extensions.insert(crate::extract::CheckedJob(job));
            }
            Ok(None) => {}
            Err(e) => return Err(ApiError::from(e).into_response()),
        }
    }
    parts.extensions.insert(caller);
    Ok(Request::from_parts(parts, body))
}

/// The job id of the route's `{id}` (percent-decoded, as the handler sees it), when it is one.
/// (A layer of the router runs after routing, so the route's captures are known.)
async fn job_in_path(parts: &mut axum::http::request::Parts) -> Option<agent_core::JobId> {
    use axum::extract::FromRequestParts as _;
    let params = axum::extract::RawPathParams::from_request_parts(parts, &())
        .await
        .ok()?;
    let (_, id) = params.iter().find(|(name, _)| *name == "id")?;
    id.parse().ok()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /docs")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; see /docs",
    )
}

/// Health: version, whether Docker answers (and since when it has not, with the jobs waiting for
/// it), which LLM providers are configured.
#[utoipa::path(get, path = "/", tag = "service",
    responses((status = 200, description = "Healthy", body = HealthResponse),
              (status = 503, description = "The executor does not answer (queued jobs wait for it)", body = HealthResponse)))]
pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let manager = &state.inner.manager;
    let executor = manager.executor();
    let (ok, error) = match manager.check_executor().await {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    let outage = manager.executor_status();
    let stats = manager.stats();
    let body = HealthResponse {
        status: if ok { "ok" } else { "degraded" }.to_string(),
        service: "containerized-agent".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        executor: ExecutorHealth {
            name: executor.name().to_string(),
            ok,
            error,
            down_since: outage.down_since,
            wait_limit_secs: outage.wait_limit.as_secs(),
            waiting_jobs: outage.waiting_jobs,
        },
        llm_providers: state.inner.llm_providers.clone(),
        queued: stats.queued,
        running: stats.running,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Submits a job; it is queued at once. As `multipart/form-data` it comes with input files: a
/// `spec` part (the JSON), `file` parts (each `filename` is a path under `/workspace`) and/or an
/// `archive` part (ZIP, tar or gzipped tar), placed under `/workspace` before the first step; an
/// LLM-planned job's planner is told which files exist. Caps: `AGENT_MAX_INPUT_FILE_BYTES`,
/// `AGENT_MAX_INPUT_BYTES`, `AGENT_MAX_INPUT_ENTRIES`.
#[utoipa::path(post, path = "/schedule", tag = "jobs",
    request_body(content(
        (ScheduleRequest = "application/json"),
        (crate::uploads::ScheduleUpload = "multipart/form-data"))),
    responses((status = 202, description = "Queued", body = ScheduleResponse),
              (status = 400, description = "Malformed JSON or multipart body", body = ErrorBody),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 413, description = "Body over the limit, or input files over their caps (`too_large`, the part in `error.field`)", body = ErrorBody),
              (status = 403, description = "Refused by the operator's policy (`policy_refused`: an image not allowed, a network, a limit over its maximum; the field in `error.field`)", body = ErrorBody),
              (status = 415, description = "Neither JSON nor multipart, or an `archive` part that is not a ZIP or tar", body = ErrorBody),
              (status = 422, description = "Invalid field (named in `error.field`); a missing `spec` part; an input entry refused (a link, a device, `..`, an absolute path: named in the message)", body = ErrorBody),
              (status = 507, description = "The server's disk is full or below its free-space threshold (`insufficient_storage`), or its output directory holds more than `AGENT_MAX_OUTPUT_BYTES` (`storage_cap_reached`)", body = ErrorBody),
              (status = 503, description = "Shutting down, queue full, or the Docker engine has not answered for longer than jobs wait for it (`executor_unavailable`, with `Retry-After`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<(StatusCode, HeaderMap, Json<ScheduleResponse>)> {
    let (req, inputs) = if crate::uploads::is_multipart(req.headers()) {
        let (req, inputs) = crate::uploads::schedule_parts(&state, req).await?;
        (req, Some(inputs))
    } else {
        // The route takes uploads larger than the JSON limit: the JSON keeps its own.
        let limit = state.inner.settings.max_body_bytes;
        let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
        let ApiJson(req) = ApiJson::<ScheduleRequest>::from_request(req, &state).await?;
        (req, None)
    };
    let mut spec = req.into_spec(&state.inner.settings.defaults)?;
    state.admit(&caller, &mut spec)?;
    let manager = &state.inner.manager;
    let job_id = match inputs {
        Some(inputs) if !inputs.is_empty() => manager.submit_with_inputs(spec, inputs).await?,
        _ => manager.submit(spec).await?,
    };
    let executor = manager.executor_status();
    let notice = (!executor.available).then(|| {
        format!(
            "the Docker engine does not answer (since {}); the job waits for it, up to {}s from \
             then",
            executor
                .down_since
                .map_or_else(String::new, |t| t.to_rfc3339()),
            executor.wait_limit.as_secs()
        )
    });
    let link = format!("/status/{job_id}");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&link) {
        headers.insert(header::LOCATION, v);
    }
    Ok((
        StatusCode::ACCEPTED,
        headers,
        Json(ScheduleResponse {
            job_id,
            status: JobStatus::Queued,
            status_link: link,
            notice,
        }),
    ))
}

/// A job's status, steps and links.
#[utoipa::path(get, path = "/status/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID v4)")),
    responses((status = 200, body = StatusResponse),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 404, description = "Unknown job", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn status(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    checked: crate::extract::Checked,
) -> ApiResult<Response> {
    let job = match checked.job_of(id) {
        Some(job) => job,
        None => state.inner.manager.get_shared(id).await?,
    };
    let sandbox = state.inner.manager.job_sandbox(id);
    // About 300 bytes of job and links, 180 per step (a document of 3 steps is ~860 bytes).
    let size = 512 + 192 * job.steps.len() + job.spec.prompt.len();
    // A finished job with no sandbox to reach always gets the same answer: encoded once per
    // record. Any other is made from the record (moved out of it when nobody else holds it).
    if sandbox.is_some() || !job.status.is_terminal() {
        let view = StatusResponse::of(Arc::unwrap_or_clone(job), sandbox.as_ref());
        return Ok(SizedJson(view, size).into_response());
    }
    if let Some(body) = state.inner.answers.get(&job) {
        return Ok(json_response(body));
    }
    let view = StatusResponse::of(Job::clone(&job), None);
    let body = Bytes::from(
        encode_json(&view, size)
            .map_err(|e| ApiError::internal(format!("encoding the status of job {id}: {e}")))?,
    );
    state.inner.answers.put(&job, body.clone());
    Ok(json_response(body))
}

/// `body`, already JSON, as a 200 answer.
fn json_response(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `value` encoded into a buffer of about its size (`size`, a guess: it still grows if short).
fn encode_json<T: serde::Serialize>(value: &T, size: usize) -> serde_json::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size);
    serde_json::to_writer(&mut buf, value)?;
    Ok(buf)
}

/// A JSON answer encoded straight into a buffer of about its size (`.1`, a guess: it still
/// grows if short). The same answer as [`Json`]'s, which starts at 128 bytes and grows by
/// copying.
pub(crate) struct SizedJson<T>(pub(crate) T, pub(crate) usize);

impl<T: serde::Serialize> IntoResponse for SizedJson<T> {
    fn into_response(self) -> Response {
        match encode_json(&self.0, self.1) {
            Ok(buf) => json_response(Bytes::from(buf)),
            // Json's own answer to a value that cannot be encoded.
            Err(_) => Json(self.0).into_response(),
        }
    }
}

/// Query of `GET /jobs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsQuery {
    /// Only jobs with this status (several: comma-separated).
    #[param(
        pattern = r"^(?:[ \t]*(?:queued|running|succeeded|failed|cancelled|timed_out|interrupted)[ \t]*(?:,[ \t]*(?:queued|running|succeeded|failed|cancelled|timed_out|interrupted)[ \t]*)*|[ \t]*)(?![\s\S])"
    )]
    status: Option<String>,
    /// Page size, 1–1000 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Jobs to skip (default 0). Deep offsets get slower with depth; `cursor` does not.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9007199254740991_u64)]
    offset: Option<String>,
    /// Start after this position: the `next` of the previous page (keyset paging, equally fast
    /// at any depth, and stable while jobs are added).
    #[param(
        pattern = r"^(?:-?[0-9]{1,18}\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?(?![\s\S])"
    )]
    cursor: Option<String>,
}

fn parse_number(field: &str, value: Option<&str>, default: usize, max: usize) -> ApiResult<usize> {
    let Some(value) = value else {
        return Ok(default);
    };
    let n: usize = value.trim().parse().map_err(|_| {
        ApiError::bad_request(
            field,
            format!("{field}: expected a whole number, got {value:?}"),
        )
    })?;
    if n > max {
        return Err(ApiError::bad_request(
            field,
            format!("{field}: must be at most {max}"),
        ));
    }
    Ok(n)
}

/// Lists jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, body = JobsResponse),
              (status = 400, description = "Bad query parameter (named in `error.field`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> ApiResult<SizedJson<JobsResponse>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let mut filter = JobFilter::default();
    if let Some(statuses) = q.status.as_deref().filter(|s| !s.trim().is_empty()) {
        for s in statuses.split(',') {
            let st: JobStatus = s
                .trim()
                .parse()
                .map_err(|e: agent_core::Error| ApiError::bad_request("status", e.to_string()))?;
            filter.statuses.push(st);
        }
    }
    let limit = parse_number(
        "limit",
        q.limit.as_deref(),
        50,
        agent_core::store::MAX_PAGE_SIZE,
    )?;
    if limit == 0 {
        return Err(ApiError::bad_request("limit", "limit: must be at least 1"));
    }
    // 2^53 - 1: the largest whole number a JSON document (and so the API's schema) states exactly.
    let offset = parse_number("offset", q.offset.as_deref(), 0, (1 << 53) - 1)?;
    filter = filter.page(limit, offset);
    if let Some(cursor) = q.cursor.as_deref().filter(|c| !c.trim().is_empty()) {
        let cursor: agent_core::store::JobCursor = cursor
            .parse()
            .map_err(|e: agent_core::Error| ApiError::bad_request("cursor", e.to_string()))?;
        filter = filter.after(cursor);
    }
    let page = state
        .inner
        .manager
        .list_summaries(&caller.narrow(filter))
        .await?;
    // A summary is ~250-400 bytes.
    let size = 128 + 448 * page.jobs.len();
    Ok(SizedJson(
        JobsResponse {
            jobs: page.jobs.into_iter().map(JobSummary::from).collect(),
            total: page.total,
            next: page.next.map(|c| c.to_string()),
        },
        size,
    ))
}

/// Cancels a queued or running job.
#[utoipa::path(post, path = "/cancel/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID v4)")),
    responses((status = 200, body = CancelResponse),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 404, description = "Unknown job", body = ErrorBody),
              (status = 409, description = "Already finished (its status in `error.status`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<CancelResponse>> {
    let job = state.inner.manager.cancel(id).await?;
    Ok(Json(CancelResponse {
        job_id: id,
        // A finished job with a kept sandbox: the cancel released the sandbox only.
        cancelled: job.status == JobStatus::Cancelled,
        status: job.status,
    }))
}

/// The result ZIP (workspace files and `result.json`), streamed.
#[utoipa::path(get, path = "/download/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID v4)")),
    responses((status = 200, description = "The ZIP", content_type = "application/zip", body = Vec<u8>),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 404, description = "Unknown job, or no archive", body = ErrorBody),
              (status = 409, description = "The job has not finished", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn download(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    checked: crate::extract::Checked,
) -> ApiResult<Response> {
    let job = match checked.job_of(id) {
        Some(job) => job,
        None => state.inner.manager.get_shared(id).await?,
    };
    let artifact = artifact_of(&job)?;
    let opened = state
        .inner
        .manager
        .artifacts()
        .open(&artifact.path)
        .await
        .map_err(|e| open_failed(id, &e))?;
    let Some(reader) = opened else {
        return Err(archive_gone(id));
    };
    let len = reader.size;
    let mut resp = Response::new(Body::from_stream(reader.stream));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"job-{id}.zip\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

const LOG_PAGE: usize = 500;

/// The whole log of a job as text (streamed from the store).
#[utoipa::path(get, path = "/logs/{id}", tag = "logs",
    params(("id" = String, Path, description = "Job id (UUID v4)")),
    responses((status = 200, description = "The log", content_type = "text/plain", body = String),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 404, description = "Unknown job", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn logs_text(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Response> {
    state.inner.manager.get(id).await?;
    let manager = state.inner.manager.clone();
    let pages = futures::stream::unfold(
        Some((manager, 0u64, LogFormatter::new())),
        move |st| async move {
            let (manager, after, mut fmt) = st?;
            match manager.events(id, after, LOG_PAGE).await {
                Ok(events) if events.is_empty() => None,
                Ok(events) => {
                    let last = events.last().map_or(after, |e| e.seq);
                    let full = events.len() == LOG_PAGE;
                    let text: String = events.iter().map(|e| fmt.format(e)).collect();
                    let next = full.then_some((manager, last, fmt));
                    Some((Ok::<_, std::io::Error>(Bytes::from(text)), next))
                }
                Err(e) => {
                    tracing::error!(job_id = %id, error = %e, "reading a log failed");
                    Some((Err(std::io::Error::other("reading the log failed")), None))
                }
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(pages));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

/// Query of `GET /logs/{id}/stream`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Start after this event id (like the `Last-Event-ID` header, which wins).
    #[param(value_type = Option<u64>, minimum = 0)]
    after: Option<String>,
}

fn sse_event(event: &agent_core::JobEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_string());
    Event::default()
        .id(event.seq.to_string())
        .event(event_name(&event.kind))
        .data(data)
}

/// The job's events as Server-Sent Events: each with an `id` (its sequence number) and an
/// `event` name (`status`, `plan`, `step_started`, `output`, `step_finished`, `log`, `planning`);
/// `Last-Event-ID` resumes; the stream ends after the final status.
#[utoipa::path(get, path = "/logs/{id}/stream", tag = "logs",
    params(("id" = String, Path, description = "Job id (UUID v4)"),
           ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event"),
           StreamQuery),
    responses((status = 200, description = "An SSE stream", content_type = "text/event-stream", body = String),
              (status = 400, description = "Malformed id or Last-Event-ID", body = ErrorBody),
              (status = 404, description = "Unknown job", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn logs_stream(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let after = match headers.get("last-event-id") {
        Some(v) => {
            let s = v.to_str().unwrap_or("").trim();
            s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "Last-Event-ID",
                    "Last-Event-ID: expected an event id (a whole number)",
                )
            })?
        }
        None => match q.after.as_deref() {
            Some(s) => s.trim().parse::<u64>().map_err(|_| {
                ApiError::bad_request("after", "after: expected an event id (a whole number)")
            })?,
            None => 0,
        },
    };
    state.inner.manager.get(id).await?;
    let events = state.inner.manager.subscribe(id, after).await?;
    let shutdown = state.inner.shutdown.clone();
    let stream = events
        .scan(false, move |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            let ev = match item {
                Ok(ev) => sse_event(&ev),
                Err(e) => {
                    *failed = true;
                    tracing::warn!(job_id = %id, error = %e, "log stream failed");
                    Event::default().event("error").data(format!(
                        "{{\"error\":{{\"code\":\"stream_failed\",\"message\":{}}}}}",
                        serde_json::Value::String(e.to_string())
                    ))
                }
            };
            futures::future::ready(Some(Ok::<_, Infallible>(ev)))
        })
        .take_until(shutdown.cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Prometheus metrics (text exposition format). The admin's only: they count every tenant's
/// jobs (a tenant's token gets 403 `forbidden`).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String),
              (status = 403, description = "A tenant's token (`forbidden`: the metrics are the admin's)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if !caller.is_admin() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the metrics count every tenant's jobs: they need an admin token",
        )
        .into_response();
    }
    let text = state.inner.metrics.render(&state.inner.manager).await;
    let mut resp = Response::new(Body::from(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// A job's result archive: 409 `not_ready` before the job finishes, 404 `no_artifact` when it ended
/// without one. Every route that serves an archive answers the same.
pub(crate) fn artifact_of(job: &agent_core::Job) -> ApiResult<&agent_core::job::Artifact> {
    let id = job.id;
    job.artifact.as_ref().ok_or_else(|| {
        if job.status.is_terminal() {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_artifact",
                format!("job {id} ended {} without a result archive", job.status),
            )
        } else {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_ready",
                format!(
                    "job {id} is {}; its archive is written when it finishes",
                    job.status
                ),
            )
        }
        .with_status(job.status)
    })
}

/// 500 for an archive the artifact store could not open (the cause is logged, not sent).
pub(crate) fn open_failed(id: agent_core::JobId, e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(job_id = %id, error = %e, "opening an archive failed");
    ApiError::internal("could not open the archive")
}

/// 404 `no_artifact` for an archive the store no longer has (removed by retention).
pub(crate) fn archive_gone(id: agent_core::JobId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_artifact",
        format!("the archive of job {id} is gone (removed by retention?)"),
    )
}
