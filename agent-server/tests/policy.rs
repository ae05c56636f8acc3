//! Operator policy through the real server binary and the real Docker engine: each rule refuses
//! its request at the door (403 `policy_refused`, the field and the variable named) for jobs and
//! live sandboxes alike, nothing is queued or started for a refused request, allowed requests
//! run, and a job's stored log is capped with a marker and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

/// `(what, route, body, field, variable)` of each refusal under the test server's policy.
fn refusals() -> Vec<(
    &'static str,
    &'static str,
    Value,
    &'static str,
    &'static str,
)> {
    let steps = json!([{"type": "shell", "command": "true"}]);
    let job = |extra: Value| {
        let mut body = json!({"steps": steps});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    vec![
        (
            "an image not allowed",
            "/schedule",
            job(json!({"image": "alpine:3"})),
            "image",
            "AGENT_ALLOWED_IMAGES",
        ),
        (
            "an image ID",
            "/schedule",
            job(json!({"image": format!("sha256:{}", "a".repeat(64))})),
            "image",
            "AGENT_ALLOWED_IMAGES",
        ),
        (
            "bridge networking",
            "/schedule",
            job(json!({"network": "bridge"})),
            "network",
            "AGENT_ALLOW_NETWORK",
        ),
        (
            "a job timeout over the maximum",
            "/schedule",
            job(json!({"timeout_secs": 601})),
            "timeout_secs",
            "AGENT_MAX_JOB_TIMEOUT_SECS",
        ),
        (
            "a step timeout over the maximum",
            "/schedule",
            job(json!({"step_timeout_secs": 61})),
            "step_timeout_secs",
            "AGENT_MAX_STEP_TIMEOUT_SECS",
        ),
        (
            "one step's own timeout over the maximum",
            "/schedule",
            json!({"steps": [{"type": "shell", "command": "true"},
                             {"type": "shell", "command": "true", "timeout_secs": 61}]}),
            "steps[1].timeout_secs",
            "AGENT_MAX_STEP_TIMEOUT_SECS",
        ),
        (
            "a keep-alive over the maximum",
            "/schedule",
            job(json!({"keep_alive_secs": 31})),
            "keep_alive_secs",
            "AGENT_MAX_KEEP_ALIVE_SECS",
        ),
        (
            "a sandbox image not allowed",
            "/sandboxes",
            json!({"image": "busybox:latest"}),
            "image",
            "AGENT_ALLOWED_IMAGES",
        ),
        (
            "a sandbox on bridge",
            "/sandboxes",
            json!({"network": "bridge"}),
            "network",
            "AGENT_ALLOW_NETWORK",
        ),
        (
            "sandbox memory over the maximum",
            "/sandboxes",
            json!({"limits": {"memory_bytes": 512u64 << 20}}),
            "limits.memory_bytes",
            "AGENT_MAX_MEMORY_BYTES",
        ),
        (
            "sandbox CPUs over the maximum",
            "/sandboxes",
            json!({"limits": {"cpus": 1.5}}),
            "limits.cpus",
            "AGENT_MAX_CPUS",
        ),
        (
            "sandbox processes over the maximum",
            "/sandboxes",
            json!({"limits": {"pids": 4096}}),
            "limits.pids",
            "AGENT_MAX_PIDS",
        ),
        (
            "a sandbox workspace over the maximum",
            "/sandboxes",
            json!({"limits": {"workspace_bytes": 4u64 << 30}}),
            "limits.workspace_bytes",
            "AGENT_MAX_WORKSPACE_BYTES",
        ),
        (
            "a sandbox /tmp over the maximum",
            "/sandboxes",
            json!({"limits": {"tmp_bytes": 4u64 << 30}}),
            "limits.tmp_bytes",
            "AGENT_MAX_TMP_BYTES",
        ),
        (
            "a sandbox lifetime over the maximum",
            "/sandboxes",
            json!({"timeout_secs": 601}),
            "timeout_secs",
            "AGENT_MAX_JOB_TIMEOUT_SECS",
        ),
        (
            "a sandbox idle timeout over the maximum",
            "/sandboxes",
            json!({"idle_timeout_secs": 121}),
            "idle_timeout_secs",
            "AGENT_MAX_IDLE_TIMEOUT_SECS",
        ),
    ]
}

/// Checks that `what` was answered 403 `policy_refused`, naming `field` and the variable `var`
/// that sets the limit.
fn assert_policy_refused(what: &str, (code, v): (u16, Value), field: &str, var: &str) {
    assert_eq!(code, 403, "{what}: {v}");
    assert_eq!(v["error"]["code"], "policy_refused", "{what}: {v}");
    assert_eq!(v["error"]["field"], field, "{what}: {v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(var), "{what}: {message}");
}

fn policy_server(dir: &std::path::Path, scope: &str) -> TestServer {
    let opts = ServerOptions::new(scope)
        .env("AGENT_JOB_TIMEOUT_SECS", "300")
        .env("AGENT_STEP_TIMEOUT_SECS", "30")
        .env("AGENT_MAX_JOB_TIMEOUT_SECS", "600")
        .env("AGENT_MAX_STEP_TIMEOUT_SECS", "60")
        .env("AGENT_MAX_IDLE_TIMEOUT_SECS", "120")
        .env("AGENT_MAX_KEEP_ALIVE_SECS", "30")
        // Below the default of 2 GiB: the default is lowered to it, not refused.
        .env("AGENT_MAX_MEMORY_BYTES", (256u64 << 20).to_string())
        .env("AGENT_MAX_CPUS", "1")
        .env("AGENT_MAX_PIDS", "512")
        .env("AGENT_MAX_LOG_BYTES", "4096");
    TestServer::start(&dir.join("out"), &opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_refuses_at_the_door_and_allowed_requests_run() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let scope = unique_scope("policy");
    let server = policy_server(dir.path(), &scope);

    // /info says what is allowed.
    let (code, info) = server.get_json("/info").await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["limits"]["networks"], json!(["none"]));
    assert_eq!(info["limits"]["max_timeout_secs"], 600);
    assert_eq!(info["limits"]["max_step_timeout_secs"], 60);
    let images = info["limits"]["images"].as_array().unwrap();
    assert!(images.contains(&json!(image())), "{info}");

    for (what, route, body, field, var) in refusals() {
        let answer = server.post_json(route, &body).await;
        assert_policy_refused(what, answer, field, var);
    }
    // Nothing was queued or started for any of them.
    let (_, jobs) = server.get_json("/jobs").await;
    assert_eq!(jobs["total"], 0, "{jobs}");
    assert!(containers_of_scope(&scope).is_empty());
    // A malformed value is still the API's own 422, not a policy refusal.
    let (code, v) = server
        .post_json(
            "/schedule",
            &json!({"steps": [{"type": "shell", "command": "true"}], "image": "../x"}),
        )
        .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (422, Some("invalid_input")),
        "{v}"
    );

    // Allowed: the server's own image named explicitly, limits at the maxima, a step's own
    // timeout at the maximum. The job runs and its sandbox got the lowered default memory.
    let id = server
        .schedule(json!({
            "steps": [{"type": "shell", "timeout_secs": 60,
                       "command": "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"}],
            "image": image(),
            "timeout_secs": 600,
            "step_timeout_secs": 60,
            "keep_alive_secs": 0,
        }))
        .await;
    let done = server.wait_final(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let log = server.logs_text(&id).await;
    assert!(
        log.contains(&(256u64 << 20).to_string()),
        "memory limit not lowered: {log}"
    );

    // A live sandbox within the policy is created; its step and extension are checked too.
    let (code, sb) = server
        .post_json(
            "/sandboxes",
            &json!({"limits": {"memory_bytes": 128u64 << 20, "cpus": 0.5, "pids": 64}, "idle_timeout_secs": 120}),
        )
        .await;
    assert_eq!(code, 201, "{sb}");
    let sid = sb["sandbox_id"].as_str().unwrap().to_string();
    let long_step = json!({"step": {"type": "shell", "command": "true", "timeout_secs": 61}});
    let answer = server
        .post_json(&format!("/sandboxes/{sid}/steps"), &long_step)
        .await;
    let (field, var) = ("step.timeout_secs", "AGENT_MAX_STEP_TIMEOUT_SECS");
    assert_policy_refused("a live sandbox's step timeout", answer, field, var);
    let long_idle = json!({"idle_timeout_secs": 121});
    let answer = server
        .post_json(&format!("/sandboxes/{sid}/extend"), &long_idle)
        .await;
    let (field, var) = ("idle_timeout_secs", "AGENT_MAX_IDLE_TIMEOUT_SECS");
    assert_policy_refused("an extension past the idle maximum", answer, field, var);
    let (code, v) = server
        .post_json(
            &format!("/sandboxes/{sid}/steps"),
            &json!({"step": {"type": "shell", "command": "echo in-sandbox", "timeout_secs": 60}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "succeeded", "{v}");
    let resp = server.delete(&format!("/sandboxes/{sid}")).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_log_is_capped_with_a_marker_and_the_rest_counted() {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let server = policy_server(dir.path(), &unique_scope("policy-log"));
    assert_eq!(server.metric("agent_log_bytes_dropped_total").await, 0.0);
    // 20,000 bytes of output in a cap of 4,096; the file the step writes is whole in the ZIP.
    let id = server
        .schedule(shell_job(
            "for i in $(seq 1 2000); do printf 'line%05d\\n' $i; done | tee out.txt; echo done-$((40 + 2))",
        ))
        .await;
    let done = server.wait_final(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let log = server.logs_text(&id).await;
    assert!(log.contains("line00001"), "{log}");
    assert!(log.contains("[log truncated"), "{log}");
    assert!(log.contains("AGENT_MAX_LOG_BYTES"), "{log}");
    assert!(!log.contains("line02000"), "output past the cap was stored");
    assert!(!log.contains("done-42"), "output past the cap was stored");
    // The status and step events after the cap are still stored.
    assert!(log.contains("succeeded"), "{log}");
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "out.txt").lines().count(), 2000);
    // Output bytes in all: 2,000 lines of 10 bytes and "done-42\n"; 4,096 kept.
    let dropped = server.metric("agent_log_bytes_dropped_total").await;
    assert_eq!(dropped, (20_000 + 8 - 4096) as f64);
}
