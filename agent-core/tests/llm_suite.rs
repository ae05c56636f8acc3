//! The LLM conformance suite against a provider that implements only `chat` (so the trait's
//! default streaming is what is checked), and a check that the suite catches a broken provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agent_core::testing::llm_suite;
use agent_core::{ChatRequest, ChatResponse, LlmError, LlmProvider, TokenUsage};
use async_trait::async_trait;

struct Echo {
    answer: &'static str,
    name_in_response: &'static str,
}

#[async_trait]
impl LlmProvider for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    async fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, LlmError> {
        Ok(ChatResponse {
            text: self.answer.to_string(),
            provider: self.name_in_response.to_string(),
            model: "echo-1".into(),
            usage: TokenUsage {
                prompt_tokens: 3,
                completion_tokens: 2,
                total_tokens: 5,
            },
        })
    }
}

#[tokio::test]
async fn a_chat_only_provider_passes_with_the_default_stream() {
    llm_suite(
        Arc::new(Echo {
            answer: "{\"steps\":[]}",
            name_in_response: "echo",
        }),
        "{\"steps\":[]}",
    )
    .await;
}

#[tokio::test]
#[should_panic(expected = "names another provider")]
async fn the_suite_catches_a_provider_that_misnames_itself() {
    llm_suite(
        Arc::new(Echo {
            answer: "x",
            name_in_response: "someone-else",
        }),
        "x",
    )
    .await;
}
