//! [`CachedStore`]: a [`JobStore`] that keeps finished jobs' records in memory.
//!
//! A finished job's record rarely changes, and it is what a client polling `GET /status` reads
//! again and again. This decorator answers those reads from a bounded cache of shared records
//! ([`JobStore::get_job_shared`]), so the store below is read once per record, not once per
//! request. Every other method goes to the store below unchanged.
//!
//! - **Only finished jobs** (terminal statuses) are kept: a running job's record is replaced at
//!   every step, so caching it would only churn.
//! - **Every write invalidates**: `insert_job`, `update_job`, `delete_job` and `delete_jobs` drop
//!   the cached records of the jobs they name once the write has been applied (or has failed).
//! - **No stale fill**: a read that missed fetches the record from the store below while a write
//!   may be applying. Each write bumps a counter of its id's stripe before it drops the entry;
//!   a read keeps what it fetched only if no write of its stripe ended in between, and undoes
//!   its own insert if one ended meanwhile. So a record written after a read began is never
//!   hidden behind the older one that read fetched.
//! - **Bounded by size**: records are weighed by an estimate of the memory they hold (their
//!   inline size plus the length of their JSON form), and the least useful go first when the weights exceed the capacity
//!   ([`quick_cache`]'s CLOCK-Pro policy: a scan of many jobs read once does not push out those
//!   read often). A record heavier than an eighth of the capacity is not kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{JobFilter, JobPage, JobStore, StoreError, SummaryPage};
use crate::job::{Job, JobEvent, JobId, JobStatus};

/// Stripes of the write counters: a write makes concurrent fills of its stripe's jobs give up
/// caching, so more stripes mean fewer fills lost to unrelated writes.
const STRIPES: usize = 64;

/// A capacity for [`CachedStore::new`]: 4 MiB of records (about a thousand finished jobs of
/// a few steps).
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 20;

/// A [`JobStore`] that answers reads of finished jobs from a bounded in-memory cache; see the
/// [module docs](self).
pub struct CachedStore<S> {
    inner: S,
    records: quick_cache::sync::Cache<JobId, Entry, ByWeight>,
    /// Bumped by every write of a job of the stripe, after the write and before its entry is
    /// dropped.
    writes: [AtomicU64; STRIPES],
    /// The heaviest record kept.
    max_weight: u64,
}

#[derive(Clone)]
struct Entry {
    job: Arc<Job>,
    weight: u64,
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<JobId, Entry> for ByWeight {
    fn weight(&self, _id: &JobId, entry: &Entry) -> u64 {
        entry.weight
    }
}

impl<S: JobStore> CachedStore<S> {
    /// Wraps `inner`, keeping up to about `capacity_bytes` of finished jobs' records (each
    /// weighed by an estimate of its memory). A capacity of 0 keeps nothing.
    pub fn new(inner: S, capacity_bytes: u64) -> Self {
        // A typical finished record is a few KiB.
        let estimated_items = usize::try_from(capacity_bytes / 4096)
            .unwrap_or(usize::MAX)
            .max(16);
        Self {
            inner,
            records: quick_cache::sync::Cache::with_weighter(
                estimated_items,
                capacity_bytes,
                ByWeight,
            ),
            writes: std::array::from_fn(|_| AtomicU64::new(0)),
            max_weight: capacity_bytes / 8,
        }
    }

    /// The store below.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How many records are cached now.
    pub fn cached(&self) -> usize {
        self.records.len()
    }

    fn stripe(&self, id: JobId) -> &AtomicU64 {
        // The low bits of a v4 id are random.
        let low = id.as_uuid().as_u128() as usize;
        &self.writes[low % STRIPES]
    }

    /// After a write of `id` (applied or failed): ends every fill of its stripe that began
    /// before, then drops the cached record.
    fn written(&self, id: JobId) {
        self.stripe(id).fetch_add(1, Ordering::SeqCst);
        self.records.remove(&id);
    }

    /// Keeps `job`, just read from the store below, unless a write of its stripe ended since
    /// `before` was read (then the store may already hold a newer record).
    fn fill(&self, job: &Arc<Job>, before: u64) {
        if !job.status.is_terminal() {
            return;
        }
        let stripe = self.stripe(job.id);
        if stripe.load(Ordering::SeqCst) != before {
            return;
        }
        let weight = memory_estimate(job);
        if weight > self.max_weight {
            return;
        }
        self.records.insert(
            job.id,
            Entry {
                job: Arc::clone(job),
                weight,
            },
        );
        // A write that ended between the check above and the insert may have dropped the entry
        // before it was there: undo the insert (only ours; a newer fill stays).
        if stripe.load(Ordering::SeqCst) != before {
            self.records
                .remove_if(&job.id, |entry| Arc::ptr_eq(&entry.job, job));
        }
    }
}

/// About what `job` holds in memory: its inline parts, and the length of its JSON form for
/// what they point to (the strings, and what an allocation costs besides).
fn memory_estimate(job: &Job) -> u64 {
    let inline = std::mem::size_of::<Job>()
        + job.steps.len() * std::mem::size_of::<crate::job::StepRecord>();
    json_len(job).saturating_add(inline as u64)
}

/// The length of `job`'s JSON form, counted without keeping it.
fn json_len(job: &Job) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, job) {
        Ok(()) => count.0,
        // Not encodable (never for a stored record): too heavy to keep.
        Err(_) => u64::MAX,
    }
}

#[async_trait]
impl<S: JobStore> JobStore for CachedStore<S> {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        let result = self.inner.insert_job(job).await;
        self.written(job.id);
        result
    }

    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        let result = self.inner.update_job(job).await;
        self.written(job.id);
        result
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.get_job_shared(id).await?.map(Arc::unwrap_or_clone))
    }

    async fn get_job_shared(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError> {
        if let Some(entry) = self.records.get(&id) {
            return Ok(Some(entry.job));
        }
        let before = self.stripe(id).load(Ordering::SeqCst);
        let Some(job) = self.inner.get_job(id).await? else {
            return Ok(None);
        };
        let job = Arc::new(job);
        self.fill(&job, before);
        Ok(Some(job))
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        self.inner.list_jobs(filter).await
    }

    async fn list_summaries(&self, filter: &JobFilter) -> Result<SummaryPage, StoreError> {
        self.inner.list_summaries(filter).await
    }

    async fn delete_job(&self, id: JobId) -> Result<bool, StoreError> {
        let result = self.inner.delete_job(id).await;
        self.written(id);
        result
    }

    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        self.inner.append_events(id, events).await
    }

    async fn events(
        &self,
        id: JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.inner.events(id, after, limit).await
    }

    async fn last_seq(&self, id: JobId) -> Result<u64, StoreError> {
        self.inner.last_seq(id).await
    }

    async fn finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.inner.finished_before(cutoff, limit).await
    }

    async fn delete_jobs(&self, ids: &[JobId]) -> Result<usize, StoreError> {
        let result = self.inner.delete_jobs(ids).await;
        for id in ids {
            self.written(*id);
        }
        result
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        self.inner.count_by_status().await
    }
}
