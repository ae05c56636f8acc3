//! The real server in a child process, for the benches that load it over loopback: the bench
//! binary re-executes itself in "server mode", which runs `agent_server::serve` exactly as the
//! `agent-server` binary does, with the real Docker executor. Its RSS and CPU time are then the
//! server's alone, not the load generator's.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

const SERVER_MODE: &str = "AGENT_BENCH_SERVER_MODE";

/// Runs the server (configured from the environment) and returns true when this process was
/// started as a bench's server child; false in the bench itself.
pub(crate) fn run_if_child() -> bool {
    if std::env::var_os(SERVER_MODE).is_none() {
        return false;
    }
    let rt = agent_server::server::runtime().unwrap();
    rt.block_on(async {
        let config = agent_server::ServerConfig::from_env().unwrap();
        agent_server::config::init_tracing(config.log_format);
        if let Err(e) = agent_server::serve(config).await {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    });
    true
}

/// The server child; stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct ServerChild {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl ServerChild {
    /// The child's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        agent_benches::stop_child(&mut self.child, Duration::from_secs(30));
    }
}

/// Starts the server on a free loopback port with its output and database in `dir`, no token,
/// no LLM, one worker, and `env` on top; waits until it listens.
pub(crate) fn start_server(dir: &Path, env: &[(&str, &str)]) -> ServerChild {
    start(dir, env, None)
}

/// [`start_server`], and every line the server writes to stderr (its log), with when it came,
/// from the first on.
#[allow(dead_code)] // not every bench that includes this module reads the server's log
pub(crate) fn start_server_with_log(
    dir: &Path,
    env: &[(&str, &str)],
) -> (ServerChild, Receiver<(Instant, String)>) {
    let (tx, rx) = std::sync::mpsc::channel();
    (start(dir, env, Some(tx)), rx)
}

fn start(dir: &Path, env: &[(&str, &str)], log: Option<Sender<(Instant, String)>>) -> ServerChild {
    let scope = format!("bench-{}", std::process::id());
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(SERVER_MODE, "1")
        .env("AGENT_BIND", "127.0.0.1:0")
        .env("AGENT_OUTPUT_DIR", dir)
        .env("AGENT_DOCKER_SCOPE", scope)
        .env("AGENT_MAX_CONCURRENT_JOBS", "1")
        .env("RETENTION_DAYS", "0")
        .env("AGENT_SHUTDOWN_GRACE_SECS", "1")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("AGENT_API_TOKEN")
        .env_remove("ALCHEMYST_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            if let Some(pos) = line.find("listening on http://") {
                let addr: String = line[pos + 20..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            } else if line.contains("ERROR") || line.contains("error:") {
                eprintln!("server: {line}");
            }
            if let Some(log) = &log {
                let _ = log.send((at, line));
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the server did not start (is Docker running?)");
    ServerChild { child, addr }
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
