//! A Docker engine outage, for real: the test starts its OWN dockerd (its own socket, data root,
//! exec root and pid file; no bridge, no iptables), loads the agent image into it, runs two
//! servers on it and stops the engine mid-job for 30 s, then starts it again. The shared engine
//! is never touched (except `docker save` of the image).
//!
//! What must hold: the job the outage killed fails (its container is reaped once the engine is
//! back), jobs queued during the outage stay `queued` and succeed after it, `GET /` and
//! `/metrics` show the wait, `POST /schedule` accepts with a `notice` while the outage is
//! shorter than `AGENT_ENGINE_WAIT_SECS` and answers 503 `executor_unavailable` past it, the
//! periodic reaper leaves 0 containers behind and never removes a live server's, nothing stored
//! before the outage is lost, and no accepted job is left without a final status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// How long the engine stays down.
const OUTAGE: Duration = Duration::from_secs(30);

/// A dockerd of the test's own, in a temporary directory.
struct OwnEngine {
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnEngine {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut engine = Self {
            dir: dir.to_path_buf(),
            child: None,
        };
        engine.up();
        engine
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts dockerd and waits until it answers.
    fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("dockerd")
            .arg("-H")
            .arg(self.host())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .arg(format!(
                "--cgroup-parent=/agent-test-engine-{}",
                std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd (the test needs root and docker.io)");
        self.child = Some(child);
        for _ in 0..600 {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the test's dockerd did not answer; its log:\n{}",
            self.log()
        );
    }

    /// Stops dockerd (SIGTERM, as a service manager does) and waits for it to exit.
    fn down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..1200 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn answers(&self) -> bool {
        self.docker(&["version", "--format", "{{.Server.Version}}"])
            .status
            .success()
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .unwrap()
    }

    /// Every container the servers made on this engine (running or not).
    fn containers(&self) -> Vec<String> {
        containers_labelled_on(Some(&self.host()), "agent.managed=true")
    }

    /// Whether `job`'s container is running. A job reports `running` before its container has
    /// started; one killed between create and start stays `created`, which the reaper rightly
    /// spares for its grace period (its owner may be about to start it).
    fn runs_container_of(&self, job: &str) -> bool {
        let out = self.docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=agent.job_id={job}"),
            "--filter",
            "status=running",
        ]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    /// Copies the agent image from the shared engine.
    /// Schedules `spec` on `server` and waits until its job runs in a container of this engine
    /// (a job reports `running` before its container starts); the job's id.
    async fn running_job(&self, server: &TestServer, spec: Value, what: &str) -> String {
        let id = server.schedule(spec).await;
        server
            .wait_for(&id, "running", |v| v["status"] == "running")
            .await;
        until(
            &format!("{what}'s container runs"),
            || self.runs_container_of(&id),
            || self.report(),
        )
        .await;
        id
    }

    fn load_image(&self) {
        let mut save = Command::new("docker")
            .args(["save", &image()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let load = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save failed");
        assert!(
            load.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// What the engine holds and the end of its log, for a failure message.
    fn report(&self) -> String {
        let ps = self.docker(&[
            "ps",
            "-a",
            "--format",
            "{{.ID}} {{.Names}} {{.State}} {{.Status}} {{.Labels}}",
        ]);
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "containers on the test's engine:\n{}{}\ndockerd log (last lines):\n{}",
            String::from_utf8_lossy(&ps.stdout),
            String::from_utf8_lossy(&ps.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for OwnEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Whatever is left goes with the engine's data root.
            for id in self.containers() {
                let _ = self.docker(&["rm", "-f", "-v", &id]);
            }
        }
        self.down();
    }
}

/// Polls `cond` every 100 ms until it holds (bounded by [`PATIENCE`]); on failure the message
/// carries `report()`.
async fn until(what: &str, mut cond: impl FnMut() -> bool, report: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "never: {what}\n{}", report());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn jobs_wait_out_an_engine_restart_and_nothing_is_left_behind() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = OwnEngine::start(&dir.path().join("engine"));
    engine.load_image();

    // Two servers on the engine, the same (default) reaping rules: `a` reaps every second and
    // waits long for the engine, `b` waits 3 s.
    let base = ServerOptions::new(&unique_scope("outage"))
        .env("DOCKER_HOST", engine.host())
        .env("AGENT_MAX_CONCURRENT_JOBS", "2");
    let a = TestServer::start(
        &dir.path().join("a"),
        &base
            .clone()
            .env("AGENT_REAP_INTERVAL_SECS", "1")
            .env("AGENT_ENGINE_WAIT_SECS", "600"),
    );
    let mut b = TestServer::start(
        &dir.path().join("b"),
        &base.clone().env("AGENT_ENGINE_WAIT_SECS", "3"),
    );
    // Every job accepted, by server: none may be left without a final status.
    let mut accepted: Vec<(char, String)> = Vec::new();

    // Before the outage: a finished job whose ZIP and logs must survive it.
    let before = a.kept_job().await;

    // A job running when the engine stops.
    let killed = engine
        .running_job(&a, shell_job("echo started; sleep 600"), "the killed job")
        .await;

    engine.down();
    let outage_began = Instant::now();
    let st = a.wait_final(&killed).await;
    assert_eq!(st["status"], "failed", "{st}");

    // During the outage: accepted with a notice, still queued, visible in / and /metrics.
    let (code, health) = a.get_json("/").await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert!(health["executor"]["down_since"].is_string(), "{health}");
    let mut queued = Vec::new();
    for n in 0..3 {
        let (code, v) = a
            .post_json("/schedule", &shell_job(&format!("echo {n} > out.txt")))
            .await;
        assert_eq!(code, 202, "{v}");
        let notice = v["notice"].as_str().unwrap_or_default();
        assert!(notice.contains("waits"), "{v}");
        queued.push(v["job_id"].as_str().unwrap().to_string());
    }
    let mut waiting = Value::Null;
    let start = Instant::now();
    while waiting["executor"]["waiting_jobs"].as_u64().unwrap_or(0) < 2 {
        assert!(start.elapsed() < PATIENCE, "no job waits: {waiting}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waiting = a.get_json("/").await.1;
    }
    assert_eq!(waiting["queued"], 3, "{waiting}");
    assert_eq!(a.metric("agent_executor_up").await, 0.0);
    assert!(a.metric("agent_jobs_waiting_for_executor").await >= 2.0);
    // (A stopping engine may still answer a ping or two: one outage or more.)
    assert!(a.metric("agent_executor_outages_total").await >= 1.0);
    for id in &queued {
        assert_eq!(a.status(id).await["status"], "queued");
    }

    // Past b's 3 s bound: its waiting job fails, new jobs get a 503 naming the engine.
    let (code, v) = b.post_json("/schedule", &shell_job("true")).await;
    assert_eq!(code, 202, "{v}");
    let given_up = v["job_id"].as_str().unwrap().to_string();
    let st = b.wait_final(&given_up).await;
    assert_eq!(st["status"], "failed", "{st}");
    assert!(
        st["error"].as_str().unwrap().contains("did not answer"),
        "{st}"
    );
    let resp = b.post("/schedule", &shell_job("true")).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "executor_unavailable", "{v}");
    accepted.push(('b', given_up));

    tokio::time::sleep(OUTAGE.saturating_sub(outage_began.elapsed())).await;
    let outage = outage_began.elapsed();
    engine.up();
    let back = Instant::now();
    for id in &queued {
        let st = a.wait_final(id).await;
        assert_eq!(st["status"], "succeeded", "{st}\n{}", a.log_text());
    }
    let after_return = back.elapsed();
    println!(
        "FIGURE engine outage: {}s outage; the {} jobs queued during it all finished {:.2}s \
         after the engine answered again",
        outage.as_secs(),
        queued.len(),
        after_return.as_secs_f64()
    );
    let mut zip = a.download(&queued[2]).await;
    assert_eq!(zip_file(&mut zip, "out.txt"), "2\n");
    accepted.extend(queued.iter().map(|id| ('a', id.clone())));
    accepted.push(('a', before.0.clone()));
    accepted.push(('a', killed.clone()));

    // b accepts again once it has seen the engine answer.
    let (code, _) = b.get_json("/").await;
    assert_eq!(code, 200);
    // A live server's running container survives a's reaper (several passes of it) ...
    let live = b.schedule(shell_job("sleep 4; echo done > done.txt")).await;
    b.wait_for(&live, "running", |v| v["status"] == "running")
        .await;
    let st = b.wait_final(&live).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    accepted.push(('b', live));
    // ... and a crashed server's container is reaped by the other one.
    let orphan = engine
        .running_job(&b, shell_job("sleep 600"), "the orphan")
        .await;
    b.kill9();

    // Nothing left behind: the killed job's container, the crashed server's.
    until(
        "every container is reaped",
        || engine.containers().is_empty(),
        || format!("{}\nserver a's log:\n{}", engine.report(), a.log_text()),
    )
    .await;
    // The crashed server's container can only have been reaped by `a`.
    assert!(a.metric("agent_reaped_sandboxes_total").await >= 1.0);
    assert_eq!(a.metric("agent_executor_up").await, 1.0);

    // Nothing lost: what was stored before the outage is still there, every accepted job has a
    // final status.
    a.assert_kept(&before).await;
    let b = TestServer::start(&dir.path().join("b"), &base);
    let mut lost = 0;
    for (server, id) in &accepted {
        let server = if *server == 'a' { &a } else { &b };
        let st = server.status(id).await;
        if matches!(st["status"].as_str(), Some("queued" | "running")) {
            lost += 1;
        }
    }
    let st = b.status(&orphan).await;
    assert_eq!(st["status"], "interrupted", "{st}");
    println!(
        "FIGURE engine outage: jobs lost {lost} of {}",
        accepted.len() + 1
    );
    assert_eq!(lost, 0);
}
