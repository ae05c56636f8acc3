//! Asks the configured LLM provider chain for a plan and prints it.
//!
//! ```sh
//! GEMINI_API_KEY=… cargo run -p agent-examples --example plan -- "count the lines of /etc/passwd"
//! OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OPENAI_MODEL=llama3.2 \
//!     cargo run -p agent-examples --example plan -- "write a hello-world script"
//! ```
//!
//! The answer streams to stderr as it arrives; the parsed plan is printed to stdout as JSON,
//! followed by who answered and the token usage. With no provider configured it prints which
//! variables to set and exits with status 2.

use std::io::Write;
use std::process::ExitCode;

use agent_core::agent::plan::{parse_plan, planning_prompt, system_prompt};
use agent_core::llm::collect_stream;
use agent_core::{ChatRequest, LlmProvider};

#[tokio::main]
async fn main() -> ExitCode {
    let task = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if task.trim().is_empty() {
        eprintln!("usage: plan <task>   (e.g. plan \"count the lines of /etc/passwd\")");
        return ExitCode::from(2);
    }

    let chain = match agent_llm::from_env() {
        Ok(chain) => chain,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    eprintln!("providers: {}", chain.provider_names().join(" → "));

    // The same system prompt, response schema and parser the agent uses.
    let request = ChatRequest::new(system_prompt(), planning_prompt(&task, None))
        .with_response_schema(agent_core::schema::plan_schema().clone())
        .with_temperature(0.2);
    let reply = match chain.chat_stream(&request).await {
        Ok(stream) => {
            collect_stream(stream, |delta| {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(delta.as_bytes());
                let _ = err.flush();
            })
            .await
        }
        Err(err) => Err(err),
    };
    eprintln!();
    let reply = match reply {
        Ok(reply) => reply,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };

    match parse_plan(&reply.text) {
        Ok(plan) => match serde_json::to_string_pretty(&plan) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("error: cannot print the plan: {err}");
                return ExitCode::FAILURE;
            }
        },
        Err(err) => {
            eprintln!(
                "error: the answer is not a plan ({err}); it was:\n{}",
                reply.text
            );
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "answered by {} ({}); tokens: {} prompt + {} completion = {}",
        reply.provider,
        reply.model,
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
        reply.usage.total_tokens
    );
    ExitCode::SUCCESS
}
