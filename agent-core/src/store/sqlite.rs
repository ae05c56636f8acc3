//! The SQLite job store (feature `sqlite`, on by default): the embedded default.
//!
//! [`SqliteStore`] keeps jobs and their events in one database file (by convention
//! `<output_dir>/agent.db`, see [`SqliteStore::open_in_dir`]) and survives restarts.
//!
//! - **WAL journal** with `synchronous = NORMAL`: a commit costs no `fsync` (the WAL is synced at
//!   checkpoints; a power cut may lose the last transactions, never corrupt the file), and
//!   readers never wait for the writer.
//! - **One writer connection** owned by a dedicated writer thread, and a **small pool of
//!   read-only connections** used on tokio's blocking pool (`spawn_blocking`). While a job
//!   appends events, `get_job`, `list_jobs` and `events` read the last committed state without
//!   waiting. The one exception to the blocking pool is `get_job`, a single row by primary key:
//!   it runs on the calling thread when a pooled reader is idle, with no busy wait (a lock held
//!   elsewhere sends it to the blocking pool, which waits as usual). Handing each such read to
//!   another thread and back cost more than the read (a `GET /status` under load spent ~30% of
//!   its CPU time in those thread switches).
//! - **Group commit**: the writer thread takes every write waiting in its queue (up to 512) and
//!   applies them in one transaction; a failing write is undone alone (each write is one
//!   statement, an event batch is wrapped in a savepoint), so it does not undo the others, and a
//!   caller gets its answer only once the transaction has committed. Under
//!   concurrent load a commit (the expensive part) is shared by many writes.
//! - **Versioned migrations** in [`PRAGMA user_version`](https://sqlite.org/pragma.html#pragma_user_version),
//!   each applied in its own transaction; a database written by a newer version is refused.
//! - Statements are prepared once per connection and cached; a batch of events is appended in
//!   one transaction.
//!
//! Schema (version 4): `jobs(id TEXT PRIMARY KEY, status TEXT, created_at INTEGER, finished_at
//! INTEGER, record TEXT, prompt_head TEXT, steps INTEGER, started_at INTEGER, error TEXT,
//! provider TEXT, first_step TEXT, prompt_tokens, completion_tokens, total_tokens INTEGER,
//! tenant TEXT)` where
//! `record` is the [`Job`] as JSON, the times are nanoseconds since the Unix epoch, and the last
//! nine columns (with `status` and the times) are
//! what a [`JobSummary`] shows, so
//! [`JobStore::list_summaries`] decodes no records; `jobs` is indexed on `(created_at, id)`, `(status, created_at, id)`,
//! `finished_at`, and for jobs with a tenant on `(tenant, created_at, id)` and `(tenant, status,
//! created_at, id)`; `events(job_id, seq, at, kind, PRIMARY KEY (job_id, seq))` where `kind` is the
//! [`EventKind`] as JSON, deleted with their job (`ON DELETE CASCADE`); `job_counts(status,
//! n)`, kept by triggers on `jobs`, answers totals without counting rows. Lists page by keyset
//! (`(created_at, id) < cursor`, see [`JobCursor`]) on the `(created_at, id)` index.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::job::{EventKind, Job, JobEvent, JobId, JobStatus, TokenUsage};
use crate::store::memory::check_events;
use crate::store::{
    first_step_headline, shorten_prompt, JobCursor, JobFilter, JobPage, JobStore, JobSummary,
    StoreError, StoreErrorKind, SummaryPage, MAX_PAGE_SIZE, SUMMARY_PROMPT_CHARS,
};

/// The database file name used by [`SqliteStore::open_in_dir`].
pub const DEFAULT_FILE_NAME: &str = "agent.db";

/// The schema version this code writes (the number of migrations).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a statement waits by default for a lock held by another connection before failing
/// with [`StoreErrorKind::Busy`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 4;

/// Prepared statements cached per connection.
const STATEMENT_CACHE: usize = 64;

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
/// Never edit a released migration; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and events.
    r#"
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY NOT NULL,
        status      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        finished_at INTEGER,
        record      TEXT NOT NULL
    );
    CREATE INDEX jobs_created ON jobs (created_at, id);
    CREATE INDEX jobs_status_created ON jobs (status, created_at, id);
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq    INTEGER NOT NULL,
        at     INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    "#,
    // 2: the fields a job summary shows, as columns, so a page of the list decodes no records.
    // Existing rows are filled from their records by `fill_summaries`.
    r#"
    ALTER TABLE jobs ADD COLUMN prompt_head TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN steps INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN started_at INTEGER;
    ALTER TABLE jobs ADD COLUMN error TEXT;
    ALTER TABLE jobs ADD COLUMN provider TEXT;
    ALTER TABLE jobs ADD COLUMN first_step TEXT;
    ALTER TABLE jobs ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: the number of jobs per status, kept by triggers, so a list's total and the metrics
    // count no rows (a COUNT over a million jobs takes tens of milliseconds).
    r#"
    CREATE TABLE job_counts (
        status TEXT PRIMARY KEY NOT NULL,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO job_counts (status, n) SELECT status, COUNT(*) FROM jobs GROUP BY status;
    CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
    END;
    CREATE TRIGGER jobs_counted_status AFTER UPDATE OF status ON jobs
        WHEN OLD.status <> NEW.status BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
        INSERT INTO job_counts (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END;
    "#,
    // 4: the tenant that owns a job (`JobSpec::tenant`), so a tenant's list is filtered and
    // paged in SQL on its own indexes. Jobs stored before it have none (the admin's).
    r#"
    ALTER TABLE jobs ADD COLUMN tenant TEXT;
    CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at, id) WHERE tenant IS NOT NULL;
    CREATE INDEX jobs_tenant_status_created ON jobs (tenant, status, created_at, id)
        WHERE tenant IS NOT NULL;
    "#,
];

/// A [`JobStore`] in one SQLite file. Cheap to clone: clones share the connections.
///
/// Opening does blocking file I/O (call it at start-up, or inside `spawn_blocking`); every
/// [`JobStore`] method runs its database work on tokio's blocking pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The writer thread's queue; the thread stops when the last store is dropped.
    writer: std::sync::mpsc::Sender<WriteRequest>,
    readers: Mutex<Vec<Connection>>,
    busy_timeout: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, creating missing parent directories, and
    /// brings its schema up to date.
    ///
    /// Fails with [`StoreErrorKind::Corrupt`] if the file is not a database or was written by a
    /// newer version of this program (a schema version above [`SCHEMA_VERSION`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_busy_timeout(path, BUSY_TIMEOUT)
    }

    /// Like [`open`](SqliteStore::open), with how long a statement waits for a lock held by
    /// another process before failing with [`StoreErrorKind::Busy`] (default 5 s).
    pub fn open_with_busy_timeout(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Backend,
                    format!("cannot create the directory {}", parent.display()),
                )
                .with_source(e)
            })?;
        }
        let mut writer = Connection::open(&path).map_err(sql("open the database"))?;
        configure(&writer, busy_timeout)?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(sql("enable the WAL journal"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                format!(
                    "{} cannot use a WAL journal (journal mode {mode:?})",
                    path.display()
                ),
            ));
        }
        writer
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(sql("configure the database"))?;
        migrate(&mut writer, &path)?;
        let (queue, requests) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("agent-db-writer".into())
            .spawn(move || writer_loop(writer, requests))
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Backend, "cannot start the database writer")
                    .with_source(e)
            })?;
        let store = Self {
            inner: Arc::new(Inner {
                path,
                writer: queue,
                readers: Mutex::new(Vec::new()),
                busy_timeout,
            }),
        };
        // Open one reader now, so a file that cannot be read fails here rather than later.
        let reader = store.inner.open_reader()?;
        lock(&store.inner.readers).push(reader);
        Ok(store)
    }

    /// Opens (or creates) `<dir>/agent.db` ([`DEFAULT_FILE_NAME`]), creating `dir` if needed.
    pub fn open_in_dir(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open(dir.as_ref().join(DEFAULT_FILE_NAME))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues a write for the writer thread and waits until it is committed.
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner
            .writer
            .send(WriteRequest { op, reply })
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Runs the short point read `f` on the calling thread, on an idle pooled reader with no busy
    /// wait; on the blocking pool ([`read`](Self::read)) when no reader is idle or a lock held
    /// elsewhere answers busy. Only for reads of a few rows by key: it blocks an async worker for
    /// as long as `f` runs.
    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Clone + Send + 'static,
    {
        let idle = lock(&self.inner.readers).pop();
        if let Some(conn) = idle {
            let result = conn
                .busy_timeout(Duration::ZERO)
                .map_err(sql("clear the busy timeout"))
                .and_then(|()| f(&conn));
            let restored = conn.busy_timeout(self.inner.busy_timeout).is_ok();
            if restored {
                let mut idle = lock(&self.inner.readers);
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
            }
            match result {
                Err(e) if e.is_retryable() => {}
                done => return done,
            }
        }
        self.read(f).await
    }

    /// Runs `f` on a read-only connection from the pool, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match lock(&inner.readers).pop() {
                Some(conn) => conn,
                None => inner.open_reader()?,
            };
            let result = f(&conn);
            let mut idle = lock(&inner.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(join_error)?
    }
}

impl Inner {
    fn open_reader(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open a read connection"))?;
        configure(&conn, self.busy_timeout)?;
        Ok(conn)
    }
}

fn configure(conn: &Connection, busy_timeout: Duration) -> Result<(), StoreError> {
    conn.busy_timeout(busy_timeout)
        .map_err(sql("set the busy timeout"))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("start a migration"))?;
        // Read the version inside the write lock: another process may have just migrated.
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sql("read the schema version"))?;
        let version = usize::try_from(version).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("{} has a negative schema version {version}", path.display()),
            )
        })?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "{} has schema version {version}, newer than the version {} this program \
                     knows: it was written by a newer containerized-agent; upgrade, or use \
                     another database file",
                    path.display(),
                    MIGRATIONS.len()
                ),
            ));
        }
        let Some(migration) = MIGRATIONS.get(version) else {
            return Ok(()); // up to date
        };
        tx.execute_batch(migration)
            .map_err(|e| map_error(&format!("apply migration {}", version + 1), e))?;
        if version + 1 == 2 {
            fill_summaries(&tx)?;
        }
        tx.pragma_update(None, "user_version", (version + 1) as i64)
            .map_err(sql("set the schema version"))?;
        tx.commit().map_err(sql("commit a migration"))?;
        tracing::info!(path = %path.display(), version = version + 1, "migrated the job database");
    }
}

/// Migration 2: fills the summary columns of the jobs stored before it from their records.
fn fill_summaries(tx: &Connection) -> Result<(), StoreError> {
    let mut page = tx
        .prepare("SELECT rowid, record FROM jobs WHERE rowid > ?1 ORDER BY rowid LIMIT 1000")
        .map_err(sql("read the jobs to migrate"))?;
    let mut update = tx
        .prepare(UPDATE_SUMMARY)
        .map_err(sql("prepare the migration of the jobs"))?;
    let mut after = 0i64;
    loop {
        let records: Vec<(i64, String)> = page
            .query_map([after], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect::<Result<_, _>>())
            .map_err(sql("read the jobs to migrate"))?;
        let Some(&(last, _)) = records.last() else {
            return Ok(());
        };
        for (_, record) in &records {
            let row = JobRow::new(&decode_job(record)?)?;
            update.execute(row.params()).map_err(sql("migrate a job"))?;
        }
        after = last;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every database change runs in a transaction that rolls back when dropped, so a connection
    // whose user panicked is still consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::new(StoreErrorKind::Backend, "a database task failed").with_source(e)
}

/// Maps a rusqlite error to a [`StoreError`] of the right kind.
fn map_error(context: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    let kind = match &e {
        E::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreErrorKind::Busy,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StoreErrorKind::Corrupt,
            ErrorCode::DiskFull => StoreErrorKind::Full,
            _ => StoreErrorKind::Backend,
        },
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Backend,
    };
    StoreError::new(kind, format!("cannot {context}: {e}")).with_source(e)
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| map_error(context, e)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
    )
}

fn corrupt(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("cannot decode {what}: {e}"),
    )
    .with_source(e)
}

/// Nanoseconds since the epoch, clamped to the `i64` range (years 1677–2262).
fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The most writes committed in one transaction.
const MAX_WRITE_BATCH: usize = 512;

/// A write for the writer thread.
enum WriteOp {
    Insert(JobRow),
    Update(JobRow),
    /// Jobs deleted in one transaction.
    Delete(Vec<JobId>),
    /// Events already checked to be strictly increasing, starting at `first`.
    Append {
        id: JobId,
        first: u64,
        rows: Vec<EventRow>,
    },
}

/// What a committed write did.
enum WriteOutcome {
    Done,
    /// How many of the jobs to delete existed.
    Deleted(usize),
}

struct WriteRequest {
    op: WriteOp,
    reply: tokio::sync::oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

fn writer_gone() -> StoreError {
    StoreError::new(
        StoreErrorKind::Backend,
        "the database writer thread stopped",
    )
}

/// A copy of an error for every write of a failed transaction.
fn copy_error(e: &StoreError) -> StoreError {
    StoreError::new(e.kind, e.message.clone())
}

/// The writer thread: applies queued writes in batches, one transaction per batch.
fn writer_loop(conn: Connection, requests: std::sync::mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_WRITE_BATCH);
    while let Ok(first) = requests.recv() {
        batch.push(first);
        while batch.len() < MAX_WRITE_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        write_batch(&conn, &mut batch);
    }
    tracing::debug!("the database writer stopped");
}

/// Applies a batch of writes in one transaction and answers each once it is committed.
fn write_batch(conn: &Connection, batch: &mut Vec<WriteRequest>) {
    let mut applied: Vec<(WriteRequest, Result<WriteOutcome, StoreError>)> =
        Vec::with_capacity(batch.len());
    let mut in_tx = false;
    for request in batch.drain(..) {
        if !in_tx {
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                let e = map_error("start a transaction", e);
                let _ = request.reply.send(Err(e));
                continue;
            }
            in_tx = true;
        }
        let result = apply(conn, &request.op);
        if result.is_err() && conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk full…): the writes
            // applied before this one in the batch are lost too.
            in_tx = false;
            if let Err(e) = &result {
                for (_, earlier) in applied.iter_mut().filter(|(_, r)| r.is_ok()) {
                    *earlier = Err(copy_error(e));
                }
            }
            answer(&mut applied);
        }
        applied.push((request, result));
    }
    if in_tx {
        if let Err(e) = conn.execute_batch("COMMIT") {
            let e = map_error("commit", e);
            let _ = conn.execute_batch("ROLLBACK");
            for (_, result) in applied.iter_mut().filter(|(_, r)| r.is_ok()) {
                *result = Err(copy_error(&e));
            }
        }
    }
    answer(&mut applied);
}

fn answer(applied: &mut Vec<(WriteRequest, Result<WriteOutcome, StoreError>)>) {
    for (request, result) in applied.drain(..) {
        let _ = request.reply.send(result); // the caller may have gone
    }
}

/// Applies one write inside the open transaction. A write that fails leaves no trace.
fn apply(conn: &Connection, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::Insert(row) => {
            let result = conn
                .prepare_cached(
                    "INSERT INTO jobs (id, status, created_at, finished_at, record, prompt_head, \
                     steps, started_at, error, provider, first_step, prompt_tokens, \
                     completion_tokens, total_tokens, tenant) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .and_then(|mut stmt| stmt.execute(row.params_with_tenant()));
            match result {
                Ok(_) => Ok(WriteOutcome::Done),
                Err(e) if is_unique_violation(&e) => Err(StoreError::new(
                    StoreErrorKind::AlreadyExists,
                    format!("job {} already exists", row.id),
                )),
                Err(e) => Err(map_error("insert a job", e)),
            }
        }
        WriteOp::Update(row) => {
            let changed = conn
                .prepare_cached(UPDATE_JOB)
                .and_then(|mut stmt| stmt.execute(row.params_with_tenant()))
                .map_err(sql("update a job"))?;
            if changed == 0 {
                return Err(StoreError::new(
                    StoreErrorKind::NotFound,
                    format!("job {} not found", row.id),
                ));
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::Delete(ids) => {
            // The events go with each job (ON DELETE CASCADE), all in this write's transaction.
            let mut stmt = conn
                .prepare_cached("DELETE FROM jobs WHERE id = ?1")
                .map_err(sql("delete a job"))?;
            let mut deleted = 0;
            for id in ids {
                deleted += stmt
                    .execute([id.to_string()])
                    .map_err(sql("delete a job"))?;
            }
            Ok(WriteOutcome::Deleted(deleted))
        }
        WriteOp::Append { id, first, rows } => {
            let key = id.to_string();
            if !job_exists(conn, &key)? {
                return Err(StoreError::new(
                    StoreErrorKind::NotFound,
                    format!("job {id} not found"),
                ));
            }
            if rows.is_empty() {
                return Ok(WriteOutcome::Done);
            }
            let last = last_seq(conn, &key)?;
            if *first <= last {
                return Err(StoreError::new(
                    StoreErrorKind::SequenceConflict,
                    format!("event seq {first} of job {id} is not greater than {last}"),
                ));
            }
            conn.prepare_cached("SAVEPOINT append_events")
                .and_then(|mut stmt| stmt.execute([]))
                .map_err(sql("start a savepoint"))?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO events (job_id, seq, at, kind) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut stmt| {
                    for row in rows {
                        stmt.execute(params![key, row.seq, row.at, row.kind])?;
                    }
                    Ok(())
                });
            match inserted {
                Ok(()) => {
                    conn.prepare_cached("RELEASE append_events")
                        .and_then(|mut stmt| stmt.execute([]))
                        .map_err(sql("release a savepoint"))?;
                    Ok(WriteOutcome::Done)
                }
                Err(e) => {
                    if !conn.is_autocommit() {
                        let _ =
                            conn.execute_batch("ROLLBACK TO append_events; RELEASE append_events");
                    }
                    Err(map_error("append events", e))
                }
            }
        }
    }
}

/// Replaces a job's columns of schema version 2 with a [`JobRow`]'s
/// [`params`](JobRow::params) (migration 2 fills them; later columns do not exist yet then).
const UPDATE_SUMMARY: &str = "UPDATE jobs SET status = ?2, created_at = ?3, finished_at = ?4, \
    record = ?5, prompt_head = ?6, steps = ?7, started_at = ?8, error = ?9, provider = ?10, \
    first_step = ?11, prompt_tokens = ?12, completion_tokens = ?13, total_tokens = ?14 \
    WHERE id = ?1";

/// Replaces a job's columns with a [`JobRow`]'s [`params_with_tenant`](JobRow::params_with_tenant).
const UPDATE_JOB: &str = "UPDATE jobs SET status = ?2, created_at = ?3, finished_at = ?4, \
    record = ?5, prompt_head = ?6, steps = ?7, started_at = ?8, error = ?9, provider = ?10, \
    first_step = ?11, prompt_tokens = ?12, completion_tokens = ?13, total_tokens = ?14, \
    tenant = ?15 WHERE id = ?1";

/// A job ready to be written: its columns.
struct JobRow {
    id: String,
    status: &'static str,
    created_at: i64,
    finished_at: Option<i64>,
    record: String,
    /// The prompt's first `SUMMARY_PROMPT_CHARS + 1` characters: enough to tell whether the
    /// summary shortens it.
    prompt_head: String,
    steps: i64,
    started_at: Option<i64>,
    error: Option<String>,
    provider: Option<String>,
    first_step: Option<String>,
    /// Prompt, completion and total tokens.
    tokens: [i64; 3],
    tenant: Option<String>,
}

impl JobRow {
    fn new(job: &Job) -> Result<Self, StoreError> {
        let record = serde_json::to_string(job).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Backend,
                format!("cannot encode job {}: {e}", job.id),
            )
            .with_source(e)
        })?;
        let prompt = &job.spec.prompt;
        let head_end = prompt
            .char_indices()
            .nth(SUMMARY_PROMPT_CHARS + 1)
            .map_or(prompt.len(), |(i, _)| i);
        Ok(Self {
            id: job.id.to_string(),
            status: job.status.as_str(),
            created_at: nanos(job.created_at),
            finished_at: job.finished_at.map(nanos),
            record,
            prompt_head: prompt[..head_end].to_string(),
            steps: to_i64(job.steps.len() as u64),
            started_at: job.started_at.map(nanos),
            error: job.error.clone(),
            provider: job.provider.clone(),
            first_step: first_step_headline(job),
            tokens: [
                to_i64(job.usage.prompt_tokens),
                to_i64(job.usage.completion_tokens),
                to_i64(job.usage.total_tokens),
            ],
            tenant: job.spec.tenant.clone(),
        })
    }

    /// `?1`…`?14` of the insert and update statements.
    fn params(&self) -> [&dyn rusqlite::ToSql; 14] {
        [
            &self.id,
            &self.status,
            &self.created_at,
            &self.finished_at,
            &self.record,
            &self.prompt_head,
            &self.steps,
            &self.started_at,
            &self.error,
            &self.provider,
            &self.first_step,
            &self.tokens[0],
            &self.tokens[1],
            &self.tokens[2],
        ]
    }

    /// `?1`…`?15`: [`params`](JobRow::params) and the tenant.
    fn params_with_tenant(&self) -> [&dyn rusqlite::ToSql; 15] {
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n] = self.params();
        [a, b, c, d, e, f, g, h, i, j, k, l, m, n, &self.tenant]
    }
}

fn decode_job(record: &str) -> Result<Job, StoreError> {
    serde_json::from_str(record).map_err(|e| corrupt("a stored job", e))
}

/// The job in `row`'s first column (its `record`), decoded where SQLite holds the text.
fn decode_job_column(row: &rusqlite::Row<'_>, doing: &'static str) -> Result<Job, StoreError> {
    let record = row
        .get_ref(0)
        .and_then(|v| v.as_str().map_err(Into::into))
        .map_err(sql(doing))?;
    decode_job(record)
}

/// An event ready to be written: its columns.
struct EventRow {
    seq: i64,
    at: i64,
    kind: String,
}

fn job_exists(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| stmt.exists([id]))
        .map_err(sql("look up a job"))
}

fn last_seq(conn: &Connection, id: &str) -> Result<u64, StoreError> {
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?1")
        .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)))
        .map_err(sql("read the last event sequence number"))?;
    u64::try_from(seq).map_err(|e| corrupt("an event sequence number", e))
}

/// `status IN (?k, ?k+1, …)` for `n` statuses starting at parameter `first_param`.
fn status_in(n: usize, first_param: usize) -> String {
    let params: Vec<String> = (0..n).map(|i| format!("?{}", first_param + i)).collect();
    format!("status IN ({})", params.join(", "))
}

/// How many jobs have one of `statuses` (all jobs when empty): from the counts the triggers of
/// migration 3 keep (no scan of the jobs), or for one `tenant`'s jobs on its index.
fn count_jobs(
    conn: &Connection,
    statuses: &[&'static str],
    tenant: Option<&str>,
) -> Result<u64, StoreError> {
    let (count, mut conditions, mut values): (_, Vec<String>, Vec<rusqlite::types::Value>) =
        match tenant {
            None => ("SELECT COALESCE(SUM(n), 0) FROM job_counts", vec![], vec![]),
            Some(t) => (
                "SELECT COUNT(*) FROM jobs",
                vec!["tenant = ?1".into()],
                vec![t.to_string().into()],
            ),
        };
    if !statuses.is_empty() {
        conditions.push(status_in(statuses.len(), values.len() + 1));
        values.extend(statuses.iter().map(|s| s.to_string().into()));
    }
    let count_sql = if conditions.is_empty() {
        count.to_string()
    } else {
        format!("{count} WHERE {}", conditions.join(" AND "))
    };
    let total: i64 = conn
        .prepare_cached(&count_sql)
        .and_then(|mut stmt| stmt.query_row(rusqlite::params_from_iter(values), |row| row.get(0)))
        .map_err(sql("count jobs"))?;
    Ok(u64::try_from(total).unwrap_or(0))
}

/// One page of a job list, as SQL: statuses, keyset position, limit and offset.
struct PageQuery {
    statuses: Vec<&'static str>,
    limit: usize,
    offset: i64,
    /// `(created_at, id)` of the last job of the previous page.
    after: Option<(i64, String)>,
    tenant: Option<String>,
}

impl PageQuery {
    fn new(filter: &JobFilter) -> Self {
        let mut statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        Self {
            statuses,
            limit: filter.limit.min(MAX_PAGE_SIZE),
            offset: to_i64(filter.offset as u64),
            after: filter.after.map(|c| (c.created_nanos(), c.id.to_string())),
            tenant: filter.tenant.clone(),
        }
    }

    /// Selects `columns` of the page's jobs, newest first, and the total, from one snapshot;
    /// `item` makes an item and its position from a row. One row more than the page is read
    /// to know whether a next page exists.
    fn run<T>(
        &self,
        conn: &Connection,
        columns: &str,
        mut item: impl FnMut(&rusqlite::Row<'_>) -> Result<(T, JobCursor), StoreError>,
    ) -> Result<(Vec<T>, u64, Option<JobCursor>), StoreError> {
        let tx = conn
            .unchecked_transaction()
            .map_err(sql("start a read transaction"))?;
        let mut values: Vec<rusqlite::types::Value> =
            vec![to_i64(self.limit as u64 + 1).into(), self.offset.into()];
        let mut conditions = Vec::new();
        if let Some((at, id)) = &self.after {
            conditions.push("(created_at, id) < (?3, ?4)".to_string());
            values.push((*at).into());
            values.push(id.clone().into());
        }
        if let Some(tenant) = &self.tenant {
            conditions.push(format!("tenant = ?{}", values.len() + 1));
            values.push(tenant.clone().into());
        }
        if !self.statuses.is_empty() {
            conditions.push(status_in(self.statuses.len(), values.len() + 1));
            values.extend(self.statuses.iter().map(|s| s.to_string().into()));
        }
        let total = count_jobs(&tx, &self.statuses, self.tenant.as_deref())?;
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let page_sql = format!(
            "SELECT {columns} FROM jobs {filter} ORDER BY created_at DESC, id DESC \
             LIMIT ?1 OFFSET ?2"
        );
        let mut stmt = tx.prepare_cached(&page_sql).map_err(sql("list jobs"))?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(values))
            .map_err(sql("list jobs"))?;
        let mut items = Vec::with_capacity(self.limit + 1);
        let mut last = None;
        let mut next = None;
        while let Some(row) = rows.next().map_err(sql("list jobs"))? {
            if items.len() == self.limit {
                next = last;
                break;
            }
            let (value, at) = item(row)?;
            items.push(value);
            last = Some(at);
        }
        Ok((items, total, next))
    }
}

/// A summary from `id, status, prompt_head, steps, created_at, started_at, finished_at, error,
/// provider, first_step, prompt_tokens, completion_tokens, total_tokens, tenant`.
fn summary_from_row(row: &rusqlite::Row<'_>) -> Result<JobSummary, StoreError> {
    let text = |i: usize| -> Result<&str, StoreError> {
        row.get_ref(i)
            .and_then(|v| v.as_str().map_err(Into::into))
            .map_err(sql("read a job summary"))
    };
    let int = |i: usize| -> Result<Option<i64>, StoreError> {
        row.get::<_, Option<i64>>(i)
            .map_err(sql("read a job summary"))
    };
    let tokens = |i: usize| -> Result<u64, StoreError> {
        Ok(u64::try_from(int(i)?.unwrap_or(0)).unwrap_or(0))
    };
    let opt_text = |i: usize| -> Result<Option<String>, StoreError> {
        row.get::<_, Option<String>>(i)
            .map_err(sql("read a job summary"))
    };
    let id: JobId = text(0)?.parse().map_err(|e| corrupt("a job id", e))?;
    let status: JobStatus = text(1)?.parse().map_err(|e| corrupt("a job status", e))?;
    let created_at = int(4)?.ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("job {id} has no creation time"),
        )
    })?;
    Ok(JobSummary {
        id,
        status,
        prompt: shorten_prompt(text(2)?),
        steps: usize::try_from(int(3)?.unwrap_or(0)).unwrap_or(0),
        created_at: DateTime::from_timestamp_nanos(created_at),
        started_at: int(5)?.map(DateTime::from_timestamp_nanos),
        finished_at: int(6)?.map(DateTime::from_timestamp_nanos),
        error: opt_text(7)?,
        provider: opt_text(8)?,
        first_step: opt_text(9)?,
        usage: TokenUsage {
            prompt_tokens: tokens(10)?,
            completion_tokens: tokens(11)?,
            total_tokens: tokens(12)?,
        },
        tenant: opt_text(13)?,
    })
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        self.write(WriteOp::Insert(JobRow::new(job)?))
            .await
            .map(drop)
    }

    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        self.write(WriteOp::Update(JobRow::new(job)?))
            .await
            .map(drop)
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read_point(move |conn| {
            // The key on the stack, and the record decoded where SQLite holds it: no copies.
            let mut key = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let key: &str = id.as_uuid().hyphenated().encode_lower(&mut key);
            let mut stmt = conn
                .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
                .map_err(sql("read a job"))?;
            let mut rows = stmt.query([key]).map_err(sql("read a job"))?;
            match rows.next().map_err(sql("read a job"))? {
                None => Ok(None),
                Some(row) => decode_job_column(row, "read a job").map(Some),
            }
        })
        .await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let query = PageQuery::new(filter);
        self.read(move |conn| {
            let (jobs, total, next) = query.run(conn, "record", |row| {
                let job = decode_job_column(row, "list jobs")?;
                let at = JobCursor::of(job.created_at, job.id);
                Ok((job, at))
            })?;
            Ok(JobPage { jobs, total, next })
        })
        .await
    }

    async fn list_summaries(&self, filter: &JobFilter) -> Result<SummaryPage, StoreError> {
        let query = PageQuery::new(filter);
        self.read(move |conn| {
            let (jobs, total, next) = query.run(
                conn,
                "id, status, prompt_head, steps, created_at, started_at, finished_at, error, \
                 provider, first_step, prompt_tokens, completion_tokens, total_tokens, tenant",
                |row| {
                    let summary = summary_from_row(row)?;
                    let at = JobCursor::of(summary.created_at, summary.id);
                    Ok((summary, at))
                },
            )?;
            Ok(SummaryPage { jobs, total, next })
        })
        .await
    }

    async fn delete_job(&self, id: JobId) -> Result<bool, StoreError> {
        match self.write(WriteOp::Delete(vec![id])).await? {
            WriteOutcome::Deleted(n) => Ok(n > 0),
            WriteOutcome::Done => Ok(false),
        }
    }

    async fn delete_jobs(&self, ids: &[JobId]) -> Result<usize, StoreError> {
        match self.write(WriteOp::Delete(ids.to_vec())).await? {
            WriteOutcome::Deleted(n) => Ok(n),
            WriteOutcome::Done => Ok(0),
        }
    }

    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(|event| {
                let kind = serde_json::to_string(&event.kind).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Backend,
                        format!("cannot encode an event of job {id}: {e}"),
                    )
                    .with_source(e)
                })?;
                Ok(EventRow {
                    seq: to_i64(event.seq),
                    at: nanos(event.at),
                    kind,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Check the order within the batch here; the writer checks it against the stored log.
        check_events(id, 0, events)?;
        let first = events.first().map_or(0, |e| e.seq);
        self.write(WriteOp::Append { id, first, rows })
            .await
            .map(drop)
    }

    async fn events(
        &self,
        id: JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let after = to_i64(after);
        let limit = to_i64(limit as u64);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at, kind FROM events WHERE job_id = ?1 AND seq > ?2 \
                     ORDER BY seq LIMIT ?3",
                )
                .map_err(sql("read events"))?;
            let rows = stmt
                .query_map(params![id.to_string(), after, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sql("read events"))?;
            rows.into_iter()
                .map(|(seq, at, kind)| {
                    Ok(JobEvent {
                        job_id: id,
                        seq: u64::try_from(seq)
                            .map_err(|e| corrupt("an event sequence number", e))?,
                        at: DateTime::from_timestamp_nanos(at),
                        kind: serde_json::from_str::<EventKind>(&kind)
                            .map_err(|e| corrupt("a stored event", e))?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn last_seq(&self, id: JobId) -> Result<u64, StoreError> {
        self.read(move |conn| last_seq(conn, &id.to_string())).await
    }

    async fn finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let cutoff = nanos(cutoff);
        let limit = to_i64(limit as u64);
        self.read(move |conn| {
            let ids = conn
                .prepare_cached(
                    "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                     AND status NOT IN ('queued', 'running') ORDER BY finished_at LIMIT ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![cutoff, limit], |row| row.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(sql("find finished jobs"))?;
            ids.iter()
                .map(|id| id.parse::<JobId>().map_err(|e| corrupt("a job id", e)))
                .collect()
        })
        .await
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached("SELECT status, n FROM job_counts")
                .and_then(|mut stmt| {
                    stmt.query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(sql("count jobs by status"))?;
            let mut counts: Vec<(JobStatus, u64)> =
                JobStatus::ALL.into_iter().map(|s| (s, 0)).collect();
            for (status, n) in rows {
                let status: JobStatus = status.parse().map_err(|e| corrupt("a job status", e))?;
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                    slot.1 = u64::try_from(n).unwrap_or(0);
                }
            }
            Ok(counts)
        })
        .await
    }
}
