//! Shared helpers of the Docker integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::{
    Executor, JobId, JobSpec, OutputSink, OutputStream, RunStep, Sandbox, SandboxSpec, Step,
    StepRequest, StepResult,
};
use agent_docker::{DockerConfig, DockerExecutor};
use bytes::Bytes;

/// Whether the Docker tests were explicitly switched off (`AGENT_SKIP_DOCKER_TESTS=1`).
pub fn skipped() -> bool {
    if std::env::var("AGENT_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("AGENT_SKIP_DOCKER_TESTS=1: skipping a Docker test");
        return true;
    }
    false
}

/// A config for tests: a scope of its own so the reaper never touches other tests' containers.
pub fn config(scope: &str) -> DockerConfig {
    DockerConfig::from_env()
        .with_warm_pool(0)
        .with_prepared_pool(0)
        .with_scope(format!("test-{scope}-{}", std::process::id()))
        .with_label("containerized-agent.test", "1")
}

/// Connects, or fails with a message that says what to do.
pub async fn connect(config: DockerConfig) -> DockerExecutor {
    match DockerExecutor::connect(config).await {
        Ok(e) => e,
        Err(e) => panic!(
            "the Docker tests need a running engine and the image containerized-agent:latest: {e}\n\
             (set AGENT_SKIP_DOCKER_TESTS=1 to skip them explicitly)"
        ),
    }
}

/// The executor of one test, connected with `config`; `None` (the test returns at once) when the
/// Docker tests are switched off.
pub async fn docker(config: DockerConfig) -> Option<DockerExecutor> {
    if skipped() {
        return None;
    }
    Some(connect(config).await)
}

/// A sandbox for a new job with `spec`.
pub async fn sandbox(exec: &DockerExecutor, spec: &JobSpec) -> Box<dyn Sandbox> {
    exec.create(&SandboxSpec::for_job(JobId::new(), spec))
        .await
        .expect("creating a sandbox")
}

/// What the engine says about a sandbox's container.
pub async fn inspect(exec: &DockerExecutor, id: &str) -> bollard::models::ContainerInspectResponse {
    exec.docker()
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("inspecting a container")
}

/// Destroys `sb` and shuts `exec` down, as every test ends.
pub async fn finish(exec: DockerExecutor, sb: &dyn Sandbox) {
    sb.destroy().await.unwrap();
    exec.shutdown().await.unwrap();
}

/// Output collected by a sink, in arrival order.
#[derive(Clone, Default)]
pub struct Collected(pub Arc<Mutex<Vec<(OutputStream, Bytes)>>>);

impl Collected {
    pub fn sink(&self) -> OutputSink {
        let inner = self.0.clone();
        Arc::new(move |s, b| inner.lock().unwrap().push((s, b)))
    }
    pub fn text(&self, stream: OutputStream) -> String {
        let v = self.0.lock().unwrap();
        let bytes: Vec<u8> = v
            .iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    pub fn bytes(&self) -> usize {
        self.0.lock().unwrap().iter().map(|(_, b)| b.len()).sum()
    }
}

/// Runs a step with a timeout, returning its result and collected output.
pub async fn run(
    sb: &dyn Sandbox,
    index: usize,
    step: Step,
    timeout: Duration,
) -> (StepResult, Collected) {
    let out = Collected::default();
    let res = sb
        .run_step(StepRequest::new(index, step, timeout), out.sink())
        .await
        .expect("run_step");
    (res, out)
}

/// Runs a shell command (30 s timeout) and returns (result, stdout, stderr).
pub async fn sh(sb: &dyn Sandbox, cmd: &str) -> (StepResult, String, String) {
    let (r, out) = run(sb, 0, Step::shell(cmd), Duration::from_secs(30)).await;
    (
        r,
        out.text(OutputStream::Stdout),
        out.text(OutputStream::Stderr),
    )
}
