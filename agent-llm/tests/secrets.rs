//! API keys never appear in error text, `Debug` output or log lines — even when a server echoes
//! the key back in its error message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_core::{ChatRequest, LlmError, LlmProvider};
use agent_llm::LlmConfig;
use common::*;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const ALC_KEY: &str = "sk-alc-DISTINCTIVE-7f3a9c1e55";
const GEM_KEY: &str = "AIza-gem-DISTINCTIVE-0b8d2e44";
const OAI_KEY: &str = "sk-oai-DISTINCTIVE-91c4aa07f2";
const KEYS: [&str; 3] = [ALC_KEY, GEM_KEY, OAI_KEY];

/// Everything an error can print: Display, Debug, and each source's Display and Debug.
fn error_text(err: &LlmError) -> String {
    let mut out = format!("{err}\n{err:?}\n");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        out.push_str(&format!("{cause}\n{cause:?}\n"));
        source = cause.source();
    }
    out
}

fn assert_no_key(what: &str, text: &str) {
    for key in KEYS {
        assert!(!text.contains(key), "{what} contains a key:\n{text}");
    }
}

/// Answers 401 with a message that quotes the key the request carried (as OpenAI does).
fn echo_key(request: &Request) -> ResponseTemplate {
    let auth = request
        .headers
        .get("authorization")
        .or_else(|| request.headers.get("x-goog-api-key"))
        .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned())
        .unwrap_or_default();
    ResponseTemplate::new(401).set_body_json(json!({
        "error": {"message": format!("Incorrect API key provided: {auth}. Check your key."), "code": "invalid_api_key"}
    }))
}

#[tokio::test]
async fn keys_appear_in_no_error_debug_output_or_log_line() {
    let (logs, _guard) = capture_logs();
    let alchemyst = MockServer::start().await;
    let gemini = MockServer::start().await;
    let openai = MockServer::start().await;

    // Alchemyst: 503 (retried, logged), then 401 echoing the key.
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(
            ResponseTemplate::new(503).set_body_json(json!({"error": {"message": "busy"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&alchemyst)
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(echo_key)
        .mount(&alchemyst)
        .await;
    // Gemini: echoes the key in a 401 as well, for the non-streamed call; the stream answers.
    Mock::given(method("POST"))
        .and(path("/v1beta/models/gemini-2.5-flash:generateContent"))
        .respond_with(echo_key)
        .mount(&gemini)
        .await;
    let last =
        json!({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]});
    Mock::given(method("POST"))
        .and(path(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        ))
        .respond_with(sse_response(&[last.to_string()]))
        .mount(&gemini)
        .await;
    // OpenAI-compatible: answers, slowly enough for a timeout on the first call.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(openai_completion("ok", "m")))
        .mount(&openai)
        .await;

    let config = LlmConfig::from_vars([
        ("ALCHEMYST_API_KEY", ALC_KEY.to_owned()),
        ("ALCHEMYST_BASE_URL", alchemyst.uri()),
        ("GEMINI_API_KEY", GEM_KEY.to_owned()),
        ("GEMINI_BASE_URL", gemini.uri()),
        ("OPENAI_BASE_URL", format!("{}/v1", openai.uri())),
        ("OPENAI_API_KEY", OAI_KEY.to_owned()),
        ("AGENT_LLM_TIMEOUT_SECS", "5".to_owned()),
    ])
    .unwrap()
    .with_retry(fast_policy(2));
    assert_no_key("LlmConfig Debug", &format!("{config:?}"));
    let chain = config.build().unwrap();
    assert_no_key("Fallback Debug", &format!("{chain:?}"));

    // Each provider alone, so each one's error is seen.
    let providers = chain.providers().to_vec();
    let alc_err = chat_err(&*providers[0]).await;
    assert_eq!(alc_err.status, Some(401));
    assert!(
        alc_err
            .message
            .contains("Incorrect API key provided: [REDACTED]"),
        "{alc_err}"
    );
    assert_no_key("alchemyst error", &error_text(&alc_err));
    let gem_err = chat_err(&*providers[1]).await;
    assert!(gem_err.message.contains("[REDACTED]"), "{gem_err}");
    assert_no_key("gemini error", &error_text(&gem_err));
    let (_, gem_stream) = stream_deltas(&*providers[1], &ChatRequest::new("s", "u")).await;
    assert_eq!(gem_stream.text, "hi");

    // The whole chain: alchemyst and gemini fail with echoed keys, openai answers.
    let reply = chain.chat(&ChatRequest::new("s", "u")).await.unwrap();
    assert_eq!(reply.provider, "openai");

    // A timeout and a connection failure (their messages include reqwest's text and the URL).
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&slow)
        .await;
    let timeout_err = agent_llm::OpenAiConfig::openai(slow.uri())
        .with_api_key(OAI_KEY)
        .with_http(agent_llm::HttpOptions::with_timeout(Duration::from_millis(
            100,
        )))
        .build()
        .unwrap()
        .chat(&ChatRequest::new("s", "u"))
        .await
        .unwrap_err();
    assert_no_key("timeout error", &error_text(&timeout_err));

    // The whole chain failing: the combined error and its sources.
    let all_fail = LlmConfig::from_vars([
        ("ALCHEMYST_API_KEY", ALC_KEY.to_owned()),
        ("ALCHEMYST_BASE_URL", alchemyst.uri()),
        ("GEMINI_API_KEY", GEM_KEY.to_owned()),
        ("GEMINI_BASE_URL", gemini.uri()),
    ])
    .unwrap()
    .with_retry(fast_policy(2))
    .build()
    .unwrap();
    let combined = chat_err(&all_fail).await;
    assert_no_key("combined error", &error_text(&combined));

    // The keys did reach the servers, in the headers.
    let alc_requests = alchemyst.received_requests().await.unwrap();
    assert_eq!(
        alc_requests[0]
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("Bearer {ALC_KEY}")
    );
    let gem_requests = gemini.received_requests().await.unwrap();
    assert_eq!(
        gem_requests[0]
            .headers
            .get("x-goog-api-key")
            .unwrap()
            .to_str()
            .unwrap(),
        GEM_KEY
    );

    let logged = logs.contents();
    assert!(
        logged.contains("LLM request"),
        "the capture saw the debug lines:\n{logged}"
    );
    assert!(
        logged.contains("retrying"),
        "the capture saw the retry warning:\n{logged}"
    );
    assert!(
        logged.contains("falling back"),
        "the capture saw the fallback warning:\n{logged}"
    );
    assert_no_key("the logs", &logged);
}
