//! Tunnel helpers shared by the tunnel tests and the tunnel benchmark: echo servers started
//! inside a sandbox, a direct loopback echo on the host to compare with, and a writer/reader
//! pair that pushes bytes through a stream and collects what comes back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::executor::Sandbox;
use crate::job::Step;
use crate::{RunStep, StepRequest};

/// The port [`start_echo_servers`] echoes on.
pub const ECHO_PORT: u16 = 7000;
/// The port [`start_echo_servers`] greets on: it sends `hello` and closes.
pub const GREET_PORT: u16 = 7001;

/// A Python program serving [`ECHO_PORT`] (echoes) and [`GREET_PORT`] (greets and closes).
const SERVERS: &str = r#"
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

/// Starts the echo and greet servers inside `sandbox` (in the background, logging to
/// `/tmp/server.log`) and waits until both listen. Panics when they do not.
pub async fn start_echo_servers(sandbox: &dyn Sandbox) {
    sandbox
        .put_file("server.py", SERVERS.into())
        .await
        .unwrap_or_else(|e| panic!("writing the echo server: {e}"));
    // Both listening sockets (ports 0x1B58 and 0x1B59) show in /proc/net/tcp once they listen.
    let wait = "nohup python3 server.py >/tmp/server.log 2>&1 & \
         for i in $(seq 100); do \
           grep -q ':1B59 00000000:0000 0A' /proc/net/tcp && grep -q ':1B58 00000000:0000 0A' /proc/net/tcp && break; \
           sleep 0.05; done; grep -c ':1B5[89] 00000000:0000 0A' /proc/net/tcp";
    let collected = crate::testing::Collected::default();
    let result = sandbox
        .run_step(
            StepRequest::new(0, Step::shell(wait), Duration::from_secs(60)),
            collected.sink(),
        )
        .await
        .unwrap_or_else(|e| panic!("starting the echo servers: {e}"));
    let out = collected.stdout();
    assert!(
        result.success() && out.trim() == "2",
        "both echo servers listen: {result:?} {out} {}",
        collected.stderr()
    );
}

/// `len` bytes of a pattern that differs with `seed` (so mixed-up streams show).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes()[1])
        .collect()
}

/// Writes `data` to `stream` and reads as many bytes back, concurrently; returns what came back.
/// Panics on an I/O error.
pub async fn echo_through<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    data: &[u8],
) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        for chunk in data.chunks(100_003) {
            w.write_all(chunk)
                .await
                .unwrap_or_else(|e| panic!("echo write: {e}"));
        }
        w.flush()
            .await
            .unwrap_or_else(|e| panic!("echo flush: {e}"));
        w
    };
    let reader = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("echo read: {e}"));
        got
    };
    let (_w, got) = tokio::join!(writer, reader);
    got
}

/// A TCP echo server on the host's loopback (each connection copied back to itself), the
/// baseline of the tunnel figures; runs until the runtime ends.
pub async fn loopback_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("binding the loopback echo: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("the loopback echo's address: {e}"));
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                tokio::io::copy(&mut r, &mut w).await.ok();
            });
        }
    });
    addr
}
