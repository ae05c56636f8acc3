//! The [`JobStore`] trait: jobs, their event logs and results.
//!
//! Implementations: [`MemoryStore`](crate::store::memory::MemoryStore) and, with the `sqlite`
//! feature (default), [`SqliteStore`](crate::store::sqlite::SqliteStore).
//! [`CachedStore`](crate::store::cached::CachedStore) wraps either and answers repeated reads of
//! finished jobs from memory.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::job::{Job, JobEvent, JobId, JobStatus, Step, StepKind, TokenUsage};

pub mod cached;
pub mod memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The largest page [`JobStore::list_jobs`] returns.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Which jobs to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in one of these statuses (empty = all).
    pub statuses: Vec<JobStatus>,
    /// Page size (at most [`MAX_PAGE_SIZE`]).
    pub limit: usize,
    /// How many to skip (newest first), after `after`. Deep offsets cost time in proportion
    /// to the offset; a cursor does not.
    pub offset: usize,
    /// Only jobs older than this position (keyset pagination: a page's
    /// [`next`](JobPage::next) cursor).
    pub after: Option<JobCursor>,
    /// Only jobs of this tenant ([`JobSpec::tenant`](crate::JobSpec::tenant)); `None`: every
    /// job, whoever owns it.
    pub tenant: Option<String>,
}

impl Default for JobFilter {
    fn default() -> Self {
        Self {
            statuses: Vec::new(),
            limit: 50,
            offset: 0,
            after: None,
            tenant: None,
        }
    }
}

impl JobFilter {
    /// Only jobs with this status.
    pub fn with_status(mut self, status: JobStatus) -> Self {
        self.statuses.push(status);
        self
    }

    /// Sets the page.
    pub fn page(mut self, limit: usize, offset: usize) -> Self {
        self.limit = limit;
        self.offset = offset;
        self
    }

    /// Only jobs after `cursor` (older, newest first): the page that follows the one whose
    /// `next` it is.
    pub fn after(mut self, cursor: JobCursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Only the jobs of `tenant`.
    pub fn of_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Whether `job` passes the filter's status and tenant conditions (not its page).
    pub fn matches(&self, job: &Job) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&job.status))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| job.spec.tenant.as_deref() == Some(t))
    }
}

/// A position in the newest-first order of jobs: just past the job created at `created_at`
/// with id `id` (the order is by creation time, then id). As text (`Display`/`FromStr`) it is
/// `<nanoseconds since the epoch>.<job id>`, which clients treat as opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobCursor {
    /// The creation time of the last job of the previous page.
    pub created_at: DateTime<Utc>,
    /// Its id.
    pub id: JobId,
}

impl JobCursor {
    /// The position just past `job`.
    pub fn of(created_at: DateTime<Utc>, id: JobId) -> Self {
        Self { created_at, id }
    }

    /// The creation time in nanoseconds since the epoch (how the stores keep it).
    pub fn created_nanos(&self) -> i64 {
        self.created_at.timestamp_nanos_opt().unwrap_or(i64::MAX)
    }
}

impl std::fmt::Display for JobCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_nanos(), self.id)
    }
}

impl std::str::FromStr for JobCursor {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        let bad = || {
            crate::Error::invalid(
                "cursor",
                "cursor: not a cursor of this server (use the `next` of a page)",
            )
        };
        let (nanos, id) = s.trim().split_once('.').ok_or_else(bad)?;
        let nanos: i64 = nanos.parse().map_err(|_| bad())?;
        let id: JobId = id.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at: DateTime::from_timestamp_nanos(nanos),
            id,
        })
    }
}

/// One page of jobs, newest first, with the total that matched.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPage {
    /// The jobs on this page.
    pub jobs: Vec<Job>,
    /// How many jobs matched the filter in all.
    pub total: u64,
    /// Where the next (older) page starts; `None` on the last page.
    pub next: Option<JobCursor>,
}

/// How many characters of the prompt a [`JobSummary`] keeps.
pub const SUMMARY_PROMPT_CHARS: usize = 200;

/// What a list of jobs shows of each: a handful of fields, without the job's plan, steps and
/// events, so that a store can answer a page without decoding whole records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job.
    pub id: JobId,
    /// Its status.
    pub status: JobStatus,
    /// The prompt, shortened to [`SUMMARY_PROMPT_CHARS`] characters (then ending in `…`).
    pub prompt: String,
    /// Number of step records (run, failed or skipped).
    pub steps: usize,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// Start time.
    pub started_at: Option<DateTime<Utc>>,
    /// Finish time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
    /// The LLM provider that planned it.
    pub provider: Option<String>,
    /// What its first step does ([`step_headline`] of its first step record, else of its first
    /// explicit step).
    pub first_step: Option<String>,
    /// LLM tokens used.
    pub usage: TokenUsage,
    /// The tenant that owns it.
    pub tenant: Option<String>,
}

impl JobSummary {
    /// The summary of a job.
    pub fn from_job(job: &Job) -> Self {
        Self {
            id: job.id,
            status: job.status,
            prompt: shorten_prompt(&job.spec.prompt),
            steps: job.steps.len(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            error: job.error.clone(),
            provider: job.provider.clone(),
            first_step: first_step_headline(job),
            usage: job.usage,
            tenant: job.spec.tenant.clone(),
        }
    }
}

/// [`step_headline`] of a job's first step record, else of its first explicit step.
pub fn first_step_headline(job: &Job) -> Option<String> {
    job.steps
        .first()
        .map(|r| &r.step)
        .or_else(|| job.spec.steps.as_ref().and_then(|s| s.first()))
        .map(step_headline)
}

/// At most `max` characters of `text`'s first non-empty line, with `…` when cut.
fn headline(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if out.len() < text.trim().len() {
        out.push('…');
    }
    out
}

/// One line saying what a step does (at most 120 characters): its description, else its
/// command, code or path.
pub fn step_headline(step: &Step) -> String {
    if let Some(d) = step.description.as_deref().filter(|d| !d.trim().is_empty()) {
        return headline(d, 120);
    }
    match &step.kind {
        StepKind::Shell { command } => headline(command, 120),
        StepKind::Python { code, .. } => headline(code, 120),
        StepKind::WriteFile { path, .. } => format!("write {}", headline(path, 110)),
    }
}

/// The first [`SUMMARY_PROMPT_CHARS`] characters of `prompt`, with `…` when it was longer.
pub fn shorten_prompt(prompt: &str) -> String {
    match prompt.char_indices().nth(SUMMARY_PROMPT_CHARS) {
        None => prompt.to_string(),
        Some((end, _)) => {
            let mut short = String::with_capacity(end + '…'.len_utf8());
            short.push_str(&prompt[..end]);
            short.push('…');
            short
        }
    }
}

/// One page of job summaries, newest first, with the total that matched.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryPage {
    /// The summaries on this page.
    pub jobs: Vec<JobSummary>,
    /// How many jobs matched the filter in all.
    pub total: u64,
    /// Where the next (older) page starts; `None` on the last page.
    pub next: Option<JobCursor>,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Inserting a job whose id exists.
    AlreadyExists,
    /// Updating or appending to a job that does not exist.
    NotFound,
    /// An event's sequence number is not greater than the last stored one.
    SequenceConflict,
    /// The database is busy or temporarily unavailable.
    Busy,
    /// Stored data could not be decoded, or the database is unusable.
    Corrupt,
    /// The disk (or the database) is full: nothing more can be written until space is freed.
    Full,
    /// Anything else.
    Backend,
}

/// A job store failure.
#[derive(Debug, thiserror::Error)]
#[error("job store: {message}")]
#[non_exhaustive]
pub struct StoreError {
    /// What kind.
    pub kind: StoreErrorKind,
    /// What happened.
    pub message: String,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A new error.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Sets the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Busy
    }
}

/// Persists jobs and their events.
///
/// Events of a job have strictly increasing `seq` numbers; the store refuses an event whose `seq`
/// is not greater than the last one stored for that job.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job. Fails with `AlreadyExists` if the id is taken.
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError>;

    /// Replaces a stored job's record. Fails with `NotFound` if absent.
    async fn update_job(&self, job: &Job) -> Result<(), StoreError>;

    /// One job.
    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// One job, shared: for readers that only look at it. The default wraps
    /// [`get_job`](JobStore::get_job)'s record in a new `Arc` each time; a store that keeps
    /// records in memory ([`CachedStore`](cached::CachedStore)) hands out the same one until
    /// the job is written again, so `Arc::ptr_eq` on two answers tells an unchanged record.
    async fn get_job_shared(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError> {
        Ok(self.get_job(id).await?.map(Arc::new))
    }

    /// Jobs matching a filter, newest first.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError>;

    /// Summaries of the jobs matching a filter, newest first: the same jobs and total as
    /// [`list_jobs`](JobStore::list_jobs). The default summarises `list_jobs`'s page; a store
    /// that can read the few fields without the whole records overrides it.
    async fn list_summaries(&self, filter: &JobFilter) -> Result<SummaryPage, StoreError> {
        let page = self.list_jobs(filter).await?;
        Ok(SummaryPage {
            jobs: page.jobs.iter().map(JobSummary::from_job).collect(),
            total: page.total,
            next: page.next,
        })
    }

    /// Removes a job and its events. Returns whether it existed.
    async fn delete_job(&self, id: JobId) -> Result<bool, StoreError>;

    /// Appends events to a job's log (in order).
    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError>;

    /// Events of a job with `seq > after`, in order, at most `limit`.
    async fn events(
        &self,
        id: JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError>;

    /// The highest event `seq` stored for a job (0 when none).
    async fn last_seq(&self, id: JobId) -> Result<u64, StoreError>;

    /// Ids of at most `limit` terminal jobs that finished before `cutoff`, those that finished
    /// first first (for retention, which deletes them in batches).
    async fn finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Removes jobs and their events; returns how many existed. The default deletes them one
    /// by one; a store that can delete a batch at once (one transaction) overrides it.
    async fn delete_jobs(&self, ids: &[JobId]) -> Result<usize, StoreError> {
        let mut removed = 0;
        for id in ids {
            if self.delete_job(*id).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Number of jobs per status (for metrics).
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError>;
}

/// Forwards every method, provided ones too (the lint names any left out).
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: JobStore + ?Sized> JobStore for Arc<T> {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        (**self).insert_job(job).await
    }
    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        (**self).update_job(job).await
    }
    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        (**self).get_job(id).await
    }
    async fn get_job_shared(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError> {
        (**self).get_job_shared(id).await
    }
    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        (**self).list_jobs(filter).await
    }
    async fn list_summaries(&self, filter: &JobFilter) -> Result<SummaryPage, StoreError> {
        (**self).list_summaries(filter).await
    }
    async fn delete_job(&self, id: JobId) -> Result<bool, StoreError> {
        (**self).delete_job(id).await
    }
    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        (**self).append_events(id, events).await
    }
    async fn events(
        &self,
        id: JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        (**self).events(id, after, limit).await
    }
    async fn last_seq(&self, id: JobId) -> Result<u64, StoreError> {
        (**self).last_seq(id).await
    }
    async fn finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        (**self).finished_before(cutoff, limit).await
    }
    async fn delete_jobs(&self, ids: &[JobId]) -> Result<usize, StoreError> {
        (**self).delete_jobs(ids).await
    }
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        (**self).count_by_status().await
    }
}
