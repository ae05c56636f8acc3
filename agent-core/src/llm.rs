//! The [`LlmProvider`] trait: chat with a system prompt, JSON-mode hint, streaming and usage.
//!
//! Implementations live in `agent-llm` (Alchemyst, Gemini, OpenAI-compatible, plus retry and
//! fallback wrappers). agent-core only depends on this trait.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::job::TokenUsage;

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user (us).
    User,
    /// The model.
    Assistant,
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A chat request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The system prompt.
    pub system: String,
    /// The conversation so far (user first).
    pub messages: Vec<Message>,
    /// Ask the provider for a JSON object (`response_format` / `responseMimeType`).
    pub json_mode: bool,
    /// A JSON Schema (2020-12) the answer must match, for providers with structured output; each
    /// provider translates it to its own field (Gemini `responseJsonSchema`, OpenAI-compatible
    /// `response_format: json_schema`) or falls back to plain JSON mode. Implies `json_mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<serde_json::Value>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Cap on output tokens.
    pub max_tokens: Option<u32>,
}

impl ChatRequest {
    /// A request with a system prompt and one user message.
    pub fn new(system: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            system: system.into(),
            messages: vec![Message::user(user)],
            ..Self::default()
        }
    }

    /// Sets the JSON-mode hint.
    pub fn with_json_mode(mut self, json: bool) -> Self {
        self.json_mode = json;
        self
    }

    /// Sets the schema the answer must match (and turns JSON mode on).
    pub fn with_response_schema(mut self, schema: serde_json::Value) -> Self {
        self.json_mode = true;
        self.response_schema = Some(schema);
        self
    }

    /// Whether the answer should be JSON: [`json_mode`](Self::json_mode) or a response schema.
    pub fn wants_json(&self) -> bool {
        self.json_mode || self.response_schema.is_some()
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the output token cap.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
}

/// A complete answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The model's text.
    pub text: String,
    /// The provider that answered (e.g. `"alchemyst"`, `"gemini"`).
    pub provider: String,
    /// The model that answered.
    pub model: String,
    /// Token usage as reported by the provider.
    pub usage: TokenUsage,
}

/// One item of a streamed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatChunk {
    /// A piece of text.
    Delta(String),
    /// The end of the answer, with who answered and the usage.
    Done {
        /// The provider that answered.
        provider: String,
        /// The model that answered.
        model: String,
        /// Token usage.
        usage: TokenUsage,
    },
}

/// A streamed answer: deltas, then one [`ChatChunk::Done`].
pub type ChatStream = BoxStream<'static, Result<ChatChunk, LlmError>>;

/// What kind of failure an [`LlmError`] is; decides whether a retry or a fallback can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LlmErrorKind {
    /// A server error, timeout or connection failure: retrying may help.
    Transient,
    /// Rate limited (429); retry after `retry_after` if given.
    RateLimited,
    /// A quota that will not reset soon (e.g. per day): do not retry this provider.
    QuotaExhausted,
    /// A request the provider refuses (400/401/403/404): retrying cannot help.
    Permanent,
    /// The prompt was longer than the model's context.
    ContextTooLong,
    /// The provider blocked the prompt or the answer (safety).
    Blocked,
    /// The provider answered with something we cannot use.
    InvalidResponse,
    /// The provider is not configured (missing key or URL).
    NotConfigured,
}

/// A failed LLM call: the kind, the provider, the HTTP status and the provider's own message.
///
/// Never contains an API key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub struct LlmError {
    /// What kind of failure.
    pub kind: LlmErrorKind,
    /// The provider's name.
    pub provider: String,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// The provider's message (or ours).
    pub message: String,
    /// How long the provider asked us to wait.
    pub retry_after: Option<Duration>,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// For the error of a chain of providers (a fallback) that all failed: each provider's
    /// failure, in the order they were asked; the error's own kind, status and retry delay are
    /// the last one's. Empty for the error of a single provider.
    pub failures: Vec<LlmError>,
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A chain lists each failure once, each with its own provider, kind and status.
        if !self.failures.is_empty() {
            write!(f, "all {} LLM providers failed: ", self.failures.len())?;
            for (i, err) in self.failures.iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{err}")?;
            }
            return Ok(());
        }
        write!(f, "{} ", self.provider)?;
        match self.kind {
            LlmErrorKind::Transient => f.write_str("transient error")?,
            LlmErrorKind::RateLimited => f.write_str("rate limited")?,
            LlmErrorKind::QuotaExhausted => f.write_str("quota exhausted")?,
            LlmErrorKind::Permanent => f.write_str("request refused")?,
            LlmErrorKind::ContextTooLong => f.write_str("context too long")?,
            LlmErrorKind::Blocked => f.write_str("blocked")?,
            LlmErrorKind::InvalidResponse => f.write_str("invalid response")?,
            LlmErrorKind::NotConfigured => f.write_str("not configured")?,
        }
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl LlmError {
    /// A new error.
    pub fn new(
        kind: LlmErrorKind,
        provider: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            provider: provider.into(),
            status: None,
            message: message.into(),
            retry_after: None,
            source: None,
            failures: Vec::new(),
        }
    }

    /// The error of a chain named `chain` whose providers all failed with `failures` (in order):
    /// the last failure's kind, status and retry delay, a message listing each failure once.
    /// `None` when `failures` is empty.
    pub fn all_failed(chain: impl Into<String>, failures: Vec<LlmError>) -> Option<Self> {
        let last = failures.last()?;
        let mut err = Self::new(last.kind, chain, String::new());
        err.status = last.status;
        err.retry_after = last.retry_after;
        err.message = failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        err.failures = failures;
        Some(err)
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the retry delay the provider asked for.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Sets the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether retrying the same provider may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            LlmErrorKind::Transient | LlmErrorKind::RateLimited
        )
    }

    /// Whether another provider may succeed where this one failed (everything but a bad prompt).
    pub fn should_fall_back(&self) -> bool {
        !matches!(self.kind, LlmErrorKind::ContextTooLong)
    }
}

/// A chat model behind some API.
///
/// Only [`chat`](LlmProvider::chat) is required; [`chat_stream`](LlmProvider::chat_stream)
/// defaults to one delta with the whole answer.
///
/// The agent itself always streams (so planning shows up live in the job's log). `chat` stays the
/// required method because it is the smallest thing a backend can offer (a server or a test
/// double that cannot stream still works, through the default `chat_stream`) and because
/// embedders that want one whole answer should not have to collect a stream. Every provider in
/// `agent-llm` implements both natively, and the conformance suite
/// (`agent_core::testing::llm_suite`, feature `test-util`, run against each provider) checks both.
#[async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// A short name recorded in jobs (`"alchemyst"`, `"gemini"`, `"openai"`, …).
    fn name(&self) -> &str;

    /// Sends the request and waits for the whole answer.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;

    /// Sends the request and streams the answer as text deltas followed by a `Done`.
    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let resp = self.chat(request).await?;
        Ok(stream::iter([
            Ok(ChatChunk::Delta(resp.text)),
            Ok(ChatChunk::Done {
                provider: resp.provider,
                model: resp.model,
                usage: resp.usage,
            }),
        ])
        .boxed())
    }
}

/// Forwards every method to the pointee, provided ones too (the lint names any left out).
macro_rules! forward_llm_provider {
    ($($pointer:ident),*) => {$(
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: LlmProvider + ?Sized> LlmProvider for $pointer<T> {
            fn name(&self) -> &str {
                (**self).name()
            }
            async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
                (**self).chat(request).await
            }
            async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
                (**self).chat_stream(request).await
            }
        }
    )*};
}

forward_llm_provider!(Arc, Box);

/// Collects a [`ChatStream`] into a [`ChatResponse`], calling `on_delta` for each piece of text.
pub async fn collect_stream(
    mut stream: ChatStream,
    mut on_delta: impl FnMut(&str) + Send,
) -> Result<ChatResponse, LlmError> {
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        match chunk? {
            ChatChunk::Delta(d) => {
                on_delta(&d);
                text.push_str(&d);
            }
            ChatChunk::Done {
                provider,
                model,
                usage,
            } => {
                return Ok(ChatResponse {
                    text,
                    provider,
                    model,
                    usage,
                })
            }
        }
    }
    Err(LlmError::new(
        LlmErrorKind::InvalidResponse,
        "stream",
        "the stream ended without a final chunk",
    ))
}

#[cfg(any(test, feature = "test-util"))]
mockall::mock! {
    /// A mockall mock of [`LlmProvider`] for unit tests.
    pub Llm {}

    #[async_trait]
    impl LlmProvider for Llm {
        fn name(&self) -> &str;
        async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;
    }
}
