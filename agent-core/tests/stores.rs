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
