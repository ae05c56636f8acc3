//! Embeds containerized-agent as a library: runs explicit steps in a hardened Docker sandbox
//! through the job manager, prints the output live, and tells where the ZIP is.
//!
//! ```sh
//! scripts/setup-host.sh        # Docker engine + the agent image
//! cargo run -p agent-examples --example run_steps
//! ```
//!
//! No LLM is needed: a job with explicit steps skips planning. For a prompt, add
//! `.llm(Arc::new(agent_llm::from_env()?))` to the builder and submit `JobSpec::from_prompt(…)`.

use std::sync::Arc;
use std::time::Duration;

use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::{EventKind, JobSpec, Step};
use agent_docker::DockerExecutor;
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The Docker executor: one hardened container per job (network none, read-only root, …).
    let executor = DockerExecutor::from_env().await?;
    let output_dir = std::env::temp_dir().join("agent-example");
    let manager = JobManager::builder(Arc::new(executor), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig {
            artifact_dir: output_dir.clone(),
            ..JobManagerConfig::default()
        })
        .start()
        .await?;

    let spec = JobSpec::from_steps(vec![
        Step::write_file(
            "fib.py",
            "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint([fib(i) for i in range(10)])\n",
        )
        .with_description("write a script"),
        Step::shell("python3 fib.py | tee fib.txt").with_description("run it"),
        Step::python("import os; print(sorted(os.listdir('.')))"),
    ])
    .with_job_timeout(Duration::from_secs(120));
    let id = manager.submit(spec).await?;
    println!("job {id} queued");

    // Live events: replayed from the start, then followed until the final status.
    let mut events = manager.subscribe(id, 0).await?;
    while let Some(event) = events.next().await {
        match event?.kind {
            EventKind::StepStarted { index, step } => {
                println!(
                    "── step {index}: {}",
                    step.description.as_deref().unwrap_or(step.kind.type_name())
                )
            }
            EventKind::Output { text, .. } => print!("{text}"),
            EventKind::StepFinished { index, result } => println!(
                "── step {index} exited {} in {} ms",
                result.exit_code,
                result.duration.as_millis()
            ),
            EventKind::Status { status, error } => {
                println!(
                    "status: {status}{}",
                    error.map(|e| format!(" ({e})")).unwrap_or_default()
                )
            }
            _ => {}
        }
    }

    let job = manager.wait(id).await?;
    if let Some(artifact) = &job.artifact {
        println!(
            "result: {} ({} files, {} bytes)",
            artifact.path, artifact.files, artifact.size_bytes
        );
    }
    manager.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
