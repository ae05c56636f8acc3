//! Every provider of this crate (and the retry/fallback wrappers around them) passes agent-core's
//! LLM conformance suite, against scripted servers on 127.0.0.1 speaking each wire format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agent_core::testing::llm_suite;
use agent_core::LlmProvider;
use agent_llm::{Fallback, GeminiConfig, OpenAiConfig, Retry, RetryPolicy};
use serde_json::json;
use wiremock::matchers::{body_partial_json, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The answer every scripted server gives: a plan, with characters that need escaping.
const ANSWER: &str = "{\"steps\":[{\"type\":\"shell\",\"command\":\"echo \\\"héllo\\\" > a.txt\"}],\"summary\":\"ok\"}";

fn sse(events: &[serde_json::Value], done: bool) -> ResponseTemplate {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// An OpenAI-compatible server answering `ANSWER`, plain or streamed in three pieces.
async fn openai_server() -> MockServer {
    let server = MockServer::start().await;
    let (a, rest) = ANSWER.split_at(10);
    let (b, c) = rest.split_at(20);
    let chunk = |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}}]});
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(sse(
            &[
                chunk(a),
                chunk(b),
                chunk(c),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}}),
            ],
            true,
        ))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "x", "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// A Gemini server answering `ANSWER`, plain or streamed (with a thought part to skip).
async fn gemini_server() -> MockServer {
    let server = MockServer::start().await;
    let (a, b) = ANSWER.split_at(15);
    let usage = json!({"promptTokenCount": 7, "candidatesTokenCount": 9, "totalTokenCount": 16});
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1beta/models/[^/]+:streamGenerateContent$"))
        .respond_with(sse(
            &[
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking…", "thought": true}]}}]}),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": a}]}}]}),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": b}]}, "finishReason": "STOP"}], "usageMetadata": usage}),
            ],
            false,
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1beta/models/[^/]+:generateContent$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": ANSWER}]}, "finishReason": "STOP"}],
            "usageMetadata": usage
        })))
        .mount(&server)
        .await;
    server
}

/// The Gemini provider, pointed at `server`.
fn gemini(server: &MockServer) -> Arc<dyn LlmProvider> {
    Arc::new(
        GeminiConfig::new("conformance-key")
            .with_base_url(server.uri())
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn openai_compatible_and_alchemyst_pass_the_llm_suite() {
    let server = openai_server().await;
    let base_url = format!("{}/v1", server.uri());
    let configs = [
        OpenAiConfig::openai(&base_url).with_model("test-model"),
        OpenAiConfig::alchemyst("conformance-key").with_base_url(&base_url),
    ];
    for config in configs {
        llm_suite(Arc::new(config.build().unwrap()), ANSWER).await;
    }
}

#[tokio::test]
async fn gemini_passes_the_llm_suite() {
    let server = gemini_server().await;
    llm_suite(gemini(&server), ANSWER).await;
}

#[tokio::test]
async fn the_wrappers_pass_the_llm_suite() {
    let server = gemini_server().await;
    let gemini = gemini(&server);
    llm_suite(
        Arc::new(Retry::with_policy(gemini.clone(), RetryPolicy::default())),
        ANSWER,
    )
    .await;
    // A chain of one: the answer names the provider that gave it, which is the chain's name.
    llm_suite(Arc::new(Fallback::new(vec![gemini])), ANSWER).await;
}
