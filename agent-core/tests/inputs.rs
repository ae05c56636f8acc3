//! A job's input files: kept from submit to its end, placed in the workspace before the first
//! step, removed when it ends; refused submissions leave nothing behind.
#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agent_core::inputs::{InputLimits, StagedInputs};
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::FakeExecutor;
use agent_core::{JobSpec, JobStatus, NetworkMode, Step};

async fn manager(dir: &std::path::Path) -> JobManager {
    JobManager::builder(Arc::new(FakeExecutor::new()), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig::in_dir(dir))
        .start()
        .await
        .unwrap()
}

/// `files` (path, content), staged for a job of `manager`.
fn staged(manager: &JobManager, files: &[(&str, &[u8])]) -> StagedInputs {
    let mut inputs =
        StagedInputs::new(&manager.inputs_dir(), "files", InputLimits::default()).unwrap();
    for (path, content) in files {
        inputs.add_file(path, *content, 0o644).unwrap();
    }
    inputs
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test]
async fn inputs_are_placed_before_the_first_step_and_removed_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(dir.path()).await;
    let inputs = staged(
        &manager,
        &[("data/in.bin", &[0u8, 1, 2, 255]), ("note.txt", b"hello")],
    );
    let spec = JobSpec::from_steps(vec![Step::shell(
        "cat note.txt && od -An -tu1 data/in.bin | tr -s ' '",
    )]);
    let id = manager.submit_with_inputs(spec, inputs).await.unwrap();
    let job = manager.wait(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let paths: Vec<_> = job.spec.inputs.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["data/in.bin", "note.txt"]);
    let out = &job.steps[0].result.as_ref().unwrap().stdout_tail;
    assert_eq!(out.trim(), "hello 0 1 2 255");
    assert_eq!(
        files_in(&manager.inputs_dir()),
        0,
        "removed when the job ended"
    );
}

#[tokio::test]
async fn a_refused_job_keeps_no_input_files() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(dir.path()).await;
    let inputs = staged(&manager, &[("a.txt", b"a")]);
    // The fake executor has no network: refused at submit.
    let spec = JobSpec::from_steps(vec![Step::shell("true")]).with_network(NetworkMode::Bridge);
    assert!(manager.submit_with_inputs(spec, inputs).await.is_err());
    assert_eq!(files_in(&manager.inputs_dir()), 0);
}

#[tokio::test]
async fn a_queued_job_cancelled_drops_its_input_files() {
    let dir = tempfile::tempdir().unwrap();
    let manager = JobManager::builder(Arc::new(FakeExecutor::new()), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig {
            max_concurrent_jobs: 1,
            ..JobManagerConfig::in_dir(dir.path())
        })
        .start()
        .await
        .unwrap();
    let blocker = manager
        .submit(JobSpec::from_steps(vec![Step::shell("sleep 30")]))
        .await
        .unwrap();
    let inputs = staged(&manager, &[("a.txt", b"a")]);
    let spec = JobSpec::from_steps(vec![Step::shell("cat a.txt")]);
    let id = manager.submit_with_inputs(spec, inputs).await.unwrap();
    assert_eq!(files_in(&manager.inputs_dir()), 1, "kept while queued");
    manager.cancel(id).await.unwrap();
    assert_eq!(manager.wait(id).await.unwrap().status, JobStatus::Cancelled);
    assert_eq!(files_in(&manager.inputs_dir()), 0, "dropped with the job");
    manager.cancel(blocker).await.unwrap();
    manager.wait(blocker).await.unwrap();
}
