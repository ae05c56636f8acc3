//! Encoded `GET /status` answers of finished jobs, kept while their record is unchanged.
//!
//! A client polls a job's status until it ends, and often on after. A finished job without a
//! reachable sandbox always gets the same answer, so the first request encodes it and the next
//! ones send the same bytes. An answer is tied to the exact shared record it was made from
//! (the store's [`get_job_shared`](agent_core::JobStore::get_job_shared), which hands out one
//! `Arc` per record until the job is written again): a rewritten or deleted job has a new
//! record, or none, so an old answer is never sent. With a store that does not cache records,
//! each read is a new `Arc` and nothing is reused (correct, only slower).

use std::sync::{Arc, Weak};

use agent_core::{Job, JobId};
use bytes::Bytes;

/// The bounded cache of encoded answers; see the [module docs](self).
pub(crate) struct StatusAnswers {
    answers: quick_cache::sync::Cache<JobId, Answer, ByLength>,
}

#[derive(Clone)]
struct Answer {
    /// The record it was made from: a `Weak` keeps the allocation, so its address cannot be
    /// reused by another record while the answer is kept.
    record: Weak<Job>,
    body: Bytes,
}

#[derive(Clone)]
struct ByLength;

impl quick_cache::Weighter<JobId, Answer> for ByLength {
    fn weight(&self, _id: &JobId, answer: &Answer) -> u64 {
        // The body, and about what an entry and a `Job` allocation cost besides.
        answer.body.len() as u64 + 128
    }
}

impl StatusAnswers {
    /// Keeps up to `capacity_bytes` of answers (0: none).
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let estimated_items = usize::try_from(capacity_bytes / 1024)
            .unwrap_or(usize::MAX)
            .max(16);
        Self {
            answers: quick_cache::sync::Cache::with_weighter(
                estimated_items,
                capacity_bytes,
                ByLength,
            ),
        }
    }

    /// The answer made from exactly this record, if one is kept.
    pub(crate) fn get(&self, job: &Arc<Job>) -> Option<Bytes> {
        let answer = self.answers.get(&job.id)?;
        std::ptr::eq(answer.record.as_ptr(), Arc::as_ptr(job)).then_some(answer.body)
    }

    /// Keeps `body` as the answer for this record (replacing one made from an older record).
    pub(crate) fn put(&self, job: &Arc<Job>, body: Bytes) {
        self.answers.insert(
            job.id,
            Answer {
                record: Arc::downgrade(job),
                body,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use agent_core::JobSpec;

    fn job() -> Arc<Job> {
        Arc::new(Job::new(JobId::new(), JobSpec::from_prompt("p")))
    }

    #[test]
    fn an_answer_is_given_only_for_the_record_it_was_made_from() {
        let answers = StatusAnswers::new(1 << 20);
        let record = job();
        assert!(answers.get(&record).is_none());
        answers.put(&record, Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(
            answers.get(&record).unwrap(),
            Bytes::from_static(b"{\"a\":1}")
        );
        // The same job's record read again (rewritten): a different allocation, no answer.
        let reread = Arc::new((*record).clone());
        assert!(answers.get(&reread).is_none());
        // Even once the first record is dropped, its address is not taken by a new one while
        // the answer holds it.
        drop(record);
        let again = Arc::new((*reread).clone());
        assert!(answers.get(&again).is_none());
    }

    #[test]
    fn a_zero_capacity_keeps_nothing() {
        let answers = StatusAnswers::new(0);
        let record = job();
        answers.put(&record, Bytes::from_static(b"{}"));
        assert!(answers.get(&record).is_none());
    }
}
