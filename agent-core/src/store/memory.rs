//! An in-memory job store.
//!
//! [`MemoryStore`] keeps everything in maps behind one `RwLock`: nothing survives the process. It
//! is the store for tests, benchmarks and deployments that need no history. Every operation is
//! `O(log n)` in the number of jobs (plus the size of what it returns), except
//! [`finished_before`](JobStore::finished_before), which scans the finished jobs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::job::{Job, JobEvent, JobId, JobStatus};
use crate::store::{
    JobCursor, JobFilter, JobPage, JobStore, JobSummary, StoreError, StoreErrorKind, SummaryPage,
    MAX_PAGE_SIZE,
};

/// Sort key of a job: listed by `created_at`, newest first, ties broken by id (descending) —
/// the same order as the SQLite store.
type OrderKey = (DateTime<Utc>, JobId);

/// A [`JobStore`] in memory. Cheap to clone: clones share the same data.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<JobId, Entry>,
    /// Every job, by [`OrderKey`].
    all: BTreeSet<OrderKey>,
    /// Jobs by status, by [`OrderKey`].
    by_status: HashMap<JobStatus, BTreeSet<OrderKey>>,
}

#[derive(Debug)]
struct Entry {
    job: Job,
    events: Vec<JobEvent>,
}

fn key(job: &Job) -> OrderKey {
    (job.created_at, job.id)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (every update is
        // checked before it mutates), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn index(&mut self, job: &Job) {
        self.all.insert(key(job));
        self.by_status
            .entry(job.status)
            .or_default()
            .insert(key(job));
    }

    fn unindex(&mut self, job: &Job) {
        self.all.remove(&key(job));
        if let Some(set) = self.by_status.get_mut(&job.status) {
            set.remove(&key(job));
        }
    }
}

fn not_found(id: JobId) -> StoreError {
    StoreError::new(StoreErrorKind::NotFound, format!("job {id} not found"))
}

/// Checks a batch of events for job `id` whose last stored seq is `last`.
pub(crate) fn check_events(id: JobId, last: u64, events: &[JobEvent]) -> Result<(), StoreError> {
    let mut prev = last;
    for event in events {
        if event.job_id != id {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                format!(
                    "an event of job {} cannot be appended to job {id}",
                    event.job_id
                ),
            ));
        }
        if event.seq <= prev {
            return Err(StoreError::new(
                StoreErrorKind::SequenceConflict,
                format!(
                    "event seq {} of job {id} is not greater than {prev}",
                    event.seq
                ),
            ));
        }
        prev = event.seq;
    }
    Ok(())
}

/// The keys of `set` older than `after`, newest first.
fn older(
    set: &BTreeSet<OrderKey>,
    after: Option<JobCursor>,
) -> impl Iterator<Item = OrderKey> + '_ {
    match after {
        Some(c) => set.range(..(c.created_at, c.id)),
        None => set.range(..),
    }
    .rev()
    .copied()
}

/// A page of `filter` by a scan of every job, newest first (tenant filters: the memory store
/// keeps no index by tenant).
fn scanned_keys(inner: &Inner, filter: &JobFilter) -> (Vec<OrderKey>, u64) {
    let matching = |k: &OrderKey| inner.jobs.get(&k.1).is_some_and(|e| filter.matches(&e.job));
    let total = inner.all.iter().filter(|k| matching(k)).count();
    let keys = older(&inner.all, filter.after)
        .filter(|k| matching(k))
        .skip(filter.offset)
        .take(filter.limit.min(MAX_PAGE_SIZE) + 1)
        .collect();
    (keys, total as u64)
}

/// The keys of a page of `filter`, newest first, the total that matched and the next page's
/// cursor.
fn page_keys(inner: &Inner, filter: &JobFilter) -> (Vec<OrderKey>, u64, Option<JobCursor>) {
    let limit = filter.limit.min(MAX_PAGE_SIZE);
    if filter.tenant.is_some() {
        let (mut keys, total) = scanned_keys(inner, filter);
        let next = (keys.len() > limit).then(|| {
            keys.truncate(limit);
            keys.last()
                .map(|&(created_at, id)| JobCursor::of(created_at, id))
        });
        return (keys, total, next.flatten());
    }
    let mut statuses = filter.statuses.clone();
    statuses.sort();
    statuses.dedup();
    // One more than the page, to know whether a next page exists.
    let mut keys: Vec<OrderKey> = if statuses.is_empty() {
        older(&inner.all, filter.after)
            .skip(filter.offset)
            .take(limit + 1)
            .collect()
    } else {
        // The newest `offset + limit + 1` of each status, merged newest first.
        let mut merged: Vec<OrderKey> = statuses
            .iter()
            .filter_map(|s| inner.by_status.get(s))
            .flat_map(|set| older(set, filter.after).take(filter.offset + limit + 1))
            .collect();
        merged.sort_unstable_by(|a, b| b.cmp(a));
        merged
            .into_iter()
            .skip(filter.offset)
            .take(limit + 1)
            .collect()
    };
    let next = if keys.len() > limit {
        keys.truncate(limit);
        keys.last()
            .map(|&(created_at, id)| JobCursor::of(created_at, id))
    } else {
        None
    };
    let total = if statuses.is_empty() {
        inner.all.len()
    } else {
        statuses
            .iter()
            .filter_map(|s| inner.by_status.get(s))
            .map(BTreeSet::len)
            .sum()
    };
    (keys, total as u64, next)
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        let mut inner = self.write();
        if inner.jobs.contains_key(&job.id) {
            return Err(StoreError::new(
                StoreErrorKind::AlreadyExists,
                format!("job {} already exists", job.id),
            ));
        }
        inner.index(job);
        inner.jobs.insert(
            job.id,
            Entry {
                job: job.clone(),
                events: Vec::new(),
            },
        );
        Ok(())
    }

    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        let mut inner = self.write();
        let old = match inner.jobs.get_mut(&job.id) {
            Some(entry) => std::mem::replace(&mut entry.job, job.clone()),
            None => return Err(not_found(job.id)),
        };
        if old.status != job.status || old.created_at != job.created_at {
            inner.unindex(&old);
            inner.index(job);
        }
        Ok(())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.read().jobs.get(&id).map(|entry| entry.job.clone()))
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let inner = self.read();
        let (keys, total, next) = page_keys(&inner, filter);
        let jobs = keys
            .iter()
            .filter_map(|(_, id)| inner.jobs.get(id).map(|e| e.job.clone()))
            .collect();
        Ok(JobPage { jobs, total, next })
    }

    async fn list_summaries(&self, filter: &JobFilter) -> Result<SummaryPage, StoreError> {
        let inner = self.read();
        let (keys, total, next) = page_keys(&inner, filter);
        let jobs = keys
            .iter()
            .filter_map(|(_, id)| inner.jobs.get(id).map(|e| JobSummary::from_job(&e.job)))
            .collect();
        Ok(SummaryPage { jobs, total, next })
    }

    async fn delete_job(&self, id: JobId) -> Result<bool, StoreError> {
        let mut inner = self.write();
        match inner.jobs.remove(&id) {
            Some(entry) => {
                inner.unindex(&entry.job);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        let mut inner = self.write();
        let entry = inner.jobs.get_mut(&id).ok_or_else(|| not_found(id))?;
        let last = entry.events.last().map_or(0, |e| e.seq);
        check_events(id, last, events)?;
        entry.events.extend_from_slice(events);
        Ok(())
    }

    async fn events(
        &self,
        id: JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let inner = self.read();
        let Some(entry) = inner.jobs.get(&id) else {
            return Ok(Vec::new());
        };
        let start = entry.events.partition_point(|e| e.seq <= after);
        Ok(entry.events[start..].iter().take(limit).cloned().collect())
    }

    async fn last_seq(&self, id: JobId) -> Result<u64, StoreError> {
        Ok(self
            .read()
            .jobs
            .get(&id)
            .and_then(|e| e.events.last())
            .map_or(0, |e| e.seq))
    }

    async fn finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let inner = self.read();
        let mut done: Vec<(DateTime<Utc>, JobId)> = inner
            .by_status
            .iter()
            .filter(|(status, _)| status.is_terminal())
            .flat_map(|(_, set)| set.iter())
            .filter_map(|(_, id)| inner.jobs.get(id))
            .filter_map(|e| {
                e.job
                    .finished_at
                    .filter(|at| *at < cutoff)
                    .map(|at| (at, e.job.id))
            })
            .collect();
        done.sort_unstable();
        Ok(done.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        let inner = self.read();
        Ok(JobStatus::ALL
            .into_iter()
            .map(|s| (s, inner.by_status.get(&s).map_or(0, |set| set.len() as u64)))
            .collect())
    }
}
