//! [`Retry`]: retries a provider on transient failures and rate limits, with exponential backoff
//! and jitter, honouring the delay the provider asks for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agent_core::llm::ChatStream;
use agent_core::{ChatChunk, ChatRequest, ChatResponse, LlmError, LlmErrorKind, LlmProvider};
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use rand::Rng;

/// How [`Retry`] retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The first backoff delay; each retry doubles it.
    pub base_delay: Duration,
    /// The longest wait, for the backoff and for a delay the provider asked for alike.
    pub max_delay: Duration,
    /// Randomise the backoff delay (to between half and all of it) so clients do not retry in step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Sets the number of attempts (at least 1).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the first backoff delay.
    pub fn with_base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// Sets the longest wait.
    pub fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Turns jitter on or off.
    pub fn with_jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// The wait before retry number `retry` (0 for the first retry) after `err`: the delay the
    /// provider asked for (`Retry-After`, `RetryInfo.retryDelay`) if any, else
    /// `base_delay * 2^retry` with jitter; either way at most `max_delay`.
    pub fn delay(&self, retry: u32, err: &LlmError) -> Duration {
        if let Some(asked) = err.retry_after {
            return asked.min(self.max_delay);
        }
        let factor = 2u32.saturating_pow(retry.min(31));
        let backoff = self.base_delay.saturating_mul(factor).min(self.max_delay);
        if self.jitter && !backoff.is_zero() {
            let half = backoff / 2;
            let extra =
                rand::rng().random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
            half + Duration::from_nanos(extra)
        } else {
            backoff
        }
    }
}

/// Waits between attempts. The default is `tokio::time::sleep`; tests inject one that records the
/// delays without waiting.
pub trait Sleeper: Send + Sync + 'static {
    /// Waits `delay`.
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()>;
}

/// [`Sleeper`] with `tokio::time::sleep`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(delay))
    }
}

/// Retries the inner provider while its errors are [retryable](LlmError::is_retryable)
/// (transient, rate limited), up to [`RetryPolicy::max_attempts`]. A streamed answer is retried
/// only until its first chunk arrives; after that, errors pass through.
#[derive(Clone)]
pub struct Retry<P> {
    inner: P,
    policy: RetryPolicy,
    sleeper: Arc<dyn Sleeper>,
}

impl<P: std::fmt::Debug> std::fmt::Debug for Retry<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<P: LlmProvider> Retry<P> {
    /// Wraps `inner` with the default policy.
    pub fn new(inner: P) -> Self {
        Self::with_policy(inner, RetryPolicy::default())
    }

    /// Wraps `inner` with `policy`.
    pub fn with_policy(inner: P, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            sleeper: Arc::new(TokioSleeper),
        }
    }

    /// Replaces the sleeper (tests).
    pub fn with_sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// After a failed attempt number `attempt` (1-based): the wait before the next, or `None` to
    /// give up.
    fn next_delay(&self, attempt: u32, err: &LlmError) -> Option<Duration> {
        if !err.is_retryable() || attempt >= self.policy.max_attempts {
            return None;
        }
        let delay = self.policy.delay(attempt - 1, err);
        tracing::warn!(
            provider = %err.provider,
            attempt,
            max_attempts = self.policy.max_attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %err,
            "LLM call failed; retrying"
        );
        Some(delay)
    }

    /// `call` on the inner provider until it answers or [`next_delay`](Self::next_delay) says
    /// to stop, sleeping between attempts.
    async fn with_retries<'a, T, Fut>(&'a self, call: impl Fn(&'a P) -> Fut) -> Result<T, LlmError>
    where
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let mut attempt = 1;
        loop {
            match call(&self.inner).await {
                Ok(answer) => return Ok(answer),
                Err(err) => match self.next_delay(attempt, &err) {
                    Some(delay) => {
                        self.sleeper.sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(err),
                },
            }
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<P: LlmProvider> LlmProvider for Retry<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.with_retries(|p| p.chat(request)).await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        self.with_retries(|p| open_stream(p, request)).await
    }
}

/// Opens a stream and waits for its first item, so that a failure before any text arrives is an
/// error of the call (which a wrapper may retry or fall back on) rather than of the stream.
pub(crate) async fn open_stream<P: LlmProvider + ?Sized>(
    provider: &P,
    request: &ChatRequest,
) -> Result<ChatStream, LlmError> {
    let mut stream = provider.chat_stream(request).await?;
    match stream.next().await {
        Some(Ok(first)) => Ok(stream::iter([Ok::<ChatChunk, LlmError>(first)])
            .chain(stream)
            .boxed()),
        Some(Err(err)) => Err(err),
        None => Err(LlmError::new(
            LlmErrorKind::InvalidResponse,
            provider.name(),
            "the stream ended before its first chunk",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> LlmError {
        LlmError::new(LlmErrorKind::Transient, "p", "boom")
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter(false);
        let delays: Vec<_> = (0..5).map(|i| policy.delay(i, &transient())).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 500, 500]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert_eq!(policy.delay(1000, &transient()), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let policy = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(100))
            .with_jitter(true);
        for _ in 0..200 {
            let d = policy.delay(2, &transient());
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
        }
    }

    #[test]
    fn asked_delay_wins_but_is_capped() {
        let policy = RetryPolicy::default().with_max_delay(Duration::from_secs(10));
        let err = transient().with_retry_after(Duration::from_secs(3));
        assert_eq!(policy.delay(0, &err), Duration::from_secs(3));
        let err = transient().with_retry_after(Duration::from_secs(37));
        assert_eq!(policy.delay(0, &err), Duration::from_secs(10));
    }

    #[test]
    fn at_least_one_attempt() {
        assert_eq!(RetryPolicy::default().with_max_attempts(0).max_attempts, 1);
    }
}
