//! Several users: the real `agent-server` binary with a tokens file (two tenants and a tenant
//! with the admin scope, made by the real `agent token new`) and `AGENT_API_TOKEN` as the
//! admin, on the real Docker engine with explicit-step jobs. A tenant's job or sandbox is, for
//! another tenant, exactly an unknown id on every route (a table), in `/jobs`, `/events`, MCP and
//! the dashboard's session; the admins see everything; metrics carry tenant labels; the file
//! holds no token in clear; a bad file stops the start-up with a message naming the fault.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "tenants-test-admin-token";
const UNKNOWN: &str = "6f1c1a9e-4f7b-4c1e-9a57-0d6b2f3a8c11";

/// `agent token new NAME [--admin]`: the token and the file entry it printed.
fn new_token(name: &str, admin: bool) -> (String, Value) {
    let mut cmd = Command::new(agent_binary());
    cmd.args(["token", "new", name]);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let token = lines.next().unwrap().to_string();
    let entry = serde_json::from_str(lines.next().unwrap()).unwrap();
    (token, entry)
}

/// Writes a tokens file of `entries` in `dir`.
fn tokens_file(dir: &Path, entries: &[Value]) -> std::path::PathBuf {
    let path = dir.join("tokens.json");
    std::fs::write(&path, json!({ "tenants": entries }).to_string()).unwrap();
    path
}

/// A request as `token` (`None`: without one): the status and the body with `id` replaced by
/// `ID` (so that answers about two ids compare).
async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut req = server.http.request(method, server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// [`call`] as `token`, asserting the status `want`; returns the body.
async fn expect(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
    want: u16,
) -> String {
    let (code, text) = call(server, Some(token), method.clone(), path, body).await;
    assert_eq!(code, want, "{method} {path}: {text}");
    text
}

/// A route naming an id: method, path (`{id}` for it) and body.
type Route = (Method, &'static str, Option<Value>);

/// Asserts that, for `other`, every route answers about `id` exactly as about an unknown id
/// (a 404), and that for `owner` the same route answers something else (it reached the job).
async fn assert_hidden(server: &TestServer, owner: &str, other: &str, id: &str, routes: &[Route]) {
    for (method, template, body) in routes {
        let path = |id: &str| template.replace("{id}", id);
        let (code, text) = call(
            server,
            Some(other),
            method.clone(),
            &path(id),
            body.as_ref(),
        )
        .await;
        let (u_code, u_text) = call(
            server,
            Some(other),
            method.clone(),
            &path(UNKNOWN),
            body.as_ref(),
        )
        .await;
        let what = format!("{method} {template}");
        assert_eq!(code, 404, "{what}: another tenant's id: {text}");
        assert_eq!(
            (code, text.replace(id, "ID")),
            (u_code, u_text.replace(UNKNOWN, "ID")),
            "{what}: answered unlike an unknown id"
        );
        let (o_code, o_text) = call(
            server,
            Some(owner),
            method.clone(),
            &path(id),
            body.as_ref(),
        )
        .await;
        assert_ne!(
            (o_code, o_text.replace(id, "ID")),
            (code, text.replace(id, "ID")),
            "{what}: the owner got the stranger's answer"
        );
    }
}

/// Every id of `token`'s `/jobs`, following the cursor one job at a time, and each one's tenant.
async fn listed(server: &TestServer, token: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let (code, text) = call(
            server,
            Some(token),
            Method::GET,
            &format!("/jobs?limit=1&cursor={cursor}"),
            None,
        )
        .await;
        assert_eq!(code, 200, "{text}");
        let page: Value = serde_json::from_str(&text).unwrap();
        for job in page["jobs"].as_array().unwrap() {
            let tenant = job["tenant"].as_str().map(str::to_string);
            out.push((job["job_id"].as_str().unwrap().to_string(), tenant));
        }
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => {
                assert_eq!(page["total"], out.len(), "{text}");
                return out;
            }
        }
    }
    panic!("the cursor never ended");
}

/// The job ids of the `status` events `reader` gets until `last` reaches a final status.
async fn status_events_until(reader: &mut SseReader, last: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    while let Some(ev) = reader.next().await {
        if ev.event != "status" {
            continue;
        }
        let id = ev.data["job_id"].as_str().unwrap().to_string();
        let done = id == last && !matches!(ev.data["status"].as_str(), Some("queued" | "running"));
        ids.insert(id);
        if done {
            return ids;
        }
    }
    panic!("/events ended before {last} finished");
}

async fn events_of(server: &TestServer, token: &str) -> SseReader {
    let resp = server
        .http
        .get(server.url("/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    SseReader::new(resp)
}

/// Schedules `body` as `token` and waits for it to end; returns its id.
async fn run_as(server: &TestServer, token: &str, body: &Value) -> String {
    let (code, text) = call(server, Some(token), Method::POST, "/schedule", Some(body)).await;
    assert_eq!(code, 202, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_final(&id).await;
    id
}

/// The value of the `/metrics` line starting with `series ` (the admin's view), polled until it
/// is at least `at_least` (the counters follow job events a moment later).
async fn metric_at_least(server: &TestServer, series: &str, at_least: f64) -> f64 {
    let start = Instant::now();
    loop {
        let text = server.get("/metrics").await.text().await.unwrap();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
            .parse()
            .unwrap();
        if value >= at_least || start.elapsed() > PATIENCE {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_and_control_only_their_own_jobs_and_sandboxes() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let (alice, alice_entry) = new_token("alice", false);
    let (bob, bob_entry) = new_token("bob", false);
    let (ops, ops_entry) = new_token("ops", true);
    assert_eq!(ops_entry["admin"], true);
    let file = tokens_file(dir.path(), &[alice_entry, bob_entry, ops_entry]);
    let stored = std::fs::read_to_string(&file).unwrap();
    for token in [&alice, &bob, &ops] {
        assert!(
            !stored.contains(token.as_str()),
            "a token in clear: {stored}"
        );
    }
    let options = ServerOptions::new(&unique_scope("tenants"))
        .token(ADMIN)
        .env("AGENT_API_TOKENS_FILE", file.display().to_string());
    let server = TestServer::start(&dir.path().join("out"), &options);

    // Unknown tokens get nothing.
    for token in [None, Some("agt_unknown")] {
        let (code, text) = call(&server, token, Method::GET, "/jobs", None).await;
        assert_eq!(code, 401, "{token:?}: {text}");
    }

    // Alice's finished job and live sandbox.
    let job = run_as(
        &server,
        &alice,
        &json!({"steps": [{"type": "shell", "command": "echo hi > out.txt"}]}),
    )
    .await;
    let st = server.status(&job).await;
    assert_eq!(
        (st["status"].as_str(), st["tenant"].as_str()),
        (Some("succeeded"), Some("alice")),
        "{st}"
    );
    let text = expect(
        &server,
        &alice,
        Method::POST,
        "/sandboxes",
        Some(&json!({})),
        201,
    )
    .await;
    let sandbox = serde_json::from_str::<Value>(&text).unwrap()["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let put = format!("/sandboxes/{sandbox}/files?path=secret.txt");
    let (code, text) = call(&server, Some(&alice), Method::PUT, &put, None).await;
    assert!(matches!(code, 200 | 201 | 204), "{text}");

    let job_routes: Vec<Route> = vec![
        (Method::GET, "/status/{id}", None),
        (Method::POST, "/cancel/{id}", None),
        (Method::POST, "/release/{id}", None),
        (Method::GET, "/download/{id}", None),
        (Method::GET, "/download/{id}/files", None),
        (Method::GET, "/download/{id}/files/out.txt", None),
        (Method::GET, "/logs/{id}", None),
        (Method::GET, "/logs/{id}/stream", None),
        (
            Method::POST,
            "/access/{id}",
            Some(json!({"service": "desktop"})),
        ),
        (Method::GET, "/desktop/{id}/", None),
        (Method::GET, "/desktop/{id}/websockify", None),
        (Method::GET, "/jupyter/{id}/lab", None),
    ];
    assert_hidden(&server, &alice, &bob, &job, &job_routes).await;
    let sandbox_routes: Vec<Route> = vec![
        (Method::GET, "/sandboxes/{id}", None),
        (Method::GET, "/status/{id}", None),
        (
            Method::POST,
            "/sandboxes/{id}/steps",
            Some(json!({"step": {"type": "shell", "command": "echo in > owner.txt"}})),
        ),
        (Method::GET, "/sandboxes/{id}/files?path=secret.txt", None),
        (Method::PUT, "/sandboxes/{id}/files?path=put.txt", None),
        (Method::GET, "/sandboxes/{id}/workspace", None),
        (Method::GET, "/sandboxes/{id}/archive", None),
        (Method::PUT, "/sandboxes/{id}/archive", None),
        (
            Method::POST,
            "/sandboxes/{id}/extend",
            Some(json!({"idle_timeout_secs": 120})),
        ),
    ];
    assert_hidden(&server, &alice, &bob, &sandbox, &sandbox_routes).await;
    let (_, list) = call(&server, Some(&bob), Method::GET, "/sandboxes", None).await;
    assert!(!list.contains(&sandbox), "{list}");
    let (_, list) = call(&server, Some(&alice), Method::GET, "/sandboxes", None).await;
    assert!(list.contains(&sandbox), "{list}");

    // MCP: bob's tools treat alice's sandbox and job as unknown ids.
    let ids = run_client(
        vec![
            "tenant".into(),
            server.url("/mcp"),
            bob.clone(),
            sandbox.clone(),
            job.clone(),
        ],
        vec![],
        || server.log_text(),
    )
    .await;
    let own = ids["own_sandbox_id"].as_str().unwrap();
    assert_eq!(server.status(own).await["tenant"], "bob");
    // The cancel case: a job of alice's that runs until cancelled.
    let long = serde_json::from_str::<Value>(
        &expect(
            &server,
            &alice,
            Method::POST,
            "/schedule",
            Some(&json!({"steps": [{"type": "shell", "command": "sleep 60"}]})),
            202,
        )
        .await,
    )
    .unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing bob tried reached alice's sandbox; bob cannot end it or cancel her job, she can.
    let intruder = format!("/sandboxes/{sandbox}/files?path=intruder.txt");
    let (own_sandbox, cancel) = (format!("/sandboxes/{sandbox}"), format!("/cancel/{long}"));
    for (token, method, path, want) in [
        (&alice, Method::GET, &intruder, 404),
        (&bob, Method::DELETE, &own_sandbox, 404),
        (&alice, Method::DELETE, &own_sandbox, 200),
        (&bob, Method::POST, &cancel, 404),
        (&alice, Method::POST, &cancel, 200),
    ] {
        expect(&server, token, method, path, None, want).await;
    }
    assert_eq!(server.wait_final(&long).await["status"], "cancelled");

    // /events: each tenant gets its own jobs' changes only, the admin everyone's.
    let mut alice_events = events_of(&server, &alice).await;
    let mut bob_events = events_of(&server, &bob).await;
    let mut admin_events = events_of(&server, ADMIN).await;
    let echo = json!({"steps": [{"type": "shell", "command": "echo"}]});
    let a1 = run_as(&server, &alice, &echo).await;
    let b1 = run_as(&server, &bob, &echo).await;
    let a2 = run_as(&server, &alice, &echo).await;
    let seen = status_events_until(&mut alice_events, &a2).await;
    assert_eq!(seen, BTreeSet::from([a1.clone(), a2.clone()]));
    let seen = status_events_until(&mut bob_events, &b1).await;
    assert_eq!(seen, BTreeSet::from([b1.clone()]));
    let seen = status_events_until(&mut admin_events, &a2).await;
    assert!(
        [&a1, &b1, &a2].iter().all(|id| seen.contains(*id)),
        "{seen:?}"
    );

    // /jobs (with the cursor): own jobs only; both admins see every job with its tenant.
    let of_alice: BTreeSet<_> = [&job, &sandbox, &long, &a1, &a2]
        .into_iter()
        .cloned()
        .collect();
    let got = listed(&server, &alice).await;
    assert_eq!(
        got.iter()
            .map(|(id, _)| id.clone())
            .collect::<BTreeSet<_>>(),
        of_alice
    );
    assert!(
        got.iter().all(|(_, t)| t.as_deref() == Some("alice")),
        "{got:?}"
    );
    let got = listed(&server, &bob).await;
    assert_eq!(
        got.iter()
            .map(|(id, _)| id.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([b1.as_str(), own])
    );
    for admin in [ADMIN, ops.as_str()] {
        let got = listed(&server, admin).await;
        assert!(
            got.contains(&(job.clone(), Some("alice".into()))),
            "{got:?}"
        );
        assert!(got.contains(&(b1.clone(), Some("bob".into()))), "{got:?}");
        expect(
            &server,
            admin,
            Method::GET,
            &format!("/status/{a1}"),
            None,
            200,
        )
        .await;
    }
    let ops_job = run_as(&server, &ops, &echo).await;
    assert_eq!(server.status(&ops_job).await["tenant"], "ops");
    expect(
        &server,
        &alice,
        Method::GET,
        &format!("/status/{ops_job}"),
        None,
        404,
    )
    .await;

    // The dashboard's login remembers the tenant.
    let resp = server
        .http
        .post(server.url("/session"))
        .json(&json!({"token": bob}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let session: Value = resp.json().await.unwrap();
    assert_eq!(
        (session["tenant"].as_str(), session.get("admin")),
        (Some("bob"), None)
    );
    let with_cookie = |path: &str| server.http.get(server.url(path)).header("cookie", &cookie);
    let page = with_cookie("/jobs").send().await.unwrap().text().await;
    let page: Value = serde_json::from_str(&page.unwrap()).unwrap();
    assert_eq!(page["total"], 2, "{page}");
    let resp = with_cookie(&format!("/status/{job}")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Metrics: the admin's, with a bounded tenant label.
    expect(&server, &bob, Method::GET, "/metrics", None, 403).await;
    let finished = "agent_tenant_jobs_finished_total{tenant=\"alice\",status=\"succeeded\"}";
    assert!(metric_at_least(&server, finished, 3.0).await >= 3.0);
    let cancelled = "agent_tenant_jobs_finished_total{tenant=\"alice\",status=\"cancelled\"}";
    assert!(metric_at_least(&server, cancelled, 1.0).await >= 1.0);
    let created = "agent_tenant_jobs_created_total{tenant=\"bob\"}";
    assert!(metric_at_least(&server, created, 2.0).await >= 2.0);
    let text = server.get("/metrics").await.text().await.unwrap();
    let labels: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("agent_tenant_jobs_created_total{"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from(["admin", "alice", "bob", "ops", "other"])
    );

    // No token in the log, the database or the tokens file.
    let log = server.log_text();
    let db = std::fs::read(dir.path().join("out/jobs.sqlite3")).unwrap();
    for token in [&alice, &bob, &ops] {
        assert!(!log.contains(token.as_str()), "a token in the log");
        let bytes = token.as_bytes();
        assert!(
            !db.windows(bytes.len()).any(|w| w == bytes),
            "a token in the database"
        );
    }
}

#[test]
fn a_bad_tokens_file_stops_the_start_up_naming_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (token, entry) = new_token("alice", false);
    let mut clear = entry.clone();
    clear["sha256"] = json!(token);
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (
            "{\"tenants\": [\n  {\"name\": \"alice\",\n   \"sha\": 1}]}".into(),
            None,
            "line 3",
        ),
        (
            json!({"tenants": [clear]}).to_string(),
            None,
            "tenants[0].sha256",
        ),
        (
            json!({"tenants": [entry, entry]}).to_string(),
            None,
            "tenants[1].name",
        ),
        (
            json!({"tenants": [entry]}).to_string(),
            Some(token.as_str()),
            "AGENT_API_TOKEN",
        ),
    ];
    for (text, admin, expected) in cases {
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, &text).unwrap();
        let mut cmd = Command::new(server_binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AGENT_BIND", "127.0.0.1:0")
            .env("AGENT_OUTPUT_DIR", dir.path().join("out"))
            .env("AGENT_API_TOKENS_FILE", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = admin {
            cmd.env("AGENT_API_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!("the server started with a bad tokens file: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{text}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert!(
            stderr.contains("AGENT_API_TOKENS_FILE") || admin.is_some(),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains(&token), "the token echoed: {stderr}");
    }
}
