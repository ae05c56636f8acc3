//! REST server load benchmark, on loopback, against a static baseline measured in the same run.
//!
//! 1. Stores 10,000 finished jobs (3 steps each) in a SQLite file, then starts the server on it —
//!    in a child process (this benchmark binary re-executed in "server mode", which runs
//!    `agent_server::serve` exactly as the `agent-server` binary does) with the real Docker
//!    executor.
//! 2. Starts nginx (Debian `nginx-light` or `nginx`) on another loopback port serving the same
//!    status JSON as a static file.
//! 3. A Rust load generator (raw HTTP/1.1 keep-alive over N connections, one thread) measures for
//!    both: peak `GET /status/{id}` throughput (closed loop) and latency at half of our peak rate
//!    (open loop, latency measured from each request's scheduled time).
//! 4. Measures `POST /schedule` of explicit no-op jobs, and the server's RSS (`VmRSS`) with the
//!    10,000 jobs stored.
//!
//! 5. Against the original's own stack: a FastAPI app holding the same jobs' JSON in memory
//!    (`fastapi_baseline.py`, uvicorn with and without uvloop, 1 and 2 workers, in a venv made
//!    here from PyPI), all servers driven by `wrk -t1 -c32` with the same URLs:
//!    `GET /status/{id}` and `GET /jobs?limit=50`. Goals: /jobs ≥ 3× and /status ≥ 5× the best
//!    FastAPI variant.
//!
//! Targets: ≥ 0.5× nginx's throughput; p99 < 5 ms at half our peak rate; RSS ≤ 40 MB.
//! `AGENT_BENCH_STRICT=1` makes a missed target exit non-zero. Without nginx the baseline is
//! skipped (with how to install it) and the rest still runs.
//!
//! `cargo bench -p agent-benches --bench server`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod conn;
mod fastapi;
mod server_child;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::store::sqlite::SqliteStore;
use agent_core::{
    Job, JobId, JobSpec, JobStatus, JobStore, Plan, Step, StepRecord, StepResult, StepStatus,
    Termination,
};

use conn::Conn;
use server_child::{start_server, status_kib};

const JOBS: usize = 10_000;
const CONNECTIONS: usize = 32;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

fn main() {
    if server_child::run_if_child() {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we care about.
    if agent_benches::listing_only() {
        return;
    }
    let rt = agent_benches::current_thread_runtime();
    let strict = std::env::var("AGENT_BENCH_STRICT").is_ok_and(|v| v == "1");
    let ok = rt.block_on(run());
    if !ok && strict {
        std::process::exit(1);
    }
}

fn stored_job(i: usize) -> Job {
    let steps = vec![
        Step::write_file("data/input.txt", "1\n2\n3\n").with_description("input"),
        Step::python("print(sum(int(l) for l in open('data/input.txt')))").with_description("sum"),
        Step::shell("ls -l > listing.txt").with_description("list"),
    ];
    let mut job = Job::new(
        JobId::new(),
        JobSpec::from_prompt(format!("benchmark job number {i}: sum some numbers")),
    );
    job.transition(JobStatus::Running).unwrap();
    job.plan = Some(Plan {
        steps: steps.clone(),
        summary: "sum numbers".into(),
    });
    job.steps = steps
        .into_iter()
        .enumerate()
        .map(|(index, step)| StepRecord {
            index,
            step,
            status: StepStatus::Succeeded,
            result: Some(StepResult {
                exit_code: 0,
                termination: Termination::Exited,
                stdout_tail: "6\n".into(),
                stderr_tail: String::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                duration: Duration::from_millis(40 + index as u64),
                python: None,
            }),
            attempt: 0,
        })
        .collect();
    job.provider = Some("gemini".into());
    job.transition(JobStatus::Succeeded).unwrap();
    job
}

async fn fill_store(db: &Path) -> Vec<JobId> {
    let store = Arc::new(SqliteStore::open(db).unwrap());
    let mut ids = Vec::with_capacity(JOBS);
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(500) {
        let jobs: Vec<Job> = chunk.iter().map(|i| stored_job(*i)).collect();
        ids.extend(jobs.iter().map(|j| j.id));
        let inserts = jobs.iter().map(|j| {
            let store = Arc::clone(&store);
            async move { store.insert_job(j).await }
        });
        for r in futures::future::join_all(inserts).await {
            r.unwrap();
        }
    }
    ids
}

fn find_nginx() -> Option<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/local/sbin",
        "/usr/bin",
        "/usr/local/nginx/sbin",
    ] {
        let p = Path::new(dir).join("nginx");
        if p.exists() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nginx"))
            .find(|p| p.exists())
    })
}

struct Nginx {
    child: Child,
    addr: String,
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers before it exits (SIGKILL would leave them);
    /// SIGKILL only if it has not gone within 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(bin: &Path, dir: &Path, json: &[u8]) -> Option<Nginx> {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("status.json"), json).unwrap();
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 120s;\n\
           client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
             location /status/ {{ default_type application/json; try_files /status.json =404; }}\n  }}\n}}\n",
        root = root.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(bin)
        .args([
            "-p",
            &d.to_string(),
            "-c",
            conf_path.to_str().unwrap(),
            "-e",
            &format!("{d}/nginx-error.log"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Some(Nginx { child, addr });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
    eprintln!("nginx did not start: {log}");
    None
}

#[derive(Default)]
struct Run {
    requests: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// Requests from `make(i)` on `connections` connections. `rate`: None = as fast as possible
/// (closed loop); Some(r) = r requests/s in all, latency counted from each scheduled send time.
async fn load(
    addr: &str,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    reqs: Arc<Vec<Vec<u8>>>,
    expect: u16,
) -> Run {
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + duration;
    let tasks = (0..connections).map(|c| {
        let reqs = Arc::clone(&reqs);
        let addr = addr.to_string();
        tokio::spawn(async move {
            let mut conn = Conn::new(&addr);
            let mut run = Run::default();
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let offset = interval.map(|i| i.mul_f64(c as f64 / connections as f64));
            tokio::time::sleep_until(start.into()).await;
            let mut k: u64 = 0;
            let mut free_since = start;
            loop {
                let scheduled = match (interval, offset) {
                    (Some(i), Some(o)) => {
                        let t = start + o + i.mul_f64(k as f64);
                        if t >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(t.into()).await;
                        t
                    }
                    _ => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        now
                    }
                };
                // Latency counts from the scheduled time when the connection was still busy with
                // the previous answer then (the server's delay), else from when we actually sent
                // (the timer's late wake-up, about 1 ms granularity, is the load generator's).
                let from = if free_since > scheduled {
                    scheduled
                } else {
                    Instant::now()
                };
                let req = &reqs[(c * 7919 + k as usize) % reqs.len()];
                match conn.request(req).await {
                    Ok(s) if s == expect => {
                        run.requests += 1;
                        let us = from.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        run.latencies_us.push(us);
                    }
                    _ => run.errors += 1,
                }
                free_since = Instant::now();
                k += 1;
            }
            run
        })
    });
    let runs = futures::future::join_all(tasks.collect::<Vec<_>>()).await;
    let mut all = Run {
        elapsed: duration,
        ..Run::default()
    };
    for r in runs {
        let r = r.unwrap();
        all.requests += r.requests;
        all.errors += r.errors;
        all.latencies_us.extend(r.latencies_us);
    }
    all
}

/// `GET` load as fast as it goes (closed loop) for [`MEASURE`], after a [`WARMUP`].
async fn peak_load(addr: &str, reqs: &Arc<Vec<Vec<u8>>>) -> Run {
    let _ = load(addr, CONNECTIONS, WARMUP, None, Arc::clone(reqs), 200).await;
    load(addr, CONNECTIONS, MEASURE, None, Arc::clone(reqs), 200).await
}

/// `GET` load at `rate` requests/s (open loop) for [`MEASURE`].
async fn rated_load(addr: &str, reqs: &Arc<Vec<Vec<u8>>>, rate: f64) -> Run {
    load(
        addr,
        CONNECTIONS,
        MEASURE,
        Some(rate),
        Arc::clone(reqs),
        200,
    )
    .await
}

fn get_requests(ids: &[JobId]) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        ids.iter()
            .map(|id| format!("GET /status/{id} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes())
            .collect(),
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "target met"
    } else {
        "TARGET MISSED"
    }
}

async fn run() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let t = Instant::now();
    let ids = fill_store(&out.join("jobs.sqlite3")).await;
    println!("stored {JOBS} jobs in {:.1}s", t.elapsed().as_secs_f64());

    // The POST load queues tens of thousands of jobs; measure acceptance, not the cap.
    let server = start_server(&out, &[("AGENT_MAX_QUEUED_JOBS", "1000000")]);
    let pid = server.pid();
    println!("server (pid {pid}) on {}", server.addr);

    // The JSON our server answers for one job: the static server serves the same bytes.
    let mut conn = Conn::new(&server.addr);
    let status = conn.request(&get_requests(&ids[..1])[0]).await.unwrap();
    assert_eq!(status, 200);
    let sample = conn.body.clone();
    println!("status document: {} bytes", sample.len());
    let rss_idle = status_kib(pid, "VmRSS:").unwrap_or(0);

    let reqs = get_requests(&ids);
    let mut ours = peak_load(&server.addr, &reqs).await;
    let peak = ours.rate();
    let mut ours_half = rated_load(&server.addr, &reqs, peak / 2.0).await;
    let rss_after_get = status_kib(pid, "VmRSS:").unwrap_or(0);

    let mut baseline = None;
    match find_nginx() {
        Some(bin) => match start_nginx(&bin, dir.path(), &sample) {
            Some(nginx) => {
                let mut st = peak_load(&nginx.addr, &reqs).await;
                let mut st_half = rated_load(&nginx.addr, &reqs, peak / 2.0).await;
                baseline = Some((
                    st.rate(),
                    st.pct(0.99),
                    st_half.pct(0.50),
                    st_half.pct(0.99),
                    st.errors,
                ));
            }
            None => println!("nginx baseline skipped: nginx did not start"),
        },
        None => println!(
            "nginx baseline skipped: nginx not found (install it: apt-get install -y nginx-light)"
        ),
    }

    // POST /schedule of explicit no-op jobs (they queue behind one worker; we measure intake).
    let body = r#"{"steps":[{"type":"shell","command":"true"}]}"#;
    let post = format!(
        "POST /schedule HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let mut posts = load(
        &server.addr,
        8,
        Duration::from_secs(3),
        None,
        Arc::new(vec![post]),
        202,
    )
    .await;
    let rss_hwm = status_kib(pid, "VmHWM:").unwrap_or(0);

    println!();
    println!("GET /status/{{id}} with {JOBS} stored jobs, {CONNECTIONS} keep-alive connections, loopback, {}s each:", MEASURE.as_secs());
    println!(
        "  agent-server  peak {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
        peak,
        ours.pct(0.50),
        ours.pct(0.99),
        ours.errors
    );
    println!(
        "  agent-server  at {:>7.0} req/s (half peak): p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
        peak / 2.0,
        ours_half.pct(0.50),
        ours_half.pct(0.99),
        ours_half.errors
    );
    let mut ok = true;
    if let Some((rate, p99, half_p50, half_p99, errors)) = baseline {
        println!(
            "  nginx static  peak {:>9.0} req/s  p99 {:>6.2} ms  errors {errors}; at our half-peak rate p50 {:>6.2} ms  p99 {:>6.2} ms",
            rate, p99, half_p50, half_p99
        );
        let ratio = peak / rate;
        let met = ratio >= 0.5;
        ok &= met;
        println!(
            "  throughput ratio agent-server / nginx = {ratio:.2} (target >= 0.5: {})",
            verdict(met)
        );
    }
    let p99 = ours_half.pct(0.99);
    let met = p99 < 5.0;
    ok &= met;
    println!(
        "  p99 at half peak = {p99:.2} ms (target < 5 ms: {})",
        verdict(met)
    );
    println!(
        "POST /schedule (explicit no-op job), 8 connections, 3s: {:.0} jobs/s accepted, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        posts.rate(),
        posts.pct(0.50),
        posts.pct(0.99),
        posts.errors
    );
    let rss_mb = rss_after_get as f64 / 1024.0;
    let met = rss_mb <= 40.0;
    ok &= met;
    println!(
        "server RSS with {JOBS} jobs stored: {:.1} MB at start, {rss_mb:.1} MB after the GET load (target <= 40 MB: {}), peak {:.1} MB after the POST load",
        rss_idle as f64 / 1024.0,
        verdict(met),
        rss_hwm as f64 / 1024.0
    );
    ok &= compare_with_fastapi(&server.addr, &ids, dir.path()).await;
    drop(server);
    ok
}

/// Dumps what our server answers (every status document, the summaries newest first) for the
/// FastAPI app, then measures it and us with wrk; prints the ratios and whether the goals hold.
async fn compare_with_fastapi(addr: &str, ids: &[JobId], dir: &Path) -> bool {
    let python = match fastapi::python() {
        Ok(p) => p,
        Err(e) => {
            println!("FastAPI comparison skipped: {e}");
            return false;
        }
    };
    let mut conn = Conn::new(addr);
    let mut status = serde_json::Map::new();
    for req in get_requests(ids).iter() {
        assert_eq!(conn.request(req).await.unwrap(), 200);
        let doc: serde_json::Value = serde_json::from_slice(&conn.body).unwrap();
        let id = doc["job_id"].as_str().unwrap().to_string();
        status.insert(id, doc);
    }
    let mut summaries = Vec::new();
    for page in 0..JOBS.div_ceil(1000) {
        let req = format!(
            "GET /jobs?limit=1000&offset={} HTTP/1.1\r\nHost: bench\r\n\r\n",
            page * 1000
        );
        assert_eq!(conn.request(req.as_bytes()).await.unwrap(), 200);
        let body: serde_json::Value = serde_json::from_slice(&conn.body).unwrap();
        summaries.extend(body["jobs"].as_array().unwrap().iter().cloned());
    }
    let data = dir.join("fastapi-data.json");
    std::fs::write(
        &data,
        serde_json::to_vec(&serde_json::json!({"status": status, "summaries": summaries})).unwrap(),
    )
    .unwrap();
    let id = ids[ids.len() / 2];
    let paths = [format!("/status/{id}"), "/jobs?limit=50".to_string()];
    let measure = |addr: &str| -> Option<Vec<fastapi::Wrk>> {
        paths
            .iter()
            .map(|p| fastapi::wrk(&format!("http://{addr}{p}"), CONNECTIONS, MEASURE.as_secs()))
            .collect()
    };
    let Some(ours) = measure(addr) else {
        println!("FastAPI comparison skipped: wrk is missing (apt-get install -y wrk)");
        return false;
    };
    let mut rows = vec![("agent-server".to_string(), ours.clone())];
    for (uvloop, workers) in [(false, 1), (true, 1), (false, 2), (true, 2)] {
        let name = format!(
            "FastAPI, uvicorn {}, {workers} worker{}",
            if uvloop { "+ uvloop" } else { "asyncio" },
            if workers > 1 { "s" } else { "" }
        );
        let Some(server) = fastapi::start(&python, &data, free_port(), uvloop, workers) else {
            println!("{name}: did not start");
            return false;
        };
        // The same JSON: the baseline answers what we answer.
        let mut theirs = Conn::new(&server.addr);
        let req = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", paths[0]);
        assert_eq!(theirs.request(req.as_bytes()).await.unwrap(), 200);
        let a: serde_json::Value = serde_json::from_slice(&theirs.body).unwrap();
        assert_eq!(
            a,
            status[&id.to_string()],
            "{name} answers the same status JSON"
        );
        drop(theirs);
        match measure(&server.addr) {
            Some(m) => rows.push((name, m)),
            None => println!("{name}: wrk failed"),
        }
    }
    println!();
    println!(
        "vs FastAPI holding the same {JOBS} jobs' JSON in memory (wrk -t1 -c{CONNECTIONS}, {}s each, loopback, same run):",
        MEASURE.as_secs()
    );
    println!(
        "| server | /status req/s | p50 / p99 ms | /jobs?limit=50 req/s | p50 / p99 ms | non-2xx |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, m) in &rows {
        println!(
            "| {name} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {} |",
            m[0].rate,
            m[0].p50,
            m[0].p99,
            m[1].rate,
            m[1].p50,
            m[1].p99,
            m[0].non_2xx + m[1].non_2xx
        );
    }
    let best = |i: usize| {
        rows[1..]
            .iter()
            .map(|(n, m)| (m[i].rate, n.as_str()))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::NAN, "none"))
    };
    let (best_status, status_name) = best(0);
    let (best_jobs, jobs_name) = best(1);
    let status_ratio = ours[0].rate / best_status;
    let jobs_ratio = ours[1].rate / best_jobs;
    println!(
        "  /status: {status_ratio:.2}× the best FastAPI variant ({status_name}) (goal >= 5×: {})",
        verdict(status_ratio >= 5.0)
    );
    println!(
        "  /jobs?limit=50: {jobs_ratio:.2}× the best FastAPI variant ({jobs_name}) (goal >= 3×: {})",
        verdict(jobs_ratio >= 3.0)
    );
    status_ratio >= 5.0 && jobs_ratio >= 3.0
}
