//! Helpers for the end-to-end tests: the real `agent-server` binary in a child process, mock LLM
//! servers on 127.0.0.1 (wiremock), Docker checks.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Asserts that `resp`'s `content-type` starts with `prefix` (`text/plain`, `text/event-stream`…).
pub fn assert_content_type(resp: &reqwest::Response, prefix: &str) {
    let got = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    assert!(
        got.as_deref().is_some_and(|t| t.starts_with(prefix)),
        "content-type {got:?}, expected {prefix}…"
    );
}

/// Upper bound for waiting on anything (a guard against hangs, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(180);

/// Environment variables of the developer's shell that must not leak into the child.
const SCRUB: &[&str] = &[
    "ALCHEMYST_API_KEY",
    "ALCHEMYST_AI_API_KEY",
    "ALCHEMYST_BASE_URL",
    "ALCHEMYST_MODEL",
    "GEMINI_API_KEY",
    "GEMINI_BASE_URL",
    "GEMINI_MODEL",
    "GEMINI_SCHEMA_FIELD",
    "ALCHEMYST_JSON_SCHEMA",
    "OPENAI_JSON_SCHEMA",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_MODEL",
    "AGENT_LLM_ORDER",
    "AGENT_API_TOKEN",
    "AGENT_API_TOKENS_FILE",
    "AGENT_BIND",
    "AGENT_OUTPUT_DIR",
    "AGENT_NETWORK",
    "AGENT_WARM_POOL",
    "AGENT_PUBLIC_DOCS",
    "AGENT_JOB_TIMEOUT_SECS",
    "AGENT_STEP_TIMEOUT_SECS",
    "AGENT_MAX_CONCURRENT_JOBS",
    "AGENT_DOCKER_SCOPE",
    "RETENTION_DAYS",
    "AGENT_URL",
    "AGENT_ARTIFACTS",
    "AWS_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ALLOW_HTTP",
];

/// A program from the virtualenv of Python test tools (moto, schemathesis) that
/// scripts/setup-test-tools.sh installs; fails the test with that instruction when it is missing.
pub fn test_tool(name: &str) -> PathBuf {
    let venv = std::env::var("AGENT_TEST_TOOLS_VENV")
        .unwrap_or_else(|_| "/opt/containerized-agent/test-tools-venv".to_string());
    let bin = Path::new(&venv).join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: install the Python test tools with scripts/setup-test-tools.sh",
        bin.display()
    );
    bin
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A helper process (a local S3 server, …) killed when dropped.
pub struct Helper {
    pub child: Child,
    /// Where its output goes.
    pub log: PathBuf,
}

impl Helper {
    /// Starts `cmd` with its stdout and stderr in `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Helper {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Helper { child, log }
    }

    /// Waits (bounded) until `url` answers with a success; panics with the log if the process
    /// exits first or never answers.
    pub async fn wait_ready(&mut self, url: &str) {
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{url}: the process exited ({status}):\n{}", self.log_text());
            }
            if let Ok(r) = http.get(url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{url} never answered:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status and JSON body of the answer `resp` to `method path` (a body that is not JSON fails
/// the test, naming the request).
async fn json_answer(method: &str, path: &str, resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path} answered {status} with non-JSON ({e}): {text}")
    });
    (status, value)
}

/// A unique Docker reaping scope, so that parallel tests never reap each other's containers.
pub fn unique_scope(name: &str) -> String {
    format!("e2e-{name}-{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// A running `agent-server` child process.
pub struct TestServer {
    pub child: Child,
    pub base: String,
    pub output_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
    pub token: Option<String>,
    /// What it was started with ([`restart`](Self::restart) starts it again so).
    pub opts: ServerOptions,
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub env: Vec<(String, String)>,
    pub token: Option<String>,
    pub scope: String,
}

impl ServerOptions {
    pub fn new(scope: &str) -> Self {
        Self {
            env: Vec::new(),
            token: None,
            scope: scope.to_string(),
        }
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }

    pub fn token(mut self, t: &str) -> Self {
        self.token = Some(t.to_string());
        self
    }

    /// An Alchemyst-format primary at `primary` and a Gemini-format fallback at `fallback`.
    pub fn llm(self, primary: Option<&MockServer>, fallback: Option<&MockServer>) -> Self {
        let mut s = self.env("AGENT_LLM_MAX_ATTEMPTS", "1");
        if let Some(p) = primary {
            s = s
                .env("ALCHEMYST_BASE_URL", p.uri())
                .env("ALCHEMYST_API_KEY", "test-alchemyst-key");
        }
        if let Some(f) = fallback {
            s = s
                .env("GEMINI_BASE_URL", f.uri())
                .env("GEMINI_API_KEY", "test-gemini-key");
        }
        s
    }
}

pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agent-server"))
}

pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agent"))
}

/// The Docker image jobs run (must exist; CI builds it with images/agent/build-offline.sh).
pub fn image() -> String {
    std::env::var("AGENT_IMAGE").unwrap_or_else(|_| "containerized-agent:latest".to_string())
}

/// Fails the test with instructions when Docker or the image is missing.
pub fn require_docker() {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image()])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the image {} is missing ({}); build it with images/agent/build-offline.sh",
            image(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => {
            panic!("the docker CLI is not available ({e}); install docker.io and start dockerd")
        }
    }
}

impl TestServer {
    /// Starts the binary on 127.0.0.1:0 with `output_dir` and waits for its "listening on" line.
    pub fn start(output_dir: &Path, opts: &ServerOptions) -> TestServer {
        let mut cmd = Command::new(server_binary());
        for k in SCRUB {
            cmd.env_remove(k);
        }
        cmd.current_dir(output_dir.parent().unwrap_or(output_dir))
            .env("AGENT_BIND", "127.0.0.1:0")
            .env("AGENT_OUTPUT_DIR", output_dir)
            .env("AGENT_NETWORK", "none")
            // No idle pool container per test server (a test that wants one sets it).
            .env("AGENT_WARM_POOL", "0")
            .env("AGENT_IMAGE", image())
            .env("AGENT_DOCKER_SCOPE", &opts.scope)
            .env("AGENT_SHUTDOWN_GRACE_SECS", "2")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = &opts.token {
            cmd.env("AGENT_API_TOKEN", t);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting agent-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(pos) = line.find("listening on http://") {
                        let rest = &line[pos + "listening on http://".len()..];
                        let addr: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == ':')
                            .collect();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "agent-server did not start; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        TestServer {
            child,
            base: format!("http://{addr}"),
            output_dir: output_dir.to_path_buf(),
            log,
            http: reqwest::Client::new(),
            token: opts.token.clone(),
            opts: opts.clone(),
        }
    }

    /// Starts a server whose output directory is `out/` in a new temporary directory, which
    /// lives as long as the returned guard.
    pub fn in_tempdir(opts: &ServerOptions) -> (tempfile::TempDir, TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(&dir.path().join("out"), opts);
        (dir, server)
    }

    /// [`in_tempdir`](Self::in_tempdir), after checking that Docker and the image are there.
    pub fn docker_in_tempdir(opts: &ServerOptions) -> (tempfile::TempDir, TestServer) {
        require_docker();
        TestServer::in_tempdir(opts)
    }

    /// [`docker_in_tempdir`](Self::docker_in_tempdir) with default options and a reaping scope
    /// of its own (`e2e-{name}-…`).
    pub fn with_docker(name: &str) -> (tempfile::TempDir, TestServer) {
        TestServer::docker_in_tempdir(&ServerOptions::new(&unique_scope(name)))
    }

    /// A new server on this one's output directory, with its options (once this one is
    /// stopped: killed or terminated).
    pub fn restart(&self) -> TestServer {
        TestServer::start(&self.output_dir, &self.opts)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.auth(self.http.get(self.url(path)))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        json_answer("GET", path, self.get(path).await).await
    }

    /// `POST path` with the JSON `body` (and the token, when the server has one).
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.auth(self.http.post(self.url(path)).json(body))
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        json_answer("POST", path, self.post(path, body).await).await
    }

    /// `DELETE path` (with the token, when the server has one).
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.auth(self.http.delete(self.url(path)))
            .send()
            .await
            .unwrap()
    }

    /// Schedules a job and returns its id.
    pub async fn schedule(&self, body: Value) -> String {
        let (status, v) = self.post_json("/schedule", &body).await;
        assert_eq!(status, 202, "schedule answered {v}");
        assert_eq!(v["status"], "queued");
        v["job_id"].as_str().unwrap().to_string()
    }

    pub async fn status(&self, id: &str) -> Value {
        let (code, v) = self.get_json(&format!("/status/{id}")).await;
        assert_eq!(code, 200, "status of {id}: {v}");
        v
    }

    /// Polls the status until `pred` holds.
    pub async fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.status(id).await;
            if pred(&v) {
                return v;
            }
            if start.elapsed() > PATIENCE {
                panic!(
                    "job {id} never got {what}; last status {v}\nserver log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the job has reached a final status.
    pub async fn wait_final(&self, id: &str) -> Value {
        self.wait_for(id, "a final status", |v| {
            !matches!(v["status"].as_str(), Some("queued") | Some("running"))
        })
        .await
    }

    /// Downloads a job's ZIP into memory.
    pub async fn download(&self, id: &str) -> zip::ZipArchive<std::io::Cursor<Vec<u8>>> {
        let resp = self.get(&format!("/download/{id}")).await;
        assert_eq!(resp.status(), 200, "download of {id}");
        assert_eq!(resp.headers()["content-type"], "application/zip");
        let cd = resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(cd.contains(&format!("job-{id}.zip")), "{cd}");
        let bytes = resp.bytes().await.unwrap().to_vec();
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a valid ZIP")
    }

    /// The value of an unlabelled metric in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// A job's plain-text log.
    pub async fn logs_text(&self, id: &str) -> String {
        self.get(&format!("/logs/{id}")).await.text().await.unwrap()
    }

    /// Runs a job that keeps `kept.txt` and returns its id and log: a record that must survive
    /// a fault ([`TestServer::assert_kept`]).
    pub async fn kept_job(&self) -> (String, String) {
        let id = self.schedule(shell_job("echo kept > kept.txt")).await;
        assert_eq!(self.wait_final(&id).await["status"], "succeeded");
        let logs = self.logs_text(&id).await;
        (id, logs)
    }

    /// Checks that a [`TestServer::kept_job`]'s ZIP and log are still served, unchanged.
    pub async fn assert_kept(&self, (id, logs): &(String, String)) {
        let mut zip = self.download(id).await;
        assert_eq!(zip_file(&mut zip, "kept.txt"), "kept\n");
        assert_eq!(&self.logs_text(id).await, logs);
    }

    /// Starts a Python kernel in the Jupyter Lab of job (or live sandbox) `id` through the
    /// server's proxy with the signed access `token`, retrying (bounded) while Jupyter starts;
    /// returns the kernel's JSON.
    pub async fn start_jupyter_kernel(&self, id: &str, token: &str) -> Value {
        let kernels = self.url(&format!("/jupyter/{id}/api/kernels?access={token}"));
        let anon = reqwest::Client::new();
        let start = Instant::now();
        loop {
            let resp = anon
                .post(&kernels)
                .json(&json!({"name": "python3"}))
                .send()
                .await
                .unwrap();
            if resp.status().is_success() {
                return resp.json::<Value>().await.unwrap();
            }
            assert!(
                start.elapsed() < PATIENCE && resp.status() != 401,
                "no Jupyter: {} {}\n{}",
                resp.status(),
                resp.text().await.unwrap_or_default(),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGKILL (`kill -9`).
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the process; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!(
                    "agent-server did not exit after SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Let it clean up its containers.
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a job's containers are gone, waiting a bounded number of times: a finished job's
/// container is removed just after its final status is published.
pub fn containers_gone(job_id: &str) -> bool {
    for _ in 0..200 {
        if containers_of(job_id).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A job of one shell step.
pub fn shell_job(command: &str) -> Value {
    json!({"steps": [{"type": "shell", "command": command}]})
}

/// Containers (running or not) labelled with this job id.
pub fn containers_of(job_id: &str) -> Vec<String> {
    containers_labelled(&format!("agent.job_id={job_id}"))
}

/// Containers of a reaping scope.
pub fn containers_of_scope(scope: &str) -> Vec<String> {
    containers_labelled(&format!("agent.scope={scope}"))
}

/// Containers (running or not) with this `key=value` label.
fn containers_labelled(label: &str) -> Vec<String> {
    containers_labelled_on(None, label)
}

/// Containers (running or not) with this `key=value` label on the engine at `host` (`None`:
/// the default engine).
pub fn containers_labelled_on(host: Option<&str>, label: &str) -> Vec<String> {
    let mut cmd = Command::new("docker");
    if let Some(host) = host {
        cmd.args(["-H", host]);
    }
    let out = cmd
        .args(["ps", "-a", "-q", "--filter", &format!("label={label}")])
        .output()
        .expect("docker ps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Reads a file from a ZIP.
pub fn zip_file(zip: &mut zip::ZipArchive<std::io::Cursor<Vec<u8>>>, name: &str) -> String {
    use std::io::Read;
    let mut f = zip
        .by_name(name)
        .unwrap_or_else(|_| panic!("{name} missing from the ZIP"));
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

pub fn zip_names(zip: &zip::ZipArchive<std::io::Cursor<Vec<u8>>>) -> Vec<String> {
    zip.file_names().map(str::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// Mock LLMs.

/// The text of every message of a chat request, joined (OpenAI or Gemini format).
pub fn request_text(body: &Value) -> String {
    let mut out = String::new();
    if let Some(msgs) = body["messages"].as_array() {
        for m in msgs {
            out.push_str(m["content"].as_str().unwrap_or(""));
            out.push('\n');
        }
    }
    if let Some(contents) = body["contents"].as_array() {
        for c in contents {
            for p in c["parts"].as_array().into_iter().flatten() {
                out.push_str(p["text"].as_str().unwrap_or(""));
                out.push('\n');
            }
        }
    }
    out
}

/// Whether a chat request is a repair request (agent-core's repair prompt says a step failed).
pub fn is_repair(body: &Value) -> bool {
    request_text(body).contains("A step failed")
}

/// The format a mock speaks.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// Alchemyst: OpenAI-compatible `/chat/completions`, plain JSON or SSE when `stream` is set.
    OpenAi,
    /// Gemini: `:generateContent` or `:streamGenerateContent?alt=sse`.
    Gemini,
}

/// Answers with `plan` to planning requests and `repair` to repair requests.
pub struct PlanResponder {
    pub format: Format,
    pub plan: String,
    pub repair: String,
}

impl Respond for PlanResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let text = if is_repair(&body) {
            &self.repair
        } else {
            &self.plan
        };
        match self.format {
            Format::OpenAi => {
                if body["stream"].as_bool() == Some(true) {
                    let chunk = |delta: Value, finish: Value| {
                        json!({"id":"c1","object":"chat.completion.chunk","model":"mock",
                               "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
                        .to_string()
                    };
                    let mid = text.len() / 2;
                    let (a, b) = text.split_at(mid);
                    let events = [
                        chunk(json!({"role":"assistant","content":a}), Value::Null),
                        chunk(json!({"content":b}), Value::Null),
                        chunk(json!({}), json!("stop")),
                        json!({"id":"c1","object":"chat.completion.chunk","model":"mock","choices":[],
                               "usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}})
                        .to_string(),
                        "[DONE]".to_string(),
                    ];
                    let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
                    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
                } else {
                    ResponseTemplate::new(200).set_body_json(json!({
                        "id":"c1","object":"chat.completion","model":"mock",
                        "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],
                        "usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}
                    }))
                }
            }
            Format::Gemini => {
                let reply = json!({
                    "candidates":[{"content":{"role":"model","parts":[{"text":text}]},"finishReason":"STOP","index":0}],
                    "usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":20,"totalTokenCount":30},
                    "modelVersion":"mock"
                });
                if request.url.path().contains("streamGenerateContent") {
                    ResponseTemplate::new(200)
                        .set_body_raw(format!("data: {reply}\n\n"), "text/event-stream")
                } else {
                    ResponseTemplate::new(200).set_body_json(reply)
                }
            }
        }
    }
}

/// A mock Alchemyst (OpenAI-format) server answering with `plan` / `repair`.
pub async fn alchemyst_mock(plan: &Value, repair: &Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/chat/completions"))
        .respond_with(PlanResponder {
            format: Format::OpenAi,
            plan: plan.to_string(),
            repair: repair.to_string(),
        })
        .mount(&server)
        .await;
    server
}

/// A mock Alchemyst that always answers 503.
pub async fn failing_alchemyst_mock() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({
            "error": {"message": "upstream overloaded", "type": "server_error", "code": "unavailable"}
        })))
        .mount(&server)
        .await;
    server
}

/// A mock Gemini server answering with `plan` / `repair`.
pub async fn gemini_mock(plan: &Value, repair: &Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path_regex(
            r"^/v1beta/models/[^/]+:(stream)?[gG]enerateContent$",
        ))
        .respond_with(PlanResponder {
            format: Format::Gemini,
            plan: plan.to_string(),
            repair: repair.to_string(),
        })
        .mount(&server)
        .await;
    server
}

/// The JSON bodies of the requests a mock received.
pub async fn received_bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
        .collect()
}

/// Reads Server-Sent Events from a response until it ends: (id, event, data) triples.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let mut id = None;
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(SseEvent { id, event, data });
            }
            let chunk = tokio::time::timeout(PATIENCE, self.resp.chunk())
                .await
                .expect("SSE stream stalled")
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

const DEFAULT_MCP_VENV: &str = "/opt/containerized-agent/mcp-venv";

/// The venv's Python, with the `mcp` SDK installed (`AGENT_MCP_VENV`, as the setup script).
pub fn mcp_python() -> PathBuf {
    let venv = std::env::var_os("AGENT_MCP_VENV").unwrap_or(DEFAULT_MCP_VENV.into());
    let python = Path::new(&venv).join("bin/python");
    assert!(
        python.exists(),
        "no {python:?}: run scripts/setup-test-tools.sh"
    );
    python
}

/// Runs `client.py ARGS…` with only `env` (and PATH) in its environment; returns its last
/// stdout line as JSON, failing the test with its output (and `log`) when it fails.
pub async fn run_client(
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: impl Fn() -> String,
) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let python = mcp_python();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg(script)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if !out.status.success() {
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        panic!(
            "the MCP client failed:\n{stdout}\n{stderr}\nserver log:\n{}",
            log()
        );
    }
    serde_json::from_str(text(&out.stdout).lines().last().unwrap_or("")).unwrap()
}
