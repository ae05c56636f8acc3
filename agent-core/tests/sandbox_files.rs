//! A live sandbox's files through the job manager, on a sandbox that lists its files only through
//! an export (the fake executor's): the manager lists the export instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agent_core::inputs::InputFile;
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::FakeExecutor;
use agent_core::{Error, JobSpec, SandboxErrorKind};
use bytes::Bytes;

async fn manager(dir: &tempfile::TempDir) -> JobManager {
    JobManager::builder(Arc::new(FakeExecutor::new()), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig::in_dir(dir.path()))
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_cannot_list_is_listed_through_its_export() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&dir).await;
    // The fake executor's sandboxes take the trait's default.
    let spec =
        agent_core::SandboxSpec::for_job(agent_core::JobId::new(), &JobSpec::from_prompt("x"));
    let probe = agent_core::Executor::create(&FakeExecutor::new(), &spec)
        .await
        .unwrap();
    let refused = probe.list_files("", 10).await.unwrap_err();
    assert_eq!(refused.kind, SandboxErrorKind::Unsupported);
    probe.destroy().await.unwrap();

    let job = manager
        .create_sandbox(JobSpec::from_prompt("x"))
        .await
        .unwrap();
    for (path, body) in [("b.txt", "abc"), ("d/a.txt", ""), ("d/e/z", "12345")] {
        manager
            .sandbox_put_file(job.id, path, Bytes::from(body))
            .await
            .unwrap();
    }
    let file = |path: &str, size_bytes: u64| InputFile {
        path: path.into(),
        size_bytes,
    };
    let all = manager.sandbox_list_files(job.id, "", 10).await.unwrap();
    assert_eq!(all.total, 3);
    let mut names = all.files.clone();
    names.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(
        names,
        vec![file("b.txt", 3), file("d/a.txt", 0), file("d/e/z", 5)]
    );
    let some = manager.sandbox_list_files(job.id, "d", 1).await.unwrap();
    assert_eq!(some.total, 2);
    assert_eq!(some.files.len(), 1);
    match manager.sandbox_list_files(job.id, "missing", 10).await {
        Err(Error::Sandbox(e)) => assert_eq!(e.kind, SandboxErrorKind::NotFound, "{e}"),
        other => panic!("a missing directory: {other:?}"),
    }
    manager.destroy_sandbox(job.id).await.unwrap();
    manager
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}
