//! Helpers shared by the integration tests: a recording sleeper, a log capture, canned answers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_llm::{RetryPolicy, Sleeper};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use wiremock::ResponseTemplate;

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
