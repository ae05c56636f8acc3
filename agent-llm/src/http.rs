//! What the providers share: HTTP client options, sending a request, and turning HTTP statuses,
//! provider error bodies and transport failures into typed [`LlmError`]s.

use std::time::Duration;

use agent_core::{ChatResponse, LlmError, LlmErrorKind, TokenUsage};
use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use agent_core::SecretString;

/// Timeouts of a provider's HTTP client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// The whole request, from sending to the last byte of a non-streamed answer. For a streamed
    /// answer the same value bounds the wait for the response headers and for each following
    /// read (so a long stream that keeps sending is not cut off, but a stalled one is).
    pub timeout: Duration,
    /// Establishing the TCP/TLS connection.
    pub connect_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpOptions {
    /// Options with the given request timeout (the connect timeout is capped by it).
    pub fn with_timeout(timeout: Duration) -> Self {
        let default = Self::default();
        Self {
            timeout,
            connect_timeout: default.connect_timeout.min(timeout),
        }
    }

    /// Builds a reqwest client with these timeouts (rustls, no default headers: keys are set per
    /// request so they never sit in a `Debug`-printable client).
    pub(crate) fn client(&self, provider: &str) -> Result<reqwest::Client, LlmError> {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.timeout)
            .user_agent(concat!("containerized-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                LlmError::new(
                    LlmErrorKind::NotConfigured,
                    provider,
                    format!("cannot build the HTTP client: {e}"),
                )
                .with_source(e)
            })
    }
}

/// The longest provider message kept in an error.
const MAX_MESSAGE_CHARS: usize = 2000;

/// The most bytes read of a non-streamed answer. Far above any real chat completion; it keeps a
/// broken or hostile server from filling our memory.
pub(crate) const MAX_BODY_BYTES: usize = 32 << 20;

/// The most bytes read of a streamed answer, all events together (its events are buffered until
/// they are complete, so a stream that never ends an event would otherwise grow without bound).
pub(crate) const MAX_STREAM_BYTES: usize = 64 << 20;

/// The most bytes of an error answer read (its message is cut to [`MAX_MESSAGE_CHARS`] anyway).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Reads at most `limit` bytes of a body; the flag says whether there was more.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk.slice(..room));
            return Ok((body.freeze(), true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), false))
}

/// Sends a request and returns the body of a successful (2xx) answer; anything else becomes a
/// typed error. `timeout` bounds the whole exchange when given (non-streamed requests).
pub(crate) async fn send(
    provider: &str,
    key: Option<&SecretString>,
    request: reqwest::RequestBuilder,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, LlmError> {
    let request = match timeout {
        Some(t) => request.timeout(t),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| scrub(transport_error(provider, e), key))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    // A body cut short (or unreadable) still yields the status's error.
    let body = read_capped(response, MAX_ERROR_BODY_BYTES)
        .await
        .map(|(body, _)| body)
        .unwrap_or_default();
    let err = status_error(provider, status.as_u16(), &headers, &body);
    tracing::debug!(
        provider,
        status = status.as_u16(),
        kind = ?err.kind,
        "LLM provider answered with an error"
    );
    Err(scrub(err, key))
}

/// Reads the whole body of a successful answer, up to [`MAX_BODY_BYTES`].
pub(crate) async fn read_body(
    provider: &str,
    key: Option<&SecretString>,
    response: reqwest::Response,
) -> Result<Bytes, LlmError> {
    let (body, cut) = read_capped(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| scrub(transport_error(provider, e), key))?;
    if cut {
        return Err(invalid(
            provider,
            format!("the answer is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(body)
}

/// Reads a non-streamed answer and makes it a reply with `parse` (the key scrubbed from its
/// errors).
pub(crate) async fn answer(
    provider: &str,
    key: Option<&SecretString>,
    response: reqwest::Response,
    parse: impl FnOnce(&[u8]) -> Result<ChatResponse, LlmError>,
) -> Result<ChatResponse, LlmError> {
    let body = read_body(provider, key, response).await?;
    let reply = parse(&body).map_err(|e| scrub(e, key))?;
    tracing::debug!(provider = %reply.provider, model = %reply.model, total_tokens = reply.usage.total_tokens, "LLM answer");
    Ok(reply)
}

/// Replaces the key in an error's message, in case a server echoed it.
pub(crate) fn scrub(mut err: LlmError, key: Option<&SecretString>) -> LlmError {
    if let Some(key) = key {
        err.message = key.scrub(&err.message);
    }
    err
}

/// A transport failure (timeout, connection refused, broken body) as an error.
pub(crate) fn transport_error(provider: &str, err: reqwest::Error) -> LlmError {
    let (kind, what) = if err.is_timeout() {
        (LlmErrorKind::Transient, "request timed out")
    } else if err.is_connect() {
        (LlmErrorKind::Transient, "connection failed")
    } else if err.is_decode() || err.is_body() {
        // We decode JSON ourselves, so a body error here is the transport's: a chunked body or a
        // stream cut short because the connection was lost. Asking again may well work.
        (
            LlmErrorKind::Transient,
            "the connection was lost while reading the answer",
        )
    } else if err.is_builder() {
        (LlmErrorKind::NotConfigured, "cannot build the request")
    } else {
        (LlmErrorKind::Transient, "request failed")
    };
    let mut message = format!("{what}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    LlmError::new(kind, provider, message).with_source(err)
}

/// The server-sent events of a streamed answer, with transport failures typed; a stream longer
/// than [`MAX_STREAM_BYTES`] fails as an invalid answer.
pub(crate) fn sse_events(
    provider: String,
    key: Option<SecretString>,
    response: reqwest::Response,
) -> BoxStream<'static, Result<Event, LlmError>> {
    let transport_provider = provider.clone();
    let mut received = 0usize;
    response
        .bytes_stream()
        .map(move |chunk| {
            let chunk =
                chunk.map_err(|e| scrub(transport_error(&transport_provider, e), key.as_ref()))?;
            received = received.saturating_add(chunk.len());
            if received > MAX_STREAM_BYTES {
                return Err(invalid(
                    &transport_provider,
                    format!("the streamed answer is larger than {MAX_STREAM_BYTES} bytes"),
                ));
            }
            Ok(chunk)
        })
        .eventsource()
        .map(move |item| {
            item.map_err(|e| match e {
                EventStreamError::Transport(err) => err,
                other => invalid(&provider, format!("malformed event stream: {other}")),
            })
        })
        .boxed()
}

/// An error event inside a stream (`data: {"error":{…}}`), typed by its numeric `code` when it has
/// one, else transient.
pub(crate) fn stream_error(provider: &str, data: &str) -> LlmError {
    let code = serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| v.get("error")?.get("code")?.as_u64())
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c));
    match code {
        Some(status) => status_error(provider, status, &HeaderMap::new(), data.as_bytes()),
        None => LlmError::new(
            LlmErrorKind::Transient,
            provider,
            format!(
                "error inside the stream: {}",
                parse_error_body(data.as_bytes()).message
            ),
        ),
    }
}

/// An invalid answer (a 200 we cannot use).
pub(crate) fn invalid(provider: &str, message: impl Into<String>) -> LlmError {
    LlmError::new(LlmErrorKind::InvalidResponse, provider, message)
}

/// What a provider's error body says.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ErrorBody {
    /// `error.message` (or the body text).
    pub(crate) message: String,
    /// `error.code` when it is a string (OpenAI: `context_length_exceeded`, `insufficient_quota`).
    pub(crate) code: Option<String>,
    /// Gemini's `google.rpc.RetryInfo.retryDelay`.
    pub(crate) retry_delay: Option<Duration>,
    /// A Gemini `google.rpc.QuotaFailure` violation whose quota id is per day.
    pub(crate) per_day_quota: bool,
}

/// Parses `{"error":{"message","code","type","status","details"}}` (OpenAI and Gemini), a bare
/// `{"error":"…"}` (Ollama), `{"detail":"…"}`, a one-element array of those, or plain text.
pub(crate) fn parse_error_body(body: &[u8]) -> ErrorBody {
    let text = String::from_utf8_lossy(body);
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let json = match json {
        Some(Value::Array(mut items)) if !items.is_empty() => Some(items.swap_remove(0)),
        other => other,
    };
    let mut out = ErrorBody::default();
    if let Some(json) = json {
        let error = json.get("error").unwrap_or(&json);
        out.message = match error {
            Value::String(s) => s.clone(),
            _ => error
                .get("message")
                .or_else(|| error.get("detail"))
                .map(|m| match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default(),
        };
        out.code = error.get("code").and_then(Value::as_str).map(str::to_owned);
        if let Some(details) = error.get("details").and_then(Value::as_array) {
            for detail in details {
                let ty = detail.get("@type").and_then(Value::as_str).unwrap_or("");
                if ty.ends_with("google.rpc.RetryInfo") {
                    out.retry_delay = detail
                        .get("retryDelay")
                        .and_then(Value::as_str)
                        .and_then(parse_proto_duration);
                } else if ty.ends_with("google.rpc.QuotaFailure") {
                    let violations = detail.get("violations").and_then(Value::as_array);
                    out.per_day_quota |= violations.into_iter().flatten().any(|v| {
                        ["quotaId", "quotaMetric"].iter().any(|field| {
                            v.get(*field)
                                .and_then(Value::as_str)
                                .is_some_and(|id| id.contains("PerDay"))
                        })
                    });
                }
            }
        }
    }
    if out.message.is_empty() {
        out.message = text.trim().to_owned();
    }
    if out.message.chars().count() > MAX_MESSAGE_CHARS {
        out.message = out
            .message
            .chars()
            .take(MAX_MESSAGE_CHARS)
            .collect::<String>()
            + "…";
    }
    out
}

/// Parses a protobuf JSON duration: `"37s"`, `"1.5s"`, `"0.250s"`.
pub(crate) fn parse_proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Parses a `Retry-After` header given in seconds (an HTTP date is ignored).
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

fn mentions_context_length(message: &str, code: Option<&str>) -> bool {
    if code == Some("context_length_exceeded") {
        return true;
    }
    let m = message.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "maximum context",
        "too many tokens",
        "exceeds the maximum number of tokens",
        "prompt is too long",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

fn mentions_daily_quota(message: &str, code: Option<&str>) -> bool {
    if code == Some("insufficient_quota") {
        return true;
    }
    let m = message.to_ascii_lowercase();
    ["per day", "perday", "daily quota", "daily limit"]
        .iter()
        .any(|needle| m.contains(needle))
}

/// Maps a non-2xx answer to a typed error carrying the provider's own message.
pub(crate) fn status_error(
    provider: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> LlmError {
    let info = parse_error_body(body);
    let message = if info.message.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        info.message.clone()
    };
    let code = info.code.as_deref();
    let kind = match status {
        429 if info.per_day_quota || mentions_daily_quota(&message, code) => {
            LlmErrorKind::QuotaExhausted
        }
        429 => LlmErrorKind::RateLimited,
        402 => LlmErrorKind::QuotaExhausted,
        413 => LlmErrorKind::ContextTooLong,
        408 => LlmErrorKind::Transient,
        400..=499 if mentions_context_length(&message, code) => LlmErrorKind::ContextTooLong,
        400..=499 => LlmErrorKind::Permanent,
        501 | 505 => LlmErrorKind::Permanent,
        500..=599 => LlmErrorKind::Transient,
        _ => LlmErrorKind::InvalidResponse,
    };
    let mut err = LlmError::new(kind, provider, message).with_status(status);
    if kind == LlmErrorKind::RateLimited || kind == LlmErrorKind::Transient {
        if let Some(after) = parse_retry_after(headers).or(info.retry_delay) {
            err = err.with_retry_after(after);
        }
    }
    err
}

/// `prompt + completion` when the provider gives no total.
pub(crate) fn usage(
    prompt: Option<u64>,
    completion: Option<u64>,
    total: Option<u64>,
) -> TokenUsage {
    let prompt_tokens = prompt.unwrap_or(0);
    let completion_tokens = completion.unwrap_or(0);
    TokenUsage {
        prompt_tokens,
        completion_tokens,
        // Saturating: the counts come from the provider and must not panic an overflow check.
        total_tokens: total.unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn openai_error_body() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        let err = status_error("openai", 400, &HeaderMap::new(), body);
        assert_eq!(err.kind, LlmErrorKind::ContextTooLong);
        assert_eq!(err.status, Some(400));
        assert!(err.message.contains("maximum context length"));
    }

    #[test]
    fn plain_400_is_permanent() {
        let body = br#"{"error":{"message":"bad field","type":"invalid_request_error"}}"#;
        let err = status_error("openai", 400, &HeaderMap::new(), body);
        assert_eq!(err.kind, LlmErrorKind::Permanent);
        assert_eq!(err.message, "bad field");
        for status in [401, 403, 404, 422] {
            assert_eq!(
                status_error("x", status, &HeaderMap::new(), b"nope").kind,
                LlmErrorKind::Permanent
            );
        }
    }

    #[test]
    fn server_errors_are_transient() {
        for status in [500, 502, 503, 504] {
            let err = status_error("x", status, &HeaderMap::new(), b"");
            assert_eq!(err.kind, LlmErrorKind::Transient);
            assert!(err.message.contains(&status.to_string()));
        }
    }

    #[test]
    fn gemini_retry_info_and_header() {
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
        let err = status_error("gemini", 429, &HeaderMap::new(), body);
        assert_eq!(err.kind, LlmErrorKind::RateLimited);
        assert_eq!(err.retry_after, Some(Duration::from_secs(37)));

        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        let err = status_error("openai", 429, &headers, b"{}");
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn gemini_per_day_quota() {
        let body = br#"{"error":{"code":429,"message":"You exceeded your current quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"20s"}]}}"#;
        let err = status_error("gemini", 429, &HeaderMap::new(), body);
        assert_eq!(err.kind, LlmErrorKind::QuotaExhausted);
        assert!(!err.is_retryable());

        let err = status_error(
            "x",
            429,
            &HeaderMap::new(),
            br#"{"error":"limit of 50 requests per day reached"}"#,
        );
        assert_eq!(err.kind, LlmErrorKind::QuotaExhausted);
    }

    #[test]
    fn proto_durations() {
        assert_eq!(parse_proto_duration("37s"), Some(Duration::from_secs(37)));
        assert_eq!(
            parse_proto_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_proto_duration("abc"), None);
        assert_eq!(parse_proto_duration("-1s"), None);
    }

    #[test]
    fn usage_sums_without_overflow() {
        assert_eq!(usage(Some(2), Some(3), None).total_tokens, 5);
        assert_eq!(usage(Some(2), Some(3), Some(9)).total_tokens, 9);
        assert_eq!(usage(Some(u64::MAX), Some(1), None).total_tokens, u64::MAX);
    }

    #[test]
    fn long_messages_are_truncated() {
        let body = "x".repeat(10_000);
        let info = parse_error_body(body.as_bytes());
        assert!(info.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    }
}
