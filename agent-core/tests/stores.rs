//! Both job stores against the store conformance suite, plus SQLite-only checks.
#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agent_core::store::memory::MemoryStore;
use agent_core::testing::store_suite;
use agent_core::JobStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_store_suite() {
    store_suite(|| async { Arc::new(MemoryStore::new()) as Arc<dyn JobStore> }).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let dir = Arc::new(dir);
    let n = std::sync::atomic::AtomicUsize::new(0);
    store_suite(|| {
        let path = dir
            .path()
            .join(format!(
                "db-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ))
            .join("agent.db");
        async move {
            Arc::new(agent_core::store::sqlite::SqliteStore::open(path).unwrap())
                as Arc<dyn JobStore>
        }
    })
    .await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::sync::Arc;
    use std::time::Duration;

    use agent_core::store::sqlite::{SqliteStore, SCHEMA_VERSION};
    use agent_core::{
        EventKind, Job, JobEvent, JobFilter, JobId, JobSpec, JobStatus, JobStore, OutputStream,
        StoreErrorKind,
    };
    use chrono::Utc;

    fn output(id: JobId, seq: u64) -> JobEvent {
        JobEvent {
            job_id: id,
            seq,
            at: Utc::now(),
            kind: EventKind::Output {
                index: 0,
                stream: OutputStream::Stdout,
                text: format!("line {seq}\n"),
            },
        }
    }

    /// A store in a new directory (`agent.db` in it) holding one job with one output event.
    async fn store_with_one_job() -> (tempfile::TempDir, SqliteStore, Job) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("agent.db")).unwrap();
        let job = Job::new(JobId::new(), JobSpec::from_prompt("x"));
        store.insert_job(&job).await.unwrap();
        store
            .append_events(job.id, &[output(job.id, 1)])
            .await
            .unwrap();
        (dir, store, job)
    }

    /// Generous bound that only guards against a hang.
    const HANG: Duration = Duration::from_secs(30);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopened_store_returns_every_job_and_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out").join("agent.db");
        let mut jobs = Vec::new();
        let mut events = Vec::new();
        {
            let store = SqliteStore::open(&path).unwrap();
            for i in 0..20u64 {
                let mut job = Job::new(JobId::new(), JobSpec::from_prompt(format!("job {i}")));
                store.insert_job(&job).await.unwrap();
                let batch: Vec<JobEvent> = (1..=i + 1).map(|seq| output(job.id, seq)).collect();
                store.append_events(job.id, &batch).await.unwrap();
                if i % 2 == 0 {
                    job.transition(JobStatus::Running).unwrap();
                    job.transition(JobStatus::Succeeded).unwrap();
                    store.update_job(&job).await.unwrap();
                }
                jobs.push(job);
                events.push(batch);
            }
            // The store (and every connection) is dropped here.
        }
        let store = SqliteStore::open(&path).unwrap();
        for (job, batch) in jobs.iter().zip(&events) {
            assert_eq!(store.get_job(job.id).await.unwrap().as_ref(), Some(job));
            assert_eq!(&store.events(job.id, 0, 1000).await.unwrap(), batch);
            assert_eq!(store.last_seq(job.id).await.unwrap(), batch.len() as u64);
        }
        let page = store
            .list_jobs(&JobFilter::default().page(100, 0))
            .await
            .unwrap();
        assert_eq!(page.total, 20);
        let succeeded = store
            .list_jobs(&JobFilter::default().with_status(JobStatus::Succeeded))
            .await
            .unwrap();
        assert_eq!(succeeded.total, 10);
        // And the reopened store keeps working: sequence numbers continue.
        let first = jobs[0].id;
        let err = store
            .append_events(first, &[output(first, 1)])
            .await
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::SequenceConflict);
        store
            .append_events(first, &[output(first, 2)])
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_are_not_blocked_by_a_writer_holding_a_transaction() {
        let (dir, store, job) = store_with_one_job().await;
        let path = dir.path().join("agent.db");

        // Another connection takes the write lock and writes a batch it does not commit yet.
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        writer
            .execute(
                "INSERT INTO events (job_id, seq, at, kind) VALUES (?1, 2, 0, '{\"type\":\"log\",\"message\":\"pending\"}')",
                [job.id.to_string()],
            )
            .unwrap();

        // Every read completes while the write transaction is open, and sees the committed state.
        let reads = async {
            let got = store.get_job(job.id).await.unwrap();
            assert_eq!(got.as_ref(), Some(&job));
            assert_eq!(store.events(job.id, 0, 10).await.unwrap().len(), 1);
            assert_eq!(store.last_seq(job.id).await.unwrap(), 1);
            assert_eq!(
                store.list_jobs(&JobFilter::default()).await.unwrap().total,
                1
            );
            store.count_by_status().await.unwrap();
        };
        tokio::time::timeout(HANG, reads)
            .await
            .expect("reads were blocked by an open write transaction");

        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(
            store.last_seq(job.id).await.unwrap(),
            2,
            "the commit is visible"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_whole_batches_while_a_job_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open_in_dir(dir.path()).unwrap());
        assert!(store.path().ends_with("agent.db"));
        let job = Job::new(JobId::new(), JobSpec::from_prompt("x"));
        store.insert_job(&job).await.unwrap();
        const BATCHES: u64 = 100;
        const SIZE: u64 = 20;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let batch: Vec<JobEvent> =
                        (1..=SIZE).map(|i| output(job.id, b * SIZE + i)).collect();
                    store.append_events(job.id, &batch).await.unwrap();
                }
            })
        };
        // Read concurrently: every read is a whole number of batches, contiguous from 1.
        loop {
            let done = writer.is_finished();
            let events = store.events(job.id, 0, 10_000).await.unwrap();
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
            assert_eq!(
                seqs.len() as u64 % SIZE,
                0,
                "a batch is appended atomically"
            );
            if done {
                assert_eq!(seqs.len() as u64, BATCHES * SIZE);
                break;
            }
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn the_schema_is_versioned_and_a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let version: u32 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let indexes: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' AND sql IS NOT NULL ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                indexes,
                [
                    "jobs_created",
                    "jobs_finished",
                    "jobs_status_created",
                    "jobs_tenant_created",
                    "jobs_tenant_status_created"
                ]
            );
        }
        // Reopening an up-to-date database changes nothing.
        drop(SqliteStore::open(&path).unwrap());

        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Corrupt);
        assert!(err.message.contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn migrations_2_to_4_fill_the_summary_columns_and_counts_of_existing_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let store = SqliteStore::open(&path).unwrap();
        let mut jobs = Vec::new();
        for i in 0..3 {
            let prompt = format!("job {i} {}", "ü".repeat(250 * (i % 2)));
            let mut job = Job::new(JobId::new(), JobSpec::from_prompt(prompt));
            job.created_at += chrono::Duration::seconds(i as i64);
            if i > 0 {
                job.transition(JobStatus::Running).unwrap();
                job.transition(JobStatus::Failed).unwrap();
                job.error = Some(format!("failure {i}"));
                job.provider = Some("mock".into());
                job.usage.prompt_tokens = 10 * i as u64;
                job.usage.total_tokens = 11 * i as u64;
            }
            if i == 2 {
                job.spec.steps = Some(vec![
                    agent_core::Step::shell("echo hi").with_description("greet")
                ]);
            }
            store.insert_job(&job).await.unwrap();
            jobs.push(job);
        }
        drop(store);
        // Back to a version-1 database: the summary columns did not exist.
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP INDEX jobs_tenant_created; DROP INDEX jobs_tenant_status_created; \
                 ALTER TABLE jobs DROP COLUMN tenant; \
                 ALTER TABLE jobs DROP COLUMN prompt_head; ALTER TABLE jobs DROP COLUMN steps; \
                 ALTER TABLE jobs DROP COLUMN started_at; ALTER TABLE jobs DROP COLUMN error; \
                 ALTER TABLE jobs DROP COLUMN provider; ALTER TABLE jobs DROP COLUMN first_step; \
                 ALTER TABLE jobs DROP COLUMN prompt_tokens; \
                 ALTER TABLE jobs DROP COLUMN completion_tokens; \
                 ALTER TABLE jobs DROP COLUMN total_tokens; \
                 DROP TRIGGER jobs_counted_insert; DROP TRIGGER jobs_counted_delete; \
                 DROP TRIGGER jobs_counted_status; DROP TABLE job_counts; \
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let page = store.list_summaries(&JobFilter::default()).await.unwrap();
        assert_eq!(page.total, 3);
        let counts = store.count_by_status().await.unwrap();
        assert!(counts.contains(&(JobStatus::Queued, 1)), "{counts:?}");
        assert!(counts.contains(&(JobStatus::Failed, 2)), "{counts:?}");
        assert_eq!(page.jobs[0].first_step.as_deref(), Some("greet"));
        assert_eq!(page.jobs[0].provider.as_deref(), Some("mock"));
        for (listed, job) in page.jobs.iter().zip(jobs.iter().rev()) {
            assert_eq!(*listed, agent_core::store::JobSummary::from_job(job));
        }
        // Migration 4: the old jobs have no tenant; a new tenant's job is listed on its own.
        let mut owned = Job::new(JobId::new(), JobSpec::from_prompt("owned"));
        owned.spec.tenant = Some("alice".into());
        store.insert_job(&owned).await.unwrap();
        let alice = JobFilter::default().of_tenant("alice");
        let page = store.list_summaries(&alice).await.unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.jobs[0].id, owned.id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_lock_held_by_another_process_is_a_retryable_busy_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let store = SqliteStore::open_with_busy_timeout(&path, Duration::from_millis(100)).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();

        let job = Job::new(JobId::new(), JobSpec::from_prompt("x"));
        let err = store.insert_job(&job).await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Busy, "{err}");
        assert!(err.is_retryable());
        // Reads still work meanwhile.
        assert_eq!(store.get_job(job.id).await.unwrap(), None);

        other.execute_batch("COMMIT").unwrap();
        store.insert_job(&job).await.unwrap();
        assert_eq!(store.get_job(job.id).await.unwrap().as_ref(), Some(&job));
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
    }

    #[tokio::test]
    async fn undecodable_rows_are_corrupt_errors() {
        let (dir, store, job) = store_with_one_job().await;
        let path = dir.path().join("agent.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE jobs SET record = '{not json'", [])
            .unwrap();
        conn.execute("UPDATE events SET kind = '{\"type\":\"nope\"}'", [])
            .unwrap();
        let err = store.get_job(job.id).await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
        let err = store.list_jobs(&JobFilter::default()).await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
        let err = store.events(job.id, 0, 10).await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
    }
}

/// The record cache over both stores: the suite, and what it keeps, drops and never hides.
mod cached {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use agent_core::store::cached::CachedStore;
    use agent_core::store::memory::MemoryStore;
    use agent_core::store::{JobPage, StoreError};
    use agent_core::testing::store_suite;
    use agent_core::{Job, JobEvent, JobFilter, JobId, JobSpec, JobStatus, JobStore};
    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use tokio::sync::oneshot;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_memory_store_passes_the_store_suite() {
        store_suite(|| async {
            Arc::new(CachedStore::new(MemoryStore::new(), 1 << 20)) as Arc<dyn JobStore>
        })
        .await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_sqlite_store_with_a_small_cache_passes_the_store_suite() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let n = AtomicUsize::new(0);
        store_suite(|| {
            let path = dir
                .path()
                .join(format!("db-{}", n.fetch_add(1, Ordering::SeqCst)))
                .join("agent.db");
            async move {
                let sqlite = agent_core::store::sqlite::SqliteStore::open(path).unwrap();
                // A few records at a time: the suite's reads also go through evictions.
                Arc::new(CachedStore::new(sqlite, 16 << 10)) as Arc<dyn JobStore>
            }
        })
        .await;
    }

    /// A memory store that counts reads of records and can hold one read after it has read,
    /// until the test lets it answer.
    #[derive(Default)]
    struct Watched {
        store: MemoryStore,
        reads: AtomicUsize,
        hold: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
    }

    impl Watched {
        /// Holds the next read once it has read: `read` fires then, and it answers once
        /// `release` fires.
        fn hold_next(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
            let (read_tx, read) = oneshot::channel();
            let (release, release_rx) = oneshot::channel();
            *self.hold.lock().unwrap() = Some((read_tx, release_rx));
            (read, release)
        }
    }

    #[async_trait]
    impl JobStore for Watched {
        async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
            self.store.insert_job(job).await
        }
        async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
            self.store.update_job(job).await
        }
        async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let job = self.store.get_job(id).await;
            let hold = self.hold.lock().unwrap().take();
            if let Some((read, release)) = hold {
                read.send(()).unwrap();
                release.await.unwrap();
            }
            job
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

    fn finished(prompt: &str) -> Job {
        let mut job = Job::new(JobId::new(), JobSpec::from_prompt(prompt));
        job.status = JobStatus::Succeeded;
        job.finished_at = Some(Utc::now());
        job
    }

    fn cache(capacity: u64) -> Arc<CachedStore<Arc<Watched>>> {
        Arc::new(CachedStore::new(Arc::new(Watched::default()), capacity))
    }

    #[tokio::test]
    async fn a_finished_job_is_read_from_the_store_once_until_it_is_written() {
        let store = cache(1 << 20);
        let job = finished("p");
        store.insert_job(&job).await.unwrap();
        let first = store.get_job_shared(job.id).await.unwrap().unwrap();
        let second = store.get_job_shared(job.id).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the same record is shared");
        assert_eq!(store.get_job(job.id).await.unwrap().unwrap(), job);
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), 1);
        assert_eq!(store.cached(), 1);

        let mut changed = job.clone();
        changed.error = Some("rewritten".into());
        store.update_job(&changed).await.unwrap();
        let third = store.get_job_shared(job.id).await.unwrap().unwrap();
        assert_eq!(*third, changed, "an update is seen at once");
        assert!(!Arc::ptr_eq(&first, &third));
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), 2);

        assert!(store.delete_job(job.id).await.unwrap());
        assert!(store.get_job_shared(job.id).await.unwrap().is_none());
        assert_eq!(store.cached(), 0);
        // Deleted in a batch too.
        let other = finished("q");
        store.insert_job(&other).await.unwrap();
        store.get_job(other.id).await.unwrap().unwrap();
        assert_eq!(store.delete_jobs(&[other.id]).await.unwrap(), 1);
        assert!(store.get_job(other.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_running_job_is_read_from_the_store_every_time() {
        let store = cache(1 << 20);
        let mut job = Job::new(JobId::new(), JobSpec::from_prompt("p"));
        job.status = JobStatus::Running;
        store.insert_job(&job).await.unwrap();
        for _ in 0..3 {
            store.get_job_shared(job.id).await.unwrap().unwrap();
        }
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), 3);
        assert_eq!(store.cached(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_raced_a_write_never_hides_the_newer_record() {
        let store = cache(1 << 20);
        let job = finished("before");
        store.insert_job(&job).await.unwrap();
        // A read fetches the old record, and is held before it can keep it.
        let (read, release) = store.inner().hold_next();
        let reader = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.get_job_shared(job.id).await.unwrap().unwrap() }
        });
        read.await.unwrap();
        // Meanwhile the job is rewritten, and the write ends.
        let mut changed = job.clone();
        changed.error = Some("after".into());
        store.update_job(&changed).await.unwrap();
        release.send(()).unwrap();
        assert_eq!(
            *reader.await.unwrap(),
            job,
            "the held read answers what it read"
        );
        // What it read is not kept: the next read sees the write.
        assert_eq!(
            *store.get_job_shared(job.id).await.unwrap().unwrap(),
            changed
        );
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_cache_holds_no_more_than_its_capacity() {
        let capacity = 64 << 10;
        let store = cache(capacity);
        let mut ids = Vec::new();
        // 200 records of about 2 KiB: 400 KiB read, 64 KiB kept.
        for n in 0..200 {
            let job = finished(&format!("{n} {}", "x".repeat(2000)));
            store.insert_job(&job).await.unwrap();
            store.get_job(job.id).await.unwrap().unwrap();
            ids.push(job.id);
        }
        let kept = store.cached();
        assert!(kept > 0, "some are kept");
        assert!(kept <= 32, "at most 64 KiB of 2 KiB records, kept {kept}");
        // A record over an eighth of the capacity is never kept.
        let heavy = finished(&"y".repeat(capacity as usize / 4));
        store.insert_job(&heavy).await.unwrap();
        let before = store.inner().reads.load(Ordering::SeqCst);
        store.get_job(heavy.id).await.unwrap().unwrap();
        store.get_job(heavy.id).await.unwrap().unwrap();
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), before + 2);
    }

    #[tokio::test]
    async fn a_zero_capacity_keeps_nothing() {
        let store = cache(0);
        let job = finished("p");
        store.insert_job(&job).await.unwrap();
        store.get_job(job.id).await.unwrap().unwrap();
        store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(store.inner().reads.load(Ordering::SeqCst), 2);
    }
}
