//! The MCP tools driven by a client nobody here wrote: the official MCP Python SDK (`mcp` from
//! PyPI, in the venv `scripts/setup-test-tools.sh` makes), as `tests/mcp/client.py`.
//!
//! Over streamable HTTP against the real `agent-server` binary's `/mcp` (behind its bearer
//! token), and over stdio against `agent mcp`, both on the real Docker engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "mcp-test-token";

/// An MCP `initialize` POSTed to `/mcp` by hand, with `headers`.
async fn raw_initialize(server: &TestServer, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = server
        .http
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_calls_every_tool_over_streamable_http() {
    require_docker();
    // The LLM that plans run_job's prompt: a mock on loopback answering with a fixed plan.
    let plan = json!({"summary": "one step", "steps": [
        {"type": "python", "code": "print('planned', 6 * 7)"}]});
    let llm = alchemyst_mock(&plan, &plan).await;
    let options = ServerOptions::new(&unique_scope("mcp"))
        .token(TOKEN)
        .llm(Some(&llm), None);
    let (_dir, server) = TestServer::in_tempdir(&options);

    // Same auth as the API: no token or a wrong one, no MCP.
    for auth in [None, Some("Bearer wrong")] {
        let headers: Vec<_> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let resp = raw_initialize(&server, &headers).await;
        assert_eq!(resp.status(), 401, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }

    let ids = run_client(
        vec!["http".into(), server.url("/mcp"), TOKEN.into()],
        vec![],
        || server.log_text(),
    )
    .await;
    let sandbox = ids["sandbox_id"].as_str().unwrap();
    let job = ids["job_id"].as_str().unwrap();

    // What the tools did is recorded like any job: the sandbox's steps, the job's result.
    let st = server.status(sandbox).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    let kinds = (0..9)
        .map(|i| st["steps"][i]["type"].as_str())
        .collect::<Vec<_>>();
    let expected = [
        "shell", "python", "python", "python", "python", "shell", "shell", "shell",
    ];
    assert_eq!(
        kinds,
        expected
            .map(Some)
            .into_iter()
            .chain([None])
            .collect::<Vec<_>>(),
        "{st}"
    );
    assert_eq!(st["steps"][0]["exit_code"], 3, "{st}");
    assert_eq!(st["steps"][2]["python"]["value"], "42.0", "{st}");
    assert_eq!(st["steps"][7]["termination"], "timed_out", "{st}");
    assert!(containers_gone(sandbox), "the sandbox's container is left");
    let st = server.status(job).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    assert!(containers_gone(job), "the job's container is left");
    let mut zip = server.download(job).await;
    assert_eq!(zip_file(&mut zip, "out.txt"), "from-job\n");
    // The planned job's prompt went to the LLM.
    let asked = received_bodies(&llm).await;
    assert!(
        asked
            .iter()
            .any(|b| request_text(b).contains("planned-by-mcp")),
        "{asked:?}"
    );

    // For the report: a `true` step's latency as an MCP tool call and through REST.
    eprintln!(
        "`true` in a live sandbox, median of 20 from one Python client: MCP tool call {} ms, REST {} ms",
        ids["mcp_true_median_ms"], ids["rest_true_median_ms"]
    );
    assert!(containers_gone(ids["latency_sandbox_id"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_calls_the_tools_of_agent_mcp_over_stdio() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let scope = unique_scope("mcp-stdio");
    let env = vec![
        ("AGENT_DOCKER_SCOPE".to_string(), scope.clone()),
        ("AGENT_IMAGE".to_string(), image()),
        ("AGENT_NETWORK".to_string(), "none".to_string()),
        (
            "AGENT_OUTPUT_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("HOME".to_string(), dir.path().display().to_string()),
    ];
    let ids = run_client(
        vec!["stdio".into(), agent_binary().display().to_string()],
        env,
        String::new,
    )
    .await;
    assert!(ids["sandbox_id"].is_string(), "{ids}");
    // The client closed stdin with a sandbox still live: `agent mcp` ended it on the way out
    // and removed its container (and every other of its scope).
    let left = ids["left_sandbox_id"].as_str().unwrap();
    assert!(
        containers_gone(left),
        "the live sandbox's container is left"
    );
    assert!(
        containers_of_scope(&scope).is_empty(),
        "containers left in {scope}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_host_names_reach_mcp() {
    let (_dir, server) = TestServer::with_docker("mcp-host");
    // A page that rebinds its own name to 127.0.0.1 sends its own Host: refused.
    for (host, expected) in [("rebound.example:80", 403), ("localhost:8000", 200)] {
        let resp = raw_initialize(&server, &[("host", host)]).await;
        assert_eq!(resp.status(), expected, "Host: {host}");
    }
}

/// `agent mcp` ended by SIGTERM (as a desktop client may end it) with a sandbox live: the
/// sandbox's container is removed on the way out. Spoken to by hand (newline-delimited JSON-RPC,
/// MCP's stdio framing) because the SDK's stdio client does not expose the process.
#[test]
fn agent_mcp_removes_its_sandboxes_on_sigterm() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let scope = unique_scope("mcp-term");
    let mut child = Command::new(agent_binary())
        .arg("mcp")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AGENT_DOCKER_SCOPE", &scope)
        .env("AGENT_IMAGE", image())
        .env("AGENT_OUTPUT_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    let mut send = |v: Value| writeln!(stdin, "{v}").unwrap();
    let answer = || rx.recv_timeout(PATIENCE).expect("an answer from agent mcp");
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}),
    );
    assert_eq!(
        answer()["result"]["serverInfo"]["name"],
        "containerized-agent"
    );
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "create_sandbox", "arguments": {}}}));
    let created = answer();
    let id = created["result"]["structuredContent"]["sandbox_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    assert_eq!(containers_of(&id).len(), 1, "the sandbox's container");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "agent mcp did not exit on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(containers_gone(&id), "the sandbox's container is left");
    assert!(
        containers_of_scope(&scope).is_empty(),
        "containers left in {scope}"
    );
}
