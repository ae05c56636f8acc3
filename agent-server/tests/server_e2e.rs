//! End-to-end tests of the real `agent-server` binary: the real Docker executor (jobs on network
//! `none`), mock Alchemyst and Gemini servers on 127.0.0.1, a temporary output directory per
//! server. Needs a running Docker engine and the `containerized-agent:latest` image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

fn plan_writing_files() -> Value {
    json!({
        "summary": "write a report",
        "steps": [
            {"type": "write_file", "path": "data/input.txt", "content": "3\n4\n5\n", "description": "input"},
            {"type": "python", "code": "nums = [int(l) for l in open('data/input.txt')]\nopen('sum.txt','w').write(str(sum(nums)))\nprint('sum', sum(nums))", "description": "sum"},
            {"type": "shell", "command": "echo done > done.txt && cat sum.txt", "description": "finish"}
        ]
    })
}

fn no_repair() -> Value {
    json!({"summary": "unused", "steps": [{"type": "shell", "command": "exit 9"}]})
}

async fn metrics(server: &TestServer) -> String {
    let resp = server.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    assert_content_type(&resp, "text/plain");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_job_succeeds_and_its_zip_holds_the_plan_files_and_result_json() {
    require_docker();
    let alchemyst = alchemyst_mock(&plan_writing_files(), &no_repair()).await;
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("prompt")).llm(Some(&alchemyst), None),
    );
    let (code, health) = server.get_json("/").await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["executor"]["ok"], true);
    assert_eq!(health["llm_providers"], json!(["alchemyst"]));

    let id = server
        .schedule(json!({"prompt": "sum the numbers 3, 4 and 5 into sum.txt"}))
        .await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}\n{}", server.log_text());
    assert_eq!(st["provider"], "alchemyst");
    // Token usage from the stream's usage chunk, on /status and /jobs.
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30});
    assert_eq!(st["usage"], usage, "{st}");
    let (_, list) = server.get_json("/jobs").await;
    assert_eq!(list["jobs"][0]["usage"], usage, "{list}");
    assert_eq!(st["prompt"], "sum the numbers 3, 4 and 5 into sum.txt");
    assert_eq!(st["steps"].as_array().unwrap().len(), 3);
    for step in st["steps"].as_array().unwrap() {
        assert_eq!(step["status"], "succeeded");
        assert_eq!(step["exit_code"], 0);
        assert!(step["duration_ms"].is_u64());
    }
    assert_eq!(st["steps"][1]["type"], "python");
    assert_eq!(st["download_link"], format!("/download/{id}"));
    assert_eq!(st["logs_link"], format!("/logs/{id}"));
    for t in ["created_at", "started_at", "finished_at"] {
        chrono::DateTime::parse_from_rfc3339(st[t].as_str().unwrap()).expect(t);
    }

    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "data/input.txt"), "3\n4\n5\n");
    assert_eq!(zip_file(&mut zip, "sum.txt"), "12");
    assert_eq!(zip_file(&mut zip, "done.txt"), "done\n");
    let result: Value = serde_json::from_str(&zip_file(&mut zip, "result.json")).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["job_id"], id.as_str());

    // The whole log, as text.
    let logs = server.get(&format!("/logs/{id}")).await;
    assert_eq!(logs.status(), 200);
    assert_content_type(&logs, "text/plain");
    let text = logs.text().await.unwrap();
    assert!(text.contains("sum 12"), "{text}");
    assert!(text.contains("status succeeded"), "{text}");

    // The mock saw a planning request carrying the prompt.
    let bodies = received_bodies(&alchemyst).await;
    assert!(!bodies.is_empty());
    assert!(request_text(&bodies[0]).contains("sum the numbers 3, 4 and 5"));

    // Metrics: jobs by status, step durations, LLM latency by provider.
    let m = metrics(&server).await;
    assert!(m.contains("agent_jobs{status=\"succeeded\"} 1"), "{m}");
    assert!(m.contains("agent_queue_depth 0"), "{m}");
    assert!(m.contains("agent_live_sandboxes"), "{m}");
    assert!(
        m.contains("agent_step_duration_seconds_count{outcome=\"succeeded\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("agent_llm_request_duration_seconds_count{provider=\"alchemyst\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("agent_llm_tokens_total{provider=\"alchemyst\",type=\"prompt\"} 10"),
        "{m}"
    );
    assert!(
        m.contains("agent_llm_tokens_total{provider=\"alchemyst\",type=\"completion\"} 20"),
        "{m}"
    );
    assert!(containers_gone(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_steps_job_needs_no_llm() {
    let (_dir, server) = TestServer::with_docker("steps");
    let (_, health) = server.get_json("/").await;
    assert_eq!(health["llm_providers"], json!([]));

    // A prompt job is refused, naming what is missing.
    let (code, err) = server
        .post_json("/schedule", &json!({"prompt": "do something"}))
        .await;
    assert_eq!(code, 422, "{err}");
    assert_eq!(err["error"]["code"], "no_llm");

    let id = server
        .schedule(json!({
            "steps": [
                {"type": "write_file", "path": "notes/a.txt", "content": "alpha"},
                {"type": "shell", "command": "cat notes/a.txt > b.txt && echo copied"},
                {"type": "python", "code": "print(open('b.txt').read().upper())"}
            ],
            "env": {"GREETING": "hi"}
        }))
        .await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    assert!(st["provider"].is_null());
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "notes/a.txt"), "alpha");
    assert_eq!(zip_file(&mut zip, "b.txt"), "alpha");
    let names = zip_names(&zip);
    assert!(names.iter().any(|n| n == "result.json"), "{names:?}");
    let text = server.logs_text(&id).await;
    assert!(text.contains("ALPHA"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_is_repaired_with_its_stderr_in_the_request() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let plan = json!({"summary": "fails first", "steps": [
        {"type": "shell", "command": "echo 'E-MARKER-7731: missing tool' >&2; exit 3"}
    ]});
    let repair = json!({"summary": "fixed", "steps": [
        {"type": "shell", "command": "echo repaired > fixed.txt"}
    ]});
    let alchemyst = alchemyst_mock(&plan, &repair).await;
    let server = TestServer::start(
        &dir.path().join("out"),
        &ServerOptions::new(&unique_scope("repair")).llm(Some(&alchemyst), None),
    );
    let id = server.schedule(json!({"prompt": "make fixed.txt"})).await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}\n{}", server.log_text());
    let steps = st["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{st}");
    assert_eq!(steps[0]["status"], "failed");
    assert_eq!(steps[0]["exit_code"], 3);
    assert_eq!(steps[1]["status"], "succeeded");
    assert_eq!(steps[1]["attempt"], 1);

    let bodies = received_bodies(&alchemyst).await;
    let repairs: Vec<&Value> = bodies.iter().filter(|b| is_repair(b)).collect();
    assert_eq!(repairs.len(), 1, "expected one repair request");
    let text = request_text(repairs[0]);
    assert!(
        text.contains("E-MARKER-7731: missing tool"),
        "the repair request lacks the step's stderr: {text}"
    );
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "fixed.txt"), "repaired\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_primary_answers_503_the_fallback_plans_the_job() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let alchemyst = failing_alchemyst_mock().await;
    let plan = json!({"summary": "gemini plan", "steps": [
        {"type": "shell", "command": "echo from-gemini > who.txt"}
    ]});
    let gemini = gemini_mock(&plan, &no_repair()).await;
    let server = TestServer::start(
        &dir.path().join("out"),
        &ServerOptions::new(&unique_scope("fallback")).llm(Some(&alchemyst), Some(&gemini)),
    );
    let (_, health) = server.get_json("/").await;
    assert_eq!(health["llm_providers"], json!(["alchemyst", "gemini"]));
    let id = server.schedule(json!({"prompt": "say who planned"})).await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}\n{}", server.log_text());
    assert_eq!(st["provider"], "gemini");
    assert!(!alchemyst.received_requests().await.unwrap().is_empty());
    assert!(!gemini.received_requests().await.unwrap().is_empty());
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "who.txt"), "from-gemini\n");
    let m = metrics(&server).await;
    assert!(
        m.contains("agent_llm_errors_total{provider=\"alchemyst\",kind=\"transient\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("agent_llm_request_duration_seconds_count{provider=\"gemini\"} 1"),
        "{m}"
    );
    // The log goes to a pipe: WARN lines with fields, and not one colour code.
    let log = server.log_text();
    assert!(log.contains("falling back"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escapes in a piped log:\n{log}");
}

/// The JSON Schema the system prompt carries (the line after "must match this JSON Schema:").
fn schema_in_prompt(prompt: &str) -> Value {
    let marker = "The object must match this JSON Schema:\n";
    let start = prompt.find(marker).expect("the prompt carries a schema") + marker.len();
    let line = prompt[start..].lines().next().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_step_schema_is_the_one_in_the_prompt_and_the_provider_requests() {
    require_docker();
    let alchemyst = failing_alchemyst_mock().await;
    let plan = json!({"summary": "s", "steps": [{"type": "shell", "command": "true"}]});
    let gemini = gemini_mock(&plan, &no_repair()).await;
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("schema"))
            .llm(Some(&alchemyst), Some(&gemini))
            .env("ALCHEMYST_JSON_SCHEMA", "true"),
    );
    let (code, doc) = server.get_json("/openapi.json").await;
    assert_eq!(code, 200);
    let components = &doc["components"]["schemas"];
    let published_plan = &components["Plan"];
    let published_step = &components["Step"];
    // The published step is the plan's, with one constraint of the door added: a `write_file`
    // path's full rule (relative or under /workspace, no `..`) needs look-arounds, which the
    // RE2 engines of structured output lack, so only the API document states it.
    let mut door_step = published_plan["properties"]["steps"]["items"].clone();
    let mut published = published_step.clone();
    let door_path =
        write_file_variant(&mut published).unwrap()["properties"]["path"]["pattern"].clone();
    assert!(
        door_path.as_str().unwrap().contains("workspace"),
        "{door_path}"
    );
    write_file_variant(&mut door_step).unwrap()["properties"]["path"]["pattern"] = door_path;
    assert_eq!(&door_step, published_step);
    assert_eq!(
        components["ScheduleRequest"]["properties"]["steps"]["items"]["$ref"],
        "#/components/schemas/Step",
        "{}",
        components["ScheduleRequest"]
    );
    // write_file has its per-step timeout (the hand-written StepDoc lacked it).
    let variants = published_step["anyOf"].as_array().unwrap();
    assert_eq!(variants.len(), 3);
    assert!(variants
        .iter()
        .all(|v| v["properties"]["timeout_secs"]["maximum"] == 604_800));

    let id = server.schedule(json!({"prompt": "do nothing"})).await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}\n{}", server.log_text());

    // The OpenAI-format provider: the schema as response_format json_schema, the prompt with it.
    let first = &received_bodies(&alchemyst).await[0];
    assert_eq!(first["response_format"]["type"], "json_schema", "{first}");
    assert_eq!(
        &first["response_format"]["json_schema"]["schema"],
        published_plan
    );
    let system = first["messages"][0]["content"].as_str().unwrap();
    assert_eq!(&schema_in_prompt(system), published_plan);
    // Gemini: the same schema as responseJsonSchema, the same prompt.
    let planned = &received_bodies(&gemini).await[0];
    let config = &planned["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(&config["responseJsonSchema"], published_plan, "{config}");
    let system = planned["systemInstruction"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(&schema_in_prompt(system), published_plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_step_leaves_status_cancelled_and_no_container() {
    let (_dir, server) = TestServer::with_docker("cancel");
    let id = server
        .schedule(json!({"steps": [
            {"type": "shell", "command": "echo started > started.txt; echo started; sleep 300"}
        ]}))
        .await;
    server
        .wait_for(&id, "a running step", |v| {
            v["steps"][0]["status"] == "running"
        })
        .await;
    assert!(
        !containers_of(&id).is_empty(),
        "the job should have a container"
    );
    let (code, resp) = server.post_json(&format!("/cancel/{id}"), &json!({})).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["job_id"], id.as_str());
    assert_eq!(resp["cancelled"], true);
    assert_eq!(resp["status"], "cancelled");
    let st = server.status(&id).await;
    assert_eq!(st["status"], "cancelled");
    assert!(containers_gone(&id), "a container is left");
    // Cancelling again: 409 with the status.
    let (code, err) = server.post_json(&format!("/cancel/{id}"), &json!({})).await;
    assert_eq!(code, 409);
    assert_eq!(err["error"]["code"], "already_finished");
    assert_eq!(err["error"]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_timed_out_with_partial_output() {
    let (_dir, server) = TestServer::with_docker("timeout");
    let id = server
        .schedule(json!({
            "steps": [
                {"type": "shell", "command": "echo partial > partial.txt"},
                {"type": "shell", "command": "echo PARTIAL-OUTPUT-5521; sleep 300"}
            ],
            "timeout_secs": 4
        }))
        .await;
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "timed_out", "{st}\n{}", server.log_text());
    assert_eq!(st["steps"][0]["status"], "succeeded");
    let text = server.logs_text(&id).await;
    assert!(text.contains("PARTIAL-OUTPUT-5521"), "{text}");
    assert!(text.contains("status timed_out"), "{text}");
    assert!(containers_gone(&id), "a container is left");
    // The partial workspace is kept.
    assert_eq!(st["download_link"], format!("/download/{id}"), "{st}");
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "partial.txt"), "partial\n");
    assert_eq!(st["steps"][1]["status"], "failed", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_events_while_the_job_runs_and_resumes_from_last_event_id() {
    let (_dir, server) = TestServer::with_docker("sse");
    let id = server
        .schedule(json!({"steps": [
            {"type": "shell", "command": "for i in 1 2 3; do echo tick-$i; sleep 1; done"},
            {"type": "shell", "command": "echo second-step"}
        ]}))
        .await;
    let resp = server.get(&format!("/logs/{id}/stream")).await;
    assert_eq!(resp.status(), 200);
    assert_content_type(&resp, "text/event-stream");
    let mut reader = SseReader::new(resp);
    let mut events = Vec::new();
    let mut saw_live_output = false;
    while let Some(ev) = reader.next().await {
        if ev.event == "output"
            && ev.data["text"].as_str().unwrap_or("").contains("tick-1")
            && !saw_live_output
        {
            // The job is still running when its first output arrives.
            let st = server.status(&id).await;
            assert_eq!(st["status"], "running", "{st}");
            saw_live_output = true;
        }
        events.push(ev);
    }
    assert!(saw_live_output, "no live output event: {events:?}");
    let last = events.last().unwrap();
    assert_eq!(last.event, "status");
    assert_eq!(last.data["status"], "succeeded");
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e.id.expect("every event has an id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    for name in ["status", "step_started", "output", "step_finished"] {
        assert!(events.iter().any(|e| e.event == name), "no {name} event");
    }

    // Resume after the 3rd event: exactly the rest, ending with the final status.
    let resume_after = ids[2];
    let resp = server
        .http
        .get(server.url(&format!("/logs/{id}/stream")))
        .header("Last-Event-ID", resume_after.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    let mut resumed = Vec::new();
    while let Some(ev) = reader.next().await {
        resumed.push(ev.id.unwrap());
    }
    assert_eq!(resumed, ids[3..].to_vec());

    // The `after` query parameter does the same.
    let resp = server
        .get(&format!("/logs/{id}/stream?after={}", ids[ids.len() - 2]))
        .await;
    let mut reader = SseReader::new(resp);
    let ev = reader.next().await.unwrap();
    assert_eq!(ev.id, Some(*ids.last().unwrap()));
    assert!(reader.next().await.is_none());
}

/// Reads an SSE response to its end: the events' ids, checked to end with the final status.
async fn sse_ids(resp: reqwest::Response, limit: usize) -> Vec<u64> {
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    let mut ids = Vec::new();
    let mut last_event = String::new();
    while ids.len() < limit {
        let Some(ev) = reader.next().await else { break };
        ids.push(ev.id.expect("every event has an id"));
        last_event = ev.event;
    }
    if ids.len() < limit {
        assert_eq!(
            last_event, "status",
            "the stream ends with the final status"
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_fan_out_every_subscriber_gets_every_event_in_order_and_a_stalled_one_holds_nobody_back(
) {
    let (_dir, server) = TestServer::with_docker("fanout");
    // A busy job: a pause so the subscribers attach while it runs, then thousands of lines.
    let id = server
        .schedule(json!({"steps": [{"type": "python",
            "code": "import time\ntime.sleep(1)\nfor i in range(5000):\n    print('line', i, flush=True)"}]}))
        .await;
    let stream = |after: Option<u64>| {
        let mut rb = server.http.get(server.url(&format!("/logs/{id}/stream")));
        if let Some(after) = after {
            rb = rb.header("Last-Event-ID", after.to_string());
        }
        rb.send()
    };
    let mut readers = Vec::new();
    for _ in 0..25 {
        readers.push(tokio::spawn(sse_ids(
            stream(None).await.unwrap(),
            usize::MAX,
        )));
    }
    // Connected, answered, and then not read at all until the job is over.
    let stalled = stream(None).await.unwrap();
    // Reads 20 events, disconnects, and resumes after the last one it saw.
    let first = sse_ids(stream(None).await.unwrap(), 20).await;
    assert_eq!(first.len(), 20);
    let resumed = tokio::spawn(sse_ids(
        stream(first.last().copied()).await.unwrap(),
        usize::MAX,
    ));
    let st = server.wait_final(&id).await;
    assert_eq!(st["status"], "succeeded", "{st}");
    let mut all = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let ids = reader.await.unwrap();
        assert!(ids.len() > 100, "subscriber {i}: {} events", ids.len());
        assert_eq!(
            ids,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "subscriber {i} got every event once, in order"
        );
        if i == 0 {
            all = ids;
        } else {
            assert_eq!(ids, all, "subscriber {i} got what the others got");
        }
    }
    assert_eq!(
        [first, resumed.await.unwrap()].concat(),
        all,
        "the resumed subscriber misses nothing"
    );
    assert_eq!(
        sse_ids(stalled, usize::MAX).await,
        all,
        "the stalled subscriber catches up without a gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_keeps_every_job_and_interrupts_the_running_ones() {
    let scope = unique_scope("kill9");
    let opts = ServerOptions::new(&scope).env("AGENT_MAX_CONCURRENT_JOBS", "2");
    let (_dir, mut server) = TestServer::docker_in_tempdir(&opts);

    let done = server
        .schedule(json!({"steps": [{"type": "shell", "command": "echo ok > ok.txt"}]}))
        .await;
    server.wait_final(&done).await;
    let long = json!({"steps": [{"type": "shell", "command": "echo working; sleep 300"}]});
    let running_a = server.schedule(long.clone()).await;
    let running_b = server.schedule(long.clone()).await;
    let queued = server.schedule(long.clone()).await;
    for id in [&running_a, &running_b] {
        server
            .wait_for(id, "a running step", |v| {
                v["steps"][0]["status"] == "running"
            })
            .await;
    }
    assert_eq!(server.status(&queued).await["status"], "queued");
    assert!(!containers_of(&running_a).is_empty());

    server.kill9();
    // The crashed server's containers are still there.
    assert!(!containers_of(&running_a).is_empty());

    let server = server.restart();
    let (code, list) = server.get_json("/jobs?limit=100").await;
    assert_eq!(code, 200);
    assert_eq!(list["total"], 4, "{list}");
    let listed: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    for id in [&done, &running_a, &running_b, &queued] {
        assert!(listed.contains(&id.as_str()), "{id} not listed");
    }
    // Pages of 3 by cursor: the same jobs in the same order, and no `next` on the last page.
    let (_, first) = server.get_json("/jobs?limit=3").await;
    let next = first["next"].as_str().expect("a next cursor").to_string();
    let (code, second) = server
        .get_json(&format!("/jobs?limit=3&cursor={next}"))
        .await;
    assert_eq!(code, 200, "{second}");
    assert!(second.get("next").is_none(), "{second}");
    let walked: Vec<&str> = first["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["jobs"].as_array().unwrap())
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(walked, listed, "cursor pages walk the list");
    assert_eq!(server.status(&done).await["status"], "succeeded");
    for id in [&running_a, &running_b] {
        let st = server.status(id).await;
        assert_eq!(st["status"], "interrupted", "{st}");
        assert!(containers_of(id).is_empty(), "container of {id} left");
    }
    // The queued job was queued again and runs now; its ZIP of the finished job is still served.
    let st = server.status(&queued).await;
    assert!(
        matches!(st["status"].as_str(), Some("queued" | "running")),
        "{st}"
    );
    let mut zip = server.download(&done).await;
    assert_eq!(zip_file(&mut zip, "ok.txt"), "ok\n");
    let (code, _) = server
        .post_json(&format!("/cancel/{queued}"), &json!({}))
        .await;
    assert_eq!(code, 200);
    assert!(containers_gone(&queued));
    // Only the cancelled/interrupted jobs' containers existed; none is left in this scope.
    assert!(containers_of_scope(&scope).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_interrupts_running_jobs_removes_containers_and_exits_0() {
    let scope = unique_scope("term");
    let opts = ServerOptions::new(&scope);
    let (_dir, mut server) = TestServer::docker_in_tempdir(&opts);
    let id = server
        .schedule(json!({"steps": [{"type": "shell", "command": "sleep 300"}]}))
        .await;
    server
        .wait_for(&id, "a running step", |v| {
            v["steps"][0]["status"] == "running"
        })
        .await;
    // An open SSE stream must not keep the server alive.
    let stream = server.get(&format!("/logs/{id}/stream")).await;
    assert_eq!(stream.status(), 200);
    let code = server.terminate();
    assert_eq!(code, Some(0), "{}", server.log_text());
    drop(stream);
    assert!(
        containers_of(&id).is_empty(),
        "container left after SIGTERM"
    );
    assert!(containers_of_scope(&scope).is_empty());
    let server = server.restart();
    assert_eq!(server.status(&id).await["status"], "interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_error_shape_and_never_a_5xx() {
    let (_dir, server) = TestServer::with_docker("bad");
    let stored = server
        .schedule(json!({"steps": [{"type": "shell", "command": "echo kept"}]}))
        .await;
    server.wait_final(&stored).await;
    let unknown = "3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f";
    let http = &server.http;

    async fn check(resp: reqwest::Response, code: u16, error_code: &str) -> Value {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("non-JSON error body ({e}): {text}"));
        assert_eq!(status, code, "{body}");
        assert_eq!(body["error"]["code"], error_code, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        body
    }

    // Malformed and unknown ids.
    for path in ["/status/", "/download/", "/logs/", "/logs/x/stream"] {
        let p = if path.ends_with('/') {
            format!("{path}not-a-uuid")
        } else {
            path.replace("/x/", "/not-a-uuid/")
        };
        check(server.get(&p).await, 400, "invalid_job_id").await;
    }
    let resp = http.post(server.url("/cancel/12345")).send().await.unwrap();
    check(resp, 400, "invalid_job_id").await;
    for path in [
        format!("/status/{unknown}"),
        format!("/download/{unknown}"),
        format!("/logs/{unknown}"),
        format!("/logs/{unknown}/stream"),
    ] {
        check(server.get(&path).await, 404, "not_found").await;
    }
    let resp = http
        .post(server.url(&format!("/cancel/{unknown}")))
        .send()
        .await
        .unwrap();
    check(resp, 404, "not_found").await;

    // Bodies: (body, content type, HTTP status, error code, the field named — a trailing `…`
    // means "starts with" —, a part of the message).
    type BadBody = (
        &'static str,
        Option<&'static str>,
        u16,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );
    let json_ct = Some("application/json");
    let cases: &[BadBody] = &[
        ("{\"prompt\": ", json_ct, 400, "invalid_json", None, None),
        ("", json_ct, 400, "invalid_json", None, None),
        ("{}", json_ct, 422, "invalid_input", Some("prompt"), None),
        (
            "{\"steps\": \"echo\"}",
            json_ct,
            422,
            "invalid_input",
            Some("steps"),
            None,
        ),
        (
            "{\"steps\": [{\"type\":\"shell\",\"command\":\"ok\"},{\"type\":\"shell\"}]}",
            json_ct,
            422,
            "invalid_input",
            Some("steps[1]…"),
            Some("command"),
        ),
        (
            "{\"steps\": [{\"type\":\"rm_rf\",\"path\":\"/\"}]}",
            json_ct,
            422,
            "invalid_input",
            Some("steps[0]…"),
            None,
        ),
        (
            "{\"promt\": \"typo\"}",
            json_ct,
            422,
            "invalid_input",
            None,
            Some("promt"),
        ),
        (
            "{\"prompt\": \"x\", \"timeout_secs\": -1}",
            json_ct,
            422,
            "invalid_input",
            Some("timeout_secs"),
            None,
        ),
        (
            "{\"steps\": [{\"type\":\"shell\",\"command\":\"x\"}], \"timeout_secs\": 0}",
            json_ct,
            422,
            "invalid_input",
            Some("timeout_secs"),
            None,
        ),
        (
            "{\"steps\": [{\"type\":\"shell\",\"command\":\"x\"}], \"timeout_secs\": 18446744073709551615}",
            json_ct,
            422,
            "invalid_input",
            Some("timeout_secs"),
            None,
        ),
        (
            "{\"steps\": [{\"type\":\"shell\",\"command\":\"x\"}], \"network\": \"host\"}",
            json_ct,
            422,
            "invalid_input",
            Some("network"),
            None,
        ),
        (
            "{\"steps\": [{\"type\":\"shell\",\"command\":\"x\"}], \"env\": {\"BAD-NAME\": \"1\"}}",
            json_ct,
            422,
            "invalid_input",
            Some("env"),
            None,
        ),
        ("{}", Some("text/plain"), 415, "unsupported_media_type", None, None),
        ("{}", None, 415, "unsupported_media_type", None, None),
    ];
    for &(body, ct, code, error_code, field, message) in cases {
        let mut rb = http.post(server.url("/schedule")).body(body);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        let b = check(rb.send().await.unwrap(), code, error_code).await;
        if let Some(field) = field {
            let named = b["error"]["field"].as_str().unwrap_or_default();
            match field.strip_suffix('…') {
                Some(prefix) => assert!(named.starts_with(prefix), "{body}: {b}"),
                None => assert_eq!(named, field, "{body}: {b}"),
            }
        }
        if let Some(part) = message {
            let text = b["error"]["message"].as_str().unwrap_or_default();
            assert!(text.contains(part), "{body}: {b}");
        }
    }
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(1_100_000));
    let resp = http
        .post(server.url("/schedule"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    check(resp, 413, "payload_too_large").await;

    // Query parameters and headers.
    let b = check(server.get("/jobs?status=done").await, 400, "bad_request").await;
    assert_eq!(b["error"]["field"], "status");
    let b = check(server.get("/jobs?limit=abc").await, 400, "bad_request").await;
    assert_eq!(b["error"]["field"], "limit");
    let b = check(server.get("/jobs?limit=100000").await, 400, "bad_request").await;
    assert_eq!(b["error"]["field"], "limit");
    let b = check(server.get("/jobs?cursor=abc.def").await, 400, "bad_request").await;
    assert_eq!(b["error"]["field"], "cursor");
    let resp = http
        .get(server.url(&format!("/logs/{stored}/stream")))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    let b = check(resp, 400, "bad_request").await;
    assert_eq!(b["error"]["field"], "Last-Event-ID");

    // Routes and methods.
    check(server.get("/nope").await, 404, "not_found").await;
    check(server.get("/schedule").await, 405, "method_not_allowed").await;
    let resp = http.delete(server.url("/jobs")).send().await.unwrap();
    check(resp, 405, "method_not_allowed").await;

    // A download before the archive exists: 409 with the status.
    let running = server
        .schedule(json!({"steps": [{"type": "shell", "command": "sleep 300"}]}))
        .await;
    let b = check(
        server.get(&format!("/download/{running}")).await,
        409,
        "not_ready",
    )
    .await;
    assert!(matches!(
        b["error"]["status"].as_str(),
        Some("queued" | "running")
    ));
    let (code, _) = server
        .post_json(&format!("/cancel/{running}"), &json!({}))
        .await;
    assert_eq!(code, 200);

    // Still alive, nothing lost.
    let (code, _) = server.get_json("/").await;
    assert_eq!(code, 200);
    assert_eq!(server.status(&stored).await["status"], "succeeded");
    let (_, list) = server.get_json("/jobs").await;
    assert_eq!(list["total"], 2);
    assert!(
        !server.log_text().contains("panicked"),
        "{}",
        server.log_text()
    );

    // Docs: the OpenAPI document and Swagger UI, served from the binary.
    let (code, doc) = server.get_json("/openapi.json").await;
    assert_eq!(code, 200);
    for p in [
        "/schedule",
        "/status/{id}",
        "/jobs",
        "/cancel/{id}",
        "/download/{id}",
        "/logs/{id}",
        "/logs/{id}/stream",
        "/metrics",
        "/",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    let page = server.get("/docs/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    let init = server.get("/docs/swagger-initializer.js").await;
    assert_eq!(init.status(), 200);
    assert!(init.text().await.unwrap().contains("/openapi.json"));
}

/// The `write_file` variant of a step schema.
fn write_file_variant(step: &mut Value) -> Option<&mut Value> {
    step["anyOf"]
        .as_array_mut()?
        .iter_mut()
        .find(|v| v.to_string().contains("write_file"))
}

/// Issue 9 item 6: everything that can be checked is checked at `POST /schedule`, with the field
/// named; nothing bad is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_at_the_door_names_the_field() {
    require_docker();
    // The API's own range up to its edge (the operator policy's lower default maximum is
    // tests/policy.rs's).
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("door")).env("AGENT_MAX_STEP_TIMEOUT_SECS", "604800"),
    );
    let shell = |extra: Value| {
        let mut step = json!({"type": "shell", "command": "true"});
        step.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"steps": [step]})
    };
    let with = |key: &str, value: Value| {
        let mut body = shell(json!({}));
        body[key] = value;
        body
    };
    let long_image = "a".repeat(5000);
    // (the body, the field the answer must name, a part of its message)
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            shell(json!({"timeout_sec": 1})),
            "steps[0].timeout_sec",
            "unknown field",
        ),
        (
            json!({"steps": [{"type": "write_file", "path": "a", "content": "", "mode": 1}]}),
            "steps[0].mode",
            "unknown field",
        ),
        (
            shell(json!({"timeout_secs": 0})),
            "steps[0].timeout_secs",
            "between 1 and 604800",
        ),
        (
            shell(json!({"timeout_secs": 604_801})),
            "steps[0].timeout_secs",
            "between 1 and 604800",
        ),
        (
            json!({"steps": [{"type": "shell", "command": "echo a\u{0}b"}]}),
            "steps[0].command",
            "NUL",
        ),
        (
            json!({"steps": [{"type": "python", "code": "\u{0}"}]}),
            "steps[0].code",
            "NUL",
        ),
        (
            json!({"steps": [{"type": "write_file", "path": "a\u{0}b", "content": ""}]}),
            "steps[0].path",
            "NUL",
        ),
        (
            json!({"steps": [{"type": "write_file", "path": "../escape", "content": ""}]}),
            "steps[0].path",
            "..",
        ),
        (with("env", json!({"A": "x\u{0}y"})), "env.A", "NUL"),
        (with("image", json!("../x")), "image", "image reference"),
        (
            with("image", json!("Debian:latest")),
            "image",
            "image reference",
        ),
        (with("image", json!(long_image)), "image", "longer than"),
        (with("network", json!(1)), "network", "invalid type"),
        (
            with("network", json!("BRIDGE")),
            "network",
            "expected \"none\" or \"bridge\"",
        ),
        (
            with("timeout_secs", json!(604_801)),
            "timeout_secs",
            "at most 604800",
        ),
        (
            with("step_timeout_secs", json!(0)),
            "step_timeout_secs",
            "at least 1",
        ),
        (
            json!([null, [{"type": "shell", "command": "true"}]]),
            "body",
            "JSON object",
        ),
        (
            json!({"steps": [["shell", "true"]]}),
            "steps[0]",
            "invalid type",
        ),
        (
            json!({"prompt": "x", "promt": "y"}),
            "promt",
            "unknown field",
        ),
    ];
    for (body, field, message) in &cases {
        let (code, answer) = server.post_json("/schedule", body).await;
        assert_eq!(code, 422, "{body} → {answer}");
        assert_eq!(
            answer["error"]["code"], "invalid_input",
            "{body} → {answer}"
        );
        assert_eq!(answer["error"]["field"], *field, "{body} → {answer}");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{body} → {answer}");
    }
    // None of them was queued; a good request still is.
    let (_, list) = server.get_json("/jobs").await;
    assert_eq!(list["total"], 0, "{list}");
    let ok = shell(json!({"timeout_secs": 604_800}));
    let id = server.schedule(ok).await;
    assert_eq!(server.wait_final(&id).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_on_and_off() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-for-tests";
    let server = TestServer::start(
        &dir.path().join("on"),
        &ServerOptions::new(&unique_scope("auth-on")).token(token),
    );
    let http = reqwest::Client::new();
    // Health is public.
    let resp = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    for (method, path) in [
        ("GET", "/jobs"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs/"),
        ("POST", "/schedule"),
        ("GET", "/status/3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f"),
    ] {
        let rb = |auth: Option<&str>| {
            let mut rb = match method {
                "POST" => http
                    .post(server.url(path))
                    .header("content-type", "application/json")
                    .body(r#"{"steps":[{"type":"shell","command":"true"}]}"#),
                _ => http.get(server.url(path)),
            };
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            rb
        };
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("Basic czNjcmV0"),
            Some("Bearer "),
        ] {
            let resp = rb(bad).send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {bad:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let resp = rb(Some(&format!("Bearer {token}"))).send().await.unwrap();
        assert_ne!(resp.status(), 401, "{method} {path} with the token");
        assert!(resp.status().as_u16() < 500, "{method} {path}");
    }
    assert!(
        !server.log_text().contains(token),
        "the token appears in the log"
    );

    // Off: no token needed.
    let open = TestServer::start(
        &dir.path().join("off"),
        &ServerOptions::new(&unique_scope("auth-off")),
    );
    let resp = http.get(open.url("/jobs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http.get(open.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_full_queue_answers_503_queue_full() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &ServerOptions::new(&unique_scope("queue-full"))
            .env("AGENT_MAX_CONCURRENT_JOBS", "1")
            .env("AGENT_MAX_QUEUED_JOBS", "1"),
    );
    let running = server
        .schedule(json!({"steps": [{"type": "shell", "command": "echo started; sleep 100"}]}))
        .await;
    server
        .wait_for(&running, "running", |s| s["status"] == "running")
        .await;
    let queued = server
        .schedule(json!({"steps": [{"type": "shell", "command": "true"}]}))
        .await;
    let (code, body) = server
        .post_json(
            "/schedule",
            &json!({"steps": [{"type": "shell", "command": "true"}]}),
        )
        .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    // Nothing stored was lost: both accepted jobs are still there.
    let (code, _) = server
        .post_json(&format!("/cancel/{running}"), &json!({}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(server.wait_final(&queued).await["status"], "succeeded");
}
