//! Request extractors whose every rejection is an [`ApiError`] in the API's error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use agent_core::JobId;

use crate::error::ApiError;

/// A JSON body: 415 unless the content type is JSON, 413 over the body limit, 400 for malformed
/// JSON, 422 naming the field for JSON of the wrong shape.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// Whether a `Content-Type` value is JSON (`application/json`, `application/*+json`, any params).
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match content_type.as_deref() {
            Some(ct) if is_json_content_type(ct) => {}
            Some(ct) => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("expected Content-Type: application/json, got {ct:?}"),
                ))
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "expected Content-Type: application/json",
                ))
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than the server accepts",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("could not read the request body: {}", rejection.body_text()),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON object body, naming the path of the offending field on errors: 400
/// `invalid_json` only for text that is not JSON at all; 422 `invalid_input` for JSON of the wrong
/// shape (a body that is not an object, a wrong type, a missing or unknown field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let is_json = || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
    let not_json = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
        .with_field("body")
    };
    // serde would take a struct from an array of its fields in order (`[null,[…]]`).
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(if is_json() {
            ApiError::invalid("body", "body: must be a JSON object")
        } else {
            not_json(&"expected a JSON object")
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(err) => {
            let mut path = err.path().to_string();
            let inner = err.into_inner();
            // A value of the wrong type can surface as a syntax error (`"network": 1` for an
            // enum): what decides is whether the text is JSON.
            let reclassified = inner.classify() != serde_json::error::Category::Data;
            if reclassified && !is_json() {
                return Err(not_json(&inner));
            }
            let message = if reclassified {
                format!("a value of the wrong type ({inner})")
            } else {
                inner.to_string()
            };
            // serde_path_to_error names an unknown field of a derived struct itself, not one of
            // a value that is deserialized as a whole (a step): name it from the message.
            let unknown = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next());
            if let Some(unknown) =
                unknown.filter(|u| !path.ends_with(&format!(".{u}")) && path != *u)
            {
                path = if path == "." {
                    unknown.to_string()
                } else {
                    format!("{path}.{unknown}")
                };
            }
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            return Err(ApiError::invalid(&field, format!("{field}: {message}")));
        }
    };
    de.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

/// The `{id}` path parameter as a [`JobId`]: 400 `invalid_job_id` when malformed.
#[derive(Debug, Clone, Copy)]
pub struct JobIdParam(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_job_id", e.body_text())
                    .with_field("id")
            })?;
        raw.parse::<JobId>().map(JobIdParam).map_err(ApiError::from)
    }
}

/// The job the auth layer read to check a tenant's access to the route's `{id}` (in the
/// request's extensions), so the handler need not read it again.
#[derive(Clone, Debug)]
pub struct CheckedJob(pub std::sync::Arc<agent_core::Job>);

/// Takes the [`CheckedJob`] out of the request, if the auth layer left one (never fails).
#[derive(Debug, Default)]
pub struct Checked(Option<std::sync::Arc<agent_core::Job>>);

impl Checked {
    /// The job read by the auth layer, when it is job `id`.
    pub fn job_of(self, id: JobId) -> Option<std::sync::Arc<agent_core::Job>> {
        self.0.filter(|job| job.id == id)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Checked {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.remove::<CheckedJob>().map(|c| c.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/vnd.api+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/x-www-form-urlencoded"));
        assert!(!is_json_content_type(""));
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        inner: Vec<Inner>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<Outer>(br#"{"inner":[{"n":1},{"n":"x"}]}"#).unwrap_err();
        assert_eq!(err.http, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.detail.field.as_deref(), Some("inner[1].n"));
        let err = parse_json::<Outer>(br#"{"inner":[{"n":1}"#).unwrap_err();
        assert_eq!(err.http, StatusCode::BAD_REQUEST);
        assert_eq!(err.detail.code, "invalid_json");
        let err = parse_json::<Outer>(br#"{}"#).unwrap_err();
        assert_eq!(err.http, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.detail.message.contains("inner"),
            "{}",
            err.detail.message
        );
        let err = parse_json::<Outer>(br#"{"inner":[]} x"#).unwrap_err();
        assert_eq!(err.http, StatusCode::BAD_REQUEST);
        // An array of the fields in order is JSON, but not the object the API takes.
        let err = parse_json::<Outer>(br#"[[{"n":1}]]"#).unwrap_err();
        assert_eq!(err.http, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.detail.field.as_deref(), Some("body"));
        let err = parse_json::<Outer>(b"[[").unwrap_err();
        assert_eq!(err.detail.code, "invalid_json");
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        mode: Option<agent_core::NetworkMode>,
        inner: Option<Vec<Strict>>,
    }

    #[test]
    fn wrong_types_and_unknown_fields_are_field_errors() {
        // serde_json reports a number for a unit enum as a syntax error; it is a field error.
        let err = parse_json::<Strict>(br#"{"mode":1}"#).unwrap_err();
        assert_eq!(err.http, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.detail.field.as_deref(), Some("mode"));
        let err = parse_json::<Strict>(br#"{"inner":[{"mdoe":"none"}]}"#).unwrap_err();
        assert_eq!(err.detail.field.as_deref(), Some("inner[0].mdoe"));
        let err = parse_json::<Strict>(br#"{"mdoe":"none"}"#).unwrap_err();
        assert_eq!(err.detail.field.as_deref(), Some("mdoe"));
    }
}
