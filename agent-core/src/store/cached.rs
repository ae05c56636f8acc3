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
//!   may be applying. Each write, once it has ended, bumps a counter of its id's stripe and
//!   drops the entry under the stripe's lock; a read keeps what it fetched only if, under the
//!   same lock, no write of its stripe has ended since it began. So once a write has returned,
//!   no read answers the record it replaced. (A write whose future is dropped is treated as
//!   ended then; a store below that still applies it afterwards can leave the older record
//!   cached until it is written again or evicted.)
//! - **Bounded by size**: records are weighed by an estimate of the memory they hold (their
//!   inline size plus the length of their JSON form), and the least useful go first when the weights exceed the capacity
//!   ([`quick_cache`]'s CLOCK-Pro policy: a scan of many jobs read once does not push out those
//!   read often). A record heavier than an eighth of the capacity (or than one shard of the
//!   cache holds) is not kept.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{JobFilter, JobPage, JobStore, StoreError, SummaryPage};
use crate::job::{Job, JobEvent, JobId, JobStatus};

/// Stripes of the write counters: a write makes concurrent fills of its stripe's jobs give up
/// caching, so more stripes mean fewer fills lost to unrelated writes.
const STRIPES: usize = 64;

/// A capacity for [`CachedStore::new`]: 3 MiB of records (about 750 finished jobs of a few
/// steps; what the bundled server keeps by default).
pub const DEFAULT_CACHE_BYTES: u64 = 3 << 20;

/// A [`JobStore`] that answers reads of finished jobs from a bounded in-memory cache; see the
/// [module docs](self).
pub struct CachedStore<S> {
    inner: S,
    records: quick_cache::sync::Cache<JobId, Entry, ByWeight>,
    /// Bumped by every write of a job of the stripe once it has ended, with its entry dropped
    /// under the same lock.
    writes: [Mutex<u64>; STRIPES],
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
        let records =
            quick_cache::sync::Cache::with_weighter(estimated_items, capacity_bytes, ByWeight);
        // The cache refuses an item over the hot part of one shard (about 97% of it).
        let max_weight = (capacity_bytes / 8).min(records.shard_capacity() / 10 * 9);
        Self {
            inner,
            records,
            writes: std::array::from_fn(|_| Mutex::new(0)),
            max_weight,
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

    fn stripe(&self, id: JobId) -> MutexGuard<'_, u64> {
        // The low bits of a v4 id are random.
        let low = id.as_uuid().as_u128() as usize;
        self.writes[low % STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// After a write of `id` (applied, failed or abandoned): ends every fill of its stripe that
    /// began before, and drops the cached record, in one step with respect to fills.
    fn written(&self, id: JobId) {
        let mut stripe = self.stripe(id);
        *stripe = stripe.wrapping_add(1);
        self.records.remove(&id);
    }

    /// Keeps `job`, just read from the store below, unless a write of its stripe ended since
    /// `before` was read (then the store may already hold a newer record). The check and the
    /// insert hold the stripe, so no write can end between them.
    fn fill(&self, job: &Arc<Job>, before: u64) {
        if !job.status.is_terminal() {
            return;
        }
        let weight = memory_estimate(job);
        if weight > self.max_weight {
            return;
        }
        let stripe = self.stripe(job.id);
        if *stripe != before {
            return;
        }
        self.records.insert(
            job.id,
            Entry {
                job: Arc::clone(job),
                weight,
            },
        );
        drop(stripe);
    }

    /// Runs the write `write` of the jobs `ids`, then [`written`](Self::written) for each —
    /// also when the write's future is dropped before it ends (the store below may still apply
    /// it).
    async fn writing<T>(&self, ids: &[JobId], write: impl Future<Output = T>) -> T {
        struct Written<'a, S: JobStore>(&'a CachedStore<S>, &'a [JobId]);
        impl<S: JobStore> Drop for Written<'_, S> {
            fn drop(&mut self) {
                for id in self.1 {
                    self.0.written(*id);
                }
            }
        }
        let _written = Written(self, ids);
        write.await
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
        self.writing(&[job.id], self.inner.insert_job(job)).await
    }

    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        self.writing(&[job.id], self.inner.update_job(job)).await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.get_job_shared(id).await?.map(Arc::unwrap_or_clone))
    }

    async fn get_job_shared(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError> {
        if let Some(entry) = self.records.get(&id) {
            return Ok(Some(entry.job));
        }
        let before = *self.stripe(id);
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
        self.writing(&[id], self.inner.delete_job(id)).await
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
        self.writing(ids, self.inner.delete_jobs(ids)).await
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        self.inner.count_by_status().await
    }
}
