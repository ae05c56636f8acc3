//! Services on the real engine: a desktop and Jupyter Lab started by the supervisor before the
//! first step, spared when a step is killed, reached only through tunnels to their declared
//! ports, and refused clearly where they cannot run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_core::executor::SandboxSpec;
use agent_core::{Executor, JobId, JobSpec, Sandbox, SandboxErrorKind, Service, Termination};
use agent_docker::services::{JUPYTER_PORT, VNC_PORT, VNC_VIEW_PORT};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spec(services: &[Service]) -> (JobId, SandboxSpec) {
    let id = JobId::new();
    let mut job = JobSpec::from_prompt("services");
    for s in services {
        job = job.with_service(*s);
    }
    (id, SandboxSpec::for_job(id, &job))
}

/// The first 12 bytes a VNC server sends, through a tunnel.
async fn banner(sb: &dyn Sandbox, port: u16) -> String {
    let mut tunnel = sb.connect(port).await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut buf))
        .await
        .expect("the banner within 10 s")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// How many processes named `name` run in the sandbox (read from /proc: no procps needed).
const COUNT: &str = "n=0; for c in /proc/[0-9]*/comm; do [ \"$(cat $c 2>/dev/null)\" = \"$NAME\" ] && n=$((n+1)); done; echo $n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_survives_killed_steps_and_every_step_draws_on_it() {
    if skipped() {
        return;
    }
    let exec = connect(config("services-desktop")).await;
    assert!(
        exec.capabilities().services,
        "the desktop image must be on the engine (images/desktop/build-offline.sh)"
    );
    let (_, spec) = spec(&[Service::Desktop]);
    let sb = exec.create(&spec).await.unwrap();
    let endpoint = sb.service(Service::Desktop).expect("the desktop endpoint");
    assert_eq!(endpoint.ports, vec![VNC_PORT, VNC_VIEW_PORT]);
    assert!(sb.service(Service::Jupyter).is_none());

    let (r, out, err) = sh(
        &*sb,
        "echo \"$DISPLAY\"; xsetroot -solid '#ff8000' && echo drawn",
    )
    .await;
    assert!(r.success(), "{out}\n{err}");
    assert_eq!(out, ":0\ndrawn\n");
    assert_eq!(banner(&*sb, VNC_PORT).await, "RFB 003.008\n");

    // A step that leaves a background process and runs past its timeout: the kill takes every
    // process the step started, and none of the desktop's.
    let (r, _) = run(
        &*sb,
        1,
        agent_core::Step::shell(
            "setsid sleep 1000 & nohup sleep 1001 >/dev/null 2>&1 & sleep 1002",
        ),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(r.termination, Termination::TimedOut);
    let (r, out, err) = sh(
        &*sb,
        &format!("NAME=sleep; {COUNT}; NAME=Xvfb; {COUNT}; NAME=x11vnc; {COUNT}"),
    )
    .await;
    assert!(r.success(), "{err}");
    assert_eq!(
        out, "0\n1\n2\n",
        "sleep, Xvfb, x11vnc processes after the kill"
    );
    assert_eq!(banner(&*sb, VNC_PORT).await, "RFB 003.008\n");
    assert_eq!(banner(&*sb, VNC_VIEW_PORT).await, "RFB 003.008\n");
    let (r, out, err) = sh(&*sb, "xsetroot -solid '#0080ff' && echo drawn-again").await;
    assert!(r.success(), "{out}\n{err}");

    // Only the services' ports are open to tunnels.
    let refused = sb
        .connect(22)
        .await
        .err()
        .expect("port 22 is not a service's");
    assert_eq!(refused.kind, SandboxErrorKind::Refused, "{refused}");
    sb.destroy().await.unwrap();
    exec.shutdown().await.unwrap();
}

/// Sends one HTTP/1.1 request through a tunnel to Jupyter; returns the status line and body.
async fn http(sb: &dyn Sandbox, path: &str, token: Option<&str>) -> (String, String) {
    let mut tunnel = sb.connect(JUPYTER_PORT).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: token {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    tunnel.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tunnel.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_serves_the_workspace_under_the_proxy_path_to_its_token_only() {
    if skipped() {
        return;
    }
    let exec = connect(config("services-jupyter")).await;
    let (id, spec) = spec(&[Service::Jupyter]);
    let sb = exec.create(&spec).await.unwrap();
    let endpoint = sb.service(Service::Jupyter).expect("the jupyter endpoint");
    assert_eq!(endpoint.ports, vec![JUPYTER_PORT]);
    let token = endpoint.secret.expect("a token").expose().to_string();
    sb.put_file("hello.txt", "hi".into()).await.unwrap();

    let base = format!("/jupyter/{id}/");
    let (status, body) = http(&*sb, &format!("{base}api/contents"), Some(&token)).await;
    assert!(status.contains(" 200 "), "{status}\n{body}");
    assert!(
        body.contains("\"hello.txt\""),
        "the workspace is Jupyter's root: {body}"
    );
    let (status, _) = http(&*sb, &format!("{base}api/contents"), None).await;
    assert!(status.contains(" 403 "), "without the token: {status}");
    let (status, _) = http(&*sb, &format!("{base}api/contents"), Some("wrong")).await;
    assert!(status.contains(" 403 "), "with a wrong token: {status}");
    let (status, _) = http(&*sb, "/api/contents", Some(&token)).await;
    assert!(status.contains(" 404 "), "outside the base path: {status}");

    // The token is in no process's command line (the pattern comes from a file, so that it is
    // not in grep's own).
    sb.put_file("pattern", token.clone().into()).await.unwrap();
    let (r, out, _) = sh(
        &*sb,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c -F -f pattern || true",
    )
    .await;
    assert!(r.success());
    assert_eq!(out.trim(), "0");
    // A killed step leaves Jupyter (and its kernels' parent) alone.
    let (r, _) = run(
        &*sb,
        1,
        agent_core::Step::shell("sleep 1000"),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(r.termination, Termination::TimedOut);
    let (status, _) = http(&*sb, &format!("{base}api/status"), Some(&token)).await;
    assert!(status.contains(" 200 "), "after a step kill: {status}");
    sb.destroy().await.unwrap();
    exec.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_refused_clearly_where_they_cannot_run() {
    if skipped() {
        return;
    }
    // An executor whose services image is not on the engine offers no services: the job is
    // refused at the door, naming the field.
    let exec =
        connect(config("services-missing").with_services_image(Some("no-such-image:never".into())))
            .await;
    assert!(!exec.capabilities().services);
    let (_, desktop) = spec(&[Service::Desktop]);
    let err = exec.capabilities().check(&desktop).unwrap_err();
    assert!(err.to_string().contains("services"), "{err}");
    let err = exec.create(&desktop).await.err().unwrap();
    assert_eq!(err.kind, SandboxErrorKind::Unsupported, "{err}");
    exec.shutdown().await.unwrap();

    // A job naming an image without the desktop gets an error that says what is missing.
    let exec = connect(config("services-plain-image")).await;
    let (_, spec) = spec(&[Service::Desktop]);
    let spec = spec.with_image(agent_docker::DEFAULT_IMAGE);
    let err = exec.create(&spec).await.err().unwrap();
    assert!(
        err.message.contains("agent-desktop"),
        "the error names the missing program: {err}"
    );
    exec.shutdown().await.unwrap();
}
