//! The MCP server: live sandboxes and jobs as tools for other agents, over the Model Context
//! Protocol (the official Rust SDK, `rmcp`).
//!
//! Served over streamable HTTP at `/mcp` ([`service`], behind the API's auth middleware like
//! every endpoint) and over stdio by `agent mcp` ([`serve_stdio`]). The tools are thin: each is
//! one call of the job manager's live-sandbox API ([`JobManager::create_sandbox`],
//! [`JobManager::sandbox_step`], …) or of its job API ([`JobManager::submit`] and
//! [`JobManager::wait`]), the same calls the REST handlers make, so a sandbox made over MCP is a
//! job like any other (`GET /status/{id}`, its logs, the dashboard, `/metrics`).
//!
//! Tools: `create_sandbox`, `list_sandboxes`, `run_command`, `run_python` (stateful: variables
//! persist between calls), `write_file`, `read_file`, `plan_in_sandbox` (the server's planner works in the sandbox),
//! `destroy_sandbox`, `run_job` (schedule a
//! job and wait for it, bounded) and `wait_job`. Results carry exit codes and output tails as
//! text and as structured content; output longer than [`MAX_TEXT_CHARS`] characters is cut with
//! a note. A tool that cannot do its work (bad arguments, an unknown or ended sandbox, a refused
//! path) answers a tool error (`isError: true`) whose text says why, in the REST API's words; a
//! command that exits non-zero is a normal result with its exit code.

mod render;
mod tools;

use std::sync::Arc;

use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, ServiceExt};
use serde::de::DeserializeOwned;

use agent_core::manager::{JobManager, MAX_PUT_FILE_BYTES};

use crate::api::JobDefaults;
use crate::error::ApiError;
use crate::routes::AppState;
use crate::tenants::Caller;

pub use render::MAX_TEXT_CHARS;

/// The MCP tools over one job manager. Cheap to clone (one per MCP session).
#[derive(Clone)]
pub struct McpTools {
    manager: JobManager,
    defaults: JobDefaults,
    policy: crate::policy::Policy,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for McpTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTools").finish_non_exhaustive()
    }
}

impl McpTools {
    /// The tools over `manager`, with the server's job defaults and the default operator policy.
    pub fn new(manager: JobManager, defaults: JobDefaults) -> Self {
        Self {
            manager,
            defaults,
            policy: crate::policy::Policy::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// Checks what the tools make against `policy` (as the REST routes do).
    pub fn with_policy(mut self, policy: crate::policy::Policy) -> Self {
        self.policy = policy;
        self
    }
}

/// The largest MCP request over HTTP: room for a `write_file` of the largest file a sandbox
/// takes ([`MAX_PUT_FILE_BYTES`]) as escaped JSON text.
pub const MAX_REQUEST_BYTES: usize = 2 * MAX_PUT_FILE_BYTES;

/// The HTTP path of the MCP endpoint.
pub const MCP_PATH: &str = "/mcp";

/// The `/mcp` service of the server: streamable HTTP, one MCP session per client, ended when the
/// server shuts down.
pub fn service(state: &AppState) -> StreamableHttpService<McpTools, LocalSessionManager> {
    let tools = McpTools::new(state.manager().clone(), state.settings().defaults.clone())
        .with_policy(state.policy().clone());
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(state.shutdown_token().child_token())
        .with_max_request_body_bytes(MAX_REQUEST_BYTES);
    if state.tokens().required() {
        // rmcp's Host check (loopback names only) guards a token-less server against DNS
        // rebinding. With a bearer token a rebinding page cannot call the API anyway, and the
        // server may be reached under any name.
        config = config.disable_allowed_hosts();
    }
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// Why serving MCP over stdio stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The session could not start (the client's `initialize` failed).
    #[error("starting the MCP session: {0}")]
    Start(String),
    /// The session ended abnormally.
    #[error("the MCP session ended abnormally: {0}")]
    Session(String),
}

/// Serves the tools over stdin/stdout until the client closes stdin.
pub async fn serve_stdio(tools: McpTools) -> Result<(), McpError> {
    let running = tools
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Start(e.to_string()))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| McpError::Session(e.to_string()))
}

/// Who calls a tool: over HTTP, the caller the API's auth layer identified for that request
/// (each call is checked on its own, whatever MCP session it uses); over stdio, the local user,
/// as the admin. A tenant's tools see and control only its own sandboxes and jobs; another's id
/// is an unknown one.
#[derive(Debug)]
pub(crate) struct McpCaller(pub(crate) Caller);

impl<S> FromContextPart<ToolCallContext<'_, S>> for McpCaller {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, rmcp::ErrorData> {
        let extensions = &context.request_context.extensions;
        match extensions.get::<axum::http::request::Parts>() {
            None => Ok(Self(Caller::admin())),
            Some(parts) => parts
                .extensions
                .get::<Caller>()
                .cloned()
                .map(Self)
                .ok_or_else(|| rmcp::ErrorData::invalid_request("not authenticated", None)),
        }
    }
}

/// A tool's arguments as they were parsed. `Err` holds the REST API's error for the same
/// mistake (the field at fault and why), answered as a tool error rather than as a JSON-RPC
/// "invalid params" failure, so the calling model reads it and can correct itself. (Named like
/// rmcp's own wrapper because its `#[tool]` macro takes a tool's input schema from the argument
/// whose type is called `Parameters`.)
#[derive(Debug)]
pub(crate) struct Parameters<T>(pub(crate) Result<T, ApiError>);

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, rmcp::ErrorData> {
        let arguments = context.arguments.take().unwrap_or_default();
        let bytes = serde_json::to_vec(&arguments)
            .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))?;
        Ok(Self(crate::extract::parse_json(&bytes)))
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}
