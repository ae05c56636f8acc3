//! The OpenAPI document, served at `/openapi.json` and rendered by Swagger UI at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{
    CancelResponse, ExecutorHealth, HealthResponse, JobSummary, JobsResponse, ScheduleRequest,
    ScheduleResponse, StatusResponse, StepDoc, StepView,
};
use crate::error::{ErrorBody, ErrorDetail};

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
    ),
    components(schemas(
        ScheduleRequest, ScheduleResponse, StatusResponse, StepView, StepDoc, JobSummary,
        JobsResponse, CancelResponse, HealthResponse, ExecutorHealth, ErrorBody, ErrorDetail
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Submit, inspect, cancel and download jobs"),
        (name = "logs", description = "Job logs, whole or live"),
        (name = "service", description = "Health and metrics"),
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
