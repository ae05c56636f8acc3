//! The server bench's comparison with the original's stack: a FastAPI app (`fastapi_baseline.py`)
//! holding the same jobs' JSON in memory, under uvicorn with and without uvloop, 1 and 2
//! workers, in a venv this bench makes from PyPI; every server driven by `wrk` (Debian's) with
//! the same URLs in the same run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The baseline's pinned packages.
const REQUIREMENTS: &[&str] = &[
    "fastapi==0.163.2",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "httptools==0.9.0",
];

/// One `wrk` run: requests/s and latency percentiles (ms).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wrk {
    pub(crate) rate: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) non_2xx: u64,
}

/// `wrk -t1 -c CONNECTIONS -d SECS --latency URL`, after a 1 s warm-up; None if wrk is missing.
pub(crate) fn wrk(url: &str, connections: usize, secs: u64) -> Option<Wrk> {
    let run = |d: u64| {
        Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{d}s"),
                "--latency",
                url,
            ])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    run(1)?;
    let out = run(secs)?;
    let field = |line_start: &str| -> Option<&str> {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.split_whitespace().last())
    };
    let rate = field("Requests/sec:")?.parse().ok()?;
    let p50 = wrk_ms(field("50%")?)?;
    let p99 = wrk_ms(field("99%")?)?;
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Wrk {
        rate,
        p50,
        p99,
        non_2xx,
    })
}

/// A wrk latency (`812.00us`, `1.23ms`, `1.01s`) in ms.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// A uvicorn serving the baseline app; killed (with its workers) when dropped.
pub(crate) struct Uvicorn {
    child: Child,
    pub(crate) addr: String,
}

impl Drop for Uvicorn {
    fn drop(&mut self) {
        agent_benches::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// The venv's python, made on first use (see [`agent_benches::python_venv`]).
pub(crate) fn python() -> Result<std::path::PathBuf, String> {
    agent_benches::python_venv("fastapi", REQUIREMENTS)
}

/// Starts uvicorn on `port` with the app's data in `data`; waits until it answers.
pub(crate) fn start(
    python: &Path,
    data: &Path,
    port: u16,
    uvloop: bool,
    workers: usize,
) -> Option<Uvicorn> {
    let app_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let child = Command::new(python)
        .args(["-m", "uvicorn", "fastapi_baseline:app", "--app-dir"])
        .arg(app_dir)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--workers", &workers.to_string()])
        .args(["--loop", if uvloop { "uvloop" } else { "asyncio" }])
        .args([
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ])
        .env("BASELINE_DATA", data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let server = Uvicorn {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let ok = std::net::TcpStream::connect(&server.addr)
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /jobs?limit=1 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
                let mut buf = [0u8; 12];
                s.read_exact(&mut buf)?;
                Ok(buf.starts_with(b"HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if ok {
            // With several workers, give the others the time to be ready too.
            std::thread::sleep(Duration::from_millis(if workers > 1 { 1500 } else { 200 }));
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
