//! The OpenAI chat-completions wire format (Alchemyst and generic OpenAI-compatible servers)
//! against a real HTTP server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_core::{ChatChunk, ChatRequest, LlmErrorKind, LlmProvider, Message};
use agent_llm::{HttpOptions, OpenAiCompatible, OpenAiConfig};
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "alc-test-key-123456";
const CHAT_PATH: &str = "/api/v1/proxy/default/chat/completions";

fn alchemyst(server: &MockServer) -> OpenAiCompatible {
    OpenAiConfig::alchemyst(KEY)
        .with_base_url(format!("{}/api/v1/proxy/default", server.uri()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn alchemyst_request_and_happy_path_with_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({
            "model": "alchemyst-ai/alchemyst-c1",
            "stream": false,
            "messages": [
                {"role": "system", "content": "You plan."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "plan it"}
            ],
            "temperature": 0.2,
            "max_tokens": 256
        })))
        .respond_with(ok(openai_completion(
            "the plan",
            "alchemyst-ai/alchemyst-c1",
        )))
        .expect(1)
        .mount(&server)
        .await;

    let provider = alchemyst(&server);
    assert_eq!(provider.name(), "alchemyst");
    let mut request = ChatRequest::new("You plan.", "hello")
        .with_temperature(0.2)
        .with_max_tokens(256);
    request.messages.push(Message::assistant("hi"));
    request.messages.push(Message::user("plan it"));
    let reply = provider.chat(&request).await.unwrap();

    assert_eq!(reply.text, "the plan");
    assert_eq!(reply.provider, "alchemyst");
    assert_eq!(reply.model, "alchemyst-ai/alchemyst-c1");
    assert_eq!(reply.usage.prompt_tokens, 11);
    assert_eq!(reply.usage.completion_tokens, 7);
    assert_eq!(reply.usage.total_tokens, 18);

    // Without JSON mode there is no response_format; the system prompt is the first message only.
    let body = last_body(&server).await;
    assert!(body.get("response_format").is_none());
    assert!(body.get("stream_options").is_none());
    assert_eq!(body["messages"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn json_mode_sends_response_format() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(body_partial_json(
            json!({"response_format": {"type": "json_object"}}),
        ))
        .respond_with(ok(openai_completion(r#"{"steps":[],"summary":"ok"}"#, "m")))
        .expect(1)
        .mount(&server)
        .await;
    let reply = alchemyst(&server)
        .chat(&ChatRequest::new("sys", "plan").with_json_mode(true))
        .await
        .unwrap();
    let plan: Value = serde_json::from_str(&reply.text).unwrap();
    assert_eq!(plan["summary"], "ok");
}

#[tokio::test]
async fn a_response_schema_is_sent_as_json_schema_where_configured() {
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}},
                        "required": ["n"], "additionalProperties": false});
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(openai_completion(r#"{"n":1}"#, "m")))
        .expect(2)
        .mount(&server)
        .await;
    let request = ChatRequest::new("sys", "go").with_response_schema(schema.clone());
    // A generic OpenAI-compatible server gets the schema itself.
    OpenAiConfig::openai(format!("{}/v1", server.uri()))
        .build()
        .unwrap()
        .chat(&request)
        .await
        .unwrap();
    assert_eq!(
        last_body(&server).await["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}})
    );
    // Alchemyst (or any server with it turned off) is asked for a JSON object only.
    alchemyst(&server).chat(&request).await.unwrap();
    assert_eq!(
        last_body(&server).await["response_format"],
        json!({"type": "json_object"})
    );
}

#[tokio::test]
async fn generic_openai_server_without_key_or_system_prompt() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})))
        .respond_with(ok(json!({
            // llama.cpp-style: no model, no usage.
            "choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let provider = OpenAiConfig::openai(format!("{}/v1/", server.uri()))
        .with_model("llama3.2")
        .build()
        .unwrap();
    let reply = provider.chat(&ChatRequest::new("", "hi")).await.unwrap();
    assert_eq!(reply.text, "hello");
    assert_eq!(reply.provider, "openai");
    assert_eq!(reply.model, "llama3.2");
    assert_eq!(reply.usage.total_tokens, 0);

    let requests = server.received_requests().await.unwrap();
    assert!(requests[0].headers.get("authorization").is_none());
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
}

fn delta(text: &str) -> String {
    json!({"object": "chat.completion.chunk", "model": "alchemyst-ai/alchemyst-c1",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    .to_string()
}

#[tokio::test]
async fn sse_stream_is_assembled_with_usage_and_done() {
    let server = MockServer::start().await;
    let events = vec![
        json!({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}).to_string(),
        delta("Hel"),
        delta("lo, "),
        delta("world"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
        json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).to_string(),
        "[DONE]".to_owned(),
    ];
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(body_partial_json(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .respond_with(sse_response(&events))
        .expect(1)
        .mount(&server)
        .await;

    let (deltas, reply) = stream_deltas(&alchemyst(&server), &ChatRequest::new("sys", "hi")).await;
    assert_eq!(deltas, ["Hel", "lo, ", "world"]);
    assert_eq!(reply.text, "Hello, world");
    assert_eq!(reply.provider, "alchemyst");
    assert_eq!(reply.usage.prompt_tokens, 5);
    assert_eq!(reply.usage.completion_tokens, 3);
    assert_eq!(reply.usage.total_tokens, 8);
}

#[tokio::test]
async fn a_stream_cut_after_text_is_an_error_and_not_retried() {
    let server = MockServer::start().await;
    // Text, then the connection ends: no finish_reason, no [DONE].
    answer(&server, CHAT_PATH, sse_response(&[delta("partial")]), 1).await;
    let (provider, sleeper) = retrying(alchemyst(&server), 3);
    let mut stream = provider
        .chat_stream(&ChatRequest::new("s", "u"))
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        ChatChunk::Delta("partial".into())
    );
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind, LlmErrorKind::Transient);
    assert!(err.message.contains("[DONE]"), "{err}");
    assert!(stream.next().await.is_none());
    // The text was already out: the wrapper must not have retried.
    assert!(sleeper.delays().is_empty());
}

/// An OpenAI-style error answer.
fn error_answer(status: u16, message: &str, code: Option<&str>) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(openai_error(message, code))
}

/// Errors the retry wrapper must give up on at once: each is asked for once, classified with the
/// provider's own message, and never slept on.
#[tokio::test]
async fn permanent_errors_are_classified_with_the_providers_message_and_not_retried() {
    let context = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.";
    let cases = [
        (
            400,
            "Invalid value for 'temperature'",
            None,
            LlmErrorKind::Permanent,
        ),
        (401, "Invalid API key", None, LlmErrorKind::Permanent),
        (
            400,
            context,
            Some("context_length_exceeded"),
            LlmErrorKind::ContextTooLong,
        ),
    ];
    for (status, message, code, kind) in cases {
        let server = MockServer::start().await;
        answer(&server, CHAT_PATH, error_answer(status, message, code), 1).await;
        let (provider, sleeper) = retrying(alchemyst(&server), 5);
        let err = refused_at_once(&provider, &sleeper, kind, status, message).await;
        assert_eq!(err.provider, "alchemyst");
        assert_eq!(err.message, message);
    }
}

#[tokio::test]
async fn a_wrong_base_url_is_permanent() {
    // The server's 404 (plain text) for a path it does not serve.
    let server = MockServer::start().await;
    let provider = OpenAiConfig::openai(format!("{}/nowhere", server.uri()))
        .build()
        .unwrap();
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::Permanent);
    assert_eq!(err.status, Some(404));
}

#[tokio::test]
async fn malformed_bodies_are_invalid_responses() {
    let server = MockServer::start().await;
    let html = ResponseTemplate::new(200).set_body_string("<html>gateway says hi</html>");
    answer_first(&server, CHAT_PATH, html, 1).await;
    let no_choices = ok(json!({"choices": []}));
    answer(&server, CHAT_PATH, no_choices, 1).await;
    let provider = alchemyst(&server);
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::InvalidResponse);
    assert_eq!(err.provider, "alchemyst");
    chat_err_saying(&provider, LlmErrorKind::InvalidResponse, "no choices").await;
}

#[tokio::test]
async fn an_oversized_answer_is_refused_not_buffered() {
    let server = MockServer::start().await;
    // 33 MiB of whitespace followed by a valid completion: valid JSON, but over the 32 MiB cap.
    let mut body = " ".repeat(33 << 20);
    body.push_str(&openai_completion("x", "m").to_string());
    let huge = ResponseTemplate::new(200).set_body_raw(body, "application/json");
    answer(&server, CHAT_PATH, huge, 1).await;
    let err = chat_err(&alchemyst(&server)).await;
    assert_eq!(err.kind, LlmErrorKind::InvalidResponse);
    assert!(err.message.contains("larger than"), "{err}");
}

#[tokio::test]
async fn a_slow_server_times_out_as_transient() {
    let server = MockServer::start().await;
    let late = ok(openai_completion("late", "m")).set_delay(Duration::from_secs(3));
    answer(&server, CHAT_PATH, late, 2).await;
    let provider = OpenAiConfig::alchemyst(KEY)
        .with_base_url(format!("{}/api/v1/proxy/default", server.uri()))
        .with_http(HttpOptions::with_timeout(Duration::from_millis(200)))
        .build()
        .unwrap();
    let err = chat_err_saying(&provider, LlmErrorKind::Transient, "timed out").await;
    assert!(err.status.is_none());

    // Streaming requests time out waiting for the headers too.
    let err = provider
        .chat_stream(&ChatRequest::new("s", "u"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, LlmErrorKind::Transient);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // Bind a port, then free it, so nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let provider = OpenAiConfig::openai(format!("http://127.0.0.1:{port}/v1"))
        .build()
        .unwrap();
    chat_err_saying(&provider, LlmErrorKind::Transient, "connection failed").await;
}

#[tokio::test]
async fn rate_limit_honours_the_retry_after_header() {
    let server = MockServer::start().await;
    let limited = error_answer(
        429,
        "Rate limit reached for requests",
        Some("rate_limit_exceeded"),
    )
    .insert_header("retry-after", "2");
    answer_first(&server, CHAT_PATH, limited, 1).await;
    let fine = ok(openai_completion("fine", "m"));
    answer(&server, CHAT_PATH, fine, 1).await;
    let (provider, sleeper) = retrying(alchemyst(&server), 3);
    let reply = provider.chat(&ChatRequest::new("s", "u")).await.unwrap();
    assert_eq!(reply.text, "fine");
    assert_eq!(sleeper.delays(), [Duration::from_secs(2)]);
}

#[tokio::test]
async fn retries_stop_after_max_attempts_with_the_last_error() {
    let server = MockServer::start().await;
    answer(
        &server,
        CHAT_PATH,
        error_answer(504, "gateway timeout", None),
        4,
    )
    .await;
    let (provider, sleeper) = retrying(alchemyst(&server), 4);
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::Transient);
    assert_eq!(err.status, Some(504));
    assert_eq!(err.message, "gateway timeout");
    assert_eq!(
        sleeper.delays(),
        [
            Duration::from_millis(1),
            Duration::from_millis(2),
            Duration::from_millis(4)
        ]
    );
}

/// A raw HTTP/1.1 server on 127.0.0.1 that answers one request with a chunked event stream,
/// sends `events`, and then drops the connection without the final chunk.
async fn cutting_server(events: Vec<String>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut seen = Vec::new();
        // Read the request head and its (small) body.
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        for e in events {
            let data = format!("data: {e}\n\n");
            let chunk = format!("{:x}\r\n{data}\r\n", data.len());
            socket.write_all(chunk.as_bytes()).await.unwrap();
        }
        socket.flush().await.unwrap();
        // Gone mid-stream: no terminating 0-length chunk.
        drop(socket);
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_stream_cut_mid_answer_is_transient() {
    let base = cutting_server(vec![delta("{\"steps\":")]).await;
    let provider = OpenAiConfig::openai(base).build().unwrap();
    let mut stream = provider
        .chat_stream(&ChatRequest::new("s", "u"))
        .await
        .unwrap();
    match stream.next().await {
        Some(Ok(ChatChunk::Delta(d))) => assert_eq!(d, "{\"steps\":"),
        other => panic!("expected the first delta, got {other:?}"),
    }
    let err = match stream.next().await {
        Some(Err(e)) => e,
        other => panic!("expected the cut to be an error, got {other:?}"),
    };
    assert_eq!(err.kind, LlmErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    assert!(err.message.contains("connection was lost"), "{err}");
    assert!(stream.next().await.is_none());
}
