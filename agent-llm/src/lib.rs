#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod fallback;
mod gemini;
mod http;
mod openai;
mod retry;
mod stream;

/// Re-exported from agent-core, where every crate (the server's API token too) takes it from.
pub use agent_core::SecretString;
pub use config::{from_env, LlmConfig, ProviderKind, NOT_CONFIGURED_HELP};
pub use fallback::Fallback;
pub use gemini::{
    openapi_subset, Gemini, GeminiConfig, GeminiSchemaField, GEMINI_DEFAULT_BASE_URL,
    GEMINI_DEFAULT_MODEL,
};
pub use http::HttpOptions;
pub use openai::{
    OpenAiCompatible, OpenAiConfig, ALCHEMYST_DEFAULT_BASE_URL, ALCHEMYST_DEFAULT_MODEL,
    OPENAI_DEFAULT_MODEL,
};
pub use retry::{Retry, RetryPolicy, Sleeper, TokioSleeper};
