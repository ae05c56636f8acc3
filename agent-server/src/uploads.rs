//! Uploads of files: input files with `POST /schedule` (`multipart/form-data`) and archives put
//! into live sandboxes. Both go through the one validating unpacker,
//! [`agent_core::inputs::StagedInputs`]; this module reads the request (bounded) into it.

use std::fs::File;

use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use agent_core::inputs::{ArchiveFormat, InputLimits, StagedInputs};

use crate::api::ScheduleRequest;
use crate::error::{ApiError, ApiResult};
use crate::extract::parse_json;
use crate::routes::AppState;

/// `POST /schedule` as `multipart/form-data`: the job and its input files.
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
#[serde(deny_unknown_fields)] // no other parts
pub struct ScheduleUpload {
    /// The job: the JSON `POST /schedule` takes as `application/json`. Required, once.
    #[schema(value_type = ScheduleRequest)]
    spec: (),
    /// Input files, any number of parts named `file`: each part's `filename` is its path under
    /// `/workspace` (relative, `/`-separated; no `..`, backslashes or control characters).
    /// A part without a filename is refused: it has no path.
    #[serde(default)]
    #[schema(value_type = Vec<String>, format = Binary)]
    file: (),
    /// An archive of input files (ZIP, tar or gzipped tar, told by its first bytes or its
    /// `Content-Type`), unpacked under `/workspace`: only regular files and directories; a link,
    /// device or unsafe name is refused, naming the entry.
    #[schema(value_type = Option<String>, format = Binary)]
    archive: (),
}

/// Whether a request's body is `multipart/form-data`.
pub(crate) fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("multipart/form-data")
        })
}

/// The most bytes an archive of input files may have: its files, a header and padding per
/// entry, and some slack.
pub fn archive_cap(limits: &InputLimits) -> u64 {
    let per_entry = u64::try_from(limits.max_entries)
        .unwrap_or(u64::MAX)
        .saturating_mul(1536);
    limits
        .max_total_bytes
        .saturating_add(per_entry)
        .saturating_add(1 << 20)
}

fn too_large(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message).with_field(field)
}

fn multipart_error(e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(
            "body",
            "the request body is larger than the server accepts".into(),
        )
    } else {
        ApiError::bad_request(
            "body",
            format!("not a readable multipart body: {}", e.body_text()),
        )
    }
}

/// The largest multipart `POST /schedule` body: the spec, an archive's worth of files, and
/// room for the parts' headers.
pub fn max_upload_bytes(limits: &InputLimits, max_body_bytes: usize) -> u64 {
    archive_cap(limits).saturating_add(max_body_bytes as u64)
}

/// Reads a multipart `POST /schedule`: the `spec` part and the input files, staged.
pub(crate) async fn schedule_parts(
    state: &AppState,
    req: Request,
) -> ApiResult<(ScheduleRequest, StagedInputs)> {
    let limits = state.settings().inputs;
    let max_spec = state.settings().max_body_bytes;
    let max = usize::try_from(max_upload_bytes(&limits, max_spec)).unwrap_or(usize::MAX);
    let req = req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, max)));
    let mut multipart = Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::bad_request("body", e.body_text()))?;
    let mut staged = stage(state, "file", limits)?;
    let mut spec = None;
    let mut parts = 0usize;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e))?
    {
        parts += 1;
        if parts > limits.max_entries.saturating_add(2) {
            return Err(too_large(
                "body",
                format!("more than {} parts", limits.max_entries + 2),
            ));
        }
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "spec" => {
                if spec.is_some() {
                    return Err(ApiError::invalid("spec", "the `spec` part is given twice"));
                }
                let bytes = read_part(&mut field, max_spec as u64).await?;
                if bytes.len() > max_spec {
                    return Err(too_large(
                        "spec",
                        format!("the `spec` part is larger than {max_spec} bytes"),
                    ));
                }
                spec = Some(parse_json::<ScheduleRequest>(&bytes).map_err(spec_error)?);
            }
            "file" | "files" => {
                let Some(path) = field.file_name().map(str::to_string) else {
                    return Err(ApiError::invalid(
                        "file",
                        "a `file` part needs a filename: its path under /workspace",
                    ));
                };
                let bytes = read_part(&mut field, limits.max_file_bytes).await?;
                staged.set_field("file");
                staged = blocking(staged, "file", move |s| {
                    s.add_file(&path, &bytes[..], 0o644)
                })
                .await?;
            }
            "archive" => {
                let media_type = field.content_type().map(str::to_string);
                let file = spool(state, field, archive_cap(&limits), "archive").await?;
                staged.set_field("archive");
                staged = add_archive(staged, file, media_type, "archive").await?;
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!("unknown part {other:?}: expected `spec`, `file` or `archive`"),
                ))
            }
        }
    }
    let spec = spec.ok_or_else(|| {
        ApiError::invalid(
            "spec",
            "the multipart body has no `spec` part (the job's JSON)",
        )
    })?;
    Ok((spec, staged))
}

/// A spec part's error, named as the part.
fn spec_error(mut e: ApiError) -> ApiError {
    if e.detail.field.as_deref() == Some("body") {
        e.detail.field = Some("spec".into());
    }
    e.detail.message = format!("the `spec` part: {}", e.detail.message);
    e
}

/// A new staged set in the manager's inputs directory.
pub(crate) fn stage(state: &AppState, field: &str, limits: InputLimits) -> ApiResult<StagedInputs> {
    Ok(StagedInputs::new(
        &state.manager().inputs_dir(),
        field,
        limits,
    )?)
}

/// Runs `f` on the staged set on a blocking thread (it writes the staged tar); a cap's error
/// names `field`.
async fn blocking(
    staged: StagedInputs,
    field: &str,
    f: impl FnOnce(&mut StagedInputs) -> agent_core::Result<()> + Send + 'static,
) -> ApiResult<StagedInputs> {
    tokio::task::spawn_blocking(move || {
        let mut staged = staged;
        f(&mut staged).map(|()| staged)
    })
    .await
    .map_err(|e| ApiError::internal(format!("staging the files failed: {e}")))?
    .map_err(|e| {
        let e = ApiError::from(e);
        if e.http == StatusCode::PAYLOAD_TOO_LARGE {
            e.with_field(field)
        } else {
            e
        }
    })
}

/// Adds the archive spooled in `file` (its format from its first bytes, else `media_type`).
pub(crate) async fn add_archive(
    staged: StagedInputs,
    mut file: File,
    media_type: Option<String>,
    field: &str,
) -> ApiResult<StagedInputs> {
    let format = ArchiveFormat::detect(&mut file, media_type.as_deref())?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{field}: not a ZIP, tar or gzipped tar"),
        )
        .with_field(field)
    })?;
    blocking(staged, field, move |s| s.add_archive(file, format)).await
}

/// Up to `cap + 1` bytes of a part (one more than allowed, so the caller can tell).
async fn read_part(
    field: &mut axum::extract::multipart::Field<'_>,
    cap: u64,
) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
        let room = usize::try_from(cap + 1)
            .unwrap_or(usize::MAX)
            .saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 > cap {
            break;
        }
    }
    Ok(out)
}

/// Writes a byte stream into a temporary file (unlinked at once) of at most `cap` bytes: 413
/// naming `field` past it.
pub(crate) async fn spool<E: std::fmt::Display>(
    state: &AppState,
    stream: impl Stream<Item = Result<Bytes, E>>,
    cap: u64,
    field: &str,
) -> ApiResult<File> {
    let dir = state.manager().inputs_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| agent_core::Error::io("creating the inputs directory", e))?;
    let file = tempfile::tempfile_in(&dir)
        .map_err(|e| agent_core::Error::io("creating a file for the upload", e))?;
    let mut out = tokio::fs::File::from_std(file);
    let mut stream = std::pin::pin!(stream);
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let text = e.to_string();
            if text.contains("length limit") || text.contains("too large") {
                too_large(field, format!("{field}: larger than the server accepts"))
            } else {
                ApiError::bad_request(field, format!("could not read the {field}: {text}"))
            }
        })?;
        size += chunk.len() as u64;
        if size > cap {
            return Err(too_large(
                field,
                format!("{field}: larger than {cap} bytes"),
            ));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| agent_core::Error::io("writing the upload", e))?;
    }
    out.flush()
        .await
        .map_err(|e| agent_core::Error::io("writing the upload", e))?;
    Ok(out.into_std().await)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_describes_both_bodies_of_schedule_and_only_their_parts() {
        let doc = crate::openapi::openapi_json();
        let content = &doc["paths"]["/schedule"]["post"]["requestBody"]["content"];
        assert!(content["application/json"].is_object(), "{content}");
        let multipart = &content["multipart/form-data"]["schema"];
        let name = multipart["$ref"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next();
        let schema = &doc["components"]["schemas"][name.unwrap_or_default()];
        assert_eq!(schema["additionalProperties"], false, "{schema}");
        assert_eq!(schema["required"], serde_json::json!(["spec"]), "{schema}");
        let props = schema["properties"].as_object().unwrap();
        assert_eq!(
            props.keys().collect::<Vec<_>>(),
            ["archive", "file", "spec"]
        );
    }
}
