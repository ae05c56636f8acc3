//! Live sandboxes through the real `agent-server` binary on the real Docker engine: create, many
//! steps with state carried in files, streamed output, files in and out, the workspace ZIP,
//! idle expiry, destroy, restart recovery and the shared concurrency limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

async fn create(server: &TestServer, body: Value) -> String {
    let (code, v) = server.post_json("/sandboxes", &body).await;
    assert_eq!(code, 201, "create answered {v}\n{}", server.log_text());
    assert_eq!(v["status"], "running", "{v}");
    v["sandbox_id"].as_str().unwrap().to_string()
}

async fn step(server: &TestServer, id: &str, step: Value) -> (u16, Value) {
    server
        .post_json(&format!("/sandboxes/{id}/steps"), &json!({ "step": step }))
        .await
}

/// Runs a step asking for its output streamed as `accept`.
async fn streamed_step(
    server: &TestServer,
    id: &str,
    accept: &str,
    step: Value,
) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/sandboxes/{id}/steps")))
        .header("accept", accept)
        .json(&json!({ "step": step }))
        .send()
        .await
        .unwrap()
}

async fn shell(server: &TestServer, id: &str, command: &str) -> Value {
    let (code, v) = step(server, id, json!({"type": "shell", "command": command})).await;
    assert_eq!(code, 200, "{command}: {v}");
    v
}

async fn request(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut rb = server.http.request(method, server.url(path)).body(body);
    if let Some(t) = &server.token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.unwrap()
}

/// `DELETE /sandboxes/{id}`.
async fn destroy(server: &TestServer, id: &str) -> reqwest::Response {
    request(
        server,
        reqwest::Method::DELETE,
        &format!("/sandboxes/{id}"),
        vec![],
    )
    .await
}

async fn error_code(resp: reqwest::Response, http: u16) -> Value {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, http, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sandbox_runs_50_steps_with_state_in_files_moves_files_and_is_destroyed() {
    let (_dir, server) = TestServer::with_docker("live");
    let id = create(
        &server,
        json!({"env": {"GREETING": "hi"}, "idle_timeout_secs": 600}),
    )
    .await;
    assert_eq!(containers_of(&id).len(), 1, "one container for the sandbox");
    let (code, list) = server.get_json("/sandboxes").await;
    assert_eq!(code, 200);
    assert!(
        list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["sandbox_id"] == id.as_str()),
        "{list}"
    );

    // 50 steps in a row, the state carried in a file; three step kinds.
    let (code, v) = step(
        &server,
        &id,
        json!({"type": "write_file", "path": "count.txt", "content": "0"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "succeeded");
    for i in 1..=48 {
        let v = if i % 2 == 0 {
            shell(
                &server,
                &id,
                "n=$(cat count.txt); n=$((n+1)); echo -n $n > count.txt; echo $n $GREETING",
            )
            .await
        } else {
            let (code, v) = step(
                &server,
                &id,
                json!({"type": "python", "code": "n = int(open('count.txt').read()) + 1\nopen('count.txt','w').write(str(n))\nprint(n)"}),
            )
            .await;
            assert_eq!(code, 200, "{v}");
            v
        };
        assert_eq!(v["status"], "succeeded", "step {i}: {v}");
        assert_eq!(v["index"], i);
        let out = v["result"]["stdout_tail"].as_str().unwrap();
        let expected = if i % 2 == 0 {
            format!("{i} hi\n")
        } else {
            format!("{i}\n")
        };
        assert_eq!(out, expected, "step {i}");
    }
    // A failing step is a 200 with its exit code.
    let v = shell(&server, &id, "echo oops >&2; exit 3").await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["result"]["exit_code"], 3);
    assert_eq!(v["result"]["stderr_tail"], "oops\n");

    // Every step is recorded like a job's: GET /status and the log.
    let st = server.status(&id).await;
    assert_eq!(st["status"], "running");
    assert_eq!(st["steps"].as_array().unwrap().len(), 50, "{st}");
    let log = server.logs_text(&id).await;
    assert!(log.contains("48 hi"), "{log}");

    // Streaming: NDJSON lines of output, then the result.
    let resp = streamed_step(
        &server,
        &id,
        "application/x-ndjson",
        json!({"type": "shell", "command": "for i in 1 2 3; do echo line$i; sleep 0.2; done"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let items: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = items.last().unwrap();
    assert_eq!(last["type"], "result", "{text}");
    assert_eq!(last["status"], "succeeded");
    let streamed: String = items
        .iter()
        .filter(|i| i["type"] == "output")
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, "line1\nline2\nline3\n");
    assert!(items.len() >= 2, "{text}");

    // Streaming as SSE.
    let resp = streamed_step(
        &server,
        &id,
        "text/event-stream",
        json!({"type": "python", "code": "print('from sse')"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let mut names = Vec::new();
    let mut out = String::new();
    while let Some(ev) = sse.next().await {
        if ev.event == "output" {
            out.push_str(ev.data["text"].as_str().unwrap());
        }
        names.push(ev.event.clone());
        if ev.event == "result" {
            assert_eq!(ev.data["result"]["exit_code"], 0);
            break;
        }
    }
    assert_eq!(out, "from sse\n");
    assert_eq!(names.last().map(String::as_str), Some("result"));

    // Files in and out, byte-exact.
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let resp = request(
        &server,
        reqwest::Method::PUT,
        &format!("/sandboxes/{id}/files?path=up/data.bin"),
        payload.clone(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["path"], "/workspace/up/data.bin");
    assert_eq!(v["size_bytes"], 100_000);
    let v = shell(&server, &id, "wc -c < up/data.bin").await;
    assert_eq!(v["result"]["stdout_tail"], "100000\n");
    let resp = server
        .get(&format!(
            "/sandboxes/{id}/files?path=/workspace/up/data.bin"
        ))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), payload);

    // Bad paths and sizes are refused at the door.
    let resp = request(
        &server,
        reqwest::Method::PUT,
        &format!("/sandboxes/{id}/files?path=../escape.txt"),
        b"x".to_vec(),
    )
    .await;
    assert_eq!(error_code(resp, 422).await["error"]["code"], "path_refused");
    let resp = server
        .get(&format!("/sandboxes/{id}/files?path=/etc/passwd"))
        .await;
    assert_eq!(error_code(resp, 422).await["error"]["code"], "path_refused");
    let resp = server
        .get(&format!("/sandboxes/{id}/files?path=missing.txt"))
        .await;
    assert_eq!(
        error_code(resp, 404).await["error"]["code"],
        "file_not_found"
    );
    let big = vec![b'a'; (16 << 20) + 1];
    let resp = request(
        &server,
        reqwest::Method::PUT,
        &format!("/sandboxes/{id}/files?path=big.bin"),
        big,
    )
    .await;
    assert_eq!(resp.status(), 413);
    let v = shell(&server, &id, "test ! -e big.bin && echo absent").await;
    assert_eq!(v["result"]["stdout_tail"], "absent\n");

    // The workspace as the usual ZIP, also served by /download afterwards.
    let resp = server.get(&format!("/sandboxes/{id}/workspace")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/zip");
    let bytes = resp.bytes().await.unwrap().to_vec();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    assert_eq!(zip_file(&mut zip, "count.txt"), "48");
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "count.txt"), "48");

    // Extend: a new idle timeout, counted from now.
    let (code, v) = server
        .post_json(
            &format!("/sandboxes/{id}/extend"),
            &json!({"idle_timeout_secs": 900}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["idle_timeout_secs"], 900);

    // Destroy: the container goes, the job ends succeeded.
    let resp = destroy(&server, &id).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(
        containers_of(&id).is_empty(),
        "container left after destroy"
    );
    assert_eq!(server.status(&id).await["status"], "succeeded");

    // A step on a destroyed sandbox, and on an unknown one, are refused clearly.
    let (code, v) = step(&server, &id, json!({"type": "shell", "command": "true"})).await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["code"], "already_finished");
    assert_eq!(v["error"]["status"], "succeeded");
    let unknown = "6f1c1a9e-4f7b-4c1e-9a57-0d6b2f3a8c11";
    let (code, v) = step(
        &server,
        unknown,
        json!({"type": "shell", "command": "true"}),
    )
    .await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    let resp = destroy(&server, &id).await;
    assert_eq!(
        error_code(resp, 409).await["error"]["code"],
        "already_finished"
    );
    // A job id is not a sandbox.
    let job = server
        .schedule(json!({"steps": [{"type": "shell", "command": "true"}]}))
        .await;
    let (code, v) = step(&server, &job, json!({"type": "shell", "command": "true"})).await;
    assert_eq!(code, 422, "{v}");
    let (code, list) = server.get_json("/sandboxes").await;
    assert_eq!(code, 200);
    assert_eq!(list["sandboxes"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_python_keeps_variables_across_50_steps_and_says_when_state_is_lost() {
    let (_dir, server) = TestServer::with_docker("live-py");
    let id = create(&server, json!({})).await;
    let py = |code: &str| json!({"type": "python", "code": code, "stateful": true});
    let (code, v) = step(&server, &id, py("import json\nn = 0")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"]["python"]["fresh_interpreter"], true, "{v}");
    for i in 1..=49 {
        let (code, v) = step(
            &server,
            &id,
            py("n += 1\nprint('at', n)\njson.dumps({'n': n})"),
        )
        .await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["status"], "succeeded", "step {i}: {v}");
        assert_eq!(v["result"]["stdout_tail"], format!("at {i}\n"), "{v}");
        let expected = format!("'{{\"n\": {i}}}'");
        assert_eq!(v["result"]["python"]["value"], expected.as_str(), "{v}");
        assert_eq!(v["result"]["python"]["fresh_interpreter"], false, "{v}");
    }
    // A figure-like file written by a step is listed; it is in the workspace.
    let (_, v) = step(&server, &id, py("open('plot.png', 'wb').write(b'PNG')")).await;
    assert_eq!(v["result"]["python"]["files"], json!(["plot.png"]), "{v}");
    let got = server
        .get(&format!("/sandboxes/{id}/files?path=plot.png"))
        .await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"PNG");
    // A step that kills its interpreter fails and says so; the next one starts afresh.
    let (_, v) = step(&server, &id, py("import os\nos._exit(9)")).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["result"]["python"]["state_lost"], true, "{v}");
    let (_, v) = step(&server, &id, py("'n' in globals()")).await;
    assert_eq!(v["result"]["python"]["value"], "False", "{v}");
    assert_eq!(v["result"]["python"]["fresh_interpreter"], true, "{v}");
    // The steps are recorded like a job's.
    let st = server.status(&id).await;
    assert_eq!(st["steps"].as_array().unwrap().len(), 53, "{st}");
    assert_eq!(st["steps"][1]["python"]["value"], "'{\"n\": 1}'");
    let resp = destroy(&server, &id).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_times_out_and_its_container_is_removed() {
    let (_dir, server) = TestServer::with_docker("idle");
    let id = create(&server, json!({"idle_timeout_secs": 2})).await;
    assert_eq!(containers_of(&id).len(), 1);
    // A step longer than the idle timeout does not count as idle.
    let v = shell(&server, &id, "sleep 3; echo still here").await;
    assert_eq!(v["result"]["stdout_tail"], "still here\n", "{v}");
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "timed_out", "{st}");
    assert!(
        st["error"].as_str().unwrap().contains("idle"),
        "{}",
        st["error"]
    );
    assert!(containers_of(&id).is_empty(), "container left after expiry");
    // Ended: no longer a sandbox (409, saying how), kept in /status.
    let (code, v) = server.get_json(&format!("/sandboxes/{id}")).await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["code"], "already_finished");
    assert_eq!(v["error"]["status"], "timed_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_interrupts_live_sandboxes_and_reaps_their_containers() {
    let opts = ServerOptions::new(&unique_scope("live-restart"));
    let (_dir, mut server) = TestServer::docker_in_tempdir(&opts);
    let id = create(&server, json!({})).await;
    shell(&server, &id, "echo kept > state.txt").await;
    server.kill9();
    assert_eq!(
        containers_of(&id).len(),
        1,
        "the crashed server's container"
    );

    let server = server.restart();
    let st = server.status(&id).await;
    assert_eq!(st["status"], "interrupted", "{st}");
    assert_eq!(st["steps"].as_array().unwrap().len(), 1);
    // Removed at start-up, before the new server listens, even if it still ran then.
    assert!(
        containers_of(&id).is_empty(),
        "the interrupted sandbox's container outlived the restart"
    );
    let (code, v) = step(&server, &id, json!({"type": "shell", "command": "true"})).await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["status"], "interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sandboxes_and_jobs_share_the_concurrency_limit() {
    require_docker();
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("live-limit")).env("AGENT_MAX_CONCURRENT_JOBS", "2"),
    );
    let a = create(&server, json!({})).await;
    let b = create(&server, json!({})).await;
    // Past the limit: a clear 503.
    let (code, v) = server.post_json("/sandboxes", &json!({})).await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"]["code"], "at_capacity");
    // A job waits in the queue while both slots are held by sandboxes.
    let job = server
        .schedule(json!({"steps": [{"type": "shell", "command": "echo ran > ran.txt"}]}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.status(&job).await["status"], "queued");
    let resp = destroy(&server, &a).await;
    assert_eq!(resp.status(), 200);
    let st = server.wait_final(&job).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    // The job's slot is free again once its container is removed (just after its final status)
    // and b still holds one: one more sandbox fits.
    let mut c = None;
    for _ in 0..600 {
        let (code, v) = server.post_json("/sandboxes", &json!({})).await;
        if code == 201 {
            c = v["sandbox_id"].as_str().map(str::to_string);
            break;
        }
        assert_eq!(v["error"]["code"], "at_capacity", "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = c.expect("the finished job's slot never came back");
    let (code, v) = server.post_json("/sandboxes", &json!({})).await;
    assert_eq!(code, 503, "{v}");
    for id in [&b, &c] {
        let resp = destroy(&server, id).await;
        assert_eq!(resp.status(), 200);
        assert!(containers_of(id).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_with_jupyter_runs_on_the_desktop_image_and_its_notebook_answers_through_the_proxy(
) {
    require_docker();
    let token = "sandbox-services-token";
    let (_dir, server) =
        TestServer::in_tempdir(&ServerOptions::new(&unique_scope("live-services")).token(token));
    let (code, v) = server
        .post_json(
            "/sandboxes",
            &json!({"services": ["jupyter", "jupyter"], "idle_timeout_secs": 600}),
        )
        .await;
    assert_eq!(code, 201, "{v}\n{}", server.log_text());
    assert_eq!(v["services"], json!(["jupyter"]), "named once: {v}");
    assert_eq!(v["image"], Value::Null, "the server's default for services");
    let id = v["sandbox_id"].as_str().unwrap().to_string();
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.Config.Image}}"])
        .args(containers_of(&id))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "containerized-agent-desktop:latest",
        "a sandbox asking for services runs on the desktop image"
    );
    let v = shell(&server, &id, "echo from a step > data.txt").await;
    assert_eq!(v["status"], "succeeded", "{v}");
    // Its status shows the notebook while the sandbox is live.
    let st = server.status(&id).await;
    assert_eq!(st["service_links"]["jupyter"], format!("/jupyter/{id}/lab"));
    assert_eq!(st["sandbox"]["state"], "running", "{st}");
    // A signed URL, then a kernel through the proxy that sees the step's file.
    let (code, grant) = server
        .post_json(&format!("/access/{id}"), &json!({"service": "jupyter"}))
        .await;
    assert_eq!(code, 200, "{grant}");
    let access = grant["token"].as_str().unwrap();
    let kernel = server.start_jupyter_kernel(&id, access).await;
    assert!(kernel["id"].is_string(), "{kernel}");
    // Jupyter's contents API, through the proxy (with the API token), sees the step's file.
    let (code, file) = server
        .get_json(&format!("/jupyter/{id}/api/contents/data.txt"))
        .await;
    assert_eq!(code, 200, "{file}");
    assert_eq!(file["content"], "from a step\n", "{file}");
    // The desktop was not asked for.
    let (code, v) = server
        .post_json(&format!("/access/{id}"), &json!({"service": "desktop"}))
        .await;
    assert_eq!(code, 404, "{v}");
    let resp = destroy(&server, &id).await;
    assert_eq!(resp.status(), 200);
    assert!(containers_gone(&id));
    // Gone with the sandbox.
    let resp = reqwest::Client::new()
        .post(server.url(&format!("/jupyter/{id}/api/kernels?access={access}")))
        .json(&json!({"name": "python3"}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_client_error() || resp.status() == 503,
        "{}",
        resp.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_without_their_image_and_planning_without_an_llm_are_refused_clearly() {
    require_docker();
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("live-no-services"))
            .env("AGENT_DESKTOP_IMAGE", "no-such-desktop-image:never"),
    );
    let (code, v) = server
        .post_json("/sandboxes", &json!({"services": ["desktop"]}))
        .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["error"]["field"], "services", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AGENT_DESKTOP_IMAGE"),
        "{v}"
    );
    let (code, v) = server
        .post_json("/sandboxes", &json!({"services": ["vnc"]}))
        .await;
    assert_eq!(code, 422, "{v}");
    // Nothing was made.
    let (_, list) = server.get_json("/sandboxes").await;
    assert_eq!(list["sandboxes"], json!([]), "{list}");
    // A server without an LLM cannot plan in a sandbox, and says what to do instead.
    let id = create(&server, json!({})).await;
    let (code, v) = server
        .post_json(
            &format!("/sandboxes/{id}/plan"),
            &json!({"prompt": "do it"}),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["error"]["code"], "no_llm", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("/steps"),
        "{v}"
    );
    assert_eq!(server.status(&id).await["steps"], json!([]));
    assert_eq!(destroy(&server, &id).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_in_use_ends_at_its_hard_lifetime_and_its_container_is_removed() {
    require_docker();
    let (_dir, server) = TestServer::in_tempdir(&ServerOptions::new(&unique_scope("lifetime")));
    let id = create(
        &server,
        json!({"timeout_secs": 3, "idle_timeout_secs": 3600}),
    )
    .await;
    assert_eq!(containers_of(&id).len(), 1);
    // Steps keep arriving: the sandbox is never idle, yet it ends at its lifetime.
    let mut ran = 0;
    let ended = loop {
        let (code, v) = step(
            &server,
            &id,
            json!({"type": "shell", "command": "sleep 0.3"}),
        )
        .await;
        if code == 409 {
            break v;
        }
        assert_eq!(code, 200, "{v}");
        ran += 1;
        assert!(ran < 200, "the sandbox outlived its 3 s lifetime: {v}");
    };
    assert_eq!(ended["error"]["status"], "timed_out", "{ended}");
    assert!(ran >= 1, "steps ran before the end");
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "timed_out", "{st}");
    let why = st["error"].as_str().unwrap();
    assert!(why.contains("maximum lifetime of 3 s"), "{why}");
    assert!(containers_gone(&id), "container left after the lifetime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_hands_its_sandbox_over_to_a_live_sandbox_with_its_files_and_python_state() {
    let opts = ServerOptions::new(&unique_scope("keep-sandbox"));
    let (_dir, mut server) = TestServer::docker_in_tempdir(&opts);
    let job = server
        .schedule(json!({
            "steps": [
                {"type": "write_file", "path": "notes.txt", "content": "from the job"},
                {"type": "python", "code": "answer = 41", "stateful": true},
                {"type": "shell", "command": "echo done"},
            ],
            "keep_sandbox": {"idle_timeout_secs": 600},
        }))
        .await;
    let st = server.wait_final(&job).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    let sid = st["continued_in"]
        .as_str()
        .unwrap_or_else(|| panic!("no continued_in: {st}"))
        .to_string();
    // The job ended as usual: its ZIP holds its files.
    let mut zip = server.download(&job).await;
    assert_eq!(zip_file(&mut zip, "notes.txt"), "from the job");
    assert!(server.logs_text(&job).await.contains(&sid));
    // Its container was handed over, not re-created.
    assert_eq!(containers_of(&job).len(), 1, "the job's container lives on");
    assert!(containers_of(&sid).is_empty(), "no new container");
    let (code, v) = server.get_json(&format!("/sandboxes/{sid}")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "running");
    assert_eq!(v["continues"], job.as_str());
    assert_eq!(v["idle_timeout_secs"], 600);
    // The workspace and the interpreter's variables carried over.
    let v = shell(&server, &sid, "cat notes.txt").await;
    assert_eq!(v["result"]["stdout_tail"], "from the job", "{v}");
    let (code, v) = step(
        &server,
        &sid,
        json!({"type": "python", "code": "answer + 1", "stateful": true}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"]["python"]["value"], "42", "{v}");
    assert_eq!(v["result"]["python"]["fresh_interpreter"], false, "{v}");
    let st = server.status(&sid).await;
    assert_eq!(st["continues"], job.as_str(), "{st}");
    assert_eq!(st["steps"].as_array().unwrap().len(), 2, "{st}");
    // The job's own record is unchanged by the sandbox's steps.
    assert_eq!(
        server.status(&job).await["steps"].as_array().unwrap().len(),
        3
    );

    // A restart ends it as interrupted, and its container (the job's) is reaped.
    server.kill9();
    let server = server.restart();
    assert_eq!(server.status(&sid).await["status"], "interrupted");
    assert!(
        containers_of(&job).is_empty(),
        "the handed-over container outlived the restart"
    );
    assert_eq!(server.status(&job).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_sandbox_refuses_invalid_settings_at_the_door() {
    require_docker();
    let (_dir, server) = TestServer::in_tempdir(&ServerOptions::new(&unique_scope("keep-bad")));
    let steps = json!([{"type": "shell", "command": "true"}]);
    let cases = [
        (
            json!({"idle_timeout_secs": 0}),
            422,
            "keep_sandbox.idle_timeout_secs",
        ),
        (json!({"timeout_secs": 0}), 422, "keep_sandbox.timeout_secs"),
        (
            json!({"timeout_secs": 999_999_999}),
            422,
            "keep_sandbox.timeout_secs",
        ),
        (
            json!({"idle_timeout_secs": 90_000}),
            403,
            "keep_sandbox.idle_timeout_secs",
        ),
    ];
    for (keep, http, field) in cases {
        let (code, v) = server
            .post_json("/schedule", &json!({"steps": steps, "keep_sandbox": keep}))
            .await;
        assert_eq!(code, http, "{keep}: {v}");
        assert_eq!(v["error"]["field"], field, "{keep}: {v}");
    }
    let (code, v) = server
        .post_json(
            "/schedule",
            &json!({"steps": steps, "keep_sandbox": {"idle": 5}}),
        )
        .await;
    assert!(code == 400 || code == 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("idle"),
        "{v}"
    );
    for other in [
        json!({"keep_alive_secs": 60}),
        json!({"services": ["jupyter"]}),
    ] {
        let mut body = json!({"steps": steps, "keep_sandbox": {}});
        body.as_object_mut()
            .unwrap()
            .extend(other.as_object().unwrap().clone());
        let (code, v) = server.post_json("/schedule", &body).await;
        assert_eq!(code, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], "keep_sandbox", "{v}");
    }
    let (_, list) = server.get_json("/jobs").await;
    assert_eq!(list["total"], 0, "nothing was accepted: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sandbox_handed_to_the_planner_runs_and_repairs_the_plan_in_place() {
    require_docker();
    let plan = json!({"summary": "count the rows", "steps": [
        {"type": "shell", "command": "wc -l < data.csv > rows.txt", "timeout_secs": 90000},
        {"type": "shell", "command": "echo broken >&2; exit 7"},
    ]});
    let repair = json!({"summary": "use the variable", "steps": [
        {"type": "python", "code": "total + 1", "stateful": true},
    ]});
    let llm = alchemyst_mock(&plan, &repair).await;
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("live-plan"))
            .env("AGENT_MAX_STEP_TIMEOUT_SECS", "600")
            .llm(Some(&llm), None),
    );
    let id = create(&server, json!({"idle_timeout_secs": 600})).await;
    let (code, v) = step(
        &server,
        &id,
        json!({"type": "write_file", "path": "data.csv", "content": "a,b\n1,2\n"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = step(
        &server,
        &id,
        json!({"type": "python", "code": "total = 3", "stateful": true}),
    )
    .await;
    assert_eq!(code, 200, "{v}");

    let (code, run) = server
        .post_json(
            &format!("/sandboxes/{id}/plan"),
            &json!({"prompt": "count the rows of data.csv (plan-in-sandbox)", "max_repairs": 1}),
        )
        .await;
    assert_eq!(code, 200, "{run}\n{}", server.log_text());
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["repairs"], 1, "{run}");
    assert_eq!(run["summary"], "use the variable", "{run}");
    let steps = run["steps"].as_array().unwrap();
    let got: Vec<_> = steps
        .iter()
        .map(|s| {
            (
                s["index"].as_u64().unwrap(),
                s["status"].as_str().unwrap(),
                s["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(2, "succeeded", 0), (3, "failed", 0), (4, "succeeded", 1)],
        "{run}"
    );
    assert_eq!(steps[1]["result"]["exit_code"], 7, "{run}");
    // The repaired step used the variable an earlier step left in the interpreter.
    assert_eq!(steps[2]["result"]["python"]["value"], "4", "{run}");
    // The planner was told the workspace's files and that Python state persists; the repair
    // request carried the failure.
    let asked = received_bodies(&llm).await;
    assert_eq!(asked.len(), 2, "one plan and one repair: {asked:?}");
    let first = request_text(&asked[0]);
    assert!(first.contains("plan-in-sandbox"), "{first}");
    assert!(first.contains("- data.csv (8 bytes)"), "{first}");
    assert!(first.contains("2 step(s) already ran"), "{first}");
    assert!(
        first.contains("persist in the sandbox's interpreter"),
        "{first}"
    );
    assert!(
        !first.contains(".agent"),
        "the scratch directory is not listed: {first}"
    );
    assert!(is_repair(&asked[1]), "{:?}", asked[1]);
    assert!(request_text(&asked[1]).contains("broken"));
    // Recorded as the sandbox's steps, like the others; the plan's file is in its workspace.
    let st = server.status(&id).await;
    assert_eq!(st["status"], "running");
    assert_eq!(st["steps"].as_array().unwrap().len(), 5, "{st}");
    assert_eq!(st["steps"][4]["attempt"], 1, "{st}");
    let logs = server.logs_text(&id).await;
    assert!(logs.contains("planning in the sandbox"), "{logs}");
    // The planned step's timeout was held to the operator's maximum.
    assert!(
        logs.contains("asked for a 90000 s timeout; lowered to this server's maximum of 600 s"),
        "{logs}"
    );
    let rows = server
        .get(&format!("/sandboxes/{id}/files?path=rows.txt"))
        .await;
    assert_eq!(rows.text().await.unwrap(), "2\n");
    // The sandbox lives on: steps still run.
    let v = shell(&server, &id, "cat rows.txt").await;
    assert_eq!(v["index"], 5, "{v}");

    // Bad input at the door.
    for (body, field) in [
        (json!({"prompt": "  "}), "prompt"),
        (json!({"prompt": "x", "max_repairs": 21}), "max_repairs"),
    ] {
        let (code, v) = server
            .post_json(&format!("/sandboxes/{id}/plan"), &body)
            .await;
        assert_eq!(code, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (code, v) = server
        .post_json(
            &format!("/sandboxes/{id}/plan"),
            &json!({"prompt": "x", "extra": 1}),
        )
        .await;
    assert!(code == 400 || code == 422, "{v}");
    let unknown = "6f1c1a9e-4f7b-4c1e-9a57-0d6b2f3a8c11";
    let (code, v) = server
        .post_json(
            &format!("/sandboxes/{unknown}/plan"),
            &json!({"prompt": "x"}),
        )
        .await;
    assert_eq!(code, 404, "{v}");
    let job = server.schedule(shell_job("true")).await;
    server.wait_final(&job).await;
    let (code, v) = server
        .post_json(&format!("/sandboxes/{job}/plan"), &json!({"prompt": "x"}))
        .await;
    assert_eq!(code, 422, "a job is not a sandbox: {v}");
    assert_eq!(destroy(&server, &id).await.status(), 200);
    let (code, v) = server
        .post_json(&format!("/sandboxes/{id}/plan"), &json!({"prompt": "x"}))
        .await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["status"], "succeeded", "{v}");
    assert_eq!(
        received_bodies(&llm).await.len(),
        2,
        "no LLM call for refused requests"
    );
}
