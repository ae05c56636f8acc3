//! Fan-out benchmark: many Server-Sent-Events subscribers of one busy job, over loopback, against
//! the real server in a child process (so its RSS and CPU time are the server's alone) with the
//! real Docker executor.
//!
//! ```text
//! cargo bench -p agent-benches --bench fanout          # 1,000 subscribers
//! AGENT_BENCH_SUBSCRIBERS=200 AGENT_BENCH_LINES=500 cargo bench -p agent-benches --bench fanout
//! ```
//!
//! Two rounds of the same job (a Python step printing `AGENT_BENCH_LINES` lines, one at a time):
//! first with one subscriber (the baseline), then with `AGENT_BENCH_SUBSCRIBERS` of them, plus one
//! that reads nothing until the job is over (its socket's receive buffer made small) and one that
//! disconnects after 50 events and resumes with `Last-Event-ID`. Every subscriber must receive
//! every event once, in order (ids 1..=last, the last one the final status). Reported: the
//! server's CPU time and RSS growth per subscriber (the difference between the rounds over the
//! number of extra subscribers), and the job's own duration in both rounds (a subscriber must
//! not hold the job back).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod server_child;

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use server_child::{start_server, status_kib};

/// One subscriber's events: `(id, event name)` in the order they came.
type Received = Vec<(u64, String)>;

/// Reads an HTTP/1.1 response with a chunked body, handing each decoded chunk to `on_chunk`
/// until it returns false (stop early) or the body ends.
async fn read_chunked<R: tokio::io::AsyncRead + Unpin>(
    io: &mut BufReader<R>,
    mut on_chunk: impl FnMut(&[u8]) -> bool,
) {
    let mut line = String::new();
    io.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "SSE answered {line:?}");
    loop {
        line.clear();
        io.read_line(&mut line).await.unwrap();
        if line.trim_end().is_empty() {
            break;
        }
    }
    let mut chunk = Vec::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await.unwrap() == 0 {
            return;
        }
        let size = usize::from_str_radix(line.trim_end(), 16).expect("a chunk size");
        if size == 0 {
            return;
        }
        chunk.resize(size + 2, 0);
        io.read_exact(&mut chunk).await.unwrap();
        if !on_chunk(&chunk[..size]) {
            return;
        }
    }
}

/// Collects `(id, event)` pairs from SSE text, across chunk boundaries.
#[derive(Default)]
struct SseParser {
    partial: Vec<u8>,
    id: Option<u64>,
    event: String,
    got: Received,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = std::str::from_utf8(&line)
                .unwrap()
                .trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if let Some(id) = self.id.take() {
                    self.got.push((id, std::mem::take(&mut self.event)));
                }
            } else if let Some(v) = line.strip_prefix("id:") {
                self.id = Some(v.trim().parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim().to_string();
            }
        }
    }
}

fn stream_request(addr: &str, job: &str, last_event_id: Option<u64>) -> String {
    let resume = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    format!("GET /logs/{job}/stream HTTP/1.1\r\nHost: {addr}\r\n{resume}\r\n")
}

/// A subscriber that reads every event as it comes (at most `limit` of them).
async fn subscribe(addr: String, job: String, after: Option<u64>, limit: usize) -> Received {
    let mut io = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    io.get_mut()
        .write_all(stream_request(&addr, &job, after).as_bytes())
        .await
        .unwrap();
    let mut sse = SseParser::default();
    read_chunked(&mut io, |chunk| {
        sse.feed(chunk);
        sse.got.len() < limit
    })
    .await;
    sse.got.truncate(limit);
    sse.got
}

/// A subscriber whose socket has a small receive buffer and that reads nothing until `go`.
async fn slow_subscriber(
    addr: String,
    job: String,
    go: tokio::sync::oneshot::Receiver<()>,
) -> Received {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    stream
        .write_all(stream_request(&addr, &job, None).as_bytes())
        .await
        .unwrap();
    let _ = go.await;
    let mut io = BufReader::new(stream);
    let mut sse = SseParser::default();
    read_chunked(&mut io, |chunk| {
        sse.feed(chunk);
        true
    })
    .await;
    sse.got
}

/// One request on a new connection; the body as JSON.
async fn request(addr: &str, method: &str, path: &str, body: &str) -> serde_json::Value {
    let mut io = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    io.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    io.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 20"), "{method} {path}: {head}");
    serde_json::from_str(body).unwrap()
}

/// The server's CPU time so far (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux counts /proc times in USER_HZ, 100 per second on every architecture.
    Duration::from_millis(ticks * 10)
}

struct Round {
    cpu: Duration,
    rss_growth_kib: i64,
    job_secs: f64,
    events: u64,
}

/// Checks that `got` is every event of the job once, in order, ending with the final status.
fn check_complete(who: &str, got: &Received, last: u64) {
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=last).collect::<Vec<_>>(),
        "{who} got every event once, in order"
    );
    assert_eq!(got.last().map(|(_, e)| e.as_str()), Some("status"));
}

async fn round(addr: &str, pid: u32, subscribers: usize, lines: usize, extra: bool) -> Round {
    let code = format!(
        "import time\ntime.sleep(1.5)\nfor i in range({lines}):\n    print('line', i, flush=True)\n    time.sleep(0.001)\n"
    );
    let body = serde_json::json!({"steps": [{"type": "python", "code": code}]}).to_string();
    let rss_before = status_kib(pid, "VmRSS:").unwrap_or(0) as i64;
    let cpu_before = cpu_time(pid);
    let job = request(addr, "POST", "/schedule", &body).await;
    let job = job["job_id"].as_str().unwrap().to_string();
    let readers: Vec<_> = (0..subscribers)
        .map(|_| tokio::spawn(subscribe(addr.to_string(), job.clone(), None, usize::MAX)))
        .collect();
    let (go, wait) = tokio::sync::oneshot::channel();
    let slow = extra.then(|| tokio::spawn(slow_subscriber(addr.to_string(), job.clone(), wait)));
    let resumed = extra.then(|| {
        let (addr, job) = (addr.to_string(), job.clone());
        tokio::spawn(async move {
            let first = subscribe(addr.clone(), job.clone(), None, 50).await;
            let last = first.last().unwrap().0;
            let rest = subscribe(addr, job, Some(last), usize::MAX).await;
            [first, rest].concat()
        })
    });
    // Sample the RSS while the job runs; the readers end after the final status.
    let mut rss_peak = rss_before;
    let started = Instant::now();
    let mut results = Vec::with_capacity(subscribers);
    for reader in readers {
        let mut reader = std::pin::pin!(reader);
        loop {
            tokio::select! {
                r = &mut reader => { results.push(r.unwrap()); break; }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    rss_peak = rss_peak.max(status_kib(pid, "VmRSS:").unwrap_or(0) as i64);
                    assert!(started.elapsed() < Duration::from_secs(600), "the subscribers did not end");
                }
            }
        }
    }
    let cpu = cpu_time(pid) - cpu_before;
    let status = request(addr, "GET", &format!("/status/{job}"), "").await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(status[k].as_str().unwrap()).unwrap();
    let job_secs = (at("finished_at") - at("started_at")).num_milliseconds() as f64 / 1e3;
    let last = results[0].last().unwrap().0;
    for (i, got) in results.iter().enumerate() {
        check_complete(&format!("subscriber {i}"), got, last);
    }
    if let Some(slow) = slow {
        // The job is over and every reader is done although this one has not read a byte.
        let _ = go.send(());
        check_complete("the slow subscriber", &slow.await.unwrap(), last);
    }
    if let Some(resumed) = resumed {
        check_complete("the resumed subscriber", &resumed.await.unwrap(), last);
    }
    Round {
        cpu,
        rss_growth_kib: rss_peak - rss_before,
        job_secs,
        events: last,
    }
}

fn main() {
    if server_child::run_if_child() {
        return;
    }
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let subscribers = env("AGENT_BENCH_SUBSCRIBERS", 1000);
    let lines = env("AGENT_BENCH_LINES", 2000);
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    let pid = server.pid();
    let rt = agent_benches::current_thread_runtime();
    let load = agent_benches::load_average();
    println!(
        "# Fan-out: {subscribers} SSE subscribers of one job printing {lines} lines (load average at start: {load})"
    );
    let rss_start = status_kib(pid, "VmRSS:").unwrap_or(0);
    // A first job warms the server (the image, the pool, the store) and is not counted.
    rt.block_on(round(&server.addr, pid, 1, 10, false));
    let one = rt.block_on(round(&server.addr, pid, 1, lines, false));
    let many = rt.block_on(round(&server.addr, pid, subscribers, lines, true));
    let extra = (subscribers.max(2) - 1) as f64;
    let cpu_per = (many.cpu.as_secs_f64() - one.cpu.as_secs_f64()).max(0.0) / extra;
    let rss_per = (many.rss_growth_kib - one.rss_growth_kib).max(0) as f64 / extra;
    println!();
    println!("| figure | 1 subscriber (baseline, same run) | {subscribers} subscribers + a slow + a resumed one |");
    println!("|---|---|---|");
    println!(
        "| events per subscriber (each got all, in order) | {} | {} |",
        one.events, many.events
    );
    println!(
        "| server CPU time over the job | {:.2} s | {:.2} s |",
        one.cpu.as_secs_f64(),
        many.cpu.as_secs_f64()
    );
    println!(
        "| server RSS growth while the job ran | {:.1} MiB | {:.1} MiB |",
        one.rss_growth_kib as f64 / 1024.0,
        many.rss_growth_kib as f64 / 1024.0
    );
    println!(
        "| the job's own duration (started → finished) | {:.2} s | {:.2} s ({:.2}×) |",
        one.job_secs,
        many.job_secs,
        many.job_secs / one.job_secs
    );
    println!(
        "per extra subscriber: {:.2} ms CPU ({:.1} µs per event delivered), {:.1} KiB RSS; server RSS at start {:.1} MiB, peak {:.1} MiB",
        cpu_per * 1e3,
        cpu_per * 1e6 / many.events.max(1) as f64,
        rss_per,
        rss_start as f64 / 1024.0,
        status_kib(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
    );
    println!("the slow subscriber (read nothing until the job was over) and the resumed one (Last-Event-ID after 50 events) got every event in order");
}
