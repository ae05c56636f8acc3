//! The OpenAPI document, served at `/openapi.json` and rendered by Swagger UI at `/docs`.
//!
//! The handlers and bodies are described by utoipa's derives; the `Step` and `Plan` components are
//! agent-core's generated schemas ([`agent_core::schema`]), inserted as they are — the same values
//! the planning prompt and the LLM providers get.

use std::borrow::Cow;

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::api::{
    CancelResponse, ExecutorHealth, HealthResponse, JobSummary, JobsResponse, ScheduleRequest,
    ScheduleResponse, StatusResponse, StepView, UsageView,
};
use crate::archive_browse::{ArchiveEntry, ArchiveListing};
use crate::error::{ErrorBody, ErrorDetail};
use crate::server_events::JobStatusEvent;
use crate::server_info::{InfoCapacity, InfoDefaults, InfoLimits, ProviderInfo, ServerInfo};
use crate::session::{LoginRequest, SessionInfo};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "containerized-agent",
        description = "Runs LLM-planned (or explicit) jobs in hardened, throw-away Docker sandboxes. \
                       When the server has an API token, send `Authorization: Bearer <token>`.",
    ),
    paths(
        crate::routes::health,
        crate::routes::schedule,
        crate::routes::status,
        crate::routes::list_jobs,
        crate::routes::cancel,
        crate::routes::download,
        crate::routes::logs_text,
        crate::routes::logs_stream,
        crate::routes::metrics,
        crate::archive_browse::list_files,
        crate::archive_browse::read_file,
        crate::server_events::events,
        crate::server_info::info,
        crate::session::session_info,
        crate::session::login,
        crate::session::logout,
        crate::live::issue_access,
    ),
    components(schemas(
        ScheduleRequest, ScheduleResponse, StatusResponse, StepView, StepComponent, PlanComponent, JobSummary,
        JobsResponse, CancelResponse, HealthResponse, ExecutorHealth, ErrorBody, ErrorDetail,
        UsageView, ArchiveListing, ArchiveEntry, JobStatusEvent, ServerInfo, InfoDefaults,
        InfoLimits, InfoCapacity, ProviderInfo, LoginRequest, SessionInfo,
        crate::live::AccessRequest, crate::live::AccessResponse, crate::access::AccessService
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Submit, inspect, cancel and download jobs"),
        (name = "logs", description = "Job logs, whole or live"),
        (name = "service", description = "Health, server information and metrics"),
        (name = "session", description = "The browser login cookie (for the dashboard at /ui/)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Names the `Step` component in utoipa's derives; [`openapi_json`] puts
/// [`agent_core::schema::step_schema`] in its place.
pub struct StepComponent;

impl PartialSchema for StepComponent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().into()
    }
}

impl ToSchema for StepComponent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Step")
    }
}

/// Names the `Plan` component; [`openapi_json`] puts [`agent_core::schema::plan_schema`] in its
/// place.
pub struct PlanComponent;

impl PartialSchema for PlanComponent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().into()
    }
}

impl ToSchema for PlanComponent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Plan")
    }
}

/// The document the server publishes at `/openapi.json`.
pub fn openapi_json() -> Value {
    let api = ApiDoc::openapi().merge_from(crate::sandboxes::SandboxesDoc::openapi());
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("Step".into(), agent_core::schema::step_schema().clone());
        schemas.insert("Plan".into(), agent_core::schema::plan_schema().clone());
    }
    doc
}
