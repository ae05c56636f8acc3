//! [`LlmConfig`]: the provider chain from environment variables (or an explicit map of them).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{LlmError, LlmErrorKind, LlmProvider};

use crate::fallback::Fallback;
use crate::gemini::{Gemini, GeminiConfig};
use crate::http::HttpOptions;
use crate::openai::{OpenAiCompatible, OpenAiConfig};
use crate::retry::{Retry, RetryPolicy};

/// What to set when no provider is configured.
pub const NOT_CONFIGURED_HELP: &str = "set ALCHEMYST_API_KEY (or \
ALCHEMYST_AI_API_KEY) for Alchemyst, GEMINI_API_KEY for Gemini, or OPENAI_BASE_URL (with optional \
OPENAI_API_KEY and OPENAI_MODEL) for an OpenAI-compatible server such as Ollama, vLLM or llama.cpp";

/// The providers [`LlmConfig`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Alchemyst (OpenAI-compatible proxy).
    Alchemyst,
    /// Google Gemini (native API).
    Gemini,
    /// Any OpenAI-compatible server.
    OpenAi,
}

impl ProviderKind {
    /// The default order: Alchemyst, then Gemini, then the OpenAI-compatible server.
    pub const DEFAULT_ORDER: [ProviderKind; 3] = [
        ProviderKind::Alchemyst,
        ProviderKind::Gemini,
        ProviderKind::OpenAi,
    ];

    /// `"alchemyst"`, `"gemini"` or `"openai"`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Alchemyst => "alchemyst",
            ProviderKind::Gemini => "gemini",
            ProviderKind::OpenAi => "openai",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProviderKind {
    type Err = LlmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "alchemyst" => Ok(ProviderKind::Alchemyst),
            "gemini" => Ok(ProviderKind::Gemini),
            "openai" => Ok(ProviderKind::OpenAi),
            other => Err(config_error(format!(
                "AGENT_LLM_ORDER: unknown provider {other:?} (expected alchemyst, gemini or openai)"
            ))),
        }
    }
}

/// A `true`/`false` variable (`1`/`0`, `yes`/`no` too).
fn bool_var(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<bool>, LlmError> {
    match get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("true" | "1" | "yes" | "on") => Ok(Some(true)),
        Some("false" | "0" | "no" | "off") => Ok(Some(false)),
        Some(other) => Err(config_error(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

fn config_error(message: impl Into<String>) -> LlmError {
    LlmError::new(LlmErrorKind::NotConfigured, "llm", message)
}

/// Which providers to use, in which order, with which retry policy.
///
/// Variables read (empty values count as unset):
///
/// | variable | meaning |
/// |---|---|
/// | `ALCHEMYST_API_KEY` or `ALCHEMYST_AI_API_KEY` | enables Alchemyst |
/// | `ALCHEMYST_BASE_URL`, `ALCHEMYST_MODEL` | override its defaults |
/// | `GEMINI_API_KEY` | enables Gemini |
/// | `GEMINI_BASE_URL`, `GEMINI_MODEL` | override its defaults |
/// | `OPENAI_BASE_URL` | enables an OpenAI-compatible server |
/// | `OPENAI_API_KEY`, `OPENAI_MODEL` | its optional key, its model |
/// | `ALCHEMYST_JSON_SCHEMA`, `OPENAI_JSON_SCHEMA` | `true`/`false`: send response schemas as `json_schema` |
/// | `GEMINI_SCHEMA_FIELD` | `responseJsonSchema` (default) or `responseSchema` |
/// | `AGENT_LLM_ORDER` | e.g. `gemini,alchemyst`: the providers to use, in order (others are left out) |
/// | `AGENT_LLM_TIMEOUT_SECS` | request timeout (default 120) |
/// | `AGENT_LLM_MAX_ATTEMPTS` | attempts per provider, retries included (default 3) |
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// Alchemyst, when configured.
    pub alchemyst: Option<OpenAiConfig>,
    /// Gemini, when configured.
    pub gemini: Option<GeminiConfig>,
    /// An OpenAI-compatible server, when configured.
    pub openai: Option<OpenAiConfig>,
    /// The order to ask them in (unconfigured ones are skipped).
    pub order: Vec<ProviderKind>,
    /// The retry policy of each provider.
    pub retry: RetryPolicy,
    /// Whether `order` came from `AGENT_LLM_ORDER`.
    order_from_env: bool,
}

impl LlmConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, LlmError> {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Reads the given variables instead of the process environment (tests, embedding).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, LlmError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let get = |name: &str| vars.get(name).map(|v| v.trim().to_owned());

        let mut http = HttpOptions::default();
        if let Some(secs) = get("AGENT_LLM_TIMEOUT_SECS") {
            // `try_from_secs_f64` refuses NaN, negatives and values too large for a `Duration`
            // (`from_secs_f64` would panic on those).
            let timeout = secs
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    config_error(format!(
                        "AGENT_LLM_TIMEOUT_SECS must be a positive number of seconds, not {secs:?}"
                    ))
                })?;
            http = HttpOptions::with_timeout(timeout);
        }
        let mut retry = RetryPolicy::default();
        if let Some(n) = get("AGENT_LLM_MAX_ATTEMPTS") {
            let n: u32 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                config_error(format!(
                    "AGENT_LLM_MAX_ATTEMPTS must be a whole number of at least 1, not {n:?}"
                ))
            })?;
            retry = retry.with_max_attempts(n);
        }

        let alchemyst = get("ALCHEMYST_API_KEY")
            .or_else(|| get("ALCHEMYST_AI_API_KEY"))
            .map(|key| {
                let mut c = OpenAiConfig::alchemyst(key).with_http(http);
                if let Some(base) = get("ALCHEMYST_BASE_URL") {
                    c = c.with_base_url(base);
                }
                if let Some(model) = get("ALCHEMYST_MODEL") {
                    c = c.with_model(model);
                }
                c
            });
        let alchemyst = match (alchemyst, bool_var(&get, "ALCHEMYST_JSON_SCHEMA")?) {
            (Some(c), Some(on)) => Some(c.with_json_schema(on)),
            (c, _) => c,
        };
        let gemini = get("GEMINI_API_KEY").map(|key| {
            let mut c = GeminiConfig::new(key).with_http(http);
            if let Some(base) = get("GEMINI_BASE_URL") {
                c = c.with_base_url(base);
            }
            if let Some(model) = get("GEMINI_MODEL") {
                c = c.with_model(model);
            }
            c
        });
        let gemini = match (gemini, get("GEMINI_SCHEMA_FIELD")) {
            (Some(c), Some(field)) => Some(
                c.with_schema_field(
                    field
                        .parse()
                        .map_err(|e| config_error(format!("GEMINI_SCHEMA_FIELD: {e}")))?,
                ),
            ),
            (c, _) => c,
        };
        let openai = get("OPENAI_BASE_URL").map(|base| {
            let mut c = OpenAiConfig::openai(base).with_http(http);
            if let Some(key) = get("OPENAI_API_KEY") {
                c = c.with_api_key(key);
            }
            if let Some(model) = get("OPENAI_MODEL") {
                c = c.with_model(model);
            }
            c
        });
        let openai = match (openai, bool_var(&get, "OPENAI_JSON_SCHEMA")?) {
            (Some(c), Some(on)) => Some(c.with_json_schema(on)),
            (c, _) => c,
        };
        if openai.is_none() && get("OPENAI_API_KEY").is_some() {
            tracing::warn!(
                "OPENAI_API_KEY is set but OPENAI_BASE_URL is not; the OpenAI-compatible provider \
                 needs OPENAI_BASE_URL (e.g. https://api.openai.com/v1)"
            );
        }

        let (order, order_from_env) = match get("AGENT_LLM_ORDER") {
            Some(list) => {
                let mut order = Vec::new();
                for item in list.split(',').filter(|s| !s.trim().is_empty()) {
                    let kind: ProviderKind = item.parse()?;
                    if !order.contains(&kind) {
                        order.push(kind);
                    }
                }
                (order, true)
            }
            None => (ProviderKind::DEFAULT_ORDER.to_vec(), false),
        };

        Ok(Self {
            alchemyst,
            gemini,
            openai,
            order,
            retry,
            order_from_env,
        })
    }

    /// Sets the retry policy of every provider.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the order (providers left out are not used).
    pub fn with_order(mut self, order: Vec<ProviderKind>) -> Self {
        self.order = order;
        self.order_from_env = false;
        self
    }

    fn is_configured(&self, kind: ProviderKind) -> bool {
        match kind {
            ProviderKind::Alchemyst => self.alchemyst.is_some(),
            ProviderKind::Gemini => self.gemini.is_some(),
            ProviderKind::OpenAi => self.openai.is_some(),
        }
    }

    /// The names of the providers the chain will ask, in order (for a health endpoint).
    pub fn configured(&self) -> Vec<&'static str> {
        self.order
            .iter()
            .filter(|k| self.is_configured(**k))
            .map(|k| k.name())
            .collect()
    }

    /// Builds the chain: each configured provider, in order, wrapped in [`Retry`], inside a
    /// [`Fallback`]. Fails with [`LlmErrorKind::NotConfigured`] (naming the variables to set)
    /// when there is none.
    pub fn build(&self) -> Result<Fallback, LlmError> {
        let policy = self.retry;
        let mut providers: Vec<Arc<dyn LlmProvider>> = Vec::new();
        for kind in &self.order {
            let provider = match kind {
                ProviderKind::Alchemyst => self
                    .alchemyst
                    .clone()
                    .map(|c| OpenAiCompatible::new(c).map(|p| retried(p, policy))),
                ProviderKind::Gemini => self
                    .gemini
                    .clone()
                    .map(|c| Gemini::new(c).map(|p| retried(p, policy))),
                ProviderKind::OpenAi => self
                    .openai
                    .clone()
                    .map(|c| OpenAiCompatible::new(c).map(|p| retried(p, policy))),
            }
            .transpose()?;
            match provider {
                Some(p) => providers.push(p),
                None if self.order_from_env => tracing::warn!(
                    provider = kind.name(),
                    "AGENT_LLM_ORDER names a provider that is not configured"
                ),
                None => {}
            }
        }
        if providers.is_empty() {
            let message = if self.order_from_env {
                let listed: Vec<_> = self.order.iter().map(|k| k.name()).collect();
                format!(
                    "AGENT_LLM_ORDER ({}) names no configured provider; {NOT_CONFIGURED_HELP}",
                    listed.join(",")
                )
            } else {
                NOT_CONFIGURED_HELP.to_owned()
            };
            return Err(config_error(message));
        }
        let chain = Fallback::new(providers);
        tracing::info!(providers = %chain.name(), "LLM provider chain");
        Ok(chain)
    }
}

/// `provider` inside a [`Retry`] with `policy`.
fn retried<P: LlmProvider>(provider: P, policy: RetryPolicy) -> Arc<dyn LlmProvider> {
    Arc::new(Retry::with_policy(provider, policy))
}

/// The provider chain from the process environment: `LlmConfig::from_env()?.build()`.
pub fn from_env() -> Result<Fallback, LlmError> {
    LlmConfig::from_env()?.build()
}
