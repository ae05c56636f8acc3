//! The OpenAPI document, served at `/openapi.json` and rendered by Swagger UI at `/docs`.
//!
//! The handlers and bodies are described by utoipa's derives; the `Step` and `Plan` components are
//! agent-core's generated schemas ([`agent_core::schema`]), inserted as they are — the same values
//! the planning prompt and the LLM providers get.

use std::borrow::Cow;

use serde_json::{json, Value};
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
                       When the server has an API token, send `Authorization: Bearer <token>`. \
                       Errors are JSON (`ErrorBody`). A method a path does not list is answered \
                       405 `method_not_allowed` with an `Allow` header; a request announcing a \
                       body over the limit (`AGENT_MAX_BODY_BYTES`) is answered 413 before it is read. \
                       The Model Context Protocol endpoint `/mcp` (streamable HTTP, same bearer \
                       token; tools over the live sandboxes and jobs) is not described here: see \
                       docs/mcp.md.",
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
        crate::live::release,
    ),
    components(schemas(
        ScheduleRequest, ScheduleResponse, StatusResponse, StepView, StepComponent, PlanComponent, JobSummary,
        JobsResponse, CancelResponse, HealthResponse, ExecutorHealth, ErrorBody, ErrorDetail,
        UsageView, ArchiveListing, ArchiveEntry, JobStatusEvent, ServerInfo, InfoDefaults,
        InfoLimits, InfoCapacity, ProviderInfo, LoginRequest, SessionInfo,
        crate::live::AccessRequest, crate::live::AccessResponse, crate::access::AccessService,
        crate::live::ReleaseResponse, crate::api::SandboxView, crate::api::SandboxEndView,
        crate::api::ServiceLinks,
        crate::api::KeepSandboxRequest
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
    let api = ApiDoc::openapi()
        .merge_from(crate::sandboxes::SandboxesDoc::openapi())
        .merge_from(crate::sandbox_archive::SandboxArchiveDoc::openapi());
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("Step".into(), agent_core::schema::step_schema().clone());
        schemas.insert("Plan".into(), agent_core::schema::plan_schema().clone());
        constrain_schemas(schemas);
    }
    complete_operations(&mut doc);
    link_sandbox_operations(&mut doc);
    doc
}

/// Links a created sandbox to the operations on it (OpenAPI links: clients and testers such as
/// schemathesis follow them with the new id).
fn link_sandbox_operations(doc: &mut Value) {
    let targets = [
        ("show", "get", "/sandboxes/{id}"),
        ("run_step", "post", "/sandboxes/{id}/steps"),
        ("get_file", "get", "/sandboxes/{id}/files"),
        ("put_file", "put", "/sandboxes/{id}/files"),
        ("get_archive", "get", "/sandboxes/{id}/archive"),
        ("put_archive", "put", "/sandboxes/{id}/archive"),
        ("export", "get", "/sandboxes/{id}/workspace"),
        ("extend", "post", "/sandboxes/{id}/extend"),
        ("destroy", "delete", "/sandboxes/{id}"),
    ];
    let mut links = serde_json::Map::new();
    for (name, method, path) in targets {
        if doc
            .pointer(&format!("/paths/{}/{method}", path.replace('/', "~1")))
            .is_none()
        {
            continue;
        }
        links.insert(
            name.to_string(),
            json!({
                "operationRef": format!("#/paths/{}/{method}", path.replace('/', "~1")),
                "parameters": {"id": "$response.body#/sandbox_id"}
            }),
        );
    }
    if let Some(created) = doc.pointer_mut("/paths/~1sandboxes/post/responses/201") {
        created["links"] = Value::Object(links);
    }
}

/// Patterns of what the server accepts, in the regex syntax both JSON Schema (ECMA-262) and
/// Python's `re` (schemathesis) read the same way. "End of input" is `(?![\s\S])` rather than
/// `$`, which Python also matches before a final newline.
pub mod patterns {
    /// A job id: a UUID v4 in its hyphenated form.
    pub const JOB_ID: &str =
        "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\\s\\S])";
    /// An image reference (distribution/reference's grammar, as
    /// [`agent_core::job::validate_image_reference`] checks it) or an image ID.
    pub fn image() -> String {
        let component = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        let domain_part = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let host = format!(r"(?:{domain_part}(?:\.{domain_part})*|\[[a-fA-F0-9:]+\])");
        let name = format!("(?:{host}(?::[0-9]+)?/)?{component}(?:/{component})*");
        let tag = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
        // The algorithms the engine knows, with their digests' lengths (lower-case hex).
        let digest = "(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})";
        format!(r"^(?:{name}(?::{tag})?(?:@{digest})?|sha256:[0-9a-fA-F]{{64}})(?![\s\S])")
    }
    /// An environment variable's name.
    pub const ENV_NAME: &str = "^[A-Za-z_][A-Za-z0-9_]*(?![\\s\\S])";
    /// Text without a NUL byte.
    pub const NO_NUL: &str = "^[^\\u0000]*(?![\\s\\S])";
    /// A `write_file` step's path as [`agent_core::executor::normalize_workspace_path`] takes it:
    /// no NUL byte, not blank, relative or under `/workspace`, no `..` segment, naming a file
    /// (a segment other than empty, `.` or `..`).
    pub fn workspace_path() -> String {
        let end = r"(?![\s\S])";
        format!(
            concat!(
                r"^(?![\s\S]*\u0000)(?=[\s\S]*{not_space})",
                r"(?:/workspace(?=/|{end})|(?!/))",
                r"(?!(?:[\s\S]*/)?\.\.(?:/|{end}))",
                r"(?=(?:[\s\S]*/)?(?:[^/.]|\.[^/.]|\.\.[^/]))",
                r"[\s\S]*{end}"
            ),
            not_space = WHITE_SPACE_NEGATED,
            end = end
        )
    }
    /// A character that is not Rust's `char::is_whitespace` (nor NUL).
    const WHITE_SPACE_NEGATED: &str = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\u0000]";
    /// Text without a NUL byte and not only white space (Rust's `char::is_whitespace`).
    pub const NOT_BLANK: &str = "^[^\\u0000]*[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\u0000][^\\u0000]*(?![\\s\\S])";
}

/// Tightens the derived schemas to what the server checks at the door (so a generated request
/// that matches the document is accepted, and one that does not is refused).
fn constrain_schemas(schemas: &mut serde_json::Map<String, Value>) {
    if let Some(request) = schemas.get_mut("ScheduleRequest") {
        // A prompt (not blank) or steps.
        request["anyOf"] = json!([
            {"required": ["steps"], "properties": {"steps": {"type": "array"}}},
            {"required": ["prompt"], "properties": {"prompt": {"type": "string", "pattern": patterns::NOT_BLANK}}}
        ]);
        // keep_sandbox (absent or null, or else) excludes services and a keep-alive
        // (JobSpec::validate).
        request["allOf"] = json!([{"anyOf": [
            {"properties": {"keep_sandbox": {"type": "null"}}},
            {"properties": {
                "services": {"maxItems": 0},
                "keep_alive_secs": {"maximum": 0}
            }}
        ]}]);
        if let Some(image) = request.pointer_mut("/properties/image") {
            image["pattern"] = json!(patterns::image());
        }
        if let Some(env) = request.pointer_mut("/properties/env") {
            env["propertyNames"] = json!({"type": "string", "pattern": patterns::ENV_NAME});
            env["additionalProperties"] = json!({"type": "string", "pattern": patterns::NO_NUL});
        }
    }
    if let Some(request) = schemas.get_mut("CreateSandboxRequest") {
        if let Some(image) = request.pointer_mut("/properties/image") {
            image["pattern"] = json!(patterns::image());
            image["maxLength"] = json!(crate::sandboxes::MAX_IMAGE_CHARS);
        }
        if let Some(env) = request.pointer_mut("/properties/env") {
            env["propertyNames"] = json!({"type": "string", "pattern": patterns::ENV_NAME});
            env["additionalProperties"] = json!({"type": "string", "pattern": patterns::NO_NUL});
        }
    }
    if let Some(step) = schemas.get_mut("Step") {
        constrain_write_file_paths(step);
    }
    if let Some(access) = schemas.get_mut("AccessRequest") {
        // Only the desktop has a view-only mode.
        access["anyOf"] = json!([
            {"properties": {"service": {"const": "desktop"}}},
            {"properties": {"view_only": {"const": false}}}
        ]);
    }
}

/// Sets the pattern of every `write_file` variant's `path` in a step schema.
fn constrain_write_file_paths(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let is_write_file = map
                .get("properties")
                .and_then(|p| p.get("type"))
                .is_some_and(|t| {
                    t.get("const") == Some(&json!("write_file"))
                        || t.get("enum") == Some(&json!(["write_file"]))
                });
            if is_write_file {
                if let Some(path) = map.get_mut("properties").and_then(|p| p.get_mut("path")) {
                    path["pattern"] = json!(patterns::workspace_path());
                }
            }
            for v in map.values_mut() {
                constrain_write_file_paths(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(constrain_write_file_paths),
        _ => {}
    }
}

/// The answers every operation of a kind can give, added where its own list lacks them: 401 on
/// the protected ones, 400 for a malformed job id (and the id's format), 400/413/415/422 for a
/// JSON body, 503 where the job store or manager may be unavailable.
fn complete_operations(doc: &mut Value) {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        })
    };
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let Some(op) = operation.as_object_mut() else {
                continue;
            };
            let mut add = Vec::new();
            let protected = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty());
            if protected {
                add.push(("401", "Missing or wrong token (when the server has one)"));
            }
            for param in op
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                // A query or header parameter is absent or has a value; it is never `null`.
                if let Some(types) = param.pointer_mut("/schema/type") {
                    if let Some(list) = types.as_array() {
                        let concrete: Vec<Value> =
                            list.iter().filter(|t| *t != "null").cloned().collect();
                        if let [one] = concrete.as_slice() {
                            *types = one.clone();
                        }
                    }
                }
            }
            // Server-Sent Events: each event is an object of its fields, `data` a string.
            for response in op
                .get_mut("responses")
                .and_then(Value::as_object_mut)
                .into_iter()
                .flat_map(|r| r.values_mut())
            {
                if let Some(sse) = response.pointer_mut("/content/text~1event-stream") {
                    sse["schema"] = json!({
                        "type": "object",
                        "properties": {
                            "event": {"type": "string"},
                            "data": {"type": "string"},
                            "id": {"type": "string"},
                            "retry": {"type": "integer"}
                        }
                    });
                }
            }
            if path.contains("{id}") {
                add.push(("400", "Malformed job id"));
                for param in op
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if param["name"] == "id" && param["in"] == "path" {
                        param["schema"] = json!({"type": "string", "format": "uuid", "pattern": patterns::JOB_ID});
                    }
                }
            }
            if op.contains_key("requestBody") {
                add.push(("400", "The body is not JSON, or not an object"));
                add.push(("413", "The body is larger than the server accepts"));
                add.push(("415", "Not `Content-Type: application/json`"));
                add.push(("422", "Invalid field (named in `error.field`)"));
            }
            let tag = op
                .get("tags")
                .and_then(|t| t.get(0))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if matches!(tag, "jobs" | "logs") {
                add.push((
                    "503",
                    "Temporarily unavailable (`busy`, `queue_full`, `shutting_down`, \
                     `executor_unavailable`): retry later",
                ));
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(responses) = responses {
                for (status, description) in add {
                    responses
                        .entry(status)
                        .or_insert_with(|| error(description));
                }
            }
        }
    }
}
