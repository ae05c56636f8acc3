//! A job's live desktop and Jupyter Lab through the real `agent-server` binary and the real
//! Docker engine (the desktop image, network none): the RFB banner over the server's WebSocket,
//! the noVNC viewer in headless Chromium showing the colour a step painted, a Jupyter kernel
//! running code through the proxy (HTTP and the kernel's WebSocket), the signed-URL rules, the
//! CLI's URLs and `--listen` forwarder, release, keep-alive expiry, and a restarted server ending
//! the sandboxes the last one kept (recorded in the job's status); the dashboard's desktop and
//! Jupyter panels opened with clicks in Chromium. Prints the cold ready
//! times (job accepted → VNC banner; → kernel answers) as figures, asserting nothing of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "live-token-5c1e09";

fn start() -> (tempfile::TempDir, TestServer) {
    TestServer::in_tempdir(&ServerOptions::new(&unique_scope("live")).token(TOKEN))
}

/// A signed access token (and URL) for a job's service.
async fn access(server: &TestServer, id: &str, body: Value) -> Value {
    let (code, v) = server.post_json(&format!("/access/{id}"), &body).await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Schedules a job asking for `service`, kept 600 s after its one `step`, and a grant to that
/// service: when the job was accepted, its id and the grant.
async fn kept_job_with(
    server: &TestServer,
    service: &str,
    step: Value,
) -> (Instant, String, Value) {
    let accepted = Instant::now();
    let id = server
        .schedule(json!({"services": [service], "keep_alive_secs": 600, "steps": [step]}))
        .await;
    let grant = access(server, &id, json!({"service": service})).await;
    (accepted, id, grant)
}

fn ws_url(server: &TestServer, path: &str) -> String {
    format!("ws://{}{path}", server.base.trim_start_matches("http://"))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn websocket(url: &str, protocol: Option<&'static str>) -> Result<Ws, String> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// The first 12 bytes the desktop's VNC server sends, read over the server's WebSocket.
async fn rfb_banner(url: &str) -> Result<Vec<u8>, String> {
    let mut ws = websocket(url, Some("binary")).await?;
    let mut got = Vec::new();
    while got.len() < 12 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("no banner: {other:?}")),
        }
    }
    let _ = ws.close(None).await;
    Ok(got[..12].to_vec())
}

fn agent(server: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(agent_binary())
        .args(["--url", &server.base, "--token", TOKEN])
        .args(args)
        .env_remove("AGENT_URL")
        .env_remove("AGENT_API_TOKEN")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_desktop_is_seen_through_the_server_in_a_browser_and_a_vnc_client() {
    require_docker();
    let (_dir, server) = start();
    // Desktop ready, cold: from the accepted job to the VNC banner read over the WebSocket.
    let step = json!({"type": "shell", "command": "xsetroot -solid '#ff8000' && echo painted"});
    let (accepted, id, grant) = kept_job_with(&server, "desktop", step).await;
    let token = grant["token"].as_str().unwrap().to_string();
    let ws = ws_url(&server, &format!("/desktop/{id}/websockify?access={token}"));
    let banner = loop {
        match rfb_banner(&ws).await {
            Ok(b) => break b,
            Err(e) => {
                assert!(
                    accepted.elapsed() < PATIENCE,
                    "no desktop: {e}\n{}",
                    server.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let ready = accepted.elapsed();
    assert_eq!(&banner, b"RFB 003.008\n");
    println!(
        "figure: desktop ready (job accepted -> VNC banner over the WebSocket), cold: {ready:?}"
    );

    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    assert_eq!(st["services"], json!(["desktop"]));
    assert_eq!(st["sandbox"]["state"], "kept", "{st}");
    assert!(st["keep_alive_until"].is_string(), "{st}");
    assert_eq!(st["service_links"]["desktop"], format!("/desktop/{id}/"));
    assert!(
        st["download_link"].is_string(),
        "the ZIP is made when the steps end"
    );

    // The signed-URL rules: none, expired, another job's, another service's.
    let anon = reqwest::Client::new();
    let viewer = server.url(&format!("/desktop/{id}/"));
    let resp = anon.get(&viewer).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let short = access(&server, &id, json!({"service": "desktop", "ttl_secs": 1})).await;
    let other = server
        .schedule(json!({"steps": [{"type": "shell", "command": "true"}], "services": ["desktop"]}))
        .await;
    let other_token = access(&server, &other, json!({"service": "desktop"})).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = anon
        .get(format!("{viewer}?access={other_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "another job's token");
    assert!(
        websocket(
            &ws_url(
                &server,
                &format!("/desktop/{id}/websockify?access={other_token}")
            ),
            Some("binary")
        )
        .await
        .is_err(),
        "another job's token on the WebSocket"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = anon
        .get(format!(
            "{viewer}?access={}",
            short["token"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "an expired token");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "access_expired");
    // A desktop token does not open Jupyter (the job has none either).
    let resp = anon
        .get(server.url(&format!("/jupyter/{id}/lab?access={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The viewer in headless Chromium shows the colour the step painted.
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui-tests");
    assert!(
        tests.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run scripts/setup-host.sh",
        tests.display()
    );
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&shot).unwrap();
    let url = server.url(grant["url"].as_str().unwrap());
    let out = tokio::task::spawn_blocking({
        let dashboard_shot = shot.join("dashboard-desktop.png");
        let shot = shot.join("desktop.png");
        let (base, job) = (server.base.clone(), id.clone());
        move || {
            Command::new("node")
                .arg("desktop.test.mjs")
                .current_dir(&tests)
                .env("VIEWER_URL", url)
                .env("EXPECT_RGB", "255,128,0")
                .env("SCREENSHOT", shot)
                .env("DASHBOARD_URL", &base)
                .env("AGENT_TOKEN", TOKEN)
                .env("JOB_ID", &job)
                .env("DASHBOARD_SCREENSHOT", dashboard_shot)
                .env(
                    "CHROMIUM",
                    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                )
                .output()
                .expect("running node")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("\ncolour 255,128,0") || printed.starts_with("colour 255,128,0"),
        "{printed}"
    );
    assert!(
        printed.contains("dashboard colour 255,128,0"),
        "the dashboard's panel: {printed}"
    );

    // The CLI: the signed URLs, and a local VNC port forwarded through the server.
    let out = agent(&server, &["desktop", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with(&format!("{}/desktop/{id}/?access=", server.base)),
        "{printed}"
    );
    assert!(!printed.contains(TOKEN), "the API token is never in a URL");
    let out = agent(&server, &["jupyter", &id]);
    assert_eq!(out.status.code(), Some(4), "the job has no Jupyter");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut fwd = Command::new(agent_binary())
        .args(["--url", &server.base, "--token", TOKEN, "desktop", &id])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut vnc = None;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            vnc = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut vnc = vnc.expect("agent desktop --listen listens");
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), vnc.read_exact(&mut buf))
        .await
        .expect("a banner through the forwarder")
        .unwrap();
    assert_eq!(&buf, b"RFB 003.008\n");
    drop(vnc);
    let _ = fwd.kill();
    let _ = fwd.wait();

    // Release ends the kept sandbox; the status stays as it was.
    let out = agent(&server, &["release", &id]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("released"));
    let st = server
        .wait_for(&id, "no sandbox", |v| v["sandbox"].is_null())
        .await;
    assert_eq!(st["status"], "succeeded");
    assert!(st["service_links"].is_null());
    assert!(
        containers_gone(&id),
        "the released sandbox's container is gone"
    );
    let st = server
        .wait_for(&id, "the end recorded", |v| v["sandbox_ended"].is_object())
        .await;
    assert_eq!(st["sandbox_ended"]["reason"], "released", "{st}");
    assert!(
        rfb_banner(&ws).await.is_err(),
        "no desktop after the release"
    );
    server.wait_final(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_opens_a_kept_jobs_desktop_and_jupyter_lab_on_a_click() {
    require_docker();
    let (_dir, server) = start();
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui-tests");
    assert!(
        tests.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run scripts/setup-host.sh",
        tests.display()
    );
    let id = server
        .schedule(json!({
            "services": ["desktop", "jupyter"],
            "keep_alive_secs": 600,
            "steps": [{"type": "shell",
                       "command": "xsetroot -solid '#3366cc' && echo painted > painted.txt"}],
        }))
        .await;
    let st = server
        .wait_for(&id, "a kept sandbox with both services", |v| {
            v["sandbox"]["state"] == "kept"
        })
        .await;
    assert_eq!(st["status"], "succeeded", "{st}");
    assert_eq!(st["service_links"]["desktop"], format!("/desktop/{id}/"));
    assert_eq!(st["service_links"]["jupyter"], format!("/jupyter/{id}/lab"));

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::task::spawn_blocking({
        let (base, job, shots) = (server.base.clone(), id.clone(), shots.clone());
        move || {
            Command::new("node")
                .arg("live-panels.test.mjs")
                .current_dir(&tests)
                .env("BASE_URL", &base)
                .env("AGENT_TOKEN", TOKEN)
                .env("JOB_ID", &job)
                .env("EXPECT_RGB", "51,102,204")
                .env("SCREENSHOT_DIR", &shots)
                .env(
                    "CHROMIUM",
                    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                )
                .output()
                .expect("running node")
        }
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{printed}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    for line in [
        "dashboard colour 51,102,204",
        "jupyter lab ",
        "sandbox gone released",
    ] {
        assert!(printed.contains(line), "no {line:?} in:\n{printed}");
    }
    for png in [
        "dashboard-desktop-panel.png",
        "dashboard-jupyter-panel.png",
        "dashboard-sandbox-gone.png",
    ] {
        let path = shots.join(png);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            path.display()
        );
    }
    // The page's release went through the API: the sandbox is gone, the job as it was.
    let st = server.status(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    assert_eq!(st["sandbox_ended"]["reason"], "released", "{st}");
    assert!(
        containers_gone(&id),
        "the released sandbox's container is gone"
    );
}

/// Sends a Jupyter execute request over the kernel's WebSocket and returns what it printed.
async fn execute(ws: &mut Ws, code: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let msg_id = format!(
        "exec-{}",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let request = json!({
        "header": {"msg_id": msg_id, "username": "test", "session": "live-e2e",
                   "msg_type": "execute_request", "version": "5.3", "date": "2026-01-01T00:00:00Z"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": false, "store_history": false,
                    "user_expressions": {}, "allow_stdin": false, "stop_on_error": true},
    });
    ws.send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let mut printed = String::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("the kernel answers")
            .expect("the socket stays open")
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["parent_header"]["msg_id"] != msg_id.as_str() {
            continue;
        }
        match v["msg_type"].as_str() {
            Some("stream") => printed.push_str(v["content"]["text"].as_str().unwrap_or("")),
            Some("error") => panic!("the kernel failed: {v}"),
            Some("status") if v["content"]["execution_state"] == "idle" => return printed,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jupyter_kernel_runs_code_through_the_proxy() {
    require_docker();
    let (_dir, server) = start();
    let step = json!({"type": "write_file", "path": "data.txt", "content": "from the step"});
    let (accepted, id, grant) = kept_job_with(&server, "jupyter", step).await;
    let token = grant["token"].as_str().unwrap().to_string();
    assert!(grant["url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("/jupyter/{id}/lab?access=")));
    let anon = reqwest::Client::new();
    // Jupyter ready, cold: from the accepted job to a kernel's first answer.
    let kernel = server.start_jupyter_kernel(&id, &token).await;
    let kid = kernel["id"].as_str().unwrap();
    let mut ws = websocket(
        &ws_url(
            &server,
            &format!("/jupyter/{id}/api/kernels/{kid}/channels?access={token}"),
        ),
        None,
    )
    .await
    .unwrap();
    let printed = execute(&mut ws, "print(6 * 7)").await;
    let ready = accepted.elapsed();
    assert_eq!(printed, "42\n");
    println!("figure: jupyter ready (job accepted -> a kernel's answer through the proxy), cold: {ready:?}");
    // The kernel works in the workspace, where the step wrote its file.
    let printed = execute(
        &mut ws,
        "import os; print(os.getcwd(), open('data.txt').read())",
    )
    .await;
    assert_eq!(printed, "/workspace from the step\n");

    // The file browser's API, through the proxy. A GET with `?access=` is a page load (it sets
    // the cookie and redirects without the token), so send the cookie as a browser then does.
    let contents = server.url(&format!("/jupyter/{id}/api/contents"));
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{contents}?access={token}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert_eq!(
        resp.headers()["location"],
        format!("/jupyter/{id}/api/contents")
    );
    let resp = anon
        .get(&contents)
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let listing: Value = resp.json().await.unwrap();
    assert!(listing["content"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "data.txt"));
    // Refused without a token.
    let resp = anon.get(&contents).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded");
    assert_eq!(st["service_links"]["jupyter"], format!("/jupyter/{id}/lab"));
    let out = agent(&server, &["jupyter", &id]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with(&format!("{}/jupyter/{id}/lab?access=", server.base)));
    let _ = ws.close(None).await;
    let (code, v) = server
        .post_json(&format!("/release/{id}"), &json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["released"], true);
    assert!(containers_gone(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_sandbox_is_gone_after_its_keep_alive() {
    require_docker();
    let (_dir, server) = start();
    let (code, v) = server
        .post_json(
            "/schedule",
            &json!({"steps": [{"type": "shell", "command": "true"}], "keep_alive_secs": 999_999}),
        )
        .await;
    // Over AGENT_MAX_KEEP_ALIVE_SECS: the operator policy's refusal.
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["error"]["code"], "policy_refused", "{v}");
    assert_eq!(v["error"]["field"], "keep_alive_secs");
    let (code, v) = server
        .post_json(
            "/schedule",
            &json!({"steps": [{"type": "shell", "command": "true"}], "services": ["vscode"]}),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("services"),
        "{v}"
    );

    let id = server
        .schedule(
            json!({"steps": [{"type": "shell", "command": "echo kept"}], "keep_alive_secs": 3}),
        )
        .await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded");
    assert!(!containers_of(&id).is_empty(), "kept after the steps: {st}");
    let st = server
        .wait_for(&id, "its sandbox gone", |v| v["sandbox"].is_null())
        .await;
    assert_eq!(st["status"], "succeeded", "the status stays what it was");
    assert!(containers_gone(&id), "the container is removed at expiry");
    let st = server
        .wait_for(&id, "the end recorded", |v| v["sandbox_ended"].is_object())
        .await;
    assert_eq!(st["sandbox_ended"]["reason"], "expired", "{st}");
}

/// What a finished job's status says of the job itself (not of its sandbox).
fn job_part(st: &Value) -> Value {
    json!({
        "status": st["status"], "finished_at": st["finished_at"], "error": st["error"],
        "steps": st["steps"], "download_link": st["download_link"],
        "services": st["services"], "keep_alive_secs": st["keep_alive_secs"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovery_ends_the_sandboxes_the_last_server_kept() {
    // No periodic reaper in the window: what removes the kept container is restart recovery.
    let opts = ServerOptions::new(&unique_scope("kept-restart")).token(TOKEN);
    let (_dir, mut server) = TestServer::docker_in_tempdir(&opts);
    let id = server
        .schedule(json!({
            "services": ["desktop"],
            "keep_alive_secs": 600,
            "steps": [{"type": "shell", "command": "echo kept > kept.txt"}],
        }))
        .await;
    let before = server
        .wait_for(&id, "a kept sandbox after its steps", |v| {
            v["status"] == "succeeded" && v["sandbox"]["state"] == "kept"
        })
        .await;
    assert_eq!(
        before["service_links"]["desktop"],
        format!("/desktop/{id}/")
    );
    assert!(before["sandbox_ended"].is_null(), "{before}");
    assert_eq!(
        containers_of(&id).len(),
        1,
        "kept after the steps: {before}"
    );

    // Killed: nothing of the old process removes the container or says so.
    server.kill9();
    assert_eq!(
        containers_of(&id).len(),
        1,
        "the kill left the kept container"
    );
    let mut server = server.restart();
    // Recovery removed it before the new server listened.
    assert!(
        containers_of(&id).is_empty(),
        "the kept container outlived its server's restart\n{}",
        server.log_text()
    );
    let st = server.status(&id).await;
    assert_eq!(
        job_part(&st),
        job_part(&before),
        "the job is as it was: {st}"
    );
    assert!(st["sandbox"].is_null(), "{st}");
    assert!(st["keep_alive_until"].is_null(), "{st}");
    assert!(st["service_links"].is_null(), "no desktop link: {st}");
    assert_eq!(st["sandbox_ended"]["reason"], "server_restarted", "{st}");
    assert!(st["sandbox_ended"]["at"].is_string(), "{st}");
    let first_end = st["sandbox_ended"].clone();
    assert!(
        server.log_text().contains("removing a kept sandbox"),
        "{}",
        server.log_text()
    );
    // The desktop is not offered any more: its WebSocket is refused (409 not_running).
    let grant = access(&server, &id, json!({"service": "desktop"})).await;
    let token = grant["token"].as_str().unwrap();
    let ws = ws_url(&server, &format!("/desktop/{id}/websockify?access={token}"));
    let err = rfb_banner(&ws)
        .await
        .expect_err("a desktop after the restart");
    assert!(err.contains("409"), "{err}");
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "kept.txt"), "kept\n");
    let (code, v) = server
        .post_json(&format!("/release/{id}"), &json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["released"], false,
        "nothing to release after the restart: {v}"
    );

    // A graceful stop removes the sandboxes it keeps, and says so.
    let plain = server
        .schedule(json!({"keep_alive_secs": 600, "steps": [{"type": "shell", "command": "true"}]}))
        .await;
    server
        .wait_for(&plain, "a kept sandbox", |v| {
            v["sandbox"]["state"] == "kept"
        })
        .await;
    assert_eq!(server.terminate(), Some(0));
    assert!(
        containers_of(&plain).is_empty(),
        "shutdown removes the kept container"
    );
    let server = server.restart();
    let st = server.status(&plain).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    assert!(st["sandbox"].is_null(), "{st}");
    assert_eq!(st["sandbox_ended"]["reason"], "server_stopped", "{st}");
    // Another restart leaves the first job's end as it was recorded.
    let again = server.status(&id).await;
    assert_eq!(again["sandbox_ended"], first_end, "{again}");
    assert_eq!(job_part(&again), job_part(&before));
}
