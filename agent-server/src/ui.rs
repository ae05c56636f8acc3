//! The web dashboard: static files from `agent-server/ui/` served at `/ui/`, embedded in the
//! binary by `rust-embed` (in every build, `debug-embed`: the tests serve what ships). Plain ES
//! modules and CSS, no build step, nothing loaded from elsewhere. The page uses
//! only the public API (with the login cookie of [`crate::session`] when a token is set).
//!
//! `GET /` answers a browser (one whose `Accept` prefers `text/html`) with a redirect to `/ui/`;
//! every other client still gets the JSON health document.

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::Embed;

use crate::error::ApiError;
use crate::routes::AppState;
use crate::{archive_browse, server_events, server_info};

/// The dashboard's files.
#[derive(Embed)]
#[folder = "ui/"]
struct Assets;

/// The content security policy of the dashboard's pages: everything from this origin only (the
/// desktop viewer, when a job has one, is framed from here too), no inline script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found(format!("the dashboard has no file {path:?}")).into_response();
    };
    let mut resp = Response::new(Body::from(file.data.into_owned()));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Revalidate every time: the files change with the binary, and they are small.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn index() -> Response {
    asset("index.html")
}

async fn file(Path(path): Path<String>) -> Response {
    if path.is_empty() {
        return asset("index.html");
    }
    asset(&path)
}

/// The dashboard's routes: `/ui`, `/ui/` and `/ui/{file}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(file))
}

/// The API endpoints the dashboard needs beyond the original ones (documented in the OpenAPI
/// document like the others): browsing a job's ZIP, the server-wide status stream, server info.
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/download/{id}/files", get(archive_browse::list_files))
        .route(
            "/download/{id}/files/{*path}",
            get(archive_browse::read_file),
        )
        .route("/events", get(server_events::events))
        .route("/info", get(server_info::info))
}

/// Whether `path` is part of the dashboard (served without the token: the page itself holds no
/// data, and shows the login form when the API wants one).
pub fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (path == "/ui" || path.starts_with("/ui/"))
}

/// Whether a request's `Accept` header asks for HTML before JSON (what a browser's navigation
/// sends; API clients send `application/json`, `*/*` or nothing).
pub fn wants_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let position = |wanted: &str| {
        accept
            .split(',')
            .position(|part| part.split(';').next().is_some_and(|m| m.trim() == wanted))
    };
    match (position("text/html"), position("application/json")) {
        (Some(html), Some(json)) => html < json,
        (Some(_), None) => true,
        _ => false,
    }
}

/// `GET /` from a browser is redirected (303) to the dashboard: the redirect, for the API's
/// front door (`crate::routes`).
pub(crate) fn browser_redirect(req: &Request) -> Option<Response> {
    (req.method() == Method::GET && req.uri().path() == "/" && wants_html(req.headers()))
        .then(|| (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_told_from_api_clients() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(wants_html(&h(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_html(&h("application/json")));
        assert!(!wants_html(&h("*/*")));
        assert!(!wants_html(&h("application/json, text/html")));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn every_file_is_embedded_with_a_known_type() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = 0;
        for entry in walk(&dir) {
            let rel = entry
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            assert!(Assets::get(&rel).is_some(), "{rel} is not embedded");
            assert_ne!(content_type(&rel), "application/octet-stream", "{rel}");
            on_disk += 1;
        }
        assert!(on_disk >= 3);
        assert!(Assets::get("index.html").is_some());
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
