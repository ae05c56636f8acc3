//! A running job's desktop and Jupyter Lab, reached through the server.
//!
//! - `POST /access/{id}` (bearer-authenticated like the rest of the API) issues a short-lived
//!   signed token for one service of one job ([`crate::access`]) and the URL that opens it.
//! - `/desktop/{id}/` is the noVNC viewer (served from the server binary, no CDN); it connects to
//!   `/desktop/{id}/websockify`, a WebSocket relayed to the desktop's VNC server through the
//!   sandbox ([`crate::relay`]), and reconnects and scales by itself. A view-only token is relayed
//!   to a view-only VNC server, so input is refused by the sandbox, not only by the page.
//! - `/jupyter/{id}/…` is reverse-proxied, HTTP and WebSocket, to the job's Jupyter Lab, whose
//!   base URL is that path ([`crate::proxy`]). The server adds Jupyter's token as a header; it
//!   never appears in a URL.
//!
//! The paths take the token as `?access=` once: a page load with it sets an HttpOnly cookie
//! scoped to the job's path and redirects to the same URL without it, so the token does not stay
//! in the address bar, history or later request logs. WebSockets and clients without cookies may
//! keep passing `?access=`; a client with the API's bearer token needs no access token.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use utoipa::ToSchema;

use agent_core::manager::JobSandbox;
use agent_core::{JobId, JobStatus, ServiceEndpoint};

use crate::access::{unix_now, AccessError, AccessService, AccessSigner, Grant, DEFAULT_TOKEN_TTL};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::routes::bearer_matches;
use agent_core::manager::JobManager;

/// The desktop's VNC server that takes input, inside the sandbox.
pub const VNC_PORT: u16 = 5900;
/// The desktop's view-only VNC server, inside the sandbox.
pub const VNC_VIEW_PORT: u16 = 5901;
/// Jupyter Lab's port, inside the sandbox.
pub const JUPYTER_PORT: u16 = 8888;

/// The query parameter and cookie that carry an access token.
pub const ACCESS_PARAM: &str = "access";
const ACCESS_COOKIE: &str = "agent_access";

/// A byte stream to a port inside a job's sandbox.
pub trait ServiceStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ServiceStream for T {}

/// A boxed [`ServiceStream`].
pub type BoxServiceStream = Box<dyn ServiceStream>;

/// Why a job's service cannot be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// No such job.
    #[error("no job {0}")]
    UnknownJob(JobId),
    /// The job did not ask for this service.
    #[error("job {job} has no {service} (ask for it with `services` when scheduling)")]
    NotRequested {
        /// The job.
        job: JobId,
        /// The service.
        service: AccessService,
    },
    /// The job's sandbox is not up (queued, or finished and released).
    #[error("job {job}'s sandbox is not running ({why})")]
    NotRunning {
        /// The job.
        job: JobId,
        /// Why, for people.
        why: String,
    },
    /// Opening the stream failed.
    #[error("cannot reach job {job}'s {service}: {message}")]
    Unreachable {
        /// The job.
        job: JobId,
        /// The service.
        service: AccessService,
        /// What happened, for people.
        message: String,
    },
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, code) = match &e {
            ServiceError::UnknownJob(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::NotRequested { .. } => (StatusCode::NOT_FOUND, "no_service"),
            ServiceError::NotRunning { .. } => (StatusCode::CONFLICT, "not_running"),
            ServiceError::Unreachable { .. } => (StatusCode::BAD_GATEWAY, "service_unreachable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Where the desktop and Jupyter routes get their streams: the job manager's live sandboxes in
/// the server, anything that can open a byte stream in tests.
#[async_trait]
pub trait JobServices: Send + Sync + 'static {
    /// Checks that `job` exists and asked for `service` (used before issuing a token).
    async fn check(&self, job: JobId, service: AccessService) -> Result<(), ServiceError>;

    /// Opens a byte stream to `port` of `job`'s `service`, inside its sandbox.
    async fn connect(
        &self,
        job: JobId,
        service: AccessService,
        port: u16,
    ) -> Result<BoxServiceStream, ServiceError>;

    /// The secret of `job`'s Jupyter server, sent to it as `Authorization: token …`.
    async fn jupyter_token(&self, job: JobId) -> Result<String, ServiceError>;
}

/// The state of the live routes.
#[derive(Clone)]
pub struct LiveState {
    /// Signs and checks access tokens.
    pub signer: AccessSigner,
    /// When set, the live paths need an access token or this bearer token.
    pub api_token: Option<agent_core::SecretString>,
    /// Opens streams to the jobs' services.
    pub services: Arc<dyn JobServices>,
}

/// `POST /access/{id}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    /// `desktop` or `jupyter`.
    pub service: AccessService,
    /// Watch only: the desktop refuses keyboard and mouse input.
    #[serde(default)]
    pub view_only: bool,
    /// Lifetime in seconds (default 600, at most 86 400).
    #[serde(default, deserialize_with = "agent_core::job::optional_whole_number")]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_secs: Option<u64>,
}

/// The answer to `POST /access/{id}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct AccessResponse {
    /// The path that opens the service (relative to the server), token included.
    pub url: String,
    /// The token alone (for `?access=` on a WebSocket).
    pub token: String,
    /// When the token stops working (RFC 3339).
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Whether input is refused.
    pub view_only: bool,
}

/// The routes, to be merged into the API's router (whose auth layer lets `/desktop/…` and
/// `/jupyter/…` through: they check access themselves).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    LiveState: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/access/{id}", post(issue_access))
        .route("/desktop/{id}", get(add_slash))
        .route("/desktop/{id}/", get(viewer))
        .route("/desktop/{id}/websockify", get(websockify))
        .route("/desktop/{id}/{*path}", get(asset))
        .route("/jupyter/{id}", any(add_slash))
        .route("/jupyter/{id}/", any(jupyter))
        .route("/jupyter/{id}/{*path}", any(jupyter))
}

/// Whether `path` belongs to the live routes that check access themselves.
pub fn checks_own_access(path: &str) -> bool {
    path.starts_with("/desktop/") || path.starts_with("/jupyter/")
}

/// The job id, the first segment of the path, and whether the API's auth layer identified the
/// caller by a bearer token (a tenant's token is taken only for its own jobs: the auth layer
/// answers 404 for the others before this runs).
#[derive(Clone, Copy)]
struct LiveJob(JobId, bool);

impl<S: Send + Sync> FromRequestParts<S> for LiveJob {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let raw = parts
            .uri
            .path()
            .split('/')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let bearer = parts.extensions.get::<crate::tenants::Caller>().is_some();
        raw.parse::<JobId>()
            .map(|id| LiveJob(id, bearer))
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_job_id", e.to_string())
                    .with_field("id")
            })
    }
}

fn query_token(uri: &Uri) -> Option<String> {
    // Tokens are URL-safe (digits, `.`, base64url): no decoding needed.
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == ACCESS_PARAM)
        .map(|(_, v)| v.to_string())
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    crate::session::cookie(headers, ACCESS_COOKIE).map(str::to_string)
}

/// An allowed request: the grant (none when no token was needed), and the token when it came
/// in the query (a page load then sets the cookie).
struct Granted {
    grant: Option<Grant>,
    from_query: Option<String>,
}

fn check_access(
    state: &LiveState,
    LiveJob(job, bearer): LiveJob,
    service: AccessService,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Granted, ApiError> {
    let query = query_token(uri);
    let token = query.clone().or_else(|| cookie_token(headers));
    match (token, &state.api_token) {
        (None, None) => Ok(Granted {
            grant: None,
            from_query: None,
        }),
        (None, Some(api)) if bearer || bearer_matches(headers, api) => Ok(Granted {
            grant: None,
            from_query: None,
        }),
        (token, _) => match state
            .signer
            .verify(token.as_deref(), job, service, unix_now())
        {
            Ok(grant) => Ok(Granted {
                grant: Some(grant),
                from_query: query,
            }),
            Err(e) => Err(refused(e)),
        },
    }
}

fn refused(e: AccessError) -> ApiError {
    let code = match e {
        AccessError::Missing => "access_required",
        AccessError::Expired => "access_expired",
        _ => "access_refused",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
}

/// For a page load that brought its token in the query: set the cookie, redirect without it.
fn cookie_redirect(
    uri: &Uri,
    job: JobId,
    service: AccessService,
    token: &str,
    grant: &Grant,
) -> Response {
    let rest: Vec<String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty() && p.split('=').next() != Some(ACCESS_PARAM))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut target = uri.path().to_string();
    if !rest.is_empty() {
        target.push('?');
        target.push_str(&rest.join("&"));
    }
    let max_age = (grant.expires - unix_now()).max(0);
    let cookie = format!(
        "{ACCESS_COOKIE}={token}; Path=/{service}/{job}/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    );
    let mut resp = Redirect::to(&target).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn wants_redirect(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD) && !headers.contains_key(header::UPGRADE)
}

/// Issues a signed access token for a job's desktop or Jupyter Lab.
#[utoipa::path(post, path = "/access/{id}", tag = "jobs", request_body = AccessRequest,
    params(("id" = String, Path, description = "Job id (UUID v4)")),
    responses((status = 200, body = AccessResponse),
              (status = 404, description = "Unknown job, or the job did not ask for the service", body = crate::error::ErrorBody),
              (status = 422, description = "Invalid field", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn issue_access(
    State(state): State<LiveState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AccessRequest>,
) -> ApiResult<Json<AccessResponse>> {
    let job: JobId = id.parse().map_err(ApiError::from)?;
    let ttl = match req.ttl_secs {
        None => DEFAULT_TOKEN_TTL,
        Some(0) => {
            return Err(ApiError::invalid(
                "ttl_secs",
                "ttl_secs: must be at least 1",
            ))
        }
        Some(s) if s > crate::access::MAX_TOKEN_TTL.as_secs() => {
            return Err(ApiError::invalid(
                "ttl_secs",
                format!(
                    "ttl_secs: must be at most {}",
                    crate::access::MAX_TOKEN_TTL.as_secs()
                ),
            ))
        }
        Some(s) => Duration::from_secs(s),
    };
    if req.view_only && req.service != AccessService::Desktop {
        return Err(ApiError::invalid(
            "view_only",
            "view_only: only the desktop has a view-only mode",
        ));
    }
    state.services.check(job, req.service).await?;
    let (token, grant) = state
        .signer
        .issue(job, req.service, req.view_only, unix_now(), ttl);
    let url = match req.service {
        AccessService::Desktop => format!("/desktop/{job}/?{ACCESS_PARAM}={token}"),
        AccessService::Jupyter => format!("/jupyter/{job}/lab?{ACCESS_PARAM}={token}"),
    };
    Ok(Json(AccessResponse {
        url,
        token,
        expires_at: chrono::DateTime::from_timestamp(grant.expires, 0).unwrap_or_default(),
        view_only: grant.view_only,
    }))
}

async fn add_slash(uri: Uri) -> Redirect {
    let mut target = format!("{}/", uri.path());
    if let Some(q) = uri.query() {
        target.push('?');
        target.push_str(q);
    }
    Redirect::permanent(&target)
}

#[derive(rust_embed::RustEmbed)]
#[folder = "assets/"]
struct Assets;

fn asset_response(path: &str, cache: bool) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found("no such file").into_response();
    };
    let mime = if path.ends_with(".js") {
        "text/javascript; charset=utf-8"
    } else if path.ends_with(".html") {
        "text/html; charset=utf-8"
    } else if path.ends_with(".css") {
        "text/css; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let mut resp = Response::new(Body::from(file.data.into_owned()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if cache {
            "private, max-age=3600"
        } else {
            "no-store"
        }),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The viewer page.
async fn viewer(
    State(state): State<LiveState>,
    live @ LiveJob(job, _): LiveJob,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Granted { grant, from_query } =
        check_access(&state, live, AccessService::Desktop, &uri, &headers)?;
    if let (Some(token), Some(grant)) = (&from_query, &grant) {
        if wants_redirect(&method, &headers) {
            return Ok(cookie_redirect(
                &uri,
                job,
                AccessService::Desktop,
                token,
                grant,
            ));
        }
    }
    let view_only = grant.is_some_and(|g| g.view_only);
    let Some(page) = Assets::get("viewer/index.html") else {
        return Err(ApiError::internal(
            "the viewer page is missing from the build",
        ));
    };
    let html = String::from_utf8_lossy(&page.data)
        .replace("{{JOB_ID}}", &job.to_string())
        .replace("{{VIEW_ONLY}}", if view_only { "true" } else { "false" });
    let mut resp = Response::new(Body::from(html));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Ok(resp)
}

/// The viewer's script and noVNC's files.
async fn asset(
    State(state): State<LiveState>,
    live: LiveJob,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_access(&state, live, AccessService::Desktop, &uri, &headers)?;
    let path = uri
        .path()
        .splitn(4, '/')
        .nth(3)
        .unwrap_or_default()
        .to_string();
    if path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(ApiError::not_found("no such file"));
    }
    // noVNC's files (vendored in `assets/vendor/novnc/`) at `novnc/`, the viewer's own beside
    // the page.
    let (path, cache) = match path.strip_prefix("novnc/") {
        Some(rest) => (format!("vendor/novnc/{rest}"), true),
        None => (format!("viewer/{path}"), false),
    };
    Ok(asset_response(&path, cache))
}

/// The VNC WebSocket: relayed to the desktop's VNC server (the view-only one for a view-only
/// token).
async fn websockify(
    State(state): State<LiveState>,
    live @ LiveJob(job, _): LiveJob,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let Granted { grant, .. } = check_access(&state, live, AccessService::Desktop, &uri, &headers)?;
    let ws = ws.map_err(|e| ApiError::new(e.status(), "websocket_expected", e.body_text()))?;
    let port = if grant.is_some_and(|g| g.view_only) {
        VNC_VIEW_PORT
    } else {
        VNC_PORT
    };
    // Connect before upgrading, so a job without a desktop gets an HTTP error, not a dead socket.
    let stream = state
        .services
        .connect(job, AccessService::Desktop, port)
        .await?;
    Ok(ws
        .protocols(["binary"])
        .max_message_size(16 << 20)
        .on_upgrade(move |socket| async move {
            match crate::relay::relay(socket, stream).await {
                Ok(stats) => tracing::debug!(job_id = %job, ?stats, "desktop connection closed"),
                Err(e) => tracing::debug!(job_id = %job, error = %e, "desktop connection failed"),
            }
        }))
}

/// Jupyter Lab, proxied.
async fn jupyter(
    State(state): State<LiveState>,
    live @ LiveJob(job, _): LiveJob,
    req: Request,
) -> ApiResult<Response> {
    let Granted { grant, from_query } = check_access(
        &state,
        live,
        AccessService::Jupyter,
        req.uri(),
        req.headers(),
    )?;
    if let (Some(token), Some(grant)) = (&from_query, &grant) {
        if wants_redirect(req.method(), req.headers()) {
            return Ok(cookie_redirect(
                req.uri(),
                job,
                AccessService::Jupyter,
                token,
                grant,
            ));
        }
    }
    let secret = state.services.jupyter_token(job).await?;
    let stream = state
        .services
        .connect(job, AccessService::Jupyter, JUPYTER_PORT)
        .await?;
    crate::proxy::forward(stream, req, &secret, ACCESS_COOKIE, ACCESS_PARAM)
        .await
        .map_err(|e| {
            ApiError::from(ServiceError::Unreachable {
                job,
                service: AccessService::Jupyter,
                message: e.to_string(),
            })
        })
}

/// `POST /release/{id}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ReleaseResponse {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Whether the job had a sandbox (kept, or running: then it is not kept after its steps).
    pub released: bool,
}

/// Ends a finished job's kept sandbox now (its desktop and Jupyter go; the job's status and ZIP
/// stay). On a running job: its sandbox is not kept after the steps.
#[utoipa::path(post, path = "/release/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID v4)")),
    responses((status = 200, body = ReleaseResponse),
              (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
              (status = 404, description = "Unknown job", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn release(
    State(state): State<crate::routes::AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ReleaseResponse>> {
    let job: JobId = id.parse().map_err(ApiError::from)?;
    let manager = state.manager();
    manager.get(job).await?;
    Ok(Json(ReleaseResponse {
        job_id: job,
        released: manager.release(job),
    }))
}

/// The job manager's jobs as [`JobServices`]: a job's services are reachable while its sandbox
/// is (the job runs, or its sandbox is kept after).
#[derive(Clone)]
pub struct ManagerServices {
    manager: JobManager,
}

impl ManagerServices {
    /// Services of `manager`'s jobs.
    pub fn new(manager: JobManager) -> Self {
        Self { manager }
    }

    /// The job's sandbox and the service's endpoint in it.
    async fn endpoint(
        &self,
        job: JobId,
        service: AccessService,
    ) -> Result<(JobSandbox, ServiceEndpoint), ServiceError> {
        let record = self.requested(job, service).await?;
        let not_running = |why: &str| ServiceError::NotRunning {
            job,
            why: why.to_string(),
        };
        let Some(sandbox) = self.manager.job_sandbox(job) else {
            let ended = record.kept_sandbox.as_ref().and_then(|k| k.ended.as_ref());
            return Err(match (record.status, ended) {
                (JobStatus::Queued, _) => not_running("the job is queued"),
                (JobStatus::Running, _) => not_running("the sandbox is starting"),
                (_, Some(end)) => not_running(&format!(
                    "the job finished and its kept sandbox is gone: {}",
                    end.reason.as_str()
                )),
                _ if record.spec.keep_alive.is_zero() => not_running(
                    "the job finished; ask for keep_alive_secs to keep its sandbox after the steps",
                ),
                _ => not_running("the job finished and its kept sandbox expired or was released"),
            });
        };
        match sandbox.sandbox.service(service.into()) {
            Some(endpoint) => Ok((sandbox, endpoint)),
            None => Err(not_running("the service is not up")),
        }
    }

    async fn requested(
        &self,
        job: JobId,
        service: AccessService,
    ) -> Result<agent_core::Job, ServiceError> {
        let record = self
            .manager
            .get(job)
            .await
            .map_err(|_| ServiceError::UnknownJob(job))?;
        if record.spec.services.contains(&service.into()) {
            Ok(record)
        } else {
            Err(ServiceError::NotRequested { job, service })
        }
    }
}

#[async_trait]
impl JobServices for ManagerServices {
    async fn check(&self, job: JobId, service: AccessService) -> Result<(), ServiceError> {
        self.requested(job, service).await.map(drop)
    }

    async fn connect(
        &self,
        job: JobId,
        service: AccessService,
        port: u16,
    ) -> Result<BoxServiceStream, ServiceError> {
        let (sandbox, endpoint) = self.endpoint(job, service).await?;
        let unreachable = |message: String| ServiceError::Unreachable {
            job,
            service,
            message,
        };
        if !endpoint.ports.contains(&port) {
            return Err(unreachable(format!("port {port} is not the {service}'s")));
        }
        let stream = sandbox
            .sandbox
            .connect(port)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Box::new(stream))
    }

    async fn jupyter_token(&self, job: JobId) -> Result<String, ServiceError> {
        let (_, endpoint) = self.endpoint(job, AccessService::Jupyter).await?;
        endpoint
            .secret
            .map(|s| s.expose().to_string())
            .ok_or_else(|| ServiceError::Unreachable {
                job,
                service: AccessService::Jupyter,
                message: "Jupyter has no token".to_string(),
            })
    }
}
