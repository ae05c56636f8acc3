//! Compatibility with a real OpenAI-compatible server: the LiteLLM proxy (PyPI `litellm[proxy]`,
//! installed by scripts/setup-litellm.sh), on 127.0.0.1, with canned answers (`mock_response`)
//! and a small custom provider (tests/litellm/cut_stream.py) that stops the proxy mid-stream.
//!
//! Through the real `agent-server` binary and real Docker: a prompt job in each of the three modes
//! (OpenAI-compatible, Alchemyst with its base URL at the proxy, Gemini-native through LiteLLM's
//! `/v1beta/models/{model}:generateContent` and `:streamGenerateContent`), streamed with the usage
//! chunk; a 429 and a 500 from the proxy; the proxy killed mid-stream and started again. The
//! providers also pass the LLM conformance suite against it. The wiremock tests stay the fast
//! unit tier; this is the check that the wire formats hold against someone else's server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_llm::{GeminiConfig, OpenAiConfig};
use serde_json::{json, Value};
use support::*;

/// The proxy's master key: the providers send it as their API key.
const KEY: &str = "sk-compat-5b8e2d0f4a6c1e3b7d9f0a2c4e6b8d1f";

/// Where scripts/setup-litellm.sh put the proxy.
fn litellm_binary() -> PathBuf {
    let venv = std::env::var("LITELLM_VENV")
        .unwrap_or_else(|_| "/opt/containerized-agent/litellm-venv".to_string());
    let bin = Path::new(&venv).join("bin/litellm");
    assert!(
        bin.exists(),
        "{} is missing: install the LiteLLM proxy with scripts/setup-litellm.sh",
        bin.display()
    );
    bin
}

/// A plan whose one step writes `mode.txt` with `mode` in it.
fn plan_for(mode: &str) -> String {
    json!({
        "summary": format!("planned through {mode}"),
        "steps": [{"type": "shell", "command": format!("echo {mode} > mode.txt")}]
    })
    .to_string()
}

/// The proxy's configuration: one model per case.
fn config(dir: &Path) -> String {
    let mock = |name: &str, response: &str| {
        format!(
            "  - model_name: {name}\n    litellm_params:\n      model: openai/{name}\n      api_key: unused\n      mock_response: {}\n",
            serde_json::to_string(response).unwrap()
        )
    };
    let mut models = String::new();
    models.push_str(&mock("plan-openai", &plan_for("openai")));
    models.push_str(&mock("plan-alchemyst", &plan_for("alchemyst")));
    // LiteLLM's Google routes translate to its completion call; a `gemini/…` model ignores
    // `mock_response` when streaming, so the canned Gemini-native answers come from an `openai/…`
    // model, served in Gemini's wire format by the proxy.
    models.push_str(&mock("plan-gemini", &plan_for("gemini")));
    models.push_str(&mock("rate-limited", "litellm.RateLimitError"));
    models.push_str(&mock("broken", "litellm.InternalServerError"));
    models.push_str(
        "  - model_name: cut-stream\n    litellm_params:\n      model: cutter/cut-stream\n",
    );
    let text = format!(
        "model_list:\n{models}litellm_settings:\n  num_retries: 0\n  telemetry: false\n  custom_provider_map:\n    - provider: cutter\n      custom_handler: cut_stream.cut_stream\nrouter_settings:\n  num_retries: 0\ngeneral_settings:\n  master_key: {KEY}\n"
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/litellm/cut_stream.py"),
        dir.join("cut_stream.py"),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// A running LiteLLM proxy.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Proxy {
    /// Starts the proxy on `port` (a free one when `None`) and waits until it answers.
    async fn start(dir: &Path, port: Option<u16>, name: &str) -> Proxy {
        let port = port.unwrap_or_else(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        let config = config(dir);
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(litellm_binary())
            .args(["--config", &config, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .current_dir(dir)
            .env("LITELLM_CUT_MARKER", dir.join("cut.marker"))
            .env("LITELLM_CUT_PLAN", plan_for("after-the-cut"))
            .env("LITELLM_TELEMETRY", "False")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("starting the LiteLLM proxy");
        let mut proxy = Proxy { child, port, log };
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("the LiteLLM proxy exited ({status}):\n{}", proxy.logs());
            }
            let url = format!("{}/health/liveliness", proxy.base());
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return proxy;
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the LiteLLM proxy did not start:\n{}",
                proxy.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!("{}\n{}", tail(&out), tail(&err))
    }

    /// Waits (bounded) until the process has gone.
    async fn wait_gone(&mut self) {
        let start = Instant::now();
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(start.elapsed() < PATIENCE, "the proxy never stopped");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server whose only LLM is `vars` (one provider), with `attempts` attempts per call.
fn server(dir: &Path, name: &str, attempts: u32, vars: &[(&str, String)]) -> TestServer {
    let mut opts =
        ServerOptions::new(&unique_scope(name)).env("AGENT_LLM_MAX_ATTEMPTS", attempts.to_string());
    for (k, v) in vars {
        opts = opts.env(k, v.clone());
    }
    TestServer::start(&dir.join(name), &opts)
}

/// Runs a prompt job and checks it was planned by `provider` through the proxy, streamed with the
/// usage chunk, and ran in Docker.
async fn prompt_job_succeeds(server: &TestServer, provider: &str, mode: &str) -> Value {
    let id = server
        .schedule(json!({"prompt": format!("write the mode into mode.txt ({mode})")}))
        .await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}\n{}", server.log_text());
    assert_eq!(st["provider"], provider, "{st}");
    let usage = &st["usage"];
    let (p, c, t) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
        usage["total_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0 && t == p + c, "usage from the stream: {st}");
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "mode.txt"), format!("{mode}\n"));
    let result: Value = serde_json::from_str(&zip_file(&mut zip, "result.json")).unwrap();
    assert_eq!(result["usage"], *usage);
    // The log went to a pipe: no colour codes in it.
    assert!(!server.log_text().contains('\x1b'), "{}", server.log_text());
    st
}

async fn metrics(server: &TestServer) -> String {
    server.get("/metrics").await.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_against_the_litellm_proxy() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start(dir.path(), None, "proxy").await;
    let base = proxy.base();

    // The providers themselves pass the conformance suite against the proxy (plain and streamed
    // chat, JSON mode, several turns).
    let openai = OpenAiConfig::openai(format!("{base}/v1"))
        .with_api_key(KEY)
        .with_model("plan-openai")
        .build()
        .unwrap();
    agent_core::testing::llm_suite(Arc::new(openai), &plan_for("openai")).await;
    let gemini = GeminiConfig::new(KEY)
        .with_base_url(&base)
        .with_model("plan-gemini")
        .build()
        .unwrap();
    agent_core::testing::llm_suite(Arc::new(gemini), &plan_for("gemini")).await;

    // A prompt job end to end in each of the three modes.
    let s = server(
        dir.path(),
        "openai",
        1,
        &[
            ("OPENAI_BASE_URL", format!("{base}/v1")),
            ("OPENAI_API_KEY", KEY.into()),
            ("OPENAI_MODEL", "plan-openai".into()),
        ],
    );
    prompt_job_succeeds(&s, "openai", "openai").await;
    let m = metrics(&s).await;
    assert!(
        m.contains("agent_llm_tokens_total{provider=\"openai\",type=\"completion\"}"),
        "{m}"
    );
    drop(s);
    // Alchemyst and Gemini through the proxy's native routes: `{PREFIX}_BASE_URL`, `_API_KEY`,
    // `_MODEL` (model `plan-{provider}`).
    for (provider, prefix) in [("alchemyst", "ALCHEMYST"), ("gemini", "GEMINI")] {
        let env = [
            (format!("{prefix}_BASE_URL"), base.clone()),
            (format!("{prefix}_API_KEY"), KEY.to_string()),
            (format!("{prefix}_MODEL"), format!("plan-{provider}")),
        ];
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let s = server(dir.path(), provider, 1, &env);
        prompt_job_succeeds(&s, provider, provider).await;
    }

    // A 429 and a 500 from the proxy: retried (2 attempts), then the job fails saying so, in one
    // message that does not nest itself.
    for (model, kind, what, status) in [
        ("rate-limited", "rate_limited", "rate limited", 429),
        ("broken", "transient", "transient error", 500),
    ] {
        let s = server(
            dir.path(),
            model,
            2,
            &[
                ("OPENAI_BASE_URL", format!("{base}/v1")),
                ("OPENAI_API_KEY", KEY.into()),
                ("OPENAI_MODEL", model.into()),
            ],
        );
        let id = s.schedule(json!({"prompt": "anything"})).await;
        let st = s.wait_final(&id).await;
        assert_eq!(st["status"], "failed", "{st}");
        let error = st["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("openai {what} (HTTP {status}): ")),
            "{error}"
        );
        assert_eq!(error.matches("openai ").count(), 1, "nested: {error}");
        assert!(!error.contains("providers failed"), "{error}");
        // One failed call (its retries are inside it), logged as retried once.
        let m = metrics(&s).await;
        assert!(
            m.contains(&format!(
                "agent_llm_errors_total{{provider=\"openai\",kind=\"{kind}\"}} 1"
            )),
            "{m}"
        );
        let log = s.log_text();
        assert_eq!(log.matches("LLM call failed; retrying").count(), 1, "{log}");
        assert!(!log.contains("falling back"), "{log}");
        assert!(!log.contains('\x1b'), "{log}");
    }

    // The proxy stops mid-stream (the custom provider kills it after half an answer). The cut is
    // transient: planning asks again, the provider retries the refused connections until the
    // proxy is back on the same port, and the job is planned by the second proxy.
    let s = server(
        dir.path(),
        "cut",
        12,
        &[
            ("OPENAI_BASE_URL", format!("{base}/v1")),
            ("OPENAI_API_KEY", KEY.into()),
            ("OPENAI_MODEL", "cut-stream".into()),
        ],
    );
    let id = s.schedule(json!({"prompt": "survive a cut"})).await;
    proxy.wait_gone().await;
    assert!(dir.path().join("cut.marker").exists());
    let port = proxy.port;
    drop(proxy);
    let _proxy = Proxy::start(dir.path(), Some(port), "proxy-again").await;
    let st = s.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}\n{}", s.log_text());
    let mut zip = s.download(&id).await;
    assert_eq!(zip_file(&mut zip, "mode.txt"), "after-the-cut\n");
    let logs = s.logs_text(&id).await;
    assert!(logs.contains("the answer was cut off"), "{logs}");
    assert!(logs.contains("transient"), "{logs}");
    assert!(!logs.contains("invalid response"), "{logs}");
}
