//! The OpenAPI document describes the server exactly: schemathesis (PyPI, pinned, installed by
//! scripts/setup-test-tools.sh) runs every one of its checks (`--checks all`: status codes,
//! content types, response schemas, schema-valid requests accepted, schema-invalid ones refused,
//! missing auth refused, unsupported methods answered 405, …) against the real `agent-server`
//! binary with real Docker and an API token, and must find nothing.
//!
//! The run is bounded (a fixed number of cases per operation and a fixed seed, so a failure
//! reproduces with the same command); jobs it schedules run in throw-away sandboxes, prompts are
//! planned by a mock LLM on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::*;

const TOKEN: &str = "st-token-6f1d2c9a8b7e4d3c";

/// Cases per operation: enough for every phase (examples, coverage, fuzzing, stateful) to run,
/// small enough to keep the whole run to a couple of minutes.
const MAX_EXAMPLES: &str = "12";
const SEED: &str = "20261201";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_difference_between_the_document_and_the_server() {
    require_docker();
    let plan = json!({"summary": "planned", "steps": [{"type": "shell", "command": "true"}]});
    let llm = alchemyst_mock(&plan, &plan).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = ServerOptions::new(&unique_scope("openapi"))
        .token(TOKEN)
        .llm(Some(&llm), None)
        .env("AGENT_MAX_CONCURRENT_JOBS", "2");
    let server = TestServer::start(&dir.path().join("out"), &opts);
    let report = dir.path().join("report");
    // Creating a sandbox past the slot limit is a deliberate, documented, temporary 503 (with
    // `Retry-After`), as the issue asks; schemathesis allows a 5xx only where told to.
    // An archive's bytes (a `/schedule` `archive` part, a `PUT …/archive` body) are binary the
    // document cannot describe further than "a ZIP or tar": random bytes are a documented 415.
    let config = dir.path().join("schemathesis.toml");
    let accepted =
        "[\"2xx\", \"3xx\", \"401\", \"403\", \"404\", \"409\", \"415\", \"429\", \"5xx\"]";
    std::fs::write(
        &config,
        format!(
            "[[operations]]\ninclude-name = \"POST /sandboxes\"\n\
             checks.not_a_server_error.expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"503\"]\n\
             [[operations]]\ninclude-name = \"POST /schedule\"\n\
             checks.positive_data_acceptance.expected-statuses = {accepted}\n\
             [[operations]]\ninclude-name = \"PUT /sandboxes/{{id}}/archive\"\n\
             checks.positive_data_acceptance.expected-statuses = {accepted}\n"
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(test_tool("schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
        ])
        // One worker: with two, hypothesis (on CPython 3.11) now and then fails inside `ast`
        // while describing a strategy ("AST constructor recursion depth mismatch"), a runtime
        // error of the tool, not a finding.
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .arg("--report-dir")
        .arg(&report)
        .current_dir(dir.path())
        // Leaves out multipart bodies whose generated file parts repeat a filename (see the
        // hooks file).
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis_hooks.py"),
        )
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    // Only a guard against a hang: the run takes 3–4 minutes here, and more on a loaded machine.
    let out = tokio::time::timeout(PATIENCE * 5, out)
        .await
        .expect("schemathesis did not finish")
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found differences ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // It did test every operation (a document it could not read would test none).
    let tested = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .unwrap_or_default()
        .trim()
        .parse::<u32>()
        .unwrap_or(0);
    assert!(
        tested >= 26,
        "schemathesis tested {tested} operations:\n{stdout}"
    );
    assert!(
        !server.log_text().contains("panicked"),
        "{}",
        server.log_text()
    );
}
