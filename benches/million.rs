//! A million jobs in SQLite: how pages, lookups, start-up, memory and the retention sweep grow
//! from 10,000 to 100,000 to 1,000,000 finished jobs (one database, grown between sizes).
//!
//! ```text
//! cargo bench -p agent-benches --bench million
//! AGENT_BENCH_MAX_JOBS=100000 cargo bench -p agent-benches --bench million   # stop earlier
//! ```
//!
//! Each size is measured in a fresh child process (this binary re-executed), so start-up and
//! RSS are those of a process that opens the database cold: the store, the job manager (noop
//! executor: no engine) and the runtime — not the HTTP layer. Per size:
//! - start-up: open (migrations) + manager start (recovery, reaper) until ready;
//! - pages of 50: via `next` cursors at random depths (p50/p99), and by offset at half depth;
//! - lookups of one job (`get_job`, what `GET /status` reads): p50/p99 over random ids;
//! - RSS after the load;
//! - at the largest size: the retention sweep of the half that expired (batches of 500) while
//!   lookups run: its duration and the lookups' p99 meanwhile.
//!
//! Goals (issue 13): pages ≤ 5 ms at any depth, lookup p99 as at 10k, start-up ≤ 1 s,
//! RSS ≤ 60 MB, lookup p99 ≤ 10 ms during the sweep.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::store::sqlite::SqliteStore;
use agent_core::store::JobCursor;
use agent_core::testing::FakeExecutor;
use agent_core::{Job, JobFilter, JobId, JobSpec, JobStatus, JobStore, Step};

const CHILD: &str = "AGENT_BENCH_MILLION_CHILD";
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

fn main() {
    if agent_benches::listing_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Some(args) = std::env::var_os(CHILD) {
        let args = args.to_string_lossy().into_owned();
        let (db, sweep) = args.split_once('|').unwrap();
        return rt.block_on(measure(Path::new(db), sweep == "sweep"));
    }
    let max: usize = std::env::var("AGENT_BENCH_MAX_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let db = dir.path().join("agent.db");
    let load = agent_benches::load_average();
    println!("# A million jobs in SQLite (load average at start: {load})");
    println!("| jobs | start-up ms | page (cursor) p50 / p99 ms | page (offset, half depth) p50 ms | lookup p50 / p99 ms | RSS MB |");
    println!("|---|---|---|---|---|---|");
    let mut stored = 0;
    let sizes: Vec<usize> = SIZES.into_iter().filter(|s| *s <= max).collect();
    for (i, &size) in sizes.iter().enumerate() {
        let t = Instant::now();
        rt.block_on(fill(&db, stored, size));
        eprintln!("filled to {size} in {:.1}s", t.elapsed().as_secs_f64());
        stored = size;
        let last = i + 1 == sizes.len();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(
                CHILD,
                format!("{}|{}", db.display(), if last { "sweep" } else { "" }),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// A small finished job; half of them finished two days ago (expired under a 1-day retention).
fn finished_job(i: usize) -> Job {
    let mut job = Job::new(
        JobId::new(),
        JobSpec::from_steps(vec![Step::shell(format!("echo job {i}"))]),
    );
    job.created_at -= chrono::Duration::seconds((2_000_000 - i as i64).max(0));
    job.transition(JobStatus::Running).unwrap();
    job.transition(JobStatus::Succeeded).unwrap();
    if i.is_multiple_of(2) {
        job.finished_at = Some(chrono::Utc::now() - chrono::Duration::days(2));
    }
    job
}

/// Inserts jobs `from..to`, 64 at a time in flight.
async fn fill(db: &Path, from: usize, to: usize) {
    let store = Arc::new(SqliteStore::open(db).unwrap());
    for chunk in (from..to).collect::<Vec<_>>().chunks(64) {
        let inserts = chunk.iter().map(|&i| {
            let store = Arc::clone(&store);
            async move { store.insert_job(&finished_job(i)).await }
        });
        for r in futures::future::join_all(inserts).await {
            r.unwrap();
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// A cheap pseudo-random sequence (xorshift), so runs compare.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The child: one size, measured from a cold open.
async fn measure(db: &Path, sweep: bool) {
    let t = Instant::now();
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(db).unwrap());
    let dir = db.parent().unwrap();
    let manager =
        agent_benches::bench_manager(Arc::new(FakeExecutor::noop()), store.clone(), dir, 4).await;
    let startup = t.elapsed();

    // Walk the whole list by cursor (pages of 1000), keeping every 50th position and id.
    let mut cursors: Vec<JobCursor> = Vec::new();
    let mut ids: Vec<JobId> = Vec::new();
    let mut filter = JobFilter::default().page(1000, 0);
    let total = loop {
        let page = store.list_summaries(&filter).await.unwrap();
        for (k, j) in page.jobs.iter().enumerate() {
            if k.is_multiple_of(50) {
                cursors.push(JobCursor::of(j.created_at, j.id));
                ids.push(j.id);
            }
        }
        match page.next {
            Some(next) => filter = JobFilter::default().page(1000, 0).after(next),
            None => break page.total,
        }
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut pages = Vec::new();
    for _ in 0..2000 {
        let c = cursors[(xorshift(&mut rng) as usize) % cursors.len()];
        let t = Instant::now();
        let page = store
            .list_summaries(&JobFilter::default().page(50, 0).after(c))
            .await
            .unwrap();
        pages.push(t.elapsed());
        assert!(page.jobs.len() <= 50);
    }
    let mut offsets = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        store
            .list_summaries(&JobFilter::default().page(50, total as usize / 2))
            .await
            .unwrap();
        offsets.push(t.elapsed());
    }
    let mut looked = lookups(&*store, &ids, 20_000, &mut rng).await;
    println!(
        "| {total} | {:.0} | {:.2} / {:.2} | {:.1} | {:.3} / {:.3} | {:.1} |",
        startup.as_secs_f64() * 1e3,
        pct(&mut pages, 0.5),
        pct(&mut pages, 0.99),
        pct(&mut offsets, 0.5),
        pct(&mut looked, 0.5),
        pct(&mut looked, 0.99),
        rss_mb()
    );
    if sweep {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let store = store.clone();
            let ids = ids.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut rng = 7u64;
                let mut all = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    all.extend(lookups(&*store, &ids, 200, &mut rng).await);
                }
                all
            })
        };
        let t = Instant::now();
        let removed = manager.sweep(Duration::from_secs(86_400)).await.unwrap();
        let took = t.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut during = reader.await.unwrap();
        println!(
            "\nretention sweep: {removed} expired jobs removed in {:.1} s ({:.0} jobs/s, batches of 500); lookups meanwhile: {} done, p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms (goal p99 <= 10 ms)",
            took.as_secs_f64(),
            removed as f64 / took.as_secs_f64(),
            during.len(),
            pct(&mut during, 0.5),
            pct(&mut during, 0.99),
            pct(&mut during, 1.0),
        );
    }
    manager.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// `n` lookups of random ids among `ids` (a deleted one answers `None`, as fast).
async fn lookups(store: &dyn JobStore, ids: &[JobId], n: usize, rng: &mut u64) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = ids[(xorshift(rng) as usize) % ids.len()];
        let t = Instant::now();
        let _ = store.get_job(id).await.unwrap();
        out.push(t.elapsed());
    }
    out
}
