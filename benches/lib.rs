//! Benchmarks live in this directory; run them with `cargo bench -p agent-benches`.
//!
//! Shared helpers of the benchmarks: how many rounds, the timing loop, percentiles, a Docker
//! executor and sandbox to measure, and the Python virtualenv their baselines run in.
#![allow(missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_core::{Executor, JobId, JobSpec, Sandbox, SandboxSpec};
use agent_docker::{DockerConfig, DockerExecutor};

/// Whether the harness only asks for the list of benchmarks (`--list`, or `--test` under
/// `cargo test`): then there is nothing to measure.
pub fn listing_only() -> bool {
    std::env::args().any(|a| a == "--list" || a == "--test")
}

/// A single-threaded Tokio runtime with its I/O and time drivers.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    #[allow(clippy::expect_used)] // a benchmark that cannot start has nothing to measure
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// How many measured rounds: `AGENT_BENCH_N`, else `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var("AGENT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `round` `n + 1` times, one after the other, and returns the results of the last `n`
/// (the first round warms caches and connections and is not counted).
pub async fn after_warmup<T, F: Future<Output = T>>(
    n: usize,
    mut round: impl FnMut() -> F,
) -> Vec<T> {
    round().await;
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        results.push(round().await);
    }
    results
}

/// The `p` quantile (0 to 1, nearest rank) of `v`, which it sorts. `percentile(v, 0.5)` is the
/// median (the upper one of an even count).
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// The median of `v`.
pub fn median(mut v: Vec<Duration>) -> Duration {
    percentile(&mut v, 0.5)
}

/// A duration in milliseconds, for the tables.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// How long the docker CLI takes to run `args` (its output discarded): the baseline the sandbox
/// figures are compared with. Panics when the command fails.
pub async fn timed_docker(args: &[&str]) -> Duration {
    let t = std::time::Instant::now();
    #[allow(clippy::expect_used)] // a baseline that cannot run has nothing to measure
    let status = tokio::process::Command::new("docker")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("the docker CLI");
    assert!(status.success(), "docker {args:?} failed");
    t.elapsed()
}

/// How a Docker benchmark starts: nothing to do when the harness only lists benchmarks
/// ([`listing_only`]); else the rounds to measure ([`rounds`]`(default_rounds)`), and a Docker
/// executor in a scope of its own (`bench-NAME-PID`) with its image present, with its
/// configuration. A machine without a Docker engine ends the benchmark with a message.
pub async fn docker_bench(
    name: &str,
    default_rounds: usize,
) -> Option<(usize, DockerConfig, DockerExecutor)> {
    if listing_only() {
        return None;
    }
    let (config, exec) = docker_executor(name).await;
    Some((rounds(default_rounds), config, exec))
}

/// The load average now (`/proc/loadavg`), for the tables.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.trim().to_string()
}

async fn docker_executor(name: &str) -> (DockerConfig, DockerExecutor) {
    let scope = format!("bench-{name}-{}", std::process::id());
    let config = DockerConfig::from_env().with_scope(scope);
    let exec = match DockerExecutor::connect(config.clone()).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("the {name} benchmark needs a Docker engine: {e}");
            std::process::exit(1);
        }
    };
    #[allow(clippy::expect_used)] // a benchmark that cannot start has nothing to measure
    exec.ensure_image().await.expect("the sandbox image");
    (config, exec)
}

/// A new sandbox of `exec` for a job that asks for nothing special.
pub async fn bench_sandbox(exec: &dyn Executor) -> Box<dyn Sandbox> {
    #[allow(clippy::expect_used)] // a benchmark that cannot start has nothing to measure
    exec.create(&SandboxSpec::for_job(
        JobId::new(),
        &JobSpec::from_prompt("bench"),
    ))
    .await
    .expect("a sandbox")
}

/// The CPU time the calling thread has used: unlike the wall clock, it does not count the time
/// the thread waited for a core, so figures stay comparable on a loaded machine.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The target directory of the workspace (`CARGO_TARGET_DIR`, or `target/` beside `benches/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// A Python virtualenv under `target/bench-venv/NAME` with exactly `requirements` (pinned
/// `name==version` specs) installed from PyPI; made on first use and reused while the pins are
/// the same. Returns the venv's `python`, or why it could not be made (python3 missing, no
/// `venv` module — Debian's `python3-venv` —, or pip failing).
pub fn python_venv(name: &str, requirements: &[&str]) -> Result<PathBuf, String> {
    let dir = target_dir().join("bench-venv").join(name);
    let python = dir.join("bin/python");
    let stamp = dir.join("requirements.txt");
    let wanted = requirements.join("\n") + "\n";
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    println!(
        "making the Python venv {} ({})",
        dir.display(),
        requirements.join(" ")
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir)).map_err(|e| {
        format!("python3 -m venv failed ({e}); on Debian: apt-get install python3-venv")
    })?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(requirements))
    .map_err(|e| format!("pip install {} failed: {e}", requirements.join(" ")))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(python)
}

/// Stops a child process: SIGTERM, then SIGKILL if it has not exited within `grace`.
pub fn stop_child(child: &mut std::process::Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = std::time::Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A job manager for benchmarks: `executor` and `store`, ZIPs under `dir`, no retention sweep.
pub async fn bench_manager(
    executor: std::sync::Arc<dyn agent_core::Executor>,
    store: std::sync::Arc<dyn agent_core::JobStore>,
    dir: &Path,
    max_concurrent_jobs: usize,
) -> agent_core::manager::JobManager {
    #[allow(clippy::expect_used)] // a benchmark that cannot start has nothing to measure
    agent_core::manager::JobManager::builder(executor, store)
        .config(agent_core::manager::JobManagerConfig {
            max_concurrent_jobs,
            retention: None,
            ..agent_core::manager::JobManagerConfig::in_dir(dir)
        })
        .start()
        .await
        .expect("the job manager starts")
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}
