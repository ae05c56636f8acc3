//! The job manager through an executor outage and the periodic reaper, against the fake executor
//! behind a switch that makes it answer `Unavailable` (as the Docker executor does when the
//! engine is down). The real thing — a Docker engine stopped and restarted mid-job — is
//! agent-server's `engine_outage` test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::executor::Capabilities;
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::FakeExecutor;
use agent_core::{
    Error, Executor, JobId, JobSpec, JobStatus, Sandbox, SandboxError, SandboxErrorKind,
    SandboxSpec, Step,
};
use async_trait::async_trait;

/// The fake executor, unreachable while `down` is set; records what the reaper was told.
#[derive(Default)]
struct Flaky {
    inner: FakeExecutor,
    down: AtomicBool,
    creates_refused: AtomicUsize,
    reaps: Mutex<Vec<HashSet<JobId>>>,
}

impl Flaky {
    fn check(&self) -> Result<(), SandboxError> {
        if self.down.load(Ordering::SeqCst) {
            Err(SandboxError::new(
                SandboxErrorKind::Unavailable,
                "no engine answers (test switch)",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl Executor for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError> {
        if let Err(e) = self.check() {
            self.creates_refused.fetch_add(1, Ordering::SeqCst);
            return Err(e);
        }
        self.inner.create(spec).await
    }
    async fn reap(&self, live: &HashSet<JobId>) -> Result<usize, SandboxError> {
        self.check()?;
        self.reaps.lock().unwrap().push(live.clone());
        Ok(0)
    }
    async fn reap_jobs(&self, jobs: &HashSet<JobId>) -> Result<usize, SandboxError> {
        self.check()?;
        self.inner.reap_jobs(jobs).await
    }
    async fn sandbox_jobs(&self) -> Result<HashSet<JobId>, SandboxError> {
        self.check()?;
        self.inner.sandbox_jobs().await
    }
    async fn ping(&self) -> Result<(), SandboxError> {
        self.check()
    }
    async fn shutdown(&self) -> Result<(), SandboxError> {
        self.inner.shutdown().await
    }
}

async fn start(
    executor: Arc<Flaky>,
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut JobManagerConfig),
) -> JobManager {
    let mut config = JobManagerConfig {
        max_concurrent_jobs: 1,
        ..JobManagerConfig::in_dir(dir.path())
    };
    tweak(&mut config);
    JobManager::builder(executor, Arc::new(MemoryStore::new()))
        .config(config)
        .start()
        .await
        .unwrap()
}

fn job(command: &str) -> JobSpec {
    JobSpec::from_steps(vec![Step::shell(command)])
}

/// Polls `cond` every 20 ms, for at most 30 s (a guard against hangs, not a timing assertion).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn jobs_wait_out_an_executor_outage_and_run_when_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(Flaky::default());
    let manager = start(executor.clone(), &dir, |c| c.max_concurrent_jobs = 2).await;
    // The engine goes away unnoticed: the first job finds out when it creates its sandbox,
    // the second, given a worker, waits in the queue.
    executor.down.store(true, Ordering::SeqCst);
    let first = manager.submit(job("echo one > one.txt")).await.unwrap();
    until("the first job found the outage", || {
        executor.creates_refused.load(Ordering::SeqCst) > 0
    })
    .await;
    let second = manager.submit(job("echo two > two.txt")).await.unwrap();
    until("both jobs wait", || {
        manager.stats().waiting_for_executor == 2
    })
    .await;
    let status = manager.executor_status();
    assert!(!status.available && !status.refusing, "{status:?}");
    assert!(status.down_since.is_some() && status.error.is_some());
    assert_eq!(status.outages, 1);
    assert_eq!(
        manager.get(second).await.unwrap().status,
        JobStatus::Queued,
        "a job waiting for the executor is still queued"
    );

    executor.down.store(false, Ordering::SeqCst);
    for id in [first, second] {
        let done = manager.wait(id).await.unwrap();
        assert_eq!(done.status, JobStatus::Succeeded, "{:?}", done.error);
    }
    let status = manager.executor_status();
    assert!(
        status.available && status.down_since.is_none(),
        "{status:?}"
    );
    assert_eq!(manager.stats().waiting_for_executor, 0);
    manager.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn an_outage_longer_than_the_wait_fails_waiting_jobs_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(Flaky::default());
    executor.down.store(true, Ordering::SeqCst);
    // The start-up reap finds the outage.
    let manager = start(executor.clone(), &dir, |c| {
        c.executor_wait = Duration::from_millis(300);
    })
    .await;
    assert!(!manager.executor_status().available);
    let waiting = manager.submit(job("true")).await.unwrap();
    let failed = manager.wait(waiting).await.unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("did not answer"), "{error}");
    assert!(failed.started_at.is_none(), "it never ran");

    match manager.submit(job("true")).await {
        Err(Error::Sandbox(e)) => {
            assert_eq!(e.kind, SandboxErrorKind::Unavailable);
            assert!(e.message.contains("try again later"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(manager.executor_status().refusing);

    // Back: accepted and run again.
    executor.down.store(false, Ordering::SeqCst);
    until("the probe saw the executor answer", || {
        manager.executor_status().available
    })
    .await;
    let id = manager.submit(job("true")).await.unwrap();
    assert_eq!(manager.wait(id).await.unwrap().status, JobStatus::Succeeded);
    manager.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn the_reaper_runs_periodically_and_spares_live_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(Flaky::default());
    let manager = start(executor.clone(), &dir, |c| {
        c.reap_interval = Some(Duration::from_millis(100));
    })
    .await;
    let running = manager.submit(job("sleep 30")).await.unwrap();
    let queued = manager.submit(job("true")).await.unwrap();
    until("the reaper ran while both jobs were live", || {
        executor
            .reaps
            .lock()
            .unwrap()
            .iter()
            .any(|live| live.contains(&running) && live.contains(&queued))
    })
    .await;
    manager.cancel(running).await.unwrap();
    manager.wait(queued).await.unwrap();
    let seen = executor.reaps.lock().unwrap().len();
    until("it keeps running", || {
        executor.reaps.lock().unwrap().len() >= seen + 2
    })
    .await;
    assert!(
        executor.reaps.lock().unwrap().last().unwrap().is_empty(),
        "no live job any more"
    );
    manager.shutdown(Duration::from_secs(5)).await.unwrap();
}
