//! The fake executor against the executor conformance suite, plus checks of its own.
#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agent_core::executor::{discard_output, Capabilities, Executor};
use agent_core::testing::{collect_bytes, executor_suite, FakeExecutor};
use agent_core::{
    JobId, JobSpec, RunStep, SandboxErrorKind, SandboxSpec, Step, StepRequest, Termination,
};
use bytes::Bytes;

fn spec() -> JobSpec {
    JobSpec::from_steps(vec![Step::shell("true")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_executor_passes_the_executor_suite() {
    executor_suite(Arc::new(FakeExecutor::new())).await;
}

#[tokio::test]
async fn fake_executor_says_it_is_not_a_sandbox() {
    let executor = FakeExecutor::new();
    assert_eq!(executor.name(), "fake");
    assert_eq!(executor.capabilities(), Capabilities::NONE);
    assert!(!executor.capabilities().isolated);
}

#[tokio::test]
async fn sandboxes_live_under_the_root_and_destroy_removes_them() {
    let root = tempfile::tempdir().unwrap();
    let executor = FakeExecutor::with_root(root.path());
    let sandbox = executor
        .create(&SandboxSpec::for_job(JobId::new(), &spec()))
        .await
        .unwrap();
    let dir = std::path::PathBuf::from(sandbox.id());
    assert!(dir.starts_with(root.path().canonicalize().unwrap()));
    assert!(dir.is_dir());
    let mut req = StepRequest::new(7, Step::python("print('hi')"), Duration::from_secs(30));
    req.index = 7;
    let result = sandbox.run_step(req, discard_output()).await.unwrap();
    assert!(result.success(), "{result:?}");
    assert!(
        dir.join(".agent/step-7.py").is_file(),
        "python code is saved as .agent/step-<index>.py"
    );
    sandbox.destroy().await.unwrap();
    assert!(!dir.exists(), "destroy removes the directory");
    sandbox.destroy().await.unwrap();
    let err = sandbox.get_file("x").await.unwrap_err();
    assert_eq!(err.kind, SandboxErrorKind::Gone);
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let executor = FakeExecutor::new();
    let sandbox = executor
        .create(&SandboxSpec::for_job(JobId::new(), &spec()))
        .await
        .unwrap();
    // A background grandchild that would write a file after the timeout, if it survived.
    let step = Step::shell("(sleep 2; echo survived > late.txt) & sleep 30");
    let req = StepRequest::new(0, step, Duration::from_millis(300));
    let result = sandbox.run_step(req, discard_output()).await.unwrap();
    assert_eq!(result.termination, Termination::TimedOut);
    assert_eq!(result.exit_code, 137, "killed by SIGKILL: {result:?}");
    // Wait on a step that outlives the grandchild's deadline, then look for its file.
    let wait = StepRequest::new(1, Step::shell("sleep 3"), Duration::from_secs(30));
    assert!(sandbox
        .run_step(wait, discard_output())
        .await
        .unwrap()
        .success());
    let err = sandbox.get_file("late.txt").await.unwrap_err();
    assert_eq!(
        err.kind,
        SandboxErrorKind::NotFound,
        "the grandchild survived the timeout"
    );
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_token_stops_a_step_before_it_starts() {
    let sandbox = FakeExecutor::new()
        .create(&SandboxSpec::for_job(JobId::new(), &spec()))
        .await
        .unwrap();
    let req = StepRequest::new(
        0,
        Step::shell("echo ran > ran.txt"),
        Duration::from_secs(30),
    );
    req.cancel.cancel();
    let result = sandbox.run_step(req, discard_output()).await.unwrap();
    assert_eq!(result.termination, Termination::Cancelled);
    assert!(sandbox.get_file("ran.txt").await.is_err());
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn the_noop_executor_runs_nothing() {
    let executor = FakeExecutor::noop();
    assert!(executor.is_noop());
    let sandbox = executor
        .create(&SandboxSpec::for_job(JobId::new(), &spec()))
        .await
        .unwrap();
    let req = StepRequest::new(0, Step::shell("exit 3"), Duration::from_secs(1));
    let result = sandbox.run_step(req, discard_output()).await.unwrap();
    assert!(result.success(), "every step succeeds: {result:?}");
    sandbox
        .put_file("result.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(&sandbox.get_file("result.json").await.unwrap()[..], b"{}");
    assert_eq!(
        sandbox
            .put_file("../x", Bytes::new())
            .await
            .unwrap_err()
            .kind,
        SandboxErrorKind::PathRefused
    );
    let tar = collect_bytes(sandbox.export().await.unwrap()).await;
    let mut archive = tar::Archive::new(&tar[..]);
    assert_eq!(archive.entries().unwrap().count(), 0, "an empty tar");
    sandbox.destroy().await.unwrap();
    sandbox.destroy().await.unwrap();
    assert!(sandbox.get_file("result.json").await.is_err());
}
