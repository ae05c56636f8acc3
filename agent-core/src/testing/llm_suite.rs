//! The conformance suite every [`LlmProvider`] must pass.

use std::sync::Arc;

use futures::StreamExt;

use crate::llm::{collect_stream, ChatChunk, ChatRequest, LlmProvider, Message};

/// Checks an [`LlmProvider`] whose backend answers every request with the text `expected`
/// (point it at a test server scripted that way).
///
/// Checks: a non-empty name; `chat` returns `expected` and names the provider and model, with
/// consistent token usage; JSON mode and multi-turn requests are accepted; `chat_stream` yields
/// deltas that add up to `expected` and then exactly one `Done` naming the provider, and nothing
/// after it; [`collect_stream`] gives the same answer as `chat`.
///
/// Panics with a message naming the failed check.
pub async fn llm_suite(provider: Arc<dyn LlmProvider>, expected: &str) {
    let name = provider.name().to_string();
    assert!(
        !name.is_empty(),
        "llm_suite: the provider has an empty name"
    );

    let request = ChatRequest::new("You are a test.", "Say the expected text.");
    let response = provider
        .chat(&request)
        .await
        .unwrap_or_else(|e| panic!("llm_suite: chat failed: {e}"));
    assert_eq!(response.text, expected, "llm_suite: chat text");
    assert_eq!(
        response.provider, name,
        "llm_suite: the response names another provider"
    );
    assert!(
        !response.model.is_empty(),
        "llm_suite: the response names no model"
    );
    let usage = response.usage;
    assert!(
        usage.total_tokens == 0
            || usage.total_tokens >= usage.prompt_tokens.max(usage.completion_tokens),
        "llm_suite: inconsistent usage {usage:?}"
    );

    let json = request.clone().with_json_mode(true).with_temperature(0.0);
    let response = provider
        .chat(&json)
        .await
        .unwrap_or_else(|e| panic!("llm_suite: chat in JSON mode failed: {e}"));
    assert_eq!(response.text, expected, "llm_suite: JSON-mode chat text");

    let mut turns = request.clone().with_max_tokens(256);
    turns
        .messages
        .push(Message::assistant("An earlier answer."));
    turns.messages.push(Message::user("And again."));
    let response = provider
        .chat(&turns)
        .await
        .unwrap_or_else(|e| panic!("llm_suite: a multi-turn chat failed: {e}"));
    assert_eq!(response.text, expected, "llm_suite: multi-turn chat text");

    let mut stream = provider
        .chat_stream(&request)
        .await
        .unwrap_or_else(|e| panic!("llm_suite: chat_stream failed: {e}"));
    let mut text = String::new();
    let mut deltas = 0;
    let mut done = None;
    while let Some(chunk) = stream.next().await {
        match chunk.unwrap_or_else(|e| panic!("llm_suite: the stream failed: {e}")) {
            ChatChunk::Delta(d) => {
                assert!(done.is_none(), "llm_suite: a delta after Done");
                deltas += 1;
                text.push_str(&d);
            }
            ChatChunk::Done { provider, .. } => {
                assert!(done.is_none(), "llm_suite: two Done chunks");
                done = Some(provider);
            }
        }
    }
    assert!(deltas > 0, "llm_suite: the stream had no delta");
    assert_eq!(text, expected, "llm_suite: streamed text");
    assert_eq!(
        done.as_deref(),
        Some(name.as_str()),
        "llm_suite: the stream must end with one Done naming the provider"
    );

    let stream = provider
        .chat_stream(&request)
        .await
        .unwrap_or_else(|e| panic!("llm_suite: chat_stream failed: {e}"));
    let mut seen = String::new();
    let collected = collect_stream(stream, |d| seen.push_str(d))
        .await
        .unwrap_or_else(|e| panic!("llm_suite: collect_stream failed: {e}"));
    assert_eq!(collected.text, expected, "llm_suite: collected text");
    assert_eq!(seen, expected, "llm_suite: collect_stream's deltas");
    assert_eq!(collected.provider, name, "llm_suite: collected provider");
}
