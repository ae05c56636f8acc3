//! Tunnels on the real engine: byte streams to ports inside a `network none` sandbox, through its
//! supervisor. An echo server started by a step listens inside; the test talks to it.
//! The figures (throughput against a direct loopback TCP echo on the host, the round trip of one
//! byte) are measured by `benches/tunnel.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_core::testing::tunnels::{
    echo_through, pattern, start_echo_servers, ECHO_PORT, GREET_PORT,
};
use agent_core::{Executor, JobSpec, Sandbox, SandboxErrorKind};
use agent_docker::TunnelSockets;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn sandbox_with_servers(
    scope: &str,
    sockets: TunnelSockets,
) -> (agent_docker::DockerExecutor, Box<dyn Sandbox>) {
    let exec = connect(
        config(scope)
            .with_tunnel_ports([ECHO_PORT, GREET_PORT, 7999])
            .with_tunnel_sockets(sockets),
    )
    .await;
    assert!(exec.capabilities().tunnels);
    let sb = sandbox(&exec, &JobSpec::from_prompt("tunnels")).await;
    start_echo_servers(&*sb).await;
    (exec, sb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_each_way_arrive_byte_exact_and_twenty_tunnels_run_at_once_on_either_transport() {
    if skipped() {
        return;
    }
    bulk("tunnels-bulk-sockets", TunnelSockets::Auto).await;
    bulk("tunnels-bulk-link", TunnelSockets::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_tunnel_stalls_nothing_else_and_closes_work_both_ways_on_either_transport() {
    if skipped() {
        return;
    }
    flow("tunnels-flow-sockets", TunnelSockets::Auto).await;
    flow("tunnels-flow-link", TunnelSockets::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_cannot_reach_its_socket_tunnels_over_the_link() {
    if skipped() {
        return;
    }
    let (exec, sb) = sandbox_with_servers("tunnels-fallback", TunnelSockets::Auto).await;
    let mounts = inspect(&exec, sb.id())
        .await
        .host_config
        .unwrap()
        .mounts
        .unwrap_or_default();
    let dir = mounts[0].source.clone().unwrap();
    // The socket goes away under the sandbox (as when the engine mounted another directory).
    std::fs::remove_file(std::path::Path::new(&dir).join("tunnel.sock")).unwrap();
    let data = pattern(1 << 20, 11);
    let tunnel = sb.connect(ECHO_PORT).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), echo_through(tunnel, &data))
        .await
        .expect("1 MiB echoed over the link");
    assert!(got == data, "1 MiB came back changed");
    // Refusals are still refusals, not fallbacks.
    let err = sb.connect(7999).await.err().expect("no listener on 7999");
    assert_eq!(err.kind, SandboxErrorKind::Refused, "{err}");
    finish(exec, &*sb).await;
}

async fn bulk(scope: &str, sockets: TunnelSockets) {
    let own = sockets != TunnelSockets::Off;
    let (exec, sb) = sandbox_with_servers(scope, sockets).await;

    // With own sockets, the sandbox sees the host's socket in a directory it can neither write
    // nor list; without, nothing is mounted.
    let (_, seen, _) = sh(
        &*sb,
        "test -S /run/agent-tunnels/tunnel.sock && echo socket; \
         touch /run/agent-tunnels/x 2>/dev/null && echo writable; \
         ls /run/agent-tunnels >/dev/null 2>&1 && echo listable; true",
    )
    .await;
    // From the engine: that directory is the one host path mounted, read-only; it is the
    // sandbox's alone and goes with it.
    let hc = inspect(&exec, sb.id()).await.host_config.unwrap();
    let mounts = hc.mounts.unwrap_or_default();
    assert!(hc.binds.unwrap_or_default().is_empty());
    let own_dir = if own {
        assert_eq!(seen, "socket\n");
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        let m = &mounts[0];
        assert_eq!(m.target.as_deref(), Some("/run/agent-tunnels"), "{m:?}");
        assert_eq!(m.read_only, Some(true), "{m:?}");
        assert_eq!(m.typ, Some(bollard::models::MountTypeEnum::BIND), "{m:?}");
        let source = m.source.clone().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&source).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o711, "{source}");
        Some(std::path::PathBuf::from(source))
    } else {
        assert!(!seen.contains("socket"), "{seen}");
        assert!(mounts.is_empty(), "{mounts:?}");
        None
    };

    let data = pattern(10 << 20, 7);
    let tunnel = sb.connect(ECHO_PORT).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(120), echo_through(tunnel, &data))
        .await
        .expect("10 MiB echoed within 2 minutes");
    assert!(got == data, "10 MiB came back changed");

    // 20 tunnels at once, each with its own data.
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let tunnel = sb.connect(ECHO_PORT).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let data = pattern(300_000 + i as usize * 1000, i);
            let got = echo_through(tunnel, &data).await;
            got == data
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let ok = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("the 20 tunnels finish")
            .unwrap();
        assert!(ok, "tunnel {i} came back changed");
    }

    // One-byte messages, one at a time (the round trip's figure is in benches/tunnel.rs).
    let mut tunnel = sb.connect(ECHO_PORT).await.unwrap();
    let mut byte = [0u8; 1];
    for i in 0..300u32 {
        tunnel.write_all(&[i as u8]).await.unwrap();
        tunnel.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte[0], i as u8);
    }
    finish(exec, &*sb).await;
    if let Some(dir) = own_dir {
        assert!(!dir.exists(), "{} outlived its sandbox", dir.display());
    }
}

async fn flow(scope: &str, sockets: TunnelSockets) {
    let (exec, sb) = sandbox_with_servers(scope, sockets).await;

    // Saturate one tunnel: write 48 MiB and read nothing back, so the echo stalls on its windows
    // (the link's credits; or, on an own socket, the kernel's buffers: several MiB of TCP and
    // unix-socket buffers on the way in and out).
    let mut stalled = sb.connect(ECHO_PORT).await.unwrap();
    let flood = pattern(48 << 20, 3);
    let mut sent = 0usize;
    for chunk in flood.chunks(64 << 10) {
        match tokio::time::timeout(Duration::from_secs(2), stalled.write_all(chunk)).await {
            Ok(r) => {
                r.unwrap();
                sent += chunk.len();
            }
            Err(_) => break, // the windows are full: the writer is held back, nothing grows
        }
    }
    assert!(
        sent < flood.len(),
        "48 MiB were accepted without being read: something buffers without bound"
    );

    // Meanwhile a step's output flows, and another tunnel works.
    let (r, out, _) = sh(&*sb, "for i in $(seq 1 2000); do echo line $i; done").await;
    assert!(r.success());
    assert_eq!(out.lines().count(), 2000);
    assert!(out.ends_with("line 2000\n"));
    let other = sb.connect(ECHO_PORT).await.unwrap();
    let small = pattern(100_000, 9);
    assert!(echo_through(other, &small).await == small);

    // The stalled tunnel resumes once read: everything accepted comes back, in order.
    let mut back = vec![0u8; sent];
    tokio::time::timeout(Duration::from_secs(60), stalled.read_exact(&mut back))
        .await
        .expect("the stalled tunnel drains")
        .unwrap();
    assert!(back == flood[..sent], "the stalled tunnel's bytes changed");

    // Close from our side: the echo server sees end of file, closes, and we read end of file.
    stalled.shutdown().await.unwrap();
    // (A write cut short by the timeout above may have sent part of a chunk: it comes back too.)
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest))
        .await
        .expect("end of file after our close")
        .unwrap();
    assert!(rest.len() < 64 << 10 && rest[..] == flood[sent..sent + rest.len()]);

    // Close from the service's side: its bytes, then end of file.
    let mut greeter = sb.connect(GREET_PORT).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), greeter.read_to_end(&mut got))
        .await
        .expect("the greeter closes")
        .unwrap();
    assert_eq!(got, b"hello");

    // Nothing listens on an allowed port; a port that is not allowed is refused before anything.
    let err = sb.connect(7999).await.err().expect("no listener on 7999");
    assert_eq!(err.kind, SandboxErrorKind::Refused);
    assert!(err.message.contains("nothing listens"), "{err}");
    let err = sb.connect(22).await.err().expect("port 22 is not allowed");
    assert_eq!(err.kind, SandboxErrorKind::Refused);
    assert!(err.message.contains("not open to tunnels"), "{err}");

    // The sandbox still works, and dropping a tunnel mid-stream ends it cleanly.
    let mut dropped = sb.connect(ECHO_PORT).await.unwrap();
    // (1 MiB unread: the write is held back by the windows, which is the point; give up after 2 s.)
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        dropped.write_all(&pattern(1 << 20, 1)),
    )
    .await;
    drop(dropped);
    let (r, out, _) = sh(&*sb, "echo still-alive").await;
    assert!(r.success());
    assert_eq!(out, "still-alive\n");
    let (_, log, _) = sh(&*sb, "cat /tmp/server.log").await;
    assert!(!log.contains("Traceback"), "{log}");
    sb.destroy().await.unwrap();
    let err = sb
        .connect(ECHO_PORT)
        .await
        .err()
        .expect("a destroyed sandbox opens nothing");
    assert_eq!(err.kind, SandboxErrorKind::Gone);
    exec.shutdown().await.unwrap();
}
