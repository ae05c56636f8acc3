//! Kept sandboxes: a job with `keep_alive` keeps its sandbox after its steps (status final, ZIP
//! made, worker given back) until it expires, is released, is cancelled or is swept; the job's
//! record says it is kept, and once it is gone, why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::FakeExecutor;
use agent_core::{Error, JobId, JobSpec, JobStatus, SandboxEndReason, Step};

async fn manager(dir: &tempfile::TempDir) -> JobManager {
    let config = JobManagerConfig {
        max_concurrent_jobs: 1,
        max_keep_alive: Duration::from_secs(600),
        ..JobManagerConfig::in_dir(dir.path())
    };
    JobManager::builder(Arc::new(FakeExecutor::new()), Arc::new(MemoryStore::new()))
        .config(config)
        .start()
        .await
        .unwrap()
}

fn kept_job(keep: Duration) -> JobSpec {
    JobSpec::from_steps(vec![Step::shell("echo kept > out.txt")]).with_keep_alive(keep)
}

/// Why the job's record says its kept sandbox went (`None`: not gone, or never kept).
async fn ended(manager: &JobManager, id: JobId) -> Option<SandboxEndReason> {
    let job = manager.get(id).await.unwrap();
    job.kept_sandbox?.ended.map(|e| e.reason)
}

/// Waits (bounded) until `id` has no sandbox any more.
async fn gone(manager: &JobManager, id: JobId) -> bool {
    for _ in 0..1000 {
        if manager.job_sandbox(id).is_none() && manager.stats().live_sandboxes == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_kept_sandbox_outlives_its_steps_without_holding_a_worker_and_release_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dir).await;
    let id = m.submit(kept_job(Duration::from_secs(600))).await.unwrap();
    let job = m.wait(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    assert!(job.artifact.is_some(), "the ZIP is made when the steps end");

    let kept = m.job_sandbox(id).expect("the sandbox is kept");
    let until = kept.kept_until.expect("with an expiry");
    let mut recorded = None;
    for _ in 0..500 {
        recorded = m.get(id).await.unwrap().kept_sandbox;
        if recorded.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recorded = recorded.expect("the record says the sandbox is kept");
    assert_eq!(recorded.until, until);
    assert!(recorded.ended.is_none());
    let left = until - chrono::Utc::now();
    assert!(left > chrono::Duration::seconds(500), "{left}");
    assert_eq!(m.stats().live_sandboxes, 1);
    // The kept sandbox still runs processes (its files are there).
    let content = kept.sandbox.get_file("out.txt").await.unwrap();
    assert_eq!(&content[..], b"kept\n");

    // One worker only, and it is free: another job runs meanwhile.
    let other = m
        .submit(JobSpec::from_steps(vec![Step::shell("true")]))
        .await
        .unwrap();
    let other = tokio::time::timeout(Duration::from_secs(30), m.wait(other))
        .await
        .expect("the second job runs while the first sandbox is kept")
        .unwrap();
    assert_eq!(other.status, JobStatus::Succeeded);
    assert!(
        m.job_sandbox(other.id).is_none(),
        "no keep-alive, no kept sandbox"
    );

    assert!(m.release(id));
    assert!(gone(&m, id).await, "released");
    assert!(!m.release(id), "nothing left to release");
    assert_eq!(m.get(id).await.unwrap().status, JobStatus::Succeeded);
    assert_eq!(ended(&m, id).await, Some(SandboxEndReason::Released));
    assert!(
        m.get(other.id).await.unwrap().kept_sandbox.is_none(),
        "a job without keep-alive has no kept sandbox to record"
    );
    m.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn kept_sandboxes_expire_and_cancelling_a_finished_job_releases_its_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dir).await;
    let short = m.submit(kept_job(Duration::from_secs(1))).await.unwrap();
    m.wait(short).await.unwrap();
    assert!(m.job_sandbox(short).is_some());
    assert!(gone(&m, short).await, "expired after a second");
    assert_eq!(ended(&m, short).await, Some(SandboxEndReason::Expired));

    let id = m.submit(kept_job(Duration::from_secs(600))).await.unwrap();
    m.wait(id).await.unwrap();
    assert!(m.job_sandbox(id).is_some());
    let job = m.cancel(id).await.unwrap();
    assert_eq!(
        job.status,
        JobStatus::Succeeded,
        "the status stays what it was"
    );
    assert!(gone(&m, id).await, "cancel released the kept sandbox");
    assert_eq!(ended(&m, id).await, Some(SandboxEndReason::Released));
    assert!(matches!(
        m.cancel(id).await,
        Err(Error::AlreadyFinished { .. })
    ));
    m.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn keep_alive_is_bounded_not_kept_for_cancelled_jobs_and_ends_with_sweep_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dir).await;
    let err = m
        .submit(kept_job(Duration::from_secs(601)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keep_alive_secs"), "{err}");

    // A cancelled job's sandbox is not kept.
    let id = m
        .submit(
            JobSpec::from_steps(vec![Step::shell("sleep 30")])
                .with_keep_alive(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    for _ in 0..500 {
        if m.job_sandbox(id).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(m.job_sandbox(id).is_some(), "reachable while it runs");
    assert_eq!(m.job_sandbox(id).unwrap().kept_until, None);
    assert_eq!(m.cancel(id).await.unwrap().status, JobStatus::Cancelled);
    assert!(gone(&m, id).await, "not kept after a cancel");
    assert!(m.get(id).await.unwrap().kept_sandbox.is_none());

    // The retention sweep removes a kept job's sandbox with the job.
    let swept = m.submit(kept_job(Duration::from_secs(600))).await.unwrap();
    m.wait(swept).await.unwrap();
    assert_eq!(m.sweep(Duration::ZERO).await.unwrap(), 2);
    assert!(gone(&m, swept).await, "swept with its job");

    // Shutdown ends the kept ones.
    let last = m.submit(kept_job(Duration::from_secs(600))).await.unwrap();
    m.wait(last).await.unwrap();
    assert_eq!(m.stats().live_sandboxes, 1);
    tokio::time::timeout(Duration::from_secs(30), m.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown does not wait for the keep-alive")
        .unwrap();
    assert_eq!(m.stats().live_sandboxes, 0);
    assert_eq!(ended(&m, last).await, Some(SandboxEndReason::ServerStopped));
}
