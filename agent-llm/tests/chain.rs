//! The provider chain: `LlmConfig` from an explicit variable map, Retry inside Fallback, and
//! streaming through both — against real HTTP servers on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agent_core::llm::collect_stream;
use agent_core::{ChatRequest, LlmErrorKind, LlmProvider};
use agent_llm::{
    Fallback, LlmConfig, OpenAiConfig, ProviderKind, ALCHEMYST_DEFAULT_BASE_URL,
    ALCHEMYST_DEFAULT_MODEL, GEMINI_DEFAULT_BASE_URL, GEMINI_DEFAULT_MODEL,
};
use common::*;
use serde_json::json;
use wiremock::{MockServer, ResponseTemplate};

const ALC_PATH: &str = "/api/v1/proxy/default/chat/completions";
const GEM_PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const GEM_STREAM: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Alchemyst and Gemini, each on its own mock server.
fn two_provider_config(alchemyst: &MockServer, gemini: &MockServer) -> LlmConfig {
    LlmConfig::from_vars(vars(&[
        ("ALCHEMYST_API_KEY", "alc-key-000111".into()),
        (
            "ALCHEMYST_BASE_URL",
            format!("{}/api/v1/proxy/default", alchemyst.uri()),
        ),
        ("GEMINI_API_KEY", "gem-key-222333".into()),
        ("GEMINI_BASE_URL", gemini.uri()),
    ]))
    .unwrap()
    .with_retry(fast_policy(3))
}

/// The two mock servers [`two_provider_config`] points at.
async fn two_servers() -> (MockServer, MockServer) {
    (MockServer::start().await, MockServer::start().await)
}

/// The value of header `name` on each request `server` received, in order.
async fn header_values(server: &MockServer, name: &str) -> Vec<String> {
    let requests = server.received_requests().await.unwrap();
    requests
        .iter()
        .map(|r| r.headers[name].to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn failing_alchemyst_falls_back_to_gemini_after_its_retries() {
    let (alchemyst, gemini) = two_servers().await;
    let unavailable = ResponseTemplate::new(503)
        .set_body_json(json!({"error": {"message": "upstream unavailable"}}));
    // The first attempt and two retries.
    answer(&alchemyst, ALC_PATH, unavailable, 3).await;
    answer(&gemini, GEM_PATH, ok(gemini_reply("from gemini")), 1).await;

    let config = two_provider_config(&alchemyst, &gemini);
    assert_eq!(config.configured(), ["alchemyst", "gemini"]);
    let chain = config.build().unwrap();
    assert_eq!(chain.provider_names(), ["alchemyst", "gemini"]);
    let reply = chain.chat(&ChatRequest::new("s", "u")).await.unwrap();
    assert_eq!(reply.text, "from gemini");
    assert_eq!(reply.provider, "gemini", "the answer names who answered");
    assert_eq!(reply.usage.total_tokens, 30);
    // Each provider was sent its own key.
    assert_eq!(
        header_values(&alchemyst, "authorization").await,
        ["Bearer alc-key-000111"; 3]
    );
    assert_eq!(
        header_values(&gemini, "x-goog-api-key").await,
        ["gem-key-222333"]
    );
}

#[tokio::test]
async fn streaming_falls_back_before_the_first_delta() {
    let (alchemyst, gemini) = two_servers().await;
    let bad_gateway = ResponseTemplate::new(502).set_body_string("bad gateway");
    answer(&alchemyst, ALC_PATH, bad_gateway, 3).await;
    let last = json!({"candidates": [{"content": {"parts": [{"text": "streamed"}]}, "finishReason": "STOP"}],
                      "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1, "totalTokenCount": 3}});
    answer(&gemini, GEM_STREAM, sse_response(&[last.to_string()]), 1).await;
    let chain = two_provider_config(&alchemyst, &gemini).build().unwrap();
    let stream = chain
        .chat_stream(&ChatRequest::new("s", "u"))
        .await
        .unwrap();
    let reply = collect_stream(stream, |_| {}).await.unwrap();
    assert_eq!(reply.text, "streamed");
    assert_eq!(reply.provider, "gemini");
    assert_eq!(reply.usage.total_tokens, 3);
}

#[tokio::test]
async fn streaming_retry_reopens_after_a_503() {
    let server = MockServer::start().await;
    answer_first(
        &server,
        "/v1/chat/completions",
        ResponseTemplate::new(503),
        1,
    )
    .await;
    let events = [
        json!({"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}).to_string(),
        "[DONE]".to_owned(),
    ];
    answer(&server, "/v1/chat/completions", sse_response(&events), 1).await;
    let openai = OpenAiConfig::openai(format!("{}/v1", server.uri()))
        .build()
        .unwrap();
    let (provider, sleeper) = retrying(openai, 3);
    let (_, reply) = stream_deltas(&provider, &ChatRequest::new("s", "u")).await;
    assert_eq!(reply.text, "ok");
    assert_eq!(reply.provider, "openai");
    assert_eq!(sleeper.delays().len(), 1);
}

#[tokio::test]
async fn all_failing_lists_every_failure() {
    let (alchemyst, gemini) = two_servers().await;
    let bad_key =
        ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "bad key"}}));
    answer(&alchemyst, ALC_PATH, bad_key, 1).await;
    let quota = ResponseTemplate::new(429).set_body_json(gemini_error(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for metric: requests per day",
        json!([]),
    ));
    answer(&gemini, GEM_PATH, quota, 1).await;
    let chain = two_provider_config(&alchemyst, &gemini).build().unwrap();
    let err = chain.chat(&ChatRequest::new("s", "u")).await.unwrap_err();
    assert_eq!(
        err.kind,
        LlmErrorKind::QuotaExhausted,
        "the last failure's kind"
    );
    assert_eq!(err.status, Some(429));
    assert!(
        err.message
            .contains("alchemyst request refused (HTTP 401): bad key"),
        "{err}"
    );
    assert!(
        err.message.contains("gemini quota exhausted (HTTP 429)"),
        "{err}"
    );
    assert_eq!(err.failures.len(), 2);
    assert_eq!(err.failures[0].provider, "alchemyst");
    assert_eq!(err.failures[1].provider, "gemini");
    // Each failure once: no provider, kind or status repeated around the list.
    let text = err.to_string();
    assert!(
        text.starts_with("all 2 LLM providers failed: alchemyst request refused (HTTP 401): bad key; gemini quota exhausted (HTTP 429)"),
        "{text}"
    );
    assert_eq!(text.matches("gemini").count(), 1, "{text}");
    assert_eq!(text.matches("alchemyst").count(), 1, "{text}");
}

#[tokio::test]
async fn a_chain_of_one_gives_back_its_error_unchanged() {
    let (logs, _guard) = capture_logs();
    let server = MockServer::start().await;
    let bad_field =
        ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "bad field"}}));
    answer(&server, "/chat/completions", bad_field, 2).await;
    let chain = Fallback::new(vec![Arc::new(
        OpenAiConfig::openai(server.uri()).build().unwrap(),
    )]);
    for streamed in [false, true] {
        let err = if streamed {
            chain
                .chat_stream(&ChatRequest::new("s", "u"))
                .await
                .err()
                .unwrap()
        } else {
            chain.chat(&ChatRequest::new("s", "u")).await.unwrap_err()
        };
        assert_eq!(
            err.to_string(),
            "openai request refused (HTTP 400): bad field"
        );
        assert!(err.failures.is_empty());
        assert_eq!(err.provider, "openai");
    }
    // Nothing to fall back to, so no "falling back" line.
    let logs = logs.contents();
    assert!(!logs.contains("falling back"), "{logs}");
}

#[tokio::test]
async fn context_too_long_does_not_fall_back() {
    let (alchemyst, gemini) = two_servers().await;
    let too_long = ResponseTemplate::new(400).set_body_json(
        json!({"error": {"message": "too long", "code": "context_length_exceeded"}}),
    );
    answer(&alchemyst, ALC_PATH, too_long, 1).await;
    answer(&gemini, GEM_PATH, ok(gemini_reply("never")), 0).await;
    let chain = two_provider_config(&alchemyst, &gemini).build().unwrap();
    let err = chain.chat(&ChatRequest::new("s", "u")).await.unwrap_err();
    assert_eq!(err.kind, LlmErrorKind::ContextTooLong);
    assert_eq!(err.provider, "alchemyst");
}

#[tokio::test]
async fn order_is_overridable() {
    let (alchemyst, gemini) = two_servers().await;
    answer(&alchemyst, ALC_PATH, ok(openai_completion("alc", "m")), 0).await;
    answer(&gemini, GEM_PATH, ok(gemini_reply("gem")), 1).await;
    let config = LlmConfig::from_vars(vars(&[
        ("ALCHEMYST_AI_API_KEY", "alc-key-000111".into()),
        (
            "ALCHEMYST_BASE_URL",
            format!("{}/api/v1/proxy/default", alchemyst.uri()),
        ),
        ("GEMINI_API_KEY", "gem-key-222333".into()),
        ("GEMINI_BASE_URL", gemini.uri()),
        ("AGENT_LLM_ORDER", " Gemini , alchemyst ".into()),
    ]))
    .unwrap();
    assert_eq!(config.configured(), ["gemini", "alchemyst"]);
    let reply = config
        .build()
        .unwrap()
        .chat(&ChatRequest::new("s", "u"))
        .await
        .unwrap();
    assert_eq!(reply.provider, "gemini");
}

#[test]
fn nothing_configured_names_the_variables() {
    let config = LlmConfig::from_vars(vars(&[
        ("OPENAI_MODEL", "x".into()),
        ("GEMINI_API_KEY", "  ".into()),
    ]))
    .unwrap();
    assert!(config.configured().is_empty());
    let err = config.build().unwrap_err();
    assert_eq!(err.kind, LlmErrorKind::NotConfigured);
    for var in [
        "ALCHEMYST_API_KEY",
        "ALCHEMYST_AI_API_KEY",
        "GEMINI_API_KEY",
        "OPENAI_BASE_URL",
    ] {
        assert!(err.to_string().contains(var), "{err} should name {var}");
    }

    // An order naming only unconfigured providers says so.
    let config = LlmConfig::from_vars(vars(&[
        ("AGENT_LLM_ORDER", "openai".into()),
        ("GEMINI_API_KEY", "k-123456".into()),
    ]))
    .unwrap();
    let err = config.build().unwrap_err();
    assert_eq!(err.kind, LlmErrorKind::NotConfigured);
    assert!(err.message.contains("AGENT_LLM_ORDER (openai)"), "{err}");
}

#[test]
fn defaults_and_invalid_values() {
    let config = LlmConfig::from_vars(vars(&[
        ("ALCHEMYST_API_KEY", "a-123456".into()),
        ("GEMINI_API_KEY", "g-123456".into()),
        ("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1".into()),
        ("OPENAI_MODEL", "llama3.2".into()),
        ("AGENT_LLM_TIMEOUT_SECS", "7.5".into()),
        ("AGENT_LLM_MAX_ATTEMPTS", "5".into()),
    ]))
    .unwrap();
    assert_eq!(config.configured(), ["alchemyst", "gemini", "openai"]);
    let alc = config.alchemyst.as_ref().unwrap();
    assert_eq!(alc.base_url, ALCHEMYST_DEFAULT_BASE_URL);
    assert_eq!(alc.model, ALCHEMYST_DEFAULT_MODEL);
    assert_eq!(alc.http.timeout, std::time::Duration::from_millis(7500));
    let gem = config.gemini.as_ref().unwrap();
    assert_eq!(gem.base_url, GEMINI_DEFAULT_BASE_URL);
    assert_eq!(gem.model, GEMINI_DEFAULT_MODEL);
    let oa = config.openai.as_ref().unwrap();
    assert!(oa.api_key.is_none());
    assert_eq!(oa.model, "llama3.2");
    assert_eq!(config.retry.max_attempts, 5);

    for (var, value) in [
        ("AGENT_LLM_ORDER", "gemini,claude"),
        ("AGENT_LLM_TIMEOUT_SECS", "soon"),
        // Too large for a `Duration`: an error, not a panic.
        ("AGENT_LLM_TIMEOUT_SECS", "1e30"),
        ("AGENT_LLM_TIMEOUT_SECS", "-1"),
        ("AGENT_LLM_TIMEOUT_SECS", "0"),
        ("AGENT_LLM_MAX_ATTEMPTS", "0"),
    ] {
        let err = LlmConfig::from_vars(vars(&[(var, value.into())])).unwrap_err();
        assert_eq!(err.kind, LlmErrorKind::NotConfigured);
        assert!(err.message.contains(var), "{err}");
    }

    let config = LlmConfig::from_vars(vars(&[("GEMINI_API_KEY", "g-123456".into())]))
        .unwrap()
        .with_order(vec![ProviderKind::OpenAi, ProviderKind::Gemini]);
    assert_eq!(config.configured(), ["gemini"]);
}

#[tokio::test]
async fn empty_fallback_is_not_configured() {
    let chain = Fallback::new(Vec::new());
    let err = chain.chat(&ChatRequest::new("s", "u")).await.unwrap_err();
    assert_eq!(err.kind, LlmErrorKind::NotConfigured);
}
