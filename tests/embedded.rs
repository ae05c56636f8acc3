//! The library path end to end, as a Rust user embeds it: `JobManager` + `DockerExecutor` (the real
//! engine, network none) + the agent-llm chain built from variables pointing at mock Alchemyst
//! and Gemini servers on 127.0.0.1 + a SQLite store file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::sqlite::SqliteStore;
use agent_core::{Job, JobSpec, JobStatus, JobStore, LlmProvider};
use agent_docker::{DockerConfig, DockerExecutor};
use agent_llm::LlmConfig;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PLAN: &str = r#"{"steps":[
  {"type":"write_file","path":"fib.py","content":"def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\nprint(fib(20))\n","description":"the script"},
  {"type":"shell","command":"python3 fib.py > out.txt && cat out.txt","description":"run it"}
],"summary":"fibonacci"}"#;

fn gemini_reply(text: &str) -> serde_json::Value {
    serde_json::json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 30, "totalTokenCount": 50}
    })
}

/// A file of the job's ZIP, copied out of the manager's artifact store as the CLI does.
async fn zip_text(manager: &JobManager, job: &Job, name: &str) -> String {
    let copy = tempfile::NamedTempFile::new().unwrap();
    let stored = &job.artifact.as_ref().unwrap().path;
    let size = manager
        .artifacts()
        .download_to(stored, copy.path())
        .await
        .unwrap();
    assert_eq!(size, Some(job.artifact.as_ref().unwrap().size_bytes));
    let mut zip = zip::ZipArchive::new(copy.reopen().unwrap()).unwrap();
    let mut s = String::new();
    zip.by_name(name).unwrap().read_to_string(&mut s).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_job_falls_back_to_gemini_and_runs_in_docker() {
    if std::env::var("AGENT_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("AGENT_SKIP_DOCKER_TESTS=1: skipping");
        return;
    }
    // Alchemyst is down (503 on every try); Gemini answers with the plan.
    let alchemyst = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(503).set_body_json(
            serde_json::json!({"error": {"message": "overloaded", "type": "server_error"}}),
        ))
        .mount(&alchemyst)
        .await;
    let gemini = MockServer::start().await;
    let sse = format!("data: {}\n\n", gemini_reply(PLAN));
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_raw(sse.clone(), "text/event-stream"),
        )
        .mount(&gemini)
        .await;

    let llm: Arc<dyn LlmProvider> = Arc::new(
        LlmConfig::from_vars([
            ("ALCHEMYST_API_KEY", "test-alchemyst-key".to_string()),
            ("ALCHEMYST_BASE_URL", alchemyst.uri()),
            ("GEMINI_API_KEY", "test-gemini-key".to_string()),
            ("GEMINI_BASE_URL", gemini.uri()),
            ("AGENT_LLM_MAX_ATTEMPTS", "2".to_string()),
        ])
        .unwrap()
        .build()
        .unwrap(),
    );
    let executor = DockerExecutor::connect(
        DockerConfig::from_env()
            .with_warm_pool(0)
            .with_scope(format!("test-embedded-{}", std::process::id())),
    )
    .await
    .expect(
        "the end-to-end tests need the Docker engine and the agent image (scripts/setup-host.sh)",
    );
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> =
        Arc::new(SqliteStore::open(dir.path().join("agent.db")).unwrap());
    let manager = JobManager::builder(Arc::new(executor), store.clone())
        .llm(llm)
        .config(JobManagerConfig::in_dir(dir.path()))
        .start()
        .await
        .unwrap();

    let id = manager
        .submit(
            JobSpec::from_prompt("Create a Python script that calculates fibonacci numbers")
                .with_job_timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let job = manager.wait(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.provider.as_deref(), Some("gemini"));
    assert_eq!(job.usage.total_tokens, 50);
    assert_eq!(zip_text(&manager, &job, "out.txt").await, "6765\n");
    let result: serde_json::Value =
        serde_json::from_str(&zip_text(&manager, &job, "result.json").await).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["provider"], "gemini");
    assert_eq!(result["steps"][1]["result"]["stdout_tail"], "6765\n");
    // Alchemyst was tried (with its retry) before falling back.
    assert_eq!(alchemyst.received_requests().await.unwrap().len(), 2);
    // The job is in the SQLite file.
    assert_eq!(
        store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );
    manager.shutdown(Duration::from_secs(10)).await.unwrap();
}
