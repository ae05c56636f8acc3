//! The conformance suite every [`JobStore`] must pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::job::{
    EventKind, Job, JobEvent, JobId, JobSpec, JobStatus, OutputStream, Plan, Step, StepRecord,
    StepResult, StepStatus, Termination,
};
use crate::store::{
    JobCursor, JobFilter, JobPage, JobStore, JobSummary, StoreError, StoreErrorKind, MAX_PAGE_SIZE,
    SUMMARY_PROMPT_CHARS,
};

/// Runs the job store conformance suite: panics, naming the check, on the first failure.
///
/// `make` must return a new, empty store each time it is called (the suite calls it once per
/// group of checks). Every [`JobStore`] (memory and SQLite) must pass it. It checks:
///
/// - insert/get round trips a whole [`Job`] exactly; a duplicate insert is `AlreadyExists`;
/// - update replaces the record; updating a missing job is `NotFound`;
/// - list: newest first (`created_at` descending, ties in a stable order), status filters (one or
///   several), paging with `limit`/`offset` that concatenates to the full list, `total`, a limit
///   above [`MAX_PAGE_SIZE`] clamped;
/// - cursors: following each page's `next` (with and without a status filter, several page
///   sizes, ties in creation time) walks the full list exactly once, `next` is `None` on the
///   last page only, jobs inserted or deleted meanwhile do not shift later pages, and the totals
///   (kept apart from the rows by some stores) follow inserts, status changes and deletes;
/// - delete: returns whether the job existed and removes its events too (a job re-inserted with
///   the same id has none);
/// - summaries: `list_summaries` lists the same jobs in the same order with the same total as
///   `list_jobs` for every filter and page, each equal to [`JobSummary::from_job`] of the stored
///   job (the prompt shortened to 200 characters plus `…`), and follows updates;
/// - events: round trip of every event kind, order, `after`/`limit`, `last_seq`, refusal of a
///   `seq` not above the last one (`SequenceConflict`, the whole batch refused), appending to a
///   missing job (`NotFound`), events of an unknown job (empty);
/// - `finished_before` (in batches, those that finished first first), `delete_jobs` and
///   `count_by_status`;
/// - concurrent inserts and appends from several tasks to different jobs;
/// - tenants: a tenant filter (alone, with statuses, with a cursor) lists only that tenant's
///   jobs, newest first, with its own total, in `list_jobs` and `list_summaries` alike.
pub async fn store_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    crud(make().await).await;
    listing(make().await).await;
    summaries(make().await).await;
    cursors(make().await).await;
    events(make().await).await;
    deletion(make().await).await;
    retention_and_counts(make().await).await;
    concurrency(make().await).await;
    tenants(make().await).await;
}

fn at(secs: i64) -> DateTime<Utc> {
    // A fixed base with a nanosecond part, so stores must keep full precision.
    Utc.timestamp_opt(1_700_000_000 + secs, 123_456_789)
        .single()
        .unwrap()
}

fn job_at(secs: i64) -> Job {
    let mut job = Job::new(JobId::new(), JobSpec::from_prompt(format!("job at {secs}")));
    job.created_at = at(secs);
    job
}

fn event(id: JobId, seq: u64, kind: EventKind) -> JobEvent {
    JobEvent {
        job_id: id,
        seq,
        at: at(seq as i64),
        kind,
    }
}

fn log(id: JobId, seq: u64) -> JobEvent {
    event(
        id,
        seq,
        EventKind::Log {
            message: format!("event {seq}"),
        },
    )
}

fn seqs(events: &[JobEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Appends log events numbered `numbers` to job `id`, which must succeed.
async fn append_logs(store: &dyn JobStore, id: JobId, numbers: &[u64], what: &str) {
    let events: Vec<JobEvent> = numbers.iter().map(|&seq| log(id, seq)).collect();
    store
        .append_events(id, &events)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// The sequence numbers of job `id`'s stored events after `after` (at most 100).
async fn stored_seqs(store: &dyn JobStore, id: JobId, after: u64) -> Vec<u64> {
    seqs(&store.events(id, after, 100).await.unwrap())
}

/// The ids of `jobs`, in order.
fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// The ids of `summaries`, in order.
fn summary_ids(summaries: &[JobSummary]) -> Vec<JobId> {
    summaries.iter().map(|s| s.id).collect()
}

/// The page of at most `limit` jobs from `offset` on, unfiltered.
async fn page(store: &dyn JobStore, limit: usize, offset: usize) -> JobPage {
    let filter = JobFilter::default().page(limit, offset);
    store
        .list_jobs(&filter)
        .await
        .unwrap_or_else(|e| panic!("list {limit} from {offset}: {e}"))
}

/// Checks that a store call was refused with an error of `kind` (`what` names the call).
fn assert_fails<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    kind: StoreErrorKind,
    what: &str,
) {
    match result {
        Err(err) => assert_eq!(err.kind, kind, "{what}: {err}"),
        Ok(value) => panic!("{what} must fail with {kind:?}, got {value:?}"),
    }
}

/// Checks that `store` gives `job` back exactly.
async fn assert_stored(store: &dyn JobStore, job: &Job, what: &str) {
    let stored = store.get_job(job.id).await.unwrap();
    assert_eq!(stored.as_ref(), Some(job), "{what}");
}

async fn crud(store: Arc<dyn JobStore>) {
    let mut job = job_at(0);
    assert_eq!(
        store.get_job(job.id).await.unwrap(),
        None,
        "get of an unknown job is None"
    );
    store
        .insert_job(&job)
        .await
        .unwrap_or_else(|e| panic!("insert: {e}"));
    assert_stored(&*store, &job, "get returns the inserted job exactly").await;

    let dup = store.insert_job(&job).await;
    assert_fails(dup, StoreErrorKind::AlreadyExists, "duplicate insert");

    job.transition(JobStatus::Running).unwrap();
    job.plan = Some(Plan {
        steps: vec![Step::shell("echo 'ünïcödé'"), Step::python("print(1)")],
        summary: "two steps".into(),
    });
    job.steps.push(StepRecord {
        index: 0,
        step: Step::shell("echo 'ünïcödé'"),
        status: StepStatus::Succeeded,
        result: Some(StepResult {
            exit_code: 0,
            termination: Termination::Exited,
            stdout_tail: "ünïcödé\n".into(),
            stderr_tail: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: Duration::from_millis(12),
            python: None,
        }),
        attempt: 0,
    });
    job.provider = Some("mock".into());
    job.usage.prompt_tokens = 10;
    store
        .update_job(&job)
        .await
        .unwrap_or_else(|e| panic!("update: {e}"));
    assert_stored(&*store, &job, "get returns the updated job exactly").await;
    job.transition(JobStatus::Failed).unwrap();
    job.error = Some("step 0 failed".into());
    store.update_job(&job).await.unwrap();
    assert_stored(&*store, &job, "get returns the failed job exactly").await;

    let missing = job_at(1);
    let update = store.update_job(&missing).await;
    assert_fails(update, StoreErrorKind::NotFound, "update of a missing job");
    assert_eq!(
        store.get_job(missing.id).await.unwrap(),
        None,
        "a failed update must not insert"
    );
}

async fn listing(store: Arc<dyn JobStore>) {
    // 10 jobs, two of them created at the same instant; statuses vary.
    let mut jobs = Vec::new();
    for i in 0..10 {
        let mut job = job_at(if i == 5 { 4 } else { i });
        match i % 3 {
            1 => job.transition(JobStatus::Running).unwrap(),
            2 => {
                job.transition(JobStatus::Running).unwrap();
                job.transition(JobStatus::Succeeded).unwrap();
            }
            _ => {}
        }
        store.insert_job(&job).await.unwrap();
        jobs.push(job);
    }
    let all = page(&*store, 100, 0).await;
    assert_eq!(all.total, 10, "list: total");
    assert_eq!(all.jobs.len(), 10, "list: every job");
    for pair in all.jobs.windows(2) {
        assert!(
            pair[0].created_at >= pair[1].created_at,
            "list: newest first, got {} before {}",
            pair[0].created_at,
            pair[1].created_at
        );
    }
    let listed: BTreeSet<JobId> = all.jobs.iter().map(|j| j.id).collect();
    let inserted: BTreeSet<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(listed, inserted, "list: the same jobs");
    for job in &all.jobs {
        let original = jobs.iter().find(|j| j.id == job.id).unwrap();
        assert_eq!(job, original, "list returns whole jobs");
    }
    let again = page(&*store, 100, 0).await;
    assert_eq!(
        ids(&again.jobs),
        ids(&all.jobs),
        "list: the order is stable (ties broken deterministically)"
    );

    // Paging concatenates to the full list.
    let mut paged = Vec::new();
    for offset in (0..12).step_by(3) {
        let page = page(&*store, 3, offset).await;
        assert_eq!(page.total, 10, "list: total with paging");
        assert!(page.jobs.len() <= 3, "list: page size");
        paged.extend(ids(&page.jobs));
    }
    assert_eq!(
        paged,
        ids(&all.jobs),
        "list: pages concatenate to the full list"
    );
    let beyond = page(&*store, 5, 50).await;
    assert!(beyond.jobs.is_empty(), "list: offset past the end is empty");
    assert_eq!(beyond.total, 10, "list: total past the end");
    let zero = page(&*store, 0, 0).await;
    assert!(zero.jobs.is_empty(), "list: limit 0 returns no jobs");
    assert_eq!(zero.total, 10, "list: limit 0 still counts");

    // Filters.
    let expect = |statuses: &[JobStatus]| -> Vec<JobId> {
        all.jobs
            .iter()
            .filter(|j| statuses.contains(&j.status))
            .map(|j| j.id)
            .collect()
    };
    for statuses in [
        vec![JobStatus::Queued],
        vec![JobStatus::Running],
        vec![JobStatus::Succeeded, JobStatus::Queued],
        vec![JobStatus::Failed],
        vec![JobStatus::Running, JobStatus::Running],
    ] {
        let mut filter = JobFilter::default().page(100, 0);
        filter.statuses = statuses.clone();
        let page = store.list_jobs(&filter).await.unwrap();
        let want = expect(&statuses);
        assert_eq!(
            ids(&page.jobs),
            want,
            "list filtered by {statuses:?}: same order as the full list"
        );
        assert_eq!(
            page.total,
            want.len() as u64,
            "list filtered by {statuses:?}: total"
        );
        let mut filter = JobFilter::default().page(2, 1);
        filter.statuses = statuses.clone();
        let page = store.list_jobs(&filter).await.unwrap();
        assert_eq!(
            ids(&page.jobs),
            want.iter().skip(1).take(2).copied().collect::<Vec<_>>(),
            "list filtered by {statuses:?}, limit 2 offset 1"
        );
        assert_eq!(page.total, want.len() as u64);
    }

    // A status change moves a job between filters.
    let mut moved = jobs[0].clone();
    moved.transition(JobStatus::Cancelled).unwrap();
    store.update_job(&moved).await.unwrap();
    let cancelled = store
        .list_jobs(&JobFilter::default().with_status(JobStatus::Cancelled))
        .await
        .unwrap();
    assert_eq!(
        ids(&cancelled.jobs),
        vec![moved.id],
        "list: an updated status is filtered by its new value"
    );
    let queued = store
        .list_jobs(&JobFilter::default().with_status(JobStatus::Queued))
        .await
        .unwrap();
    assert!(
        queued.jobs.iter().all(|j| j.id != moved.id),
        "list: an updated status leaves its old filter"
    );

    // The page size is capped.
    for i in 0..(MAX_PAGE_SIZE as i64 + 5) {
        store.insert_job(&job_at(100 + i)).await.unwrap();
    }
    let big = page(&*store, MAX_PAGE_SIZE * 10, 0).await;
    assert_eq!(
        big.jobs.len(),
        MAX_PAGE_SIZE,
        "list: limit is capped at MAX_PAGE_SIZE"
    );
    assert_eq!(
        big.total,
        MAX_PAGE_SIZE as u64 + 15,
        "list: total beyond one page"
    );
    assert_eq!(
        big.jobs[0].created_at,
        at(100 + MAX_PAGE_SIZE as i64 + 4),
        "list: the newest job comes first"
    );
}

/// Follows `next` from `filter`'s first page to the end; returns the ids in order.
async fn walk(store: &dyn JobStore, filter: JobFilter, what: &str) -> Vec<JobId> {
    let mut ids = Vec::new();
    let mut filter = filter;
    for _ in 0..1000 {
        let page = store
            .list_summaries(&filter)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let full = page.jobs.len() == filter.limit;
        ids.extend(page.jobs.iter().map(|j| j.id));
        let jobs = store.list_jobs(&filter).await.unwrap();
        assert_eq!(
            jobs.next, page.next,
            "{what}: list_jobs and summaries agree"
        );
        match page.next {
            Some(next) => {
                assert!(full, "{what}: a next cursor after a short page");
                let last = page.jobs.last().unwrap();
                assert_eq!(next, JobCursor::of(last.created_at, last.id), "{what}");
                filter = filter.clone().after(next);
            }
            None => return ids,
        }
    }
    panic!("{what}: the cursor never reached the end");
}

async fn cursors(store: Arc<dyn JobStore>) {
    // 23 jobs, every third one sharing its creation time with the one before; statuses vary.
    for i in 0..23 {
        let mut job = job_at(if i % 3 == 2 { i - 1 } else { i });
        if i % 2 == 1 {
            job.transition(JobStatus::Running).unwrap();
        }
        store.insert_job(&job).await.unwrap();
    }
    let all = store
        .list_summaries(&JobFilter::default().page(100, 0))
        .await
        .unwrap();
    assert_eq!(all.next, None, "cursor: no next page after the whole list");
    let all = summary_ids(&all.jobs);
    for limit in [1, 4, 5, 23, 24] {
        let walked = walk(
            &*store,
            JobFilter::default().page(limit, 0),
            &format!("cursor, limit {limit}"),
        )
        .await;
        assert_eq!(walked, all, "cursor, limit {limit}: the whole list once");
    }
    let running = store
        .list_summaries(
            &JobFilter::default()
                .with_status(JobStatus::Running)
                .page(100, 0),
        )
        .await
        .unwrap();
    let walked = walk(
        &*store,
        JobFilter::default()
            .with_status(JobStatus::Running)
            .page(3, 0),
        "cursor, running",
    )
    .await;
    assert_eq!(
        walked,
        summary_ids(&running.jobs),
        "cursor, running: every running job once"
    );
    let both = walk(
        &*store,
        JobFilter::default()
            .with_status(JobStatus::Running)
            .with_status(JobStatus::Queued)
            .page(4, 0),
        "cursor, two statuses",
    )
    .await;
    assert_eq!(both, all, "cursor, two statuses: every job once");

    // Jobs inserted before the cursor and the boundary job deleted: the next page is unmoved.
    let first = store
        .list_summaries(&JobFilter::default().page(5, 0))
        .await
        .unwrap();
    let next = first.next.unwrap();
    for i in 100..103 {
        store.insert_job(&job_at(i)).await.unwrap();
    }
    assert!(store.delete_job(next.id).await.unwrap());
    let second = store
        .list_summaries(&JobFilter::default().page(5, 0).after(next))
        .await
        .unwrap();
    assert_eq!(
        summary_ids(&second.jobs),
        all[5..10].to_vec(),
        "cursor: later pages do not shift"
    );
    assert_eq!(
        second.total, 25,
        "cursor: the total follows inserts and deletes"
    );
    // A status change moves the job between the filtered totals.
    let mut job = store.get_job(all[0]).await.unwrap().unwrap();
    job.transition(if job.status == JobStatus::Queued {
        JobStatus::Running
    } else {
        JobStatus::Succeeded
    })
    .unwrap();
    store.update_job(&job).await.unwrap();
    let counts: BTreeMap<JobStatus, u64> =
        store.count_by_status().await.unwrap().into_iter().collect();
    for status in [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded] {
        let filter = JobFilter::default()
            .with_status(status)
            .page(MAX_PAGE_SIZE, 0);
        let rows = walk(&*store, filter.clone(), "cursor, recount").await.len() as u64;
        let total = store.list_summaries(&filter).await.unwrap().total;
        assert_eq!(
            total, rows,
            "cursor: the {status} total after a status change"
        );
        assert_eq!(counts[&status], rows, "cursor: count_by_status of {status}");
    }
    assert_eq!(
        counts.values().sum::<u64>(),
        25,
        "cursor: the counts add up"
    );
    let cursor: JobCursor = next.to_string().parse().unwrap();
    assert_eq!(cursor, next, "cursor: its text round trips");
}

async fn summaries(store: Arc<dyn JobStore>) {
    // Prompts around the shortening length (multi-byte characters count as one), steps,
    // start/finish times and errors.
    let prompts = [
        String::new(),
        "ü".repeat(SUMMARY_PROMPT_CHARS),
        "é".repeat(SUMMARY_PROMPT_CHARS + 1),
        format!("{} and more", "x".repeat(300)),
    ];
    let mut jobs = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let mut job = Job::new(JobId::new(), JobSpec::from_prompt(prompt.clone()));
        job.created_at = at(i as i64);
        if i % 2 == 1 {
            job.transition(JobStatus::Running).unwrap();
            job.started_at = Some(at(100 + i as i64));
            job.steps.push(StepRecord {
                index: 0,
                step: Step::shell("true"),
                status: StepStatus::Failed,
                result: None,
                attempt: 0,
            });
            job.transition(JobStatus::Failed).unwrap();
            job.finished_at = Some(at(200 + i as i64));
            job.error = Some(format!("step {i} failed: ünïcödé"));
            job.provider = Some("mock".into());
            job.usage.prompt_tokens = 100 + i as u64;
            job.usage.completion_tokens = 7;
            job.usage.total_tokens = 107 + i as u64;
        } else {
            job.spec.steps = Some(vec![Step::python("print(1)\nprint(2)")]);
        }
        store.insert_job(&job).await.unwrap();
        jobs.push(job);
    }
    let summary = |job: &Job| JobSummary::from_job(job);
    let short = summary(&jobs[2]);
    assert_eq!(
        short.prompt.chars().count(),
        SUMMARY_PROMPT_CHARS + 1,
        "summary: shortened"
    );
    assert!(
        short.prompt.ends_with('…'),
        "summary: shortened prompts end in …"
    );
    assert_eq!(
        summary(&jobs[1]).prompt,
        prompts[1],
        "summary: 200 characters are kept whole"
    );

    let check = |label: String, filter: JobFilter| {
        let store = store.clone();
        async move {
            let full = store.list_jobs(&filter).await.unwrap();
            let page = store
                .list_summaries(&filter)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(page.total, full.total, "{label}: total");
            assert_eq!(
                page.jobs,
                full.jobs
                    .iter()
                    .map(JobSummary::from_job)
                    .collect::<Vec<_>>(),
                "{label}: the summaries of the listed jobs"
            );
        }
    };
    check("summaries".into(), JobFilter::default()).await;
    for offset in 0..5 {
        check(
            format!("summaries, limit 2 offset {offset}"),
            JobFilter::default().page(2, offset),
        )
        .await;
    }
    check(
        "summaries of failed jobs".into(),
        JobFilter::default().with_status(JobStatus::Failed),
    )
    .await;
    check(
        "summaries of queued and failed jobs".into(),
        JobFilter::default()
            .with_status(JobStatus::Queued)
            .with_status(JobStatus::Failed),
    )
    .await;
    check("summaries, limit 0".into(), JobFilter::default().page(0, 0)).await;
    let all = store.list_summaries(&JobFilter::default()).await.unwrap();
    assert_eq!(all.total, 4);
    assert_eq!(
        summary_ids(&all.jobs),
        jobs.iter().rev().map(|j| j.id).collect::<Vec<_>>(),
        "summaries: newest first"
    );
    for (listed, job) in all.jobs.iter().zip(jobs.iter().rev()) {
        assert_eq!(*listed, summary(job), "summary of {}", job.id);
    }

    // An update shows in the summary.
    let mut job = jobs[0].clone();
    job.transition(JobStatus::Running).unwrap();
    job.started_at = Some(at(500));
    job.steps.push(StepRecord {
        index: 0,
        step: Step::shell("true"),
        status: StepStatus::Succeeded,
        result: None,
        attempt: 0,
    });
    store.update_job(&job).await.unwrap();
    let page = store
        .list_summaries(&JobFilter::default().with_status(JobStatus::Running))
        .await
        .unwrap();
    assert_eq!(page.jobs, [summary(&job)], "summaries follow updates");
}

fn every_kind(id: JobId) -> Vec<JobEvent> {
    let step = Step::shell("echo hi").with_description("greet");
    vec![
        event(
            id,
            1,
            EventKind::Status {
                status: JobStatus::Running,
                error: None,
            },
        ),
        event(
            id,
            2,
            EventKind::Planning {
                text: "thinking… ✓".into(),
            },
        ),
        event(
            id,
            3,
            EventKind::Plan {
                steps: vec![step.clone()],
                summary: "say hi".into(),
                provider: Some("mock".into()),
                attempt: 0,
            },
        ),
        event(id, 4, EventKind::StepStarted { index: 0, step }),
        event(
            id,
            5,
            EventKind::Output {
                index: 0,
                stream: OutputStream::Stdout,
                text: "hi\n".repeat(20_000),
            },
        ),
        event(
            id,
            6,
            EventKind::Output {
                index: 0,
                stream: OutputStream::Stderr,
                text: "warn\n".into(),
            },
        ),
        event(
            id,
            7,
            EventKind::StepFinished {
                index: 0,
                result: StepResult {
                    exit_code: 0,
                    termination: Termination::Exited,
                    stdout_tail: "hi\n".into(),
                    stderr_tail: "warn\n".into(),
                    stdout_truncated: true,
                    stderr_truncated: false,
                    duration: Duration::from_millis(1500),
                    python: None,
                },
            },
        ),
        event(
            id,
            8,
            EventKind::Log {
                message: "done".into(),
            },
        ),
        event(
            id,
            9,
            EventKind::Status {
                status: JobStatus::Failed,
                error: Some("boom".into()),
            },
        ),
    ]
}

async fn events(store: Arc<dyn JobStore>) {
    let job = job_at(0);
    store.insert_job(&job).await.unwrap();
    let id = job.id;
    assert_eq!(
        store.last_seq(id).await.unwrap(),
        0,
        "last_seq with no events is 0"
    );
    assert!(store.events(id, 0, 100).await.unwrap().is_empty());

    let all = every_kind(id);
    store
        .append_events(id, &all[..4])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    store
        .append_events(id, &all[4..])
        .await
        .unwrap_or_else(|e| panic!("append a second batch: {e}"));
    store
        .append_events(id, &[])
        .await
        .unwrap_or_else(|e| panic!("append an empty batch: {e}"));
    assert_eq!(
        store.events(id, 0, 100).await.unwrap(),
        all,
        "events round trip exactly, in order"
    );
    assert_eq!(store.last_seq(id).await.unwrap(), 9, "last_seq");
    assert_eq!(
        stored_seqs(&*store, id, 3).await,
        vec![4, 5, 6, 7, 8, 9],
        "events after 3"
    );
    assert_eq!(
        seqs(&store.events(id, 3, 2).await.unwrap()),
        vec![4, 5],
        "events after 3, limit 2"
    );
    assert!(
        store.events(id, 9, 100).await.unwrap().is_empty(),
        "events after the last"
    );
    assert!(store.events(id, 0, 0).await.unwrap().is_empty(), "limit 0");

    for bad in [vec![log(id, 9)], vec![log(id, 3)], vec![log(id, 0)]] {
        let what = format!("appending seq {} after 9", bad[0].seq);
        let append = store.append_events(id, &bad).await;
        assert_fails(append, StoreErrorKind::SequenceConflict, &what);
    }
    // A batch that is not increasing is refused as a whole.
    for bad in [
        vec![log(id, 10), log(id, 10)],
        vec![log(id, 10), log(id, 12), log(id, 11)],
    ] {
        let append = store.append_events(id, &bad).await;
        let what = format!("batch {:?}", seqs(&bad));
        assert_fails(append, StoreErrorKind::SequenceConflict, &what);
        assert_eq!(
            store.last_seq(id).await.unwrap(),
            9,
            "a refused batch {:?} stores nothing",
            seqs(&bad)
        );
    }
    // Gaps are allowed.
    append_logs(&*store, id, &[10, 20], "append with gaps").await;
    assert_eq!(store.last_seq(id).await.unwrap(), 20);
    assert_eq!(stored_seqs(&*store, id, 9).await, vec![10, 20]);

    // Events of other jobs are separate.
    let other = job_at(1);
    store.insert_job(&other).await.unwrap();
    append_logs(&*store, other.id, &[1], "seq 1 on another job").await;
    assert_eq!(stored_seqs(&*store, other.id, 0).await, vec![1]);
    assert_eq!(store.last_seq(id).await.unwrap(), 20);

    let unknown = JobId::new();
    let append = store.append_events(unknown, &[log(unknown, 1)]).await;
    assert_fails(append, StoreErrorKind::NotFound, "append to an unknown job");
    assert!(
        store.events(unknown, 0, 10).await.unwrap().is_empty(),
        "events of an unknown job are empty"
    );
    assert_eq!(store.last_seq(unknown).await.unwrap(), 0);
}

async fn deletion(store: Arc<dyn JobStore>) {
    let job = job_at(0);
    let keep = job_at(1);
    store.insert_job(&job).await.unwrap();
    store.insert_job(&keep).await.unwrap();
    append_logs(&*store, job.id, &[1, 2], "append").await;
    append_logs(&*store, keep.id, &[1], "append").await;

    assert!(
        store.delete_job(job.id).await.unwrap(),
        "delete of a stored job is true"
    );
    assert_eq!(
        store.get_job(job.id).await.unwrap(),
        None,
        "a deleted job is gone"
    );
    assert!(
        store.events(job.id, 0, 10).await.unwrap().is_empty(),
        "a deleted job's events are gone"
    );
    assert_eq!(store.last_seq(job.id).await.unwrap(), 0);
    assert!(
        !store.delete_job(job.id).await.unwrap(),
        "delete again is false"
    );
    let append = store.append_events(job.id, &[log(job.id, 3)]).await;
    assert_fails(append, StoreErrorKind::NotFound, "append to a deleted job");
    let page = store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(page.total, 1, "list after delete");
    assert_eq!(page.jobs[0].id, keep.id);

    // The same id again starts with an empty log: the events were really deleted.
    store.insert_job(&job).await.unwrap();
    assert!(
        store.events(job.id, 0, 10).await.unwrap().is_empty(),
        "a re-inserted job has no old events"
    );
    append_logs(&*store, job.id, &[1], "seq 1 on a re-inserted job").await;
    assert_eq!(
        stored_seqs(&*store, keep.id, 0).await,
        vec![1],
        "other jobs' events are untouched"
    );
}

async fn retention_and_counts(store: Arc<dyn JobStore>) {
    let now = Utc::now();
    let finished = |status: JobStatus, ago_mins: i64| {
        let mut job = job_at(0);
        job.transition(JobStatus::Running).unwrap();
        job.transition(status).unwrap();
        job.finished_at = Some(now - chrono::Duration::minutes(ago_mins));
        job
    };
    let old_ok = finished(JobStatus::Succeeded, 120);
    let old_failed = finished(JobStatus::Failed, 100);
    let recent = finished(JobStatus::Cancelled, 10);
    let mut running = job_at(1);
    running.transition(JobStatus::Running).unwrap();
    let queued = job_at(2);
    for job in [&old_ok, &old_failed, &recent, &running, &queued] {
        store.insert_job(job).await.unwrap();
    }
    let cutoff = now - chrono::Duration::minutes(60);
    let old: BTreeSet<JobId> = store
        .finished_before(cutoff, 100)
        .await
        .unwrap_or_else(|e| panic!("finished_before: {e}"))
        .into_iter()
        .collect();
    assert_eq!(
        old,
        BTreeSet::from([old_ok.id, old_failed.id]),
        "finished_before returns the terminal jobs finished before the cutoff"
    );
    assert!(
        store
            .finished_before(now - chrono::Duration::minutes(500), 100)
            .await
            .unwrap()
            .is_empty(),
        "finished_before an early cutoff"
    );
    assert_eq!(
        store.finished_before(cutoff, 1).await.unwrap(),
        vec![old_ok.id],
        "finished_before: a batch holds the jobs that finished first"
    );

    let counts: BTreeMap<JobStatus, u64> = store
        .count_by_status()
        .await
        .unwrap_or_else(|e| panic!("count_by_status: {e}"))
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            (JobStatus::Queued, 1),
            (JobStatus::Running, 1),
            (JobStatus::Succeeded, 1),
            (JobStatus::Failed, 1),
            (JobStatus::Cancelled, 1),
        ]),
        "count_by_status"
    );
    let mut done = running.clone();
    done.transition(JobStatus::TimedOut).unwrap();
    store.update_job(&done).await.unwrap();
    store.delete_job(queued.id).await.unwrap();
    let counts: BTreeMap<JobStatus, u64> = store
        .count_by_status()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(counts.get(&JobStatus::Queued), None, "count after delete");
    assert_eq!(counts.get(&JobStatus::Running), None, "count after update");
    assert_eq!(
        counts.get(&JobStatus::TimedOut),
        Some(&1),
        "count after update"
    );
    let removed = store
        .delete_jobs(&[old_ok.id, old_failed.id, JobId::new()])
        .await
        .unwrap();
    assert_eq!(removed, 2, "delete_jobs counts the jobs that existed");
    assert!(
        store.get_job(old_ok.id).await.unwrap().is_none(),
        "delete_jobs"
    );
    assert!(store.finished_before(cutoff, 100).await.unwrap().is_empty());
}

async fn concurrency(store: Arc<dyn JobStore>) {
    const TASKS: usize = 8;
    const BATCHES: u64 = 25;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut job = job_at(t as i64);
            store.insert_job(&job).await.unwrap();
            for b in 0..BATCHES {
                let batch = [log(job.id, 2 * b + 1), log(job.id, 2 * b + 2)];
                store
                    .append_events(job.id, &batch)
                    .await
                    .unwrap_or_else(|e| panic!("concurrent append: {e}"));
                if b == BATCHES / 2 {
                    job.transition(JobStatus::Running).unwrap();
                    store.update_job(&job).await.unwrap();
                }
                // Interleave reads with the other tasks' writes.
                assert_eq!(store.last_seq(job.id).await.unwrap(), 2 * b + 2);
            }
            job.id
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await.expect("a concurrent task panicked"));
    }
    for id in ids {
        let events = store.events(id, 0, 1000).await.unwrap();
        assert_eq!(
            seqs(&events),
            (1..=2 * BATCHES).collect::<Vec<_>>(),
            "concurrent appends: every event, in order"
        );
        assert!(
            events.iter().all(|e| e.job_id == id),
            "events belong to their job"
        );
        assert_eq!(
            store.get_job(id).await.unwrap().map(|j| j.status),
            Some(JobStatus::Running)
        );
    }
    let page = store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(
        page.total, TASKS as u64,
        "concurrent inserts: every job listed"
    );
    mixed_writes(store, page.jobs[0].clone(), TASKS as u64, 2 * BATCHES).await;
}

/// Failing writes mixed with good ones, all at once: each gets its own answer and a failure
/// undoes nothing else (a store that batches writes must isolate them).
async fn mixed_writes(store: Arc<dyn JobStore>, existing: Job, jobs: u64, existing_last: u64) {
    let mut handles = Vec::new();
    for i in 0..32u64 {
        let store = store.clone();
        let existing = existing.clone();
        handles.push(tokio::spawn(async move {
            match i % 4 {
                0 => {
                    let insert = store.insert_job(&existing).await;
                    assert_fails(insert, StoreErrorKind::AlreadyExists, "mixed writes");
                    None
                }
                1 => {
                    let append = store
                        .append_events(existing.id, &[log(existing.id, 1)])
                        .await;
                    assert_fails(append, StoreErrorKind::SequenceConflict, "mixed writes");
                    None
                }
                2 => {
                    let update = store.update_job(&job_at(0)).await;
                    assert_fails(update, StoreErrorKind::NotFound, "mixed writes");
                    None
                }
                _ => {
                    let job = job_at(1000 + i as i64);
                    store.insert_job(&job).await.unwrap();
                    append_logs(&*store, job.id, &[1, 2], "mixed writes").await;
                    Some(job.id)
                }
            }
        }));
    }
    let mut good = Vec::new();
    for handle in handles {
        if let Some(id) = handle.await.expect("a mixed-writes task panicked") {
            good.push(id);
        }
    }
    for id in &good {
        assert_eq!(
            seqs(&store.events(*id, 0, 10).await.unwrap()),
            vec![1, 2],
            "mixed writes: the good writes are all stored"
        );
    }
    assert_eq!(
        store.list_jobs(&JobFilter::default()).await.unwrap().total,
        jobs + good.len() as u64,
        "mixed writes: job count"
    );
    assert_eq!(
        store.last_seq(existing.id).await.unwrap(),
        existing_last,
        "mixed writes: refused appends stored nothing"
    );
}

async fn tenants(store: Arc<dyn JobStore>) {
    let owners = [
        Some("a"),
        Some("b"),
        None,
        Some("a"),
        Some("a"),
        None,
        Some("b"),
    ];
    let mut jobs = Vec::new();
    for (i, owner) in owners.iter().enumerate() {
        let mut job = job_at(i as i64);
        job.spec.tenant = owner.map(str::to_string);
        if i % 2 == 1 {
            job.transition(JobStatus::Running).unwrap();
        }
        store.insert_job(&job).await.unwrap();
        jobs.push(job);
    }
    let got = store.get_job(jobs[0].id).await.unwrap().unwrap();
    assert_eq!(got.spec.tenant.as_deref(), Some("a"), "tenants: round trip");
    jobs.reverse(); // newest first
    for (tenant, statuses) in [
        ("a", vec![]),
        ("b", vec![]),
        ("a", vec![JobStatus::Running]),
        ("a", vec![JobStatus::Queued, JobStatus::Running]),
        ("nobody", vec![]),
    ] {
        let mut filter = JobFilter::default().of_tenant(tenant);
        filter.statuses = statuses.clone();
        let want: Vec<JobId> = jobs
            .iter()
            .filter(|j| filter.matches(j))
            .map(|j| j.id)
            .collect();
        let what = format!("tenants: {tenant} {statuses:?}");
        let total = store.list_jobs(&filter).await.unwrap().total;
        assert_eq!(total, want.len() as u64, "{what}: total");
        let ids = walk(&*store, filter.page(2, 0), &what).await;
        assert_eq!(ids, want, "{what}: lists its own jobs");
    }
    // A status change keeps the job its tenant's.
    let mut moved = jobs[0].clone();
    moved.transition(JobStatus::Running).unwrap();
    store.update_job(&moved).await.unwrap();
    let running_b = JobFilter::default()
        .of_tenant("b")
        .with_status(JobStatus::Running)
        .page(2, 0);
    let ids = walk(&*store, running_b, "tenants: after an update").await;
    assert!(
        ids.contains(&moved.id),
        "tenants: an updated job stays listed"
    );
    let all = walk(
        &*store,
        JobFilter::default().page(2, 0),
        "tenants: no filter",
    )
    .await;
    assert_eq!(all.len(), owners.len(), "tenants: no filter lists all");
}
