//! A finished job's sandbox handed over to a live sandbox stays counted all along.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::store::{JobPage, StoreError};
use agent_core::testing::FakeExecutor;
use agent_core::{Job, JobEvent, JobFilter, JobId, JobSpec, JobStatus, JobStore, Step};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

/// A memory store that holds its `nth` insert (1-based) until released, saying when it began.
struct HeldInsert {
    store: MemoryStore,
    inserts: AtomicUsize,
    nth: usize,
    hold: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

#[async_trait]
impl JobStore for HeldInsert {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        if self.inserts.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            let hold = self.hold.lock().unwrap().take();
            if let Some((began, release)) = hold {
                began.send(()).unwrap();
                release.await.unwrap();
            }
        }
        self.store.insert_job(job).await
    }
    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        self.store.update_job(job).await
    }
    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.store.get_job(id).await
    }
    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        self.store.list_jobs(filter).await
    }
    async fn delete_job(&self, id: JobId) -> Result<bool, StoreError> {
        self.store.delete_job(id).await
    }
    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        self.store.append_events(id, events).await
    }
    async fn events(
        &self,
        id: JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.store.events(id, after, limit).await
    }
    async fn last_seq(&self, id: JobId) -> Result<u64, StoreError> {
        self.store.last_seq(id).await
    }
    async fn finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.store.finished_before(cutoff, limit).await
    }
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        self.store.count_by_status().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_sandbox_is_counted_while_its_live_record_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (began_tx, began) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    // Insert 1 is the job's; insert 2 the live sandbox's record, made during the handover.
    let store = Arc::new(HeldInsert {
        store: MemoryStore::new(),
        inserts: AtomicUsize::new(0),
        nth: 2,
        hold: Mutex::new(Some((began_tx, release_rx))),
    });
    let manager = JobManager::builder(Arc::new(FakeExecutor::new()), store)
        .config(JobManagerConfig::in_dir(dir.path()))
        .start()
        .await
        .unwrap();
    let mut spec = JobSpec::from_steps(vec![Step::shell("echo kept > out.txt")]);
    spec.keep_sandbox = Some(serde_json::from_value(serde_json::json!({})).unwrap());
    let id = manager.submit(spec).await.unwrap();
    began.await.unwrap();
    assert_eq!(
        manager.stats().live_sandboxes,
        1,
        "the job's sandbox, being handed over"
    );
    release.send(()).unwrap();
    let job = manager.wait(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let live = job.continued_in.expect("handed over");
    assert_eq!(manager.stats().live_sandboxes, 1, "now the live sandbox's");
    manager.destroy_sandbox(live).await.unwrap();
    // Its session lets go of it just after its record says it ended.
    for _ in 0..200 {
        if manager.stats().live_sandboxes == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(manager.stats().live_sandboxes, 0);
    manager
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}
