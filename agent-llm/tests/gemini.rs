//! Gemini's native generateContent / streamGenerateContent?alt=sse wire format against a real HTTP
//! server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_core::llm::collect_stream;
use agent_core::{ChatRequest, LlmErrorKind, LlmProvider, Message};
use agent_llm::{Gemini, GeminiConfig, GeminiSchemaField, HttpOptions};
use common::*;
use serde_json::{json, Value};
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "gem-test-key-abcdef";
const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const STREAM: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";

fn gemini(server: &MockServer) -> Gemini {
    GeminiConfig::new(KEY)
        .with_base_url(server.uri())
        .build()
        .unwrap()
}

/// Answers `failure` `failures` times, then `text`; a provider retrying up to 3 attempts gets
/// `text`. Returns the delays it slept.
async fn answered_after(
    server: &MockServer,
    failure: ResponseTemplate,
    failures: u64,
    text: &str,
) -> Vec<Duration> {
    answer_first(server, GENERATE, failure, failures).await;
    answer(server, GENERATE, ok(gemini_reply(text)), 1).await;
    let (provider, sleeper) = retrying(gemini(server), 3);
    let reply = provider.chat(&ChatRequest::new("s", "u")).await.unwrap();
    assert_eq!(reply.text, text);
    sleeper.delays()
}

#[tokio::test]
async fn request_shape_and_happy_path_with_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(GENERATE))
        .and(header("x-goog-api-key", KEY))
        .and(body_partial_json(json!({
            "systemInstruction": {"parts": [{"text": "You plan."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "hello"}]},
                {"role": "model", "parts": [{"text": "hi"}]},
                {"role": "user", "parts": [{"text": "plan it"}]}
            ],
            "generationConfig": {"temperature": 0.5, "maxOutputTokens": 512}
        })))
        .respond_with(ok(json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Let me think about this...", "thought": true},
                    {"text": "the "},
                    {"text": "plan"}
                ]},
                "finishReason": "STOP"
            }],
            "usageMetadata": {"promptTokenCount": 21, "candidatesTokenCount": 9,
                              "thoughtsTokenCount": 4, "totalTokenCount": 34},
            "modelVersion": "gemini-2.5-flash-001"
        })))
        .expect(1)
        .mount(&server)
        .await;

    let mut request = ChatRequest::new("You plan.", "hello")
        .with_temperature(0.5)
        .with_max_tokens(512);
    request.messages.push(Message::assistant("hi"));
    request.messages.push(Message::user("plan it"));
    let provider = gemini(&server);
    let reply = provider.chat(&request).await.unwrap();
    assert_eq!(reply.text, "the plan", "thought parts are skipped");
    assert_eq!(reply.provider, "gemini");
    assert_eq!(reply.model, "gemini-2.5-flash-001");
    assert_eq!(reply.usage.prompt_tokens, 21);
    assert_eq!(reply.usage.completion_tokens, 13);
    assert_eq!(reply.usage.total_tokens, 34);

    // No key in the URL, no JSON-mode fields without JSON mode.
    let requests = server.received_requests().await.unwrap();
    assert!(requests[0].url.query().is_none());
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert!(body["generationConfig"].get("responseMimeType").is_none());
    assert!(body["generationConfig"].get("responseSchema").is_none());
}

/// A schema of the kind agent-core generates (JSON Schema 2020-12); the provider knows nothing of
/// plans, it only carries whatever schema the request has.
fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "items": {"type": "array", "items": {"anyOf": [
                {"type": "object", "properties": {"kind": {"type": "string", "const": "a"},
                                                  "note": {"type": ["string", "null"]}},
                 "required": ["kind"], "additionalProperties": false}
            ]}},
            "title": {"type": "string"}
        },
        "required": ["items"]
    })
}

#[tokio::test]
async fn json_mode_sends_the_mime_type_and_no_schema_of_its_own() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1beta/models/gemini-2.0-flash:generateContent"))
        .and(body_partial_json(json!({
            "generationConfig": {"responseMimeType": "application/json"}
        })))
        .respond_with(ok(gemini_reply(r#"{"a":1}"#)))
        .expect(1)
        .mount(&server)
        .await;
    let provider = GeminiConfig::new(KEY)
        .with_base_url(format!("{}/", server.uri()))
        .with_model("models/gemini-2.0-flash")
        .build()
        .unwrap();
    let reply = provider
        .chat(&ChatRequest::new("sys", "plan").with_json_mode(true))
        .await
        .unwrap();
    assert_eq!(reply.text, r#"{"a":1}"#);
    let body = last_body(&server).await;
    let config = &body["generationConfig"];
    assert!(config.get("responseSchema").is_none(), "{config}");
    assert!(config.get("responseJsonSchema").is_none(), "{config}");
}

#[tokio::test]
async fn a_response_schema_goes_in_response_json_schema_unchanged() {
    let server = MockServer::start().await;
    let reply = ok(gemini_reply(r#"{"items":[]}"#));
    answer(&server, GENERATE, reply, 1).await;
    gemini(&server)
        .chat(&ChatRequest::new("sys", "go").with_response_schema(schema()))
        .await
        .unwrap();
    let body = last_body(&server).await;
    let config = &body["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseJsonSchema"], schema());
    assert!(config.get("responseSchema").is_none());
}

#[tokio::test]
async fn response_schema_field_gets_the_openapi_subset() {
    let server = MockServer::start().await;
    let reply = ok(gemini_reply(r#"{"items":[]}"#));
    answer(&server, GENERATE, reply, 1).await;
    GeminiConfig::new(KEY)
        .with_base_url(server.uri())
        .with_schema_field(GeminiSchemaField::ResponseSchema)
        .build()
        .unwrap()
        .chat(&ChatRequest::new("sys", "go").with_response_schema(schema()))
        .await
        .unwrap();
    let body = last_body(&server).await;
    let config = &body["generationConfig"];
    assert!(config.get("responseJsonSchema").is_none());
    assert_eq!(
        config["responseSchema"],
        json!({
            "type": "OBJECT",
            "properties": {
                "items": {"type": "ARRAY", "items": {"anyOf": [
                    {"type": "OBJECT",
                     "properties": {"kind": {"type": "STRING", "format": "enum", "enum": ["a"]},
                                    "note": {"type": "STRING", "nullable": true}},
                     "required": ["kind"]}
                ]}},
                "title": {"type": "STRING"}
            },
            "required": ["items"]
        })
    );
}

#[tokio::test]
async fn sse_stream_without_done_is_assembled() {
    let server = MockServer::start().await;
    let chunk = |text: &str| {
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}],
               "modelVersion": "gemini-2.5-flash"})
        .to_string()
    };
    let events = vec![
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hmm", "thought": true}]}}]}).to_string(),
        chunk("Hel"),
        chunk("lo"),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "!"}]}, "finishReason": "STOP"}],
               "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}})
        .to_string(),
    ];
    Mock::given(method("POST"))
        .and(path(STREAM))
        .and(query_param("alt", "sse"))
        .and(header("x-goog-api-key", KEY))
        .and(body_partial_json(
            json!({"systemInstruction": {"parts": [{"text": "sys"}]}}),
        ))
        .respond_with(sse_response(&events))
        .expect(1)
        .mount(&server)
        .await;
    let (deltas, reply) = stream_deltas(&gemini(&server), &ChatRequest::new("sys", "hi")).await;
    assert_eq!(deltas, ["Hel", "lo", "!"]);
    assert_eq!(reply.text, "Hello!");
    assert_eq!(reply.provider, "gemini");
    assert_eq!(reply.usage.total_tokens, 7);
    assert_eq!(reply.usage.prompt_tokens, 4);
}

#[tokio::test]
async fn blocked_prompt_is_blocked() {
    let server = MockServer::start().await;
    let blocked = json!({
        "promptFeedback": {"blockReason": "SAFETY",
                           "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}
    });
    answer(&server, GENERATE, ok(blocked), 1).await;
    let (provider, sleeper) = retrying(gemini(&server), 3);
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::Blocked);
    assert_eq!(err.provider, "gemini");
    assert!(err.message.contains("SAFETY"), "{err}");
    assert!(
        sleeper.delays().is_empty(),
        "a blocked prompt is not retried"
    );
}

#[tokio::test]
async fn blocked_answer_and_empty_candidates() {
    let server = MockServer::start().await;
    let blocked = json!({"candidates": [{"finishReason": "SAFETY", "index": 0}]});
    answer_first(&server, GENERATE, ok(blocked), 1).await;
    let empty = json!({
        "candidates": [],
        "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}
    });
    answer(&server, GENERATE, ok(empty), 1).await;
    let provider = gemini(&server);
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::Blocked);
    assert!(err.message.contains("finishReason SAFETY"), "{err}");
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::InvalidResponse);
    assert!(err.message.contains("no candidates"), "{err}");
}

#[tokio::test]
async fn blocked_prompt_in_a_stream() {
    let server = MockServer::start().await;
    let events = [json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}).to_string()];
    answer(&server, STREAM, sse_response(&events), 1).await;
    let err = gemini(&server)
        .chat_stream(&ChatRequest::new("s", "u"))
        .await
        .map(|s| collect_stream(s, |_| {}));
    let err = match err {
        Ok(fut) => fut.await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.kind, LlmErrorKind::Blocked);
    assert!(err.message.contains("PROHIBITED_CONTENT"));
}

/// A Gemini error answer with `status` (its HTTP status and `error.code`).
fn error_answer(status: u16, name: &str, message: &str, details: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(gemini_error(status, name, message, details))
}

#[tokio::test]
async fn rate_limit_with_retry_info_is_retried_after_the_asked_delay() {
    let server = MockServer::start().await;
    let details = json!([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                         "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
    ]);
    let limited = error_answer(
        429,
        "RESOURCE_EXHAUSTED",
        "Resource has been exhausted (e.g. check quota).",
        details,
    );
    // Backoff base 1 ms: a 1 s delay can only come from RetryInfo.
    let delays = answered_after(&server, limited, 1, "after the wait").await;
    assert_eq!(delays, [Duration::from_secs(1)]);
}

#[tokio::test]
async fn retry_info_is_capped_by_the_max_delay() {
    let server = MockServer::start().await;
    let details =
        json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]);
    let limited = error_answer(429, "RESOURCE_EXHAUSTED", "slow down", details);
    answer(&server, GENERATE, limited, 2).await;
    let policy = fast_policy(2).with_max_delay(Duration::from_secs(5));
    let (provider, sleeper) = retrying_with(gemini(&server), policy);
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::RateLimited);
    assert_eq!(err.status, Some(429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(37)));
    assert_eq!(err.message, "slow down");
    assert_eq!(sleeper.delays(), [Duration::from_secs(5)]);
}

/// Errors the retry wrapper must give up on at once: each is asked for once, classified, and
/// never slept on.
#[tokio::test]
async fn permanent_errors_are_classified_and_not_retried() {
    let per_day = json!([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                         "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    ]);
    let cases = [
        // A per-day quota: waiting seconds cannot help, another provider can.
        ("gemini-2.5-flash", 429, "RESOURCE_EXHAUSTED",
         "You exceeded your current quota, please check your plan and billing details.", per_day,
         LlmErrorKind::QuotaExhausted, "exceeded your current quota"),
        ("no-such-model", 404, "NOT_FOUND",
         "models/no-such-model is not found for API version v1beta", json!([]),
         LlmErrorKind::Permanent, "is not found"),
        ("gemini-2.5-flash", 400, "INVALID_ARGUMENT",
         "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
         json!([]), LlmErrorKind::ContextTooLong, "exceeds the maximum"),
    ];
    for (model, status, name, message, details, kind, needle) in cases {
        let server = MockServer::start().await;
        let route = format!("/v1beta/models/{model}:generateContent");
        answer(
            &server,
            &route,
            error_answer(status, name, message, details),
            1,
        )
        .await;
        let provider = GeminiConfig::new(KEY)
            .with_base_url(server.uri())
            .with_model(model)
            .build()
            .unwrap();
        let (provider, sleeper) = retrying(provider, 4);
        let err = refused_at_once(&provider, &sleeper, kind, status, name).await;
        assert!(err.message.contains(needle), "{name}: {err}");
    }
}

#[tokio::test]
async fn unavailable_is_retried_with_backoff_then_answered() {
    let server = MockServer::start().await;
    let unavailable = error_answer(
        503,
        "UNAVAILABLE",
        "The model is overloaded. Please try again later.",
        json!([]),
    );
    let delays = answered_after(&server, unavailable, 2, "third time lucky").await;
    // Exponential backoff from a 1 ms base, no jitter.
    assert_eq!(delays, [Duration::from_millis(1), Duration::from_millis(2)]);
}

#[tokio::test]
async fn malformed_body_and_timeout() {
    let server = MockServer::start().await;
    let malformed = ResponseTemplate::new(200).set_body_string("{\"candidates\": [ {");
    answer_first(&server, GENERATE, malformed, 1).await;
    let late = ok(gemini_reply("late")).set_delay(Duration::from_secs(3));
    answer(&server, GENERATE, late, 1).await;
    let provider = GeminiConfig::new(KEY)
        .with_base_url(server.uri())
        .with_http(HttpOptions::with_timeout(Duration::from_millis(200)))
        .build()
        .unwrap();
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::InvalidResponse);
    let err = chat_err(&provider).await;
    assert_eq!(err.kind, LlmErrorKind::Transient);
    assert!(err.message.contains("timed out"), "{err}");
}
