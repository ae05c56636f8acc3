//! A million jobs in SQLite: how pages, lookups, start-up, memory and the retention sweep grow
//! from 10,000 to 100,000 to 1,000,000 finished jobs (one database, grown between sizes), first
//! at the store, then through the real server over HTTP on loopback.
//!
//! ```text
//! cargo bench -p agent-benches --bench million
//! AGENT_BENCH_MAX_JOBS=100000 cargo bench -p agent-benches --bench million   # stop earlier
//! ```
//!
//! **The store.** Each size is measured in a fresh child process (this binary re-executed), so
//! start-up and RSS are those of a process that opens the database cold: the store, the job
//! manager (noop executor: no engine) and the runtime — not the HTTP layer. Per size:
//! - start-up: open (migrations) + manager start (recovery, reaper) until ready;
//! - pages of 50: via `next` cursors at random depths (p50/p99), and by offset at half depth;
//! - lookups of one job (`get_job`, what `GET /status` reads): p50/p99 over random ids;
//! - RSS after the load;
//! - at the largest size: the retention sweep of the half that expired (batches of 500) while
//!   lookups run: its duration and the lookups' p99 meanwhile.
//!
//! **Over HTTP.** Per size, the real server (`agent_server::serve` in a child process, the real
//! Docker executor, retention off) on a copy of the same database (the store's sweep deletes from
//! the original), one keep-alive connection on loopback:
//! - start-up: from spawning the server to its `listening on` line, and to its first `200` on
//!   `GET /` (health, which asks the Docker engine);
//! - pages: the whole list walked by `next` cursor (~1000 pages) to collect cursors at every
//!   depth, then 2000 `GET /jobs?limit=50&cursor=C` at random depths (p50/p99), and by offset at
//!   half depth;
//! - `GET /status/{id}` of 20,000 random ids (p50/p99);
//! - the server's RSS after the load (`VmRSS`) and its peak (`VmHWM`);
//! - at the largest size: the server restarted with a 1-day retention, whose sweep starts with it
//!   and deletes the expired half, while `GET /status` lookups run back to back: their
//!   p50/p99/max and how long the sweep took (from the `job manager started` line to its
//!   `retention sweep removed=N` line).
//!
//! Each figure is also given as its growth over the smallest size, measured in the same run.
//! Goals (issue 13): pages ≤ 5 ms at any depth, lookup p99 as at 10k, start-up ≤ 1 s,
//! RSS ≤ 60 MB, lookup p99 ≤ 10 ms during the sweep.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod conn;
mod server_child;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::store::sqlite::SqliteStore;
use agent_core::store::JobCursor;
use agent_core::testing::FakeExecutor;
use agent_core::{Job, JobFilter, JobId, JobSpec, JobStatus, JobStore, Step};

use conn::Conn;
use server_child::{start_server, start_server_with_log, status_kib};

const CHILD: &str = "AGENT_BENCH_MILLION_CHILD";
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

fn main() {
    if server_child::run_if_child() {
        return;
    }
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
    let served = dir.path().join("served");
    let load = agent_benches::load_average();
    println!("# A million jobs in SQLite (load average at start: {load})");
    println!();
    println!("## The store (a child process per size: store + job manager, no HTTP)");
    println!("| jobs | start-up ms | page (cursor) p50 / p99 ms | page (offset, half depth) p50 ms | lookup p50 / p99 ms | RSS MB |");
    println!("|---|---|---|---|---|---|");
    let mut stored = 0;
    let mut over_http = Vec::new();
    let mut http_sweep = None;
    let sizes: Vec<usize> = SIZES.into_iter().filter(|s| *s <= max).collect();
    for (i, &size) in sizes.iter().enumerate() {
        let t = Instant::now();
        rt.block_on(fill(&db, stored, size));
        eprintln!("filled to {size} in {:.1}s", t.elapsed().as_secs_f64());
        stored = size;
        let last = i + 1 == sizes.len();
        copy_db(&db, &served);
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
        let (figures, ids) = rt.block_on(measure_http(&served));
        over_http.push(figures);
        if last {
            http_sweep = Some(rt.block_on(sweep_http(&served, &ids)));
        }
        std::fs::remove_dir_all(&served).unwrap();
    }
    print_http(&over_http);
    if let Some(line) = http_sweep {
        println!("\n{line}");
    }
    println!(
        "\nload average at the end: {}",
        agent_benches::load_average()
    );
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

/// Copies the database into `to` as `jobs.sqlite3`, the file the server opens in its output
/// directory (`AGENT_OUTPUT_DIR`). The store that filled it closes its writer connection on its
/// own thread after it is dropped, checkpointing the WAL into the file and removing it: the copy
/// waits for that (a copy taken meanwhile can be malformed).
fn copy_db(db: &Path, to: &Path) {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let t = Instant::now();
    while wal.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{} stayed open",
            db.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(db, to.join("jobs.sqlite3")).unwrap();
}

/// What one size measured over HTTP (milliseconds, and MB).
struct HttpFigures {
    total: u64,
    listening: f64,
    ready: f64,
    page_p50: f64,
    page_p99: f64,
    offset_p50: f64,
    status_p50: f64,
    status_p99: f64,
    rss: f64,
    peak: f64,
}

/// The request `GET path`, keep-alive.
fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
}

/// `GET path`, which must answer 200 with JSON.
async fn get_json(conn: &mut Conn, path: &str) -> serde_json::Value {
    let status = conn.request(&get_request(path)).await.unwrap();
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&conn.body)
    );
    serde_json::from_slice(&conn.body).unwrap()
}

/// How long each of `requests` took, one after the other on `conn`; each must answer one of
/// `expect`.
async fn timed(conn: &mut Conn, requests: &[Vec<u8>], expect: &[u16]) -> Vec<Duration> {
    let mut out = Vec::with_capacity(requests.len());
    for req in requests {
        let t = Instant::now();
        let status = conn.request(req).await.unwrap();
        out.push(t.elapsed());
        assert!(
            expect.contains(&status),
            "{status}: {}",
            String::from_utf8_lossy(&conn.body)
        );
    }
    out
}

/// Walks the whole of `GET /jobs` by its `next` cursors, in ~1000 pages: the jobs in all, the
/// cursors met (one per page: every depth) and ~20,000 job ids spread over the list.
async fn walk(conn: &mut Conn) -> (u64, Vec<String>, Vec<String>) {
    let total = get_json(conn, "/jobs?limit=1").await["total"]
        .as_u64()
        .unwrap();
    let limit = (total / 1000).clamp(10, agent_core::store::MAX_PAGE_SIZE as u64);
    let stride = (total / 20_000).max(1);
    let (mut cursors, mut ids) = (Vec::new(), Vec::new());
    let mut seen = 0u64;
    let mut path = format!("/jobs?limit={limit}");
    loop {
        let page = get_json(conn, &path).await;
        for job in page["jobs"].as_array().unwrap() {
            if seen.is_multiple_of(stride) {
                ids.push(job["job_id"].as_str().unwrap().to_string());
            }
            seen += 1;
        }
        let Some(next) = page["next"].as_str() else {
            break;
        };
        cursors.push(next.to_string());
        path = format!("/jobs?limit={limit}&cursor={next}");
    }
    assert_eq!(seen, total, "the walk by cursor meets every job once");
    (total, cursors, ids)
}

/// One size over HTTP: the real server on the database in `dir`, retention off. Returns the
/// figures and the job ids it looked up.
async fn measure_http(dir: &Path) -> (HttpFigures, Vec<String>) {
    let spawned = Instant::now();
    let server = start_server(dir, &[]);
    let listening = spawned.elapsed();
    let mut conn = Conn::new(&server.addr);
    let health = get_request("/");
    while !matches!(conn.request(&health).await, Ok(200)) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = spawned.elapsed();

    let (total, cursors, ids) = walk(&mut conn).await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut pick = |n: usize| (xorshift(&mut rng) as usize) % n;
    let pages: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let c = &cursors[pick(cursors.len())];
            get_request(&format!("/jobs?limit=50&cursor={c}"))
        })
        .collect();
    let mut pages = timed(&mut conn, &pages, &[200]).await;
    let offset = get_request(&format!("/jobs?limit=50&offset={}", total / 2));
    let mut offsets = timed(&mut conn, &vec![offset; 20], &[200]).await;
    let lookups: Vec<Vec<u8>> = (0..20_000)
        .map(|_| get_request(&format!("/status/{}", ids[pick(ids.len())])))
        .collect();
    let mut looked = timed(&mut conn, &lookups, &[200]).await;
    let mb = |field| status_kib(server.pid(), field).unwrap_or(0) as f64 / 1024.0;
    let figures = HttpFigures {
        total,
        listening: listening.as_secs_f64() * 1e3,
        ready: ready.as_secs_f64() * 1e3,
        page_p50: pct(&mut pages, 0.5),
        page_p99: pct(&mut pages, 0.99),
        offset_p50: pct(&mut offsets, 0.5),
        status_p50: pct(&mut looked, 0.5),
        status_p99: pct(&mut looked, 0.99),
        rss: mb("VmRSS:"),
        peak: mb("VmHWM:"),
    };
    (figures, ids)
}

/// The HTTP table, with the growth of each figure from the smallest size to the largest.
fn print_http(rows: &[HttpFigures]) {
    println!();
    println!(
        "## Over HTTP (the real server, one keep-alive connection on loopback, retention off)"
    );
    println!("| jobs | start-up: listening / first `GET /` 200 ms | `GET /jobs?limit=50&cursor=` p50 / p99 ms | `GET /jobs?limit=50&offset=` (half depth) p50 ms | `GET /status/{{id}}` p50 / p99 ms | RSS / peak MB |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} / {:.0} | {:.2} / {:.2} | {:.1} | {:.3} / {:.3} | {:.1} / {:.1} |",
            r.total,
            r.listening,
            r.ready,
            r.page_p50,
            r.page_p99,
            r.offset_p50,
            r.status_p50,
            r.status_p99,
            r.rss,
            r.peak
        );
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
        if rows.len() > 1 {
            println!(
                "| growth {} → {} | ×{:.2} / ×{:.2} | ×{:.2} / ×{:.2} | ×{:.1} | ×{:.2} / ×{:.2} | ×{:.2} / ×{:.2} |",
                a.total,
                b.total,
                b.listening / a.listening,
                b.ready / a.ready,
                b.page_p50 / a.page_p50,
                b.page_p99 / a.page_p99,
                b.offset_p50 / a.offset_p50,
                b.status_p50 / a.status_p50,
                b.status_p99 / a.status_p99,
                b.rss / a.rss,
                b.peak / a.peak
            );
        }
    }
    if let Some(b) = rows.last() {
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "goals at {}: page p99 <= 5 ms {}; start-up (first 200) <= 1 s {}; RSS <= 60 MB {}",
            b.total,
            verdict(b.page_p99 <= 5.0),
            verdict(b.ready <= 1000.0),
            verdict(b.peak <= 60.0)
        );
    }
}

/// The retention sweep over HTTP: the server restarted on `dir` with a 1-day retention sweeps
/// the expired half as it starts; `GET /status` of `ids` (some of them swept meanwhile: 404)
/// runs back to back until the server logs the sweep's end.
async fn sweep_http(dir: &Path, ids: &[String]) -> String {
    let (server, log) = start_server_with_log(dir, &[("RETENTION_DAYS", "1")]);
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut started = None;
            for (at, line) in log.iter() {
                if line.contains("job manager started") {
                    started = Some(at);
                } else if line.contains("retention sweep") {
                    done.store(true, Ordering::Relaxed);
                    return (started, at, line);
                }
            }
            panic!("the server's log ended before its retention sweep did");
        })
    };
    let mut conn = Conn::new(&server.addr);
    let mut rng = 7u64;
    let mut during = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let id = &ids[(xorshift(&mut rng) as usize) % ids.len()];
        let req = get_request(&format!("/status/{id}"));
        during.extend(timed(&mut conn, &[req], &[200, 404]).await);
    }
    let (started, ended, line) = waiter.join().unwrap();
    let removed: u64 = line
        .split("removed=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the sweep failed: {line}"));
    let took = ended - started.expect("the server logged `job manager started`");
    let peak = status_kib(server.pid(), "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    if during.is_empty() {
        return format!("retention sweep over HTTP: {removed} removed in {:.1} s, before the server answered a lookup", took.as_secs_f64());
    }
    let p99 = pct(&mut during, 0.99);
    format!(
        "retention sweep over HTTP: {removed} expired jobs removed in {:.1} s ({:.0} jobs/s, batches of 500); `GET /status` meanwhile: {} done, p50 {:.3} ms, p99 {p99:.3} ms, max {:.1} ms (goal p99 <= 10 ms: {}); server peak RSS {peak:.1} MB",
        took.as_secs_f64(),
        removed as f64 / took.as_secs_f64(),
        during.len(),
        pct(&mut during, 0.5),
        pct(&mut during, 1.0),
        if p99 <= 10.0 { "met" } else { "MISSED" },
    )
}
