//! A job that fills its workspace to the cap (a file larger than the `fsize` limit, which is the
//! workspace's size) still gets its ZIP — with what the workspace holds and the result record
//! made on the host — and the status its steps earned. Real engine, the job manager on top.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::{zip_entry, zip_text};
use agent_core::{JobSpec, JobStatus, Step};
use common::*;

/// The workspace (and so the largest file) of the job: 32 MiB.
const CAP: u64 = 32 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_filled_to_its_cap_is_still_packaged() {
    let Some(exec) = docker(config("workspace-full")).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manager = JobManager::builder(Arc::new(exec.clone()), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig {
            reap_interval: None,
            ..JobManagerConfig::in_dir(dir.path())
        })
        .start()
        .await
        .unwrap();
    let mut spec = JobSpec::from_steps(vec![
        Step::shell("echo kept > kept.txt"),
        // 48 MB into a 32 MiB workspace whose largest file is 32 MiB: the write stops at the
        // cap (SIGXFSZ or ENOSPC); the step itself succeeds.
        Step::shell("head -c 48000000 /dev/zero > big.bin; echo \"head: $?\" >&2; true"),
        Step::shell("stat -c %s big.bin; df -B1 --output=avail /workspace | tail -1"),
    ]);
    spec.limits.workspace_bytes = CAP;
    let id = manager.submit(spec).await.unwrap();
    let job = manager.wait(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let report = job.steps[2].result.as_ref().unwrap().stdout_tail.clone();
    let mut lines = report.lines();
    let size: u64 = lines.next().unwrap().trim().parse().unwrap();
    let avail: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!(size > 0 && size <= CAP, "big.bin is {size} bytes");
    assert!(
        avail < 1 << 20 || size == CAP,
        "the workspace is full or the file reached the cap: {report}"
    );

    // The ZIP holds what the workspace held, and the record made on the host.
    let artifact = job.artifact.clone().expect("a ZIP");
    let copy = dir.path().join("job.zip");
    manager
        .artifacts()
        .download_to(&artifact.path, &copy)
        .await
        .unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&copy).unwrap()).unwrap();
    assert_eq!(zip_text(&mut zip, "kept.txt"), "kept\n");
    assert_eq!(zip.by_name("big.bin").unwrap().size(), size);
    let record: serde_json::Value =
        serde_json::from_slice(&zip_entry(&mut zip, "result.json")).unwrap();
    assert_eq!(record["status"], "succeeded", "{record}");
    manager
        .shutdown(std::time::Duration::from_secs(10))
        .await
        .unwrap();
}
