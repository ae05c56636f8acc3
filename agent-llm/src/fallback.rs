//! [`Fallback`]: asks a list of providers in order until one answers.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use agent_core::llm::ChatStream;
use agent_core::{ChatRequest, ChatResponse, LlmError, LlmErrorKind, LlmProvider};
use async_trait::async_trait;

use crate::retry::open_stream;

/// Asks each provider in turn; moves to the next when one fails with an error that
/// [another provider may not have](LlmError::should_fall_back) (anything but a prompt that is too
/// long). The answer's `provider` names the one that answered. When all fail, the error lists each
/// failure once (and holds them in [`LlmError::failures`]); a chain of one provider gives back
/// that provider's error unchanged.
///
/// Wrap each provider in [`Retry`](crate::Retry) to retry it before moving on. A streamed answer
/// falls back only until its first chunk arrives.
#[derive(Clone)]
pub struct Fallback {
    providers: Vec<Arc<dyn LlmProvider>>,
    name: String,
}

impl fmt::Debug for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("providers", &self.provider_names())
            .finish()
    }
}

impl Fallback {
    /// A chain of `providers`, asked in this order.
    pub fn new(providers: Vec<Arc<dyn LlmProvider>>) -> Self {
        let name = providers
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(",");
        Self { providers, name }
    }

    /// The providers' names, in order.
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name().to_owned()).collect()
    }

    /// The providers, in order.
    pub fn providers(&self) -> &[Arc<dyn LlmProvider>] {
        &self.providers
    }

    fn none_configured(&self) -> LlmError {
        LlmError::new(
            LlmErrorKind::NotConfigured,
            "fallback",
            "the fallback chain has no providers",
        )
    }

    /// The error when every provider failed: a single provider's own error as it is; for
    /// several, one error listing each failure once (see [`LlmError::all_failed`]).
    fn all_failed(&self, mut errors: Vec<LlmError>) -> LlmError {
        if errors.len() == 1 {
            if let Some(only) = errors.pop() {
                return only;
            }
        }
        LlmError::all_failed(self.name.as_str(), errors).unwrap_or_else(|| self.none_configured())
    }

    /// Logs a failure that moves the chain to the next provider (none is logged for the last
    /// one: its error is the chain's answer).
    fn note_failure(&self, index: usize, err: &LlmError) {
        if let Some(next) = self.providers.get(index + 1) {
            tracing::warn!(
                provider = %err.provider,
                next = next.name(),
                error = %err,
                "LLM provider failed; falling back"
            );
        }
    }
}

impl Fallback {
    /// `call` on each provider in turn until one answers or fails with an error no other
    /// provider can help with.
    async fn first_answer<'a, T, Fut>(
        &'a self,
        call: impl Fn(&'a dyn LlmProvider) -> Fut,
    ) -> Result<T, LlmError>
    where
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let mut errors = Vec::new();
        for (i, provider) in self.providers.iter().enumerate() {
            match call(provider.as_ref()).await {
                Ok(answer) => return Ok(answer),
                Err(err) if !err.should_fall_back() => return Err(err),
                Err(err) => {
                    self.note_failure(i, &err);
                    errors.push(err);
                }
            }
        }
        Err(self.all_failed(errors))
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl LlmProvider for Fallback {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.first_answer(|p| p.chat(request)).await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        self.first_answer(|p| open_stream(p, request)).await
    }
}
