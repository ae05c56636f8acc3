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

use agent_core::llm::collect_stream;
use agent_core::{ChatRequest, LlmProvider, Plan};

const SYSTEM_PROMPT: &str = r#"You are a planning agent. You turn a task into steps that run, in order, in an isolated Linux sandbox (Debian, bash, python3) whose working directory is /workspace. Every file the task produces must be written under /workspace.

Respond with exactly one JSON object and nothing else, of this shape:
{"steps":[{"type":"shell","command":"…","description":"…"},{"type":"python","code":"…","description":"…"},{"type":"write_file","path":"…","content":"…","description":"…"}],"summary":"…"}

- "shell" runs "command" with bash -c; "python" runs "code" with python3; "write_file" writes "content" to "path" (relative to /workspace).
- Keep the plan short; each step should do one thing and succeed on its own."#;

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

    let request = ChatRequest::new(SYSTEM_PROMPT, task)
        .with_json_mode(true)
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

/// The plan in a reply: the outermost JSON object, tolerating code fences or prose around it.
fn parse_plan(text: &str) -> Result<Plan, String> {
    let start = text.find('{').ok_or("no JSON object")?;
    let end = text.rfind('}').ok_or("no JSON object")?;
    if end < start {
        return Err("no JSON object".into());
    }
    serde_json::from_str(&text[start..=end]).map_err(|e| e.to_string())
}
