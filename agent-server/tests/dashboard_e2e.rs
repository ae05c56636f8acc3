//! End-to-end tests of the dashboard and the API endpoints it added, against the real
//! `agent-server` binary and the real Docker engine: browsing a job's ZIP, the server-wide status
//! stream, `GET /info`, the login cookie (and its CSRF rules), and the whole dashboard driven in
//! headless Chromium by `agent-server/ui-tests/dashboard.test.mjs` (playwright-core, installed by
//! `scripts/setup-host.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};
use support::*;

/// `GET url` with one more header.
async fn get_with(
    http: &reqwest::Client,
    url: String,
    (name, value): (&str, &str),
) -> reqwest::Response {
    http.get(url).header(name, value).send().await.unwrap()
}

/// Sends `request` and reads the answer's JSON body.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_jobs_zip_can_be_listed_and_its_files_read() {
    let (_dir, server) = TestServer::with_docker("ui-files");
    let id = server
        .schedule(json!({"steps": [
            {"type": "write_file", "path": "dir/my file.txt", "content": "héllo\nworld\n"},
            {"type": "python", "code": "open('blob.bin','wb').write(bytes(range(256)) * 40)"},
        ]}))
        .await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}");

    let (code, listing) = server.get_json(&format!("/download/{id}/files")).await;
    assert_eq!(code, 200, "{listing}");
    assert_eq!(listing["job_id"], id.as_str());
    assert_eq!(listing["truncated"], false);
    let files = listing["files"].as_array().unwrap();
    let find = |p: &str| files.iter().find(|f| f["path"] == p).cloned();
    let text = find("dir/my file.txt").expect("the written file is listed");
    assert_eq!(text["size"], "héllo\nworld\n".len());
    assert!(text["modified"].as_str().unwrap().len() >= 19, "{text}");
    assert_eq!(find("blob.bin").unwrap()["size"], 256 * 40);
    assert!(find("result.json").is_some());
    assert_eq!(listing["total"], files.len());
    assert!(files
        .iter()
        .all(|f| !f["path"].as_str().unwrap().ends_with('/')));

    // A text file: its exact bytes, as text that can never run as a page.
    let resp = server
        .get(&format!("/download/{id}/files/dir/my%20file.txt"))
        .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("sandbox"));
    assert_eq!(resp.text().await.unwrap(), "héllo\nworld\n");

    // A binary file, streamed whole.
    let resp = server.get(&format!("/download/{id}/files/blob.bin")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 256 * 40);
    assert!(body.iter().enumerate().all(|(i, b)| *b as usize == i % 256));

    // Unknown file, unknown job, malformed id.
    let (code, err) = server
        .get_json(&format!("/download/{id}/files/nope.txt"))
        .await;
    assert_eq!(code, 404, "{err}");
    assert_eq!(err["error"]["code"], "not_found");
    let other = "00000000-0000-4000-8000-000000000000";
    let (code, _) = server.get_json(&format!("/download/{other}/files")).await;
    assert_eq!(code, 404);
    let (code, err) = server.get_json("/download/xyz/files/a.txt").await;
    assert_eq!(code, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_job_id");

    // A running job has no archive yet.
    let long = server
        .schedule(json!({"steps": [{"type": "shell", "command": "sleep 60"}]}))
        .await;
    let (code, err) = server.get_json(&format!("/download/{long}/files")).await;
    assert_eq!(code, 409, "{err}");
    assert_eq!(err["error"]["code"], "not_ready");
    let (code, _) = server
        .post_json(&format!("/cancel/{long}"), &json!({}))
        .await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_stream_carries_every_jobs_status_changes() {
    let (_dir, server) = TestServer::with_docker("ui-events");
    let resp = server.get("/events").await;
    assert_eq!(resp.status(), 200);
    assert_content_type(&resp, "text/event-stream");
    let mut sse = SseReader::new(resp);
    let id = server
        .schedule(json!({"steps": [{"type": "shell", "command": "echo hi"}]}))
        .await;
    let mut seen = Vec::new();
    while let Some(ev) = sse.next().await {
        assert_eq!(ev.event, "status", "{ev:?}");
        if ev.data["job_id"] != id.as_str() {
            continue;
        }
        assert!(
            ev.data["seq"].is_u64() && ev.data["at"].is_string(),
            "{ev:?}"
        );
        seen.push(ev.data["status"].as_str().unwrap().to_string());
        if seen.last().map(String::as_str) == Some("succeeded") {
            break;
        }
    }
    assert_eq!(seen, ["queued", "running", "succeeded"]);

    // The endpoints the dashboard added are in the API's document like the others.
    let (code, doc) = server.get_json("/openapi.json").await;
    assert_eq!(code, 200);
    for (path, method) in [
        ("/download/{id}/files", "get"),
        ("/download/{id}/files/{path}", "get"),
        ("/events", "get"),
        ("/info", "get"),
        ("/session", "get"),
        ("/session", "post"),
        ("/session", "delete"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    for schema in [
        "ArchiveListing",
        "JobStatusEvent",
        "ServerInfo",
        "SessionInfo",
        "UsageView",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_defaults_capacity_and_provider_health() {
    require_docker();
    let plan = json!({"summary": "s", "steps": [{"type": "shell", "command": "echo planned"}]});
    let alchemyst = alchemyst_mock(&plan, &plan).await;
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("ui-info"))
            .llm(Some(&alchemyst), None)
            .env("AGENT_JOB_TIMEOUT_SECS", "77")
            .env("AGENT_STEP_TIMEOUT_SECS", "7")
            .env("AGENT_MAX_CONCURRENT_JOBS", "3")
            .env("AGENT_WARM_POOL", "1"),
    );
    let (code, info) = server.get_json("/info").await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["defaults"]["timeout_secs"], 77);
    assert_eq!(info["defaults"]["step_timeout_secs"], 7);
    assert_eq!(info["defaults"]["network"], "none");
    assert_eq!(info["defaults"]["image"], image());
    // No bridge unless the operator allows it (AGENT_ALLOW_NETWORK).
    assert_eq!(info["limits"]["networks"], json!(["none"]));
    assert_eq!(info["capacity"]["max_concurrent_jobs"], 3);
    assert_eq!(info["capacity"]["warm_pool"], 1);
    // The warm sandbox is reported once it is up.
    let start = Instant::now();
    loop {
        let (_, info) = server.get_json("/info").await;
        if info["capacity"]["warm_ready"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the warm sandbox never got ready: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(info["auth_required"], false);
    assert_eq!(info["llm_providers"][0]["name"], "alchemyst");
    assert_eq!(info["llm_providers"][0]["ok"], 0);

    // A planned job: its token usage in the status, its provider and first step in the list, and
    // the provider's successful call in /info.
    let id = server.schedule(json!({"prompt": "say planned"})).await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    assert_eq!(st["usage"]["total_tokens"], 30, "{st}");
    assert_eq!(st["usage"]["prompt_tokens"], 10);
    let (_, jobs) = server.get_json("/jobs").await;
    assert_eq!(jobs["jobs"][0]["provider"], "alchemyst");
    assert_eq!(jobs["jobs"][0]["first_step"], "echo planned");
    let (_, info) = server.get_json("/info").await;
    assert_eq!(info["llm_providers"][0]["ok"], 1, "{info}");
    assert!(info["llm_providers"][0]["last_ok_at"].is_string());
    assert!(info["llm_providers"][0]["mean_latency_ms"].is_u64());
}

fn set_cookie(resp: &reqwest::Response) -> String {
    resp.headers()["set-cookie"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_cookie_authenticates_the_browser_and_resists_csrf() {
    require_docker();
    let token = "ui-token-5b1e0c";
    let (_dir, server) =
        TestServer::in_tempdir(&ServerOptions::new(&unique_scope("ui-session")).token(token));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |p: &str| server.url(p);

    // The page and the session endpoint are open; the API is not.
    let resp = http.get(url("/ui/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_content_type(&resp, "text/html");
    assert!(resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
    let resp = get_with(&http, url("/"), html).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/ui/");
    let resp = http.get(url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "API clients still get the health JSON");
    let info = json_of(http.get(url("/session"))).await;
    assert_eq!(info, json!({"auth_required": true, "authenticated": false}));
    assert_eq!(http.get(url("/jobs")).send().await.unwrap().status(), 401);
    assert_eq!(http.get(url("/events")).send().await.unwrap().status(), 401);

    // A wrong token is refused; the right one gives a cookie that is not the token.
    let resp = http
        .post(url("/session"))
        .json(&json!({"token": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
    let resp = http
        .post(url("/session"))
        .header("origin", "http://evil.example")
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "a cross-origin login is refused");
    let resp = http
        .post(url("/session"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie_line = set_cookie(&resp);
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie_line.contains(attr), "{cookie_line}");
    }
    assert!(!cookie_line.contains(token), "{cookie_line}");
    assert!(!cookie_line.contains("Secure"), "plain HTTP: {cookie_line}");
    let cookie = cookie_line.split(';').next().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["authenticated"], true);
    assert!(body["expires_at"].is_string());

    // The cookie reads the API, SSE included.
    let with = |rb: reqwest::RequestBuilder| rb.header("cookie", &cookie);
    assert_eq!(
        with(http.get(url("/jobs"))).send().await.unwrap().status(),
        200
    );
    let resp = with(http.get(url("/events"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let info = json_of(with(http.get(url("/session")))).await;
    assert_eq!(info["authenticated"], true);

    // State-changing requests need the CSRF header and, with an Origin, our own.
    let steps = json!({"steps": [{"type": "shell", "command": "echo via-cookie"}]});
    let resp = with(http.post(url("/schedule")).json(&steps))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "forbidden");
    let resp = with(http.post(url("/schedule")).json(&steps))
        .header("x-agent-csrf", "1")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let host = server.base.trim_start_matches("http://").to_string();
    let resp = with(http.post(url("/schedule")).json(&steps))
        .header("x-agent-csrf", "1")
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.wait_final(&id).await["status"], "succeeded");
    // A made-up cookie is nobody.
    let resp = get_with(&http, url("/jobs"), ("cookie", "agent_session=00ff")).await;
    assert_eq!(resp.status(), 401);

    // Logout forgets the session, and clears the cookie.
    let resp = with(http.delete(url("/session")))
        .header("x-agent-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(set_cookie(&resp).contains("Max-Age=0"));
    assert_eq!(
        with(http.get(url("/jobs"))).send().await.unwrap().status(),
        401
    );
    // The bearer token still works as before.
    let (code, _) = server.get_json("/jobs").await;
    assert_eq!(code, 200);
}

/// The workspace's `target/` (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

#[test]
fn the_pages_helpers_pass_their_unit_tests() {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui-tests");
    let out = Command::new("node")
        .args(["--test", "units.test.mjs"])
        .current_dir(&tests)
        .output()
        .expect("running node (install nodejs)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    require_docker();
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui-tests");
    assert!(
        tests.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run scripts/setup-host.sh (npm ci there)",
        tests.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/setup-host.sh (Debian's chromium)"
    );
    let token = "browser-token-8d2f41";
    // A planned job whose first step fails and whose repair succeeds: the page shows both rounds.
    let plan = json!({"summary": "print, fail", "steps": [
        {"type": "shell", "command": "echo planned; exit 4", "description": "print and fail"}]});
    let repair = json!({"summary": "fixed", "steps": [
        {"type": "shell", "command": "echo repaired", "description": "the repair"}]});
    let alchemyst = alchemyst_mock(&plan, &repair).await;
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("ui-browser"))
            .token(token)
            .llm(Some(&alchemyst), None),
    );
    let shots = target_dir().join("ui-screenshots");
    let start = Instant::now();
    let out = tokio::task::spawn_blocking({
        let base = server.base.clone();
        let shots = shots.clone();
        move || {
            Command::new("node")
                .arg("dashboard.test.mjs")
                .current_dir(&tests)
                .env("BASE_URL", base)
                .env("AGENT_TOKEN", token)
                .env("LLM_MOCK", "1")
                .env("SCREENSHOT_DIR", &shots)
                .env("CHROMIUM", chromium)
                .output()
                .expect("running node (install nodejs)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed after {:?}:\n{stdout}\n{stderr}\nserver log:\n{}",
        start.elapsed(),
        server.log_text()
    );
    println!("{stdout}");
    for page in [
        "login",
        "jobs",
        "job-succeeded",
        "job-failed",
        "submit",
        "server",
    ] {
        let png = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&png).is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            png.display()
        );
    }
}
