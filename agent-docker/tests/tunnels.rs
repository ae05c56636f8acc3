//! Tunnels on the real engine: byte streams to ports inside a `network none` sandbox, through its
//! supervisor. An echo server started by a step listens inside; the test talks to it.
//! Figures (printed, not asserted): throughput against a direct loopback TCP echo on the host, and
//! the round trip of one byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent_core::{Executor, JobSpec, Sandbox, SandboxErrorKind};
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Port 7000 echoes; 7001 greets with `hello` and closes.
const SERVER: &str = r#"
import socket, sys, threading
def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
def greet(c):
    c.sendall(b"hello")
    c.close()
def serve(port, handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handler, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=(7001, greet), daemon=True).start()
serve(7000, echo)
"#;

async fn sandbox_with_servers(scope: &str) -> (agent_docker::DockerExecutor, Box<dyn Sandbox>) {
    let exec = connect(config(scope).with_tunnel_ports([7000, 7001, 7999])).await;
    assert!(exec.capabilities().tunnels);
    let sb = sandbox(&exec, &JobSpec::from_prompt("tunnels")).await;
    sb.put_file("server.py", SERVER.into()).await.unwrap();
    let (r, out, err) = sh(
        &*sb,
        "nohup python3 server.py >/tmp/server.log 2>&1 & \
         for i in $(seq 100); do \
           grep -q ':1B59 00000000:0000 0A' /proc/net/tcp && grep -q ':1B58 00000000:0000 0A' /proc/net/tcp && break; \
           sleep 0.05; done; grep -c ':1B5[89] 00000000:0000 0A' /proc/net/tcp",
    )
    .await;
    assert!(r.success(), "{out} {err}");
    assert_eq!(out.trim(), "2", "both servers listen: {out} {err}");
    (exec, sb)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes()[1])
        .collect()
}

/// Writes `data` and reads as many bytes back, concurrently; returns what came back.
async fn echo_through<S: AsyncRead + AsyncWrite + Unpin + Send>(stream: S, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        for chunk in data.chunks(100_003) {
            w.write_all(chunk).await.unwrap();
        }
        w.flush().await.unwrap();
        w
    };
    let reader = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    };
    let (_w, got) = tokio::join!(writer, reader);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_each_way_arrive_byte_exact_and_twenty_tunnels_share_the_link() {
    if skipped() {
        return;
    }
    let (exec, sb) = sandbox_with_servers("tunnels-bulk").await;

    let data = pattern(10 << 20, 7);
    let tunnel = sb.connect(7000).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(120), echo_through(tunnel, &data))
        .await
        .expect("10 MiB echoed within 2 minutes");
    assert!(got == data, "10 MiB came back changed");

    // The figure: the same 10 MiB through a tunnel and through a direct loopback TCP echo on the
    // host, alternated for 5 rounds (the machine is noisy), medians compared.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                tokio::io::copy(&mut r, &mut w).await.ok();
            });
        }
    });
    let (mut tunnel_secs, mut direct_secs) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let tunnel = sb.connect(7000).await.unwrap();
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(120), echo_through(tunnel, &data))
            .await
            .expect("10 MiB echoed within 2 minutes");
        tunnel_secs.push(started.elapsed().as_secs_f64());
        assert!(got == data, "10 MiB came back changed");
        let direct = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let back = echo_through(direct, &data).await;
        direct_secs.push(started.elapsed().as_secs_f64());
        assert!(back == data);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (tunnel_secs, direct_secs) = (median(&mut tunnel_secs), median(&mut direct_secs));
    let mib = data.len() as f64 / (1 << 20) as f64;
    eprintln!(
        "FIGURE tunnel echo 10 MiB each way (median of 5 alternated rounds): {:.1} MiB/s; \
         direct loopback TCP echo: {:.1} MiB/s; ratio {:.3}",
        mib / tunnel_secs,
        mib / direct_secs,
        direct_secs / tunnel_secs
    );

    // 20 tunnels at once, each with its own data.
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let tunnel = sb.connect(7000).await.unwrap();
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

    // One-byte round trips.
    let mut tunnel = sb.connect(7000).await.unwrap();
    let mut rtts = Vec::new();
    let mut byte = [0u8; 1];
    for i in 0..300u32 {
        let t = Instant::now();
        tunnel.write_all(&[i as u8]).await.unwrap();
        tunnel.read_exact(&mut byte).await.unwrap();
        rtts.push(t.elapsed());
        assert_eq!(byte[0], i as u8);
    }
    rtts.sort();
    eprintln!(
        "FIGURE tunnel 1-byte round trip: p50 {:?}, p90 {:?}",
        rtts[rtts.len() / 2],
        rtts[rtts.len() * 9 / 10]
    );
    finish(exec, &*sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_tunnel_stalls_nothing_else_and_closes_work_from_either_side() {
    if skipped() {
        return;
    }
    let (exec, sb) = sandbox_with_servers("tunnels-flow").await;

    // Saturate one tunnel: write 4 MiB and read nothing back, so the echo stalls on its windows.
    let mut stalled = sb.connect(7000).await.unwrap();
    let flood = pattern(4 << 20, 3);
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
        "4 MiB were accepted without being read: something buffers without bound"
    );

    // Meanwhile a step's output flows, and another tunnel works.
    let (r, out, _) = sh(&*sb, "for i in $(seq 1 2000); do echo line $i; done").await;
    assert!(r.success());
    assert_eq!(out.lines().count(), 2000);
    assert!(out.ends_with("line 2000\n"));
    let other = sb.connect(7000).await.unwrap();
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
    let mut greeter = sb.connect(7001).await.unwrap();
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
    let mut dropped = sb.connect(7000).await.unwrap();
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
        .connect(7000)
        .await
        .err()
        .expect("a destroyed sandbox opens nothing");
    assert_eq!(err.kind, SandboxErrorKind::Gone);
    exec.shutdown().await.unwrap();
}
