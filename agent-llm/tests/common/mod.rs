//! Helpers shared by the integration tests: a recording sleeper, a log capture, canned answers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{ChatRequest, ChatResponse, LlmError, LlmProvider};
use agent_llm::{Retry, RetryPolicy, Sleeper};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate, Times};

/// A sleeper that records each delay the retry wrapper chose and returns at once.
#[derive(Clone, Default)]
pub struct RecordingSleeper(Arc<Mutex<Vec<Duration>>>);

impl RecordingSleeper {
    pub fn delays(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(delay);
        Box::pin(async {})
    }
}

/// A policy with tiny delays and no jitter (so the backoff is exact).
pub fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(max_attempts)
        .with_base_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter(false)
}

/// `provider` behind the retry wrapper with [`fast_policy`]`(max_attempts)`, and the sleeper
/// that records its delays.
pub fn retrying<P: LlmProvider>(provider: P, max_attempts: u32) -> (Retry<P>, RecordingSleeper) {
    retrying_with(provider, fast_policy(max_attempts))
}

/// `provider` behind the retry wrapper with `policy`, and the sleeper that records its delays.
pub fn retrying_with<P: LlmProvider>(
    provider: P,
    policy: RetryPolicy,
) -> (Retry<P>, RecordingSleeper) {
    let sleeper = RecordingSleeper::default();
    let retry = Retry::with_policy(provider, policy).with_sleeper(Arc::new(sleeper.clone()));
    (retry, sleeper)
}

/// A 200 answer with a JSON body.
pub fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

/// Streams `request` from `provider`: the deltas in order, and the assembled reply.
pub async fn stream_deltas(
    provider: &(impl LlmProvider + ?Sized),
    request: &ChatRequest,
) -> (Vec<String>, ChatResponse) {
    let stream = provider.chat_stream(request).await.unwrap();
    let mut deltas = Vec::new();
    let reply = agent_core::llm::collect_stream(stream, |d| deltas.push(d.to_owned()))
        .await
        .unwrap();
    (deltas, reply)
}

/// Answers `POST route` on `server` with `response`, `times` times (a count, or `..` for any
/// number; wiremock checks the count when the server drops).
pub async fn answer(
    server: &MockServer,
    route: &str,
    response: ResponseTemplate,
    times: impl Into<Times>,
) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(response)
        .expect(times)
        .mount(server)
        .await;
}

/// Answers the first `n` requests to `POST route` with `response`, ahead of any other answer,
/// and expects exactly `n` of them.
pub async fn answer_first(server: &MockServer, route: &str, response: ResponseTemplate, n: u64) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(response)
        .up_to_n_times(n)
        .with_priority(1)
        .expect(n)
        .mount(server)
        .await;
}

/// The JSON bodies of every request `server` received, in order.
pub async fn bodies(server: &MockServer) -> Vec<Value> {
    let requests = server.received_requests().await.unwrap();
    requests
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// The JSON body of the last request `server` received.
pub async fn last_body(server: &MockServer) -> Value {
    bodies(server).await.pop().unwrap()
}

/// Chats once through `provider` (a retry wrapper whose delays `sleeper` records) and checks the
/// error is of `kind` with HTTP `status`, was given up on at once (never slept on), and falls back
/// to another provider unless the context was too long. `case` names the case in failures.
pub async fn refused_at_once(
    provider: &(impl LlmProvider + ?Sized),
    sleeper: &RecordingSleeper,
    kind: agent_core::LlmErrorKind,
    status: u16,
    case: &str,
) -> LlmError {
    let err = chat_err(provider).await;
    assert_eq!(err.kind, kind, "{case}: {err}");
    assert_eq!(err.status, Some(status), "{case}");
    assert!(sleeper.delays().is_empty(), "{case} was retried");
    assert_eq!(
        err.should_fall_back(),
        kind != agent_core::LlmErrorKind::ContextTooLong,
        "{case}"
    );
    err
}

/// The error of a chat call, which must be of `kind` and say `saying`.
pub async fn chat_err_saying(
    provider: &(impl LlmProvider + ?Sized),
    kind: agent_core::LlmErrorKind,
    saying: &str,
) -> LlmError {
    let err = chat_err(provider).await;
    assert_eq!(err.kind, kind, "{err}");
    assert!(err.message.contains(saying), "{err}");
    err
}

pub async fn chat_err(provider: &(impl LlmProvider + ?Sized)) -> LlmError {
    provider
        .chat(&ChatRequest::new("s", "u"))
        .await
        .unwrap_err()
}

/// Everything written by a tracing subscriber.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs a TRACE-level subscriber writing to the returned buffer for the current thread.
pub fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buf = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(buf.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (buf, guard)
}

/// An OpenAI chat completion.
pub fn openai_completion(text: &str, model: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
}

/// A Gemini GenerateContentResponse.
pub fn gemini_reply(text: &str) -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {"promptTokenCount": 21, "candidatesTokenCount": 9, "totalTokenCount": 30},
        "modelVersion": "gemini-2.5-flash"
    })
}

/// An SSE body from `data:` payloads.
pub fn sse_body(events: &[String]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

/// A 200 `text/event-stream` answer.
pub fn sse_response(events: &[String]) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(sse_body(events), "text/event-stream")
}

/// An OpenAI error body.
pub fn openai_error(message: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})
}

/// A Gemini error body.
pub fn gemini_error(code: u16, status: &str, message: &str, details: Value) -> Value {
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
}
