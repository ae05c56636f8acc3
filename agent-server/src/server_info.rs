//! `GET /info`: what a job gets by default, what a request may ask for, the server's capacity and
//! what it has seen of its LLM providers (the dashboard's submit form and server panel).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::routes::{AppState, WarmProbe};

/// The defaults a job gets when its request leaves a field out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InfoDefaults {
    /// Container image (`AGENT_IMAGE`).
    pub image: Option<String>,
    /// Network mode (`AGENT_NETWORK`).
    pub network: String,
    /// Whole-job timeout in seconds (`AGENT_JOB_TIMEOUT_SECS`).
    pub timeout_secs: u64,
    /// Per-step timeout in seconds (`AGENT_STEP_TIMEOUT_SECS`).
    pub step_timeout_secs: u64,
}

/// What a request may ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InfoLimits {
    /// The network modes `POST /schedule` accepts (`bridge` only when the operator allows it:
    /// `AGENT_ALLOW_NETWORK`).
    pub networks: Vec<String>,
    /// The longest whole-job timeout a request may ask for, in seconds
    /// (`AGENT_MAX_JOB_TIMEOUT_SECS`).
    pub max_timeout_secs: u64,
    /// The longest step timeout a request may ask for, in seconds
    /// (`AGENT_MAX_STEP_TIMEOUT_SECS`).
    #[serde(default)]
    pub max_step_timeout_secs: u64,
    /// The images a request may name (exact references, or patterns where `*` is any run of
    /// characters): the server's own and `AGENT_ALLOWED_IMAGES`.
    #[serde(default)]
    pub images: Vec<String>,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
}

/// How much the server runs at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InfoCapacity {
    /// Jobs that run at the same time (`AGENT_MAX_CONCURRENT_JOBS`).
    pub max_concurrent_jobs: usize,
    /// Jobs that may wait (`AGENT_MAX_QUEUED_JOBS`).
    pub max_queued_jobs: usize,
    /// Jobs waiting now.
    pub queued: usize,
    /// Jobs running now.
    pub running: usize,
    /// Sandboxes (containers) alive now.
    pub live_sandboxes: usize,
    /// Sandboxes kept started ahead of demand (`AGENT_WARM_POOL`; 0 = none).
    pub warm_pool: usize,
    /// Warm sandboxes ready now (absent when the executor does not say).
    pub warm_ready: Option<usize>,
}

/// What the server has seen of one LLM provider since it started (it makes no call to find out).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderInfo {
    /// The provider, in the order they are tried.
    pub name: String,
    /// Successful calls.
    pub ok: u64,
    /// Failed calls.
    pub errors: u64,
    /// Mean latency of the successful calls, in milliseconds.
    pub mean_latency_ms: Option<u64>,
    /// When the last call succeeded.
    pub last_ok_at: Option<DateTime<Utc>>,
    /// When the last call failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Kind of the last failure (`transient`, `rate_limited`, `quota_exhausted`, `permanent`, …).
    pub last_error_kind: Option<String>,
}

/// `GET /info`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// The server's version.
    pub version: String,
    /// Whether requests need the API token.
    pub auth_required: bool,
    /// Defaults of new jobs.
    pub defaults: InfoDefaults,
    /// What a request may ask for.
    pub limits: InfoLimits,
    /// Capacity and load.
    pub capacity: InfoCapacity,
    /// The LLM providers configured, in order (empty: explicit steps only).
    pub llm_providers: Vec<ProviderInfo>,
    /// The services a job may ask for (`desktop`, `jupyter`; empty when the executor runs none).
    pub services: Vec<String>,
    /// The longest `keep_alive_secs` a job may ask for.
    pub max_keep_alive_secs: u64,
}

/// Defaults, limits, capacity and LLM provider statistics.
#[utoipa::path(get, path = "/info", tag = "service",
    responses((status = 200, body = ServerInfo),
              (status = 401, description = "Missing or wrong token", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn info(State(state): State<AppState>) -> Json<ServerInfo> {
    let settings = state.settings();
    let policy = state.policy();
    let manager = state.manager();
    let stats = manager.stats();
    let config = manager.config();
    let llm_providers = state
        .llm_providers()
        .iter()
        .map(|name| {
            let h = state.metrics().llm_health(name);
            ProviderInfo {
                name: name.clone(),
                ok: h.ok,
                errors: h.errors,
                mean_latency_ms: h.mean_latency_secs.map(|s| (s * 1000.0).round() as u64),
                last_ok_at: h.last_ok_at,
                last_error_at: h.last_error_at,
                last_error_kind: h.last_error_kind,
            }
        })
        .collect();
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        auth_required: settings.tokens.required(),
        defaults: InfoDefaults {
            image: settings.image.clone(),
            network: settings.defaults.network.to_string(),
            timeout_secs: settings.defaults.job_timeout.as_secs(),
            step_timeout_secs: settings.defaults.step_timeout.as_secs(),
        },
        limits: InfoLimits {
            networks: if policy.allows_network() {
                vec!["none".to_string(), "bridge".to_string()]
            } else {
                vec!["none".to_string()]
            },
            max_timeout_secs: policy.maxima().job_timeout.as_secs(),
            max_step_timeout_secs: policy.maxima().step_timeout.as_secs(),
            images: policy.images().map(str::to_string).collect(),
            max_body_bytes: settings.max_body_bytes,
        },
        capacity: InfoCapacity {
            max_concurrent_jobs: config.max_concurrent_jobs,
            max_queued_jobs: config.max_queued_jobs,
            queued: stats.queued,
            running: stats.running,
            live_sandboxes: stats.live_sandboxes,
            warm_pool: settings.warm_pool,
            warm_ready: settings.warm_ready.as_ref().map(WarmProbe::ready),
        },
        llm_providers,
        services: if manager.executor().capabilities().services {
            agent_core::Service::ALL
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            Vec::new()
        },
        max_keep_alive_secs: config.max_keep_alive.as_secs(),
    })
}
