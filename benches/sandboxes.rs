//! Live-sandbox benchmark (issue 12): every figure next to a baseline measured in the same run.
//!
//! ```text
//! cargo bench -p agent-benches --bench sandboxes     # needs a Docker engine and the image
//! ```
//!
//! - a `true` step in a live sandbox through the REST API (`POST /sandboxes/{id}/steps`) vs
//!   `docker exec <same container> true`;
//! - `print(1)` as a stateful Python step through the REST API vs
//!   `docker exec <same container> python3 -c 'print(1)'`;
//! - sandboxes created per second with a warm pool (`POST /sandboxes` until ready, one after
//!   another) vs `docker run --rm --network none IMAGE true`;
//! - memory the server holds per idle sandbox (its RSS before and after creating them), and one
//!   idle container's own memory (`docker stats`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_benches::{listing_only, median, ms, rounds, timed_docker};
use serde_json::{json, Value};

/// Set in the child process that runs the server.
const SERVER_MODE: &str = "AGENT_BENCH_SANDBOX_SERVER";
/// Idle sandboxes created for the memory figure.
const IDLE: usize = 16;

fn main() {
    if std::env::var_os(SERVER_MODE).is_some() {
        let rt = agent_server::server::runtime().unwrap();
        rt.block_on(async {
            let config = agent_server::ServerConfig::from_env().unwrap();
            agent_server::serve(config).await.unwrap();
        });
        return;
    }
    if listing_only() {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        agent_benches::stop_child(&mut self.child, Duration::from_secs(30));
    }
}

fn spawn_server(dir: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(SERVER_MODE, "1")
        .env("AGENT_BIND", format!("127.0.0.1:{port}"))
        .env("AGENT_OUTPUT_DIR", dir)
        .env(
            "AGENT_DOCKER_SCOPE",
            format!("bench-sbx-{}", std::process::id()),
        )
        .env("AGENT_MAX_CONCURRENT_JOBS", "64")
        .env("AGENT_WARM_POOL", "4")
        .env("AGENT_SHUTDOWN_GRACE_SECS", "1")
        .env("RUST_LOG", "warn")
        .env_remove("AGENT_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn row(name: &str, ours: Duration, base_name: &str, base: Duration, target: Option<f64>) {
    let ratio = ours.as_secs_f64() / base.as_secs_f64();
    let verdict = target.map_or_else(String::new, |t| {
        format!("<= {t}x {}", if ratio <= t { "ok" } else { "MISSED" })
    });
    println!(
        "| {name:<36} | {:>10} | {base_name:<48} | {:>10} | {ratio:>6.3}x | {verdict} |",
        ms(ours),
        ms(base)
    );
}

async fn create(http: &reqwest::Client, base: &str) -> (String, Duration) {
    let t = Instant::now();
    let resp = http
        .post(format!("{base}/sandboxes"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let d = t.elapsed();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    (v["sandbox_id"].as_str().unwrap().to_string(), d)
}

async fn step(http: &reqwest::Client, base: &str, id: &str, step: &Value) -> Duration {
    let t = Instant::now();
    let resp = http
        .post(format!("{base}/sandboxes/{id}/steps"))
        .json(&json!({ "step": step }))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    let d = t.elapsed();
    assert_eq!(v["status"], "succeeded", "{v}");
    d
}

fn container_of(id: &str) -> String {
    let out = Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter"])
        .arg(format!("label=agent.job_id={id}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn run() {
    let n = rounds(30);
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(dir.path());
    let base = server.base.clone();
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if http.get(format!("{base}/")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let image =
        std::env::var("AGENT_IMAGE").unwrap_or_else(|_| "containerized-agent:latest".into());
    println!("# Live-sandbox benchmark (N = {n}, image {image})\n");
    println!(
        "| {:<36} | {:>10} | {:<48} | {:>10} | {:>7} | target |",
        "ours (median)", "", "baseline (median, same run)", "", "ratio"
    );
    println!("|{}|", "-".repeat(150));

    // 1 and 2. Step latency through the REST API vs docker exec on the same container.
    let (id, _) = create(&http, &base).await;
    let cid = container_of(&id);
    let shell_true = json!({"type": "shell", "command": "true"});
    let print_one = json!({"type": "python", "code": "print(1)", "stateful": true});
    let py = ["exec", cid.as_str(), "python3", "-c", "print(1)"];
    for _ in 0..3 {
        step(&http, &base, &id, &shell_true).await;
        step(&http, &base, &id, &print_one).await;
        timed_docker(&["exec", &cid, "true"]).await;
        timed_docker(&py).await;
    }
    let (mut ours, mut baseline, mut ours_py, mut baseline_py) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        ours.push(step(&http, &base, &id, &shell_true).await);
        baseline.push(timed_docker(&["exec", &cid, "true"]).await);
        ours_py.push(step(&http, &base, &id, &print_one).await);
        baseline_py.push(timed_docker(&py).await);
    }
    row(
        "REST `true` step, live sandbox",
        median(ours),
        "`docker exec <same container> true`",
        median(baseline),
        Some(0.2),
    );
    row(
        "REST stateful `print(1)` step",
        median(ours_py),
        "`docker exec <same> python3 -c 'print(1)'`",
        median(baseline_py),
        Some(0.2),
    );
    http.delete(format!("{base}/sandboxes/{id}"))
        .send()
        .await
        .unwrap();

    // 3. Sandboxes created per second (one after another) with a warm pool of 4.
    let rounds_create = n.min(12);
    let (mut created, mut runs) = (vec![], vec![]);
    for _ in 0..rounds_create {
        tokio::time::sleep(Duration::from_secs(2)).await; // let the pool refill
        let (id, d) = create(&http, &base).await;
        created.push(d);
        http.delete(format!("{base}/sandboxes/{id}"))
            .send()
            .await
            .unwrap();
        runs.push(timed_docker(&["run", "--rm", "--network", "none", &image, "true"]).await);
    }
    let create_median = median(created);
    row(
        "POST /sandboxes -> ready (warm pool)",
        create_median,
        "`docker run --rm --network none IMAGE true`",
        median(runs),
        None,
    );
    println!(
        "\nsandboxes created per second, one after another, warm pool: {:.1}",
        1.0 / create_median.as_secs_f64()
    );

    // 4. Memory per idle sandbox: the server's RSS before and after creating IDLE of them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut ids = Vec::new();
    for _ in 0..IDLE {
        ids.push(create(&http, &base).await.0);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(pid);
    let cid = container_of(&ids[0]);
    let stats = Command::new("docker")
        .args(["stats", "--no-stream", "--format", "{{.MemUsage}}", &cid])
        .output()
        .unwrap();
    println!(
        "server memory per idle sandbox: {:.0} KiB ({IDLE} sandboxes: RSS {before} KiB -> {after} KiB); \
         one idle container: {}",
        after.saturating_sub(before) as f64 / IDLE as f64,
        String::from_utf8_lossy(&stats.stdout).trim()
    );
    for id in ids {
        http.delete(format!("{base}/sandboxes/{id}"))
            .send()
            .await
            .unwrap();
    }
}
