//! Whole directories in and out of live sandboxes: `PUT`/`GET /sandboxes/{id}/archive`.
//!
//! An upload (a tar, gzipped tar or ZIP body) goes through the one validating unpacker
//! ([`agent_core::inputs`]): only regular files and directories, no link, device, absolute path
//! or `..`, each refusal naming the entry, under the input caps (`AGENT_MAX_INPUT_*`); nothing
//! is written before the whole archive has passed. A download is the directory's regular files
//! and directories as a tar (default) or a ZIP, named relative to it, streamed from a temporary
//! file (at most `AGENT_MAX_ARCHIVE_BYTES` of export read).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use agent_core::archive::SubtreeFormat;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::JobIdParam;
use crate::routes::AppState;

/// The archive routes (their bodies are capped by the input caps, not the JSON limit).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        "/sandboxes/{id}/archive",
        get(get_archive)
            .put(put_archive)
            .layer(DefaultBodyLimit::disable()),
    )
}

/// This part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(put_archive, get_archive),
    components(schemas(PutArchiveResponse))
)]
pub struct SandboxArchiveDoc;

/// `?path=&format=` of the archive routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ArchiveQuery {
    /// A directory, relative to `/workspace` (or absolute under it); default: the workspace.
    path: Option<String>,
    /// `GET` only: `tar` (default) or `zip`.
    #[param(pattern = "^(tar|zip)?$")]
    format: Option<String>,
}

/// `PUT /sandboxes/{id}/archive`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PutArchiveResponse {
    /// The directory written into.
    pub path: String,
    /// Files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The directory of `?path=` (`""`: the workspace).
fn directory(query: &ArchiveQuery) -> ApiResult<String> {
    workspace_dir(query.path.as_deref().unwrap_or(""))
}

/// A directory under `/workspace`, relative (`""`: the workspace itself; `..` refused).
pub(crate) fn workspace_dir(raw: &str) -> ApiResult<String> {
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "/workspace" || trimmed == "." {
        return Ok(String::new());
    }
    Ok(agent_core::executor::normalize_workspace_path(trimmed).map_err(agent_core::Error::from)?)
}

fn query(query: Result<Query<ArchiveQuery>, QueryRejection>) -> ApiResult<ArchiveQuery> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("query", e.body_text()))
}

/// Unpacks a tar, gzipped tar or ZIP body into a directory (created as needed; files of the
/// same name are replaced). The whole archive is checked before anything is written.
#[utoipa::path(put, path = "/sandboxes/{id}/archive", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (UUID v4)"), ArchiveQuery),
    request_body(description = "A tar, gzipped tar or ZIP, told by its first bytes (else by a `Content-Type` of `application/x-tar`, `application/gzip` or `application/zip`)",
        content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Written", body = PutArchiveResponse),
              (status = 400, description = "Malformed id or query", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "The sandbox has ended", body = ErrorBody),
              (status = 413, description = "Over the input caps (`AGENT_MAX_INPUT_*`)", body = ErrorBody),
              (status = 415, description = "Not a tar, gzipped tar or ZIP", body = ErrorBody),
              (status = 422, description = "A path or entry refused (a link, a device, `..`, an absolute path: named in the message), or the id is a job", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn put_archive(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    query_: Result<Query<ArchiveQuery>, QueryRejection>,
    req: Request,
) -> ApiResult<Json<PutArchiveResponse>> {
    let root = directory(&query(query_)?)?;
    // An unknown or ended sandbox is refused before the body is read.
    let info = state.manager().sandbox(id).await?;
    if info.status.is_terminal() {
        return Err(agent_core::Error::AlreadyFinished {
            job_id: id,
            status: info.status,
        }
        .into());
    }
    let limits = state.settings().inputs;
    let media_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().into_data_stream();
    let file =
        crate::uploads::spool(&state, body, crate::uploads::archive_cap(&limits), "body").await?;
    let staged = crate::uploads::stage(&state, "body", limits)?;
    let staged = crate::uploads::add_archive(staged, file, media_type, "body").await?;
    let (path, _) = staged.finish()?;
    let placed = state
        .manager()
        .sandbox_put_archive(id, &root, &path)
        .await?;
    Ok(Json(PutArchiveResponse {
        path: format!("/workspace/{root}")
            .trim_end_matches('/')
            .to_string(),
        files: placed.files,
        bytes: placed.bytes,
    }))
}

/// A directory as a tar (default) or a ZIP: its regular files and directories, named relative
/// to it (links and devices left out).
#[utoipa::path(get, path = "/sandboxes/{id}/archive", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (UUID v4)"), ArchiveQuery),
    responses((status = 200, description = "The archive",
                content((Vec<u8> = "application/x-tar"), (Vec<u8> = "application/zip"))),
              (status = 400, description = "Malformed id, query or format", body = ErrorBody),
              (status = 404, description = "Unknown id, or no such directory", body = ErrorBody),
              (status = 409, description = "The sandbox has ended", body = ErrorBody),
              (status = 422, description = "Path refused, or the id is a job", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_archive(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    query_: Result<Query<ArchiveQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(query_)?;
    let root = directory(&q)?;
    let (format, media_type, ext) = match q.format.as_deref().unwrap_or("") {
        "" | "tar" => (SubtreeFormat::Tar, "application/x-tar", "tar"),
        "zip" => (SubtreeFormat::Zip, "application/zip", "zip"),
        other => {
            return Err(ApiError::bad_request(
                "format",
                format!("format: expected `tar` or `zip`, got {other:?}"),
            ))
        }
    };
    let (file, summary) = state
        .manager()
        .sandbox_get_archive(id, &root, format)
        .await?;
    // Opened, then unlinked: the open file is read to its end and then gone.
    let opened = tokio::fs::File::open(file.path())
        .await
        .map_err(|e| agent_core::Error::io("opening the archive", e))?;
    drop(file);
    let stream = tokio_util::io::ReaderStream::new(opened);
    let mut resp = Response::new(Body::from_stream(stream));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(summary.zip_bytes));
    let name = root
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("workspace");
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}.{ext}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
