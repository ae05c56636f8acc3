//! The API's one error shape: `{"error":{"code","message"}}` (plus `field` or `status` when known).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use agent_core::{JobStatus, LlmErrorKind, SandboxErrorKind, StoreErrorKind};

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code (`invalid_input`, `not_found`, `already_finished`, …).
    pub code: String,
    /// A human-readable message.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The job's status, for `already_finished` and `not_ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub status: Option<JobStatus>,
}

/// An error answered by the API.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub http: StatusCode,
    /// The body.
    pub detail: ErrorDetail,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(http: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            http,
            detail: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                field: None,
                status: None,
            },
        }
    }

    /// Names the request field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.detail.field = Some(field.into());
        self
    }

    /// Adds the job's status.
    pub fn with_status(mut self, status: JobStatus) -> Self {
        self.detail.status = Some(status);
        self
    }

    /// 400 `bad_request` naming a field.
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message).with_field(field)
    }

    /// 422 `invalid_input` naming a field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message).with_field(field)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs an `Authorization: Bearer <token>` header with the server's API token",
        )
    }

    /// 500 `internal`, with a message that reveals nothing sensitive.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.http.is_server_error() {
            tracing::error!(code = %self.detail.code, message = %self.detail.message, "request failed");
        }
        let unauthorized = self.http == StatusCode::UNAUTHORIZED;
        let unavailable = matches!(
            self.http,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE
        );
        let mut resp = (self.http, Json(ErrorBody { error: self.detail })).into_response();
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if unavailable {
            // Every 503 here is temporary (shutting down, queue full, store busy, engine down),
            // and a full disk may be freed.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

impl From<agent_core::Error> for ApiError {
    fn from(err: agent_core::Error) -> Self {
        use agent_core::Error as E;
        match &err {
            E::InvalidInput { field, message } => {
                ApiError::invalid(field, format!("{field}: {message}"))
            }
            E::InvalidJobId { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_job_id", err.to_string())
                    .with_field("id")
            }
            E::JobNotFound(_) => ApiError::not_found(err.to_string()),
            E::AlreadyFinished { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_finished", err.to_string())
                    .with_status(*status)
            }
            E::NoLlm => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_llm", format!(
                "{err}; send explicit `steps`, or configure a provider on the server (ALCHEMYST_API_KEY, GEMINI_API_KEY, …)"
            ))
            .with_field("prompt"),
            E::QueueFull { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", err.to_string())
            }
            E::AtCapacity { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "at_capacity", err.to_string())
            }
            E::Sandbox(e) if e.kind == SandboxErrorKind::PathRefused => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "path_refused", e.to_string())
                    .with_field("path")
            }
            // A file operation the sandbox cannot do: a directory read as a file, say.
            E::Sandbox(e) if e.kind == SandboxErrorKind::Invalid => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_path", e.to_string())
                    .with_field("path")
            }
            E::Sandbox(e) if e.kind == SandboxErrorKind::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "file_not_found", e.to_string())
            }
            E::Sandbox(e) if e.kind == SandboxErrorKind::Image => {
                ApiError::new(StatusCode::NOT_FOUND, "image_not_found", e.to_string())
                    .with_field("image")
            }
            E::Sandbox(e) if e.kind == SandboxErrorKind::TooLarge => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            E::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", err.to_string())
            }
            E::StorageCapReached { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_cap_reached",
                err.to_string(),
            ),
            _ if err.is_storage_full() => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                format!(
                    "the server's disk is full ({err}); nothing was stored — try again once \
                     space is freed"
                ),
            ),
            E::Store(e) if e.kind == StoreErrorKind::Busy => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "the job store is busy; retry")
            }
            E::Store(e) if e.kind == StoreErrorKind::NotFound => ApiError::not_found(e.message.clone()),
            E::Sandbox(e) if e.kind == SandboxErrorKind::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "executor_unavailable",
                err.to_string(),
            ),
            E::Llm(e) if e.kind == LlmErrorKind::NotConfigured => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_llm", err.to_string())
            }
            // (Only a live sandbox's planned run answers with an LLM's failure.)
            E::Llm(_) | E::InvalidPlan(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "llm_failed", err.to_string())
            }
            _ => ApiError::internal(err.to_string()),
        }
    }
}

/// `Result` with [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;
