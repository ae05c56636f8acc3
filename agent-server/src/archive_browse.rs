//! Browsing a job's result ZIP without downloading it: `GET /download/{id}/files` lists its
//! files, `GET /download/{id}/files/{path}` streams one of them.
//!
//! A file is served as `text/plain; charset=utf-8` when its start is UTF-8 text, else as
//! `application/octet-stream`, always with `X-Content-Type-Options: nosniff` and a sandboxing
//! `Content-Security-Policy`: a job's files are untrusted, and must never run as a page of the
//! server's origin.

use std::io::Read;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use agent_core::artifacts::LocalArtifact;
use agent_core::JobId;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::JobIdParam;
use crate::routes::{archive_gone, artifact_of, open_failed, AppState};

/// The most entries `GET /download/{id}/files` lists.
pub const MAX_LISTED: usize = 10_000;

/// Bytes read from an entry at a time while streaming it.
const CHUNK: usize = 64 * 1024;

/// How many leading bytes decide whether a file is text.
const SNIFF: usize = 8 * 1024;

/// One file in a job's ZIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveEntry {
    /// Its path inside the ZIP (as in the workspace; `result.json` at the top).
    pub path: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Modification time as stored in the ZIP (local time of the sandbox, no zone:
    /// `YYYY-MM-DDTHH:MM:SS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
}

/// `GET /download/{id}/files`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveListing {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Its files in ZIP order (directories left out), at most 10,000.
    pub files: Vec<ArchiveEntry>,
    /// How many files the ZIP holds in all.
    pub total: usize,
    /// Whether `files` was cut at 10,000.
    pub truncated: bool,
}

/// Where a finished job's ZIP is on disk; 409 `not_ready` before it finishes, 404 `no_artifact`
/// when it ended without one or retention removed it (the same answers as `GET /download/{id}`).
async fn archive_path(state: &AppState, id: JobId) -> ApiResult<LocalArtifact> {
    let job = state.manager().get(id).await?;
    let artifact = artifact_of(&job)?;
    state
        .manager()
        .artifacts()
        .local_file(&artifact.path)
        .await
        .map_err(|e| open_failed(id, &e))?
        .ok_or_else(|| archive_gone(id))
}

fn open_archive(path: &std::path::Path, id: JobId) -> ApiResult<zip::ZipArchive<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            archive_gone(id)
        } else {
            tracing::error!(job_id = %id, error = %e, "opening an archive failed");
            ApiError::internal("could not open the archive")
        }
    })?;
    zip::ZipArchive::new(file).map_err(|e| {
        tracing::error!(job_id = %id, error = %e, "reading an archive failed");
        ApiError::internal("the archive could not be read")
    })
}

fn format_time(t: zip::DateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("reading the archive failed"))?
}

/// The files in a finished job's result ZIP.
#[utoipa::path(get, path = "/download/{id}/files", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID v4)")),
    responses((status = 200, body = ArchiveListing),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 404, description = "Unknown job, or no archive", body = ErrorBody),
              (status = 409, description = "The job has not finished", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_files(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<ArchiveListing>> {
    let path = archive_path(&state, id).await?;
    blocking(move || {
        let mut zip = open_archive(path.path(), id)?;
        let mut files = Vec::new();
        let mut total = 0;
        for i in 0..zip.len() {
            let entry = zip.by_index_raw(i).map_err(|e| {
                tracing::error!(job_id = %id, error = %e, "reading an archive entry failed");
                ApiError::internal("the archive could not be read")
            })?;
            if entry.is_dir() {
                continue;
            }
            total += 1;
            if files.len() < MAX_LISTED {
                files.push(ArchiveEntry {
                    path: entry.name().to_string(),
                    size: entry.size(),
                    modified: entry.last_modified().map(format_time),
                });
            }
        }
        Ok(Json(ArchiveListing {
            job_id: id,
            truncated: total > files.len(),
            files,
            total,
        }))
    })
    .await
}

/// What the reader thread found before streaming.
struct Found {
    size: u64,
    text: bool,
    head: Vec<u8>,
}

/// One file from a finished job's result ZIP, streamed: `text/plain; charset=utf-8` if it is
/// UTF-8 text, else `application/octet-stream`; never rendered as a page (`nosniff`, a sandboxing
/// CSP).
#[utoipa::path(get, path = "/download/{id}/files/{path}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (UUID v4)"),
           ("path" = String, Path, description = "The file's path in the ZIP, as listed (URL-encoded)")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 400, description = "Malformed id", body = ErrorBody),
              (status = 401, description = "Missing or wrong token", body = ErrorBody),
              (status = 404, description = "Unknown job, no archive, or no such file in it", body = ErrorBody),
              (status = 409, description = "The job has not finished", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn read_file(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let Path((raw_id, name)) = params.map_err(|e| ApiError::bad_request("path", e.body_text()))?;
    let id: JobId = raw_id.parse().map_err(ApiError::from)?;
    let path = archive_path(&state, id).await?;
    let (found_tx, found_rx) = tokio::sync::oneshot::channel::<ApiResult<Found>>();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let wanted = name.clone();
    tokio::task::spawn_blocking(move || {
        let mut zip = match open_archive(path.path(), id) {
            Ok(z) => z,
            Err(e) => {
                let _ = found_tx.send(Err(e));
                return;
            }
        };
        let mut entry = match zip.by_name(&wanted) {
            Ok(e) if !e.is_dir() => e,
            _ => {
                let _ = found_tx.send(Err(ApiError::not_found(format!(
                    "the archive of job {id} has no file {wanted:?}"
                ))));
                return;
            }
        };
        let size = entry.size();
        let mut head = vec![0u8; SNIFF.min(usize::try_from(size).unwrap_or(SNIFF))];
        if let Err(e) = entry.read_exact(&mut head) {
            tracing::error!(job_id = %id, error = %e, "reading an archive entry failed");
            let _ = found_tx.send(Err(ApiError::internal("the archive could not be read")));
            return;
        }
        let text = looks_like_text(&head, head.len() as u64 == size);
        if found_tx.send(Ok(Found { size, text, head })).is_err() {
            return;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break; // the client went away
                    }
                }
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "streaming an archive entry failed");
                    let _ =
                        tx.blocking_send(Err(std::io::Error::other("reading the archive failed")));
                    break;
                }
            }
        }
    });
    let found = found_rx
        .await
        .map_err(|_| ApiError::internal("reading the archive failed"))??;
    let head = futures::stream::once(futures::future::ready(Ok::<_, std::io::Error>(
        Bytes::from(found.head),
    )));
    use futures::StreamExt;
    let mut resp = Response::new(Body::from_stream(head.chain(ReceiverStream::new(rx))));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if found.text {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        }),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(found.size));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(resp)
}

/// Whether `head` (the first bytes of a file; all of it when `complete`) is UTF-8 text without
/// NUL bytes. A multi-byte character cut at the end of an incomplete head still counts as text.
pub fn looks_like_text(head: &[u8], complete: bool) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => !complete && e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_told_from_binary() {
        assert!(looks_like_text(b"hello\n", true));
        assert!(looks_like_text("héllo".as_bytes(), true));
        assert!(!looks_like_text(b"a\0b", true));
        assert!(!looks_like_text(&[0xff, 0xfe, 0x41], true));
        // "é" cut in half at the end of a partial read is still text; at the end of the file not.
        let cut = &"ab\u{e9}".as_bytes()[..3];
        assert!(looks_like_text(cut, false));
        assert!(!looks_like_text(cut, true));
        assert!(looks_like_text(b"", true));
    }
}
