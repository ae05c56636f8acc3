//! Connection floods against the real `agent-server` binary on 127.0.0.1 (issue 9, item 1):
//! thousands of idle connections and a few hundred slowloris connections, more than the server's
//! connection limit, while a normal client keeps getting answers; a request announcing a huge
//! body is answered 413 without the body being sent. Every loop is bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: usize = 2_000;
const SLOWLORIS: usize = 300;
/// Below IDLE + SLOWLORIS, so the server is full and must shed.
const MAX_CONNECTIONS: usize = 1_500;
const TOKEN: &str = "flood-test-token";

/// Reads until the peer closes or `within` passes; true when the server closed it.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_do_not_take_the_server_down() {
    require_docker();
    let (_dir, server) = TestServer::in_tempdir(
        &ServerOptions::new(&unique_scope("flood"))
            .token(TOKEN)
            .env("AGENT_MAX_CONNECTIONS", MAX_CONNECTIONS.to_string())
            .env("AGENT_HEADER_TIMEOUT_SECS", "3"),
    );
    let addr = server.base.trim_start_matches("http://").to_string();

    // Thousands of idle connections (no byte sent) and slowloris connections that send a request
    // line and then one header byte at a time.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut slow = Vec::with_capacity(SLOWLORIS);
    for _ in 0..SLOWLORIS {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /status/x HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let stop = stop.clone();
        slow.push(tokio::spawn(async move {
            // Trickle until the server closes the connection (true) or the test gives up.
            for _ in 0..120 {
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                if s.write_all(b"X").await.is_err() {
                    return true;
                }
                let mut buf = [0u8; 256];
                if let Ok(r) =
                    tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await
                {
                    if matches!(r, Ok(0) | Err(_)) {
                        return true;
                    }
                }
            }
            false
        }));
    }

    // Meanwhile a normal client, on a new connection every time, keeps getting answers.
    let id = server
        .schedule(serde_json::json!({"steps": [{"type": "shell", "command": "true"}]}))
        .await;
    for i in 0..40 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(PATIENCE)
            .build()
            .unwrap();
        let resp = client
            .get(server.url(&format!("/status/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} failed during the flood: {e}"));
        assert_eq!(resp.status(), 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The announced huge body is refused at once: the body is never sent, so a server waiting
    // for it would never answer.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut head))
        .await
        .expect("no answer to a request announcing a huge body")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");

    // The idle connections the server kept are closed by its header timeout; the slowloris ones
    // too. None is left open for ever.
    let mut closed = 0;
    for s in idle.iter_mut() {
        if closed_by_server(s, Duration::from_secs(30)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, IDLE, "idle connections still open");
    let mut slow_closed = 0;
    for t in slow {
        if tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap() {
            slow_closed += 1;
        }
    }
    stop.cancel();
    assert_eq!(slow_closed, SLOWLORIS, "slowloris connections still open");

    // And the server still serves, with nothing in its log about running out of descriptors.
    let (code, _) = server.get_json("/").await;
    assert_eq!(code, 200);
    let log = server.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
}
