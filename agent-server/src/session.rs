//! Login sessions for the browser: `POST /session` trades the API token for an `HttpOnly`,
//! `SameSite=Strict` cookie holding a random session id (never the token), kept in memory on the
//! server; `DELETE /session` logs out; `GET /session` says whether a login is needed.
//!
//! A browser cannot put a bearer header on an `EventSource` (or a WebSocket), so the dashboard
//! authenticates with this cookie instead. A request the cookie authenticates is accepted by the
//! API's auth check like one with the bearer token, except that a state-changing request (any
//! method but GET/HEAD/OPTIONS) must also carry [`CSRF_HEADER`] and, when the browser sends an
//! `Origin`, come from the server's own origin (SameSite=Strict already keeps the cookie off
//! cross-site requests; the custom header cannot be sent cross-origin without a CORS preflight,
//! which this server never grants).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::tenants::{Caller, Tokens};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "agent_session";

/// The header a cookie-authenticated state-changing request must carry (any value).
pub const CSRF_HEADER: &str = "x-agent-csrf";

/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The most sessions kept at once; past it the oldest is dropped.
pub const MAX_SESSIONS: usize = 10_000;

/// Marks a request authenticated by a valid session cookie, with who logged in (set by
/// [`authenticate`], read by the API's auth check).
#[derive(Clone, Debug)]
pub struct SessionAuth(pub Caller);

#[derive(Debug)]
struct Entry {
    expires: Instant,
    expires_at: DateTime<Utc>,
    caller: Caller,
}

#[derive(Debug, Default)]
struct Table {
    sessions: HashMap<String, Entry>,
}

/// The server's sessions (in memory: a restart logs everyone out). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sessions {
    tokens: Tokens,
    table: Arc<Mutex<Table>>,
}

impl Sessions {
    /// Sessions for a server that takes `tokens` (none: no login needed). A session remembers
    /// who logged in: a tenant's dashboard shows only its jobs.
    pub fn new(tokens: Tokens) -> Self {
        Self {
            tokens,
            table: Arc::new(Mutex::new(Table::default())),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing that holds this lock can panic half-way through a change.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the server wants a token at all.
    pub fn required(&self) -> bool {
        self.tokens.required()
    }

    /// A new session of `caller`: its id (64 hex digits from the OS-seeded CSPRNG) and expiry.
    fn create(&self, caller: Caller) -> (String, DateTime<Utc>) {
        let bytes: [u8; 32] = rand::random();
        let id = crate::tenants::hex(&bytes);
        let now = Instant::now();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(SESSION_LIFETIME).unwrap_or(chrono::Duration::zero());
        let mut table = self.table();
        table.sessions.retain(|_, e| e.expires > now);
        if table.sessions.len() >= MAX_SESSIONS {
            let oldest = table
                .sessions
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                table.sessions.remove(&k);
            }
        }
        table.sessions.insert(
            id.clone(),
            Entry {
                expires: now + SESSION_LIFETIME,
                expires_at,
                caller,
            },
        );
        (id, expires_at)
    }

    /// The expiry and the caller of a live session.
    fn lookup(&self, id: &str) -> Option<(DateTime<Utc>, Caller)> {
        let mut table = self.table();
        let entry = table.sessions.get(id)?;
        if entry.expires <= Instant::now() {
            table.sessions.remove(id);
            return None;
        }
        Some((entry.expires_at, entry.caller.clone()))
    }

    fn remove(&self, id: &str) {
        self.table().sessions.remove(id);
    }

    /// How many sessions are live (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.table().sessions.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who `presented` is the token of (compared in constant time, see [`Tokens::identify`]).
    fn identify(&self, presented: &str) -> Option<Caller> {
        self.tokens.identify(presented.as_bytes())
    }
}

/// The session id in a request's `Cookie` headers.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE_NAME)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The value of the cookie `name` in a request's `Cookie` headers (the first one so named).
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, value)| value)
}

/// Whether the request's `Origin` (when it has one) is the origin it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    // The scheme is whatever the browser used; the host and port must be ours.
    origin
        .split_once("://")
        .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == host)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn forbidden(message: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

/// The API's front door calls this on every request it does not redirect (`crate::routes`): a
/// request with a valid session cookie gets [`SessionAuth`] in its extensions (which the API's
/// auth check accepts); a cookie-authenticated state-changing request without [`CSRF_HEADER`] or
/// from another origin is refused with 403 `forbidden` (the answer returned). A request that also
/// carries a bearer header is left to the bearer check.
pub(crate) fn authenticate(sessions: &Sessions, req: &mut Request) -> Option<Response> {
    if sessions.required() && !req.headers().contains_key(header::AUTHORIZATION) {
        let valid = session_cookie(req.headers()).and_then(|id| sessions.lookup(id));
        if let Some((_, caller)) = valid {
            if !is_safe(req.method()) {
                if !req.headers().contains_key(CSRF_HEADER) {
                    return Some(forbidden(
                        "a request authenticated by the login cookie must carry an X-Agent-CSRF header",
                    ));
                }
                if !same_origin(req.headers()) {
                    return Some(forbidden(
                        "cross-origin requests may not use the login cookie",
                    ));
                }
            }
            req.extensions_mut().insert(SessionAuth(caller));
        }
    }
    None
}

/// `POST /session`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// An API token of the server (`AGENT_API_TOKEN`, or a tenant's).
    pub token: String,
}

/// Whether the caller is logged in.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Whether the server needs a token (`AGENT_API_TOKEN` is set).
    pub auth_required: bool,
    /// Whether this request is authenticated (by the cookie or a bearer token; always true when
    /// no token is needed).
    pub authenticated: bool,
    /// When the login cookie expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The tenant logged in (absent for the admin's `AGENT_API_TOKEN`, and when not logged in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether the caller sees every tenant's jobs (the admin; absent: not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

impl SessionInfo {
    fn of(auth_required: bool, expires_at: Option<DateTime<Utc>>, caller: Option<&Caller>) -> Self {
        Self {
            auth_required,
            authenticated: caller.is_some(),
            expires_at,
            tenant: caller.and_then(Caller::name).map(str::to_string),
            admin: caller.is_some_and(Caller::is_admin),
        }
    }
}

fn cookie_header(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// Whether the browser reached us over HTTPS (directly or through a proxy that says so).
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Whether the caller is logged in, and whether it needs to be.
#[utoipa::path(get, path = "/session", tag = "session",
    responses((status = 200, body = SessionInfo)))]
pub(crate) async fn session_info(
    State(sessions): State<Sessions>,
    headers: HeaderMap,
) -> Json<SessionInfo> {
    if !sessions.required() {
        return Json(SessionInfo::of(false, None, Some(&Caller::admin())));
    }
    let session = session_cookie(&headers).and_then(|id| sessions.lookup(id));
    let expires_at = session.as_ref().map(|(at, _)| *at);
    let caller = sessions
        .tokens
        .bearer(&headers)
        .or_else(|| session.map(|(_, c)| c));
    Json(SessionInfo::of(true, expires_at, caller.as_ref()))
}

/// Logs in: trades the API token for an `HttpOnly`, `SameSite=Strict` session cookie
/// (`agent_session`, a random id, valid 12 hours; `Secure` when `X-Forwarded-Proto: https`).
#[utoipa::path(post, path = "/session", tag = "session", request_body = LoginRequest,
    responses((status = 200, description = "Logged in (the cookie is set)", body = SessionInfo),
              (status = 401, description = "Wrong token", body = ErrorBody),
              (status = 403, description = "Sent from another origin", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 422, description = "No `token` field", body = ErrorBody)))]
pub(crate) async fn login(
    State(sessions): State<Sessions>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Response {
    if !same_origin(&headers) {
        return forbidden("cross-origin logins are refused");
    }
    if !sessions.required() {
        return Json(SessionInfo::of(false, None, Some(&Caller::admin()))).into_response();
    }
    let Some(caller) = sessions.identify(req.token.trim()) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "that is not one of the server's API tokens",
        )
        .into_response();
    };
    let (id, expires_at) = sessions.create(caller.clone());
    let mut resp = Json(SessionInfo::of(true, Some(expires_at), Some(&caller))).into_response();
    if let Some(v) = cookie_header(&id, SESSION_LIFETIME.as_secs(), over_https(&headers)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Logs out: forgets the session and clears the cookie.
#[utoipa::path(delete, path = "/session", tag = "session",
    responses((status = 200, description = "Logged out", body = SessionInfo),
              (status = 403, description = "Sent from another origin", body = ErrorBody)))]
pub(crate) async fn logout(State(sessions): State<Sessions>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return forbidden("cross-origin logouts are refused");
    }
    if let Some(id) = session_cookie(&headers) {
        sessions.remove(id);
    }
    let anonymous = (!sessions.required()).then(Caller::admin);
    let mut resp = Json(SessionInfo::of(
        sessions.required(),
        None,
        anonymous.as_ref(),
    ))
    .into_response();
    if let Some(v) = cookie_header("", 0, over_https(&headers)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `GET`/`POST`/`DELETE /session`, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>(sessions: Sessions) -> Router<S> {
    Router::new()
        .route("/session", get(session_info).post(login).delete(logout))
        .with_state(sessions)
}

/// Whether `path` is served without the token (the session endpoints themselves).
pub fn is_public(path: &str) -> bool {
    path == "/session"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; agent_session=abc ; b=2")]);
        assert_eq!(session_cookie(&h), Some("abc"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "agent_session=x")]);
        assert_eq!(session_cookie(&h), Some("x"));
        assert_eq!(
            session_cookie(&headers(&[("cookie", "xagent_session=1")])),
            None
        );
        assert_eq!(
            session_cookie(&headers(&[("cookie", "agent_session=")])),
            None
        );
    }

    #[test]
    fn origin_must_match_host() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8000")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "http://127.0.0.1:8000")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:8000"
        )])));
    }

    #[test]
    fn sessions_are_random_bounded_and_removable() {
        let tokens = Tokens::new(Some(&agent_core::SecretString::new("tok")), &[]).unwrap();
        let s = Sessions::new(tokens);
        let (a, _) = s.create(Caller::admin());
        let (b, _) = s.create(Caller::tenant("t", false));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(!a.contains("tok"));
        assert!(s.lookup(&a).is_some());
        s.remove(&a);
        assert!(s.lookup(&a).is_none());
        assert!(s.lookup(&b).is_some());
        assert_eq!(
            s.lookup(&b).map(|(_, c)| c),
            Some(Caller::tenant("t", false))
        );
        assert_eq!(s.identify("tok"), Some(Caller::admin()));
        assert!(s.identify("tok2").is_none());
        assert!(s.identify("").is_none());
    }
}
