//! Tunnel benchmark (issue 10): bytes through a sandbox's tunnel to an echo server inside it,
//! against a direct loopback TCP echo on the host, measured in the same run; a tunnel on its own
//! unix-socket connection (the default with a local engine) and one multiplexed on the
//! supervisor's attach stream (the fallback) side by side.
//!
//! ```text
//! cargo bench -p agent-benches --bench tunnel     # needs a Docker engine and the image
//! AGENT_BENCH_N=9 cargo bench -p agent-benches --bench tunnel
//! ```
//!
//! - throughput: 10 MiB written and read back at once through a tunnel vs through the host's
//!   loopback echo, alternated round by round, medians compared (goal ≥ 0.5×);
//! - for context, the same 10 MiB through `docker exec -i <same container> cat`: the engine's own
//!   stream copy, which the fallback rides on (Docker's attach stream) and which bounds it;
//! - round trip of a 1-byte message through a tunnel (goal ≤ 1 ms p50), next to the loopback's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agent_benches::{bench_sandbox, docker_bench, load_average, median, percentile};
use agent_core::executor::SandboxStream;
use agent_core::testing::tunnels::{
    echo_through, loopback_echo, pattern, start_echo_servers, ECHO_PORT, GREET_PORT,
};
use agent_core::{Executor, Sandbox};
use agent_docker::{DockerExecutor, TunnelSockets};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes echoed per throughput round.
const BULK: usize = 10 << 20;
/// 1-byte round trips measured.
const PINGS: usize = 300;

/// How long `BULK` bytes take to come back through `stream`.
async fn bulk<S: AsyncRead + AsyncWrite + Unpin + Send>(stream: S, data: &[u8]) -> Duration {
    let t = Instant::now();
    let back = echo_through(stream, data).await;
    let d = t.elapsed();
    assert!(back == data, "the echo came back changed");
    d
}

/// How long `data` takes through `docker exec -i CONTAINER cat` (written while read back): the
/// Docker engine's own stream copy, the transport a tunnel rides on (the attach stream).
async fn docker_cat(container: &str, data: &[u8]) -> Duration {
    let t = Instant::now();
    let mut child = tokio::process::Command::new("docker")
        .args(["exec", "-i", container, "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the docker CLI");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let writer = async {
        stdin.write_all(data).await.unwrap();
        drop(stdin);
    };
    let reader = async {
        let mut back = Vec::with_capacity(data.len());
        stdout.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(writer, reader);
    assert!(child.wait().await.unwrap().success());
    let d = t.elapsed();
    assert!(back == data, "docker exec cat changed the bytes");
    d
}

/// The round trips of `PINGS` 1-byte messages through `stream`.
async fn pings<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Vec<Duration> {
    let mut byte = [0u8; 1];
    let mut out = Vec::with_capacity(PINGS);
    for i in 0..PINGS {
        let t = Instant::now();
        stream.write_all(&[i as u8]).await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
        out.push(t.elapsed());
        assert_eq!(byte[0], i as u8);
    }
    out
}

async fn tunnel(sb: &dyn Sandbox) -> SandboxStream {
    sb.connect(ECHO_PORT)
        .await
        .expect("a tunnel to the echo server")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some((n, config, _)) = docker_bench("tunnel", 7).await else {
        return;
    };
    let config = config.with_tunnel_ports([ECHO_PORT, GREET_PORT]);
    let exec = DockerExecutor::connect(config.clone())
        .await
        .expect("an executor with tunnels");
    let link_exec = DockerExecutor::connect(config.with_tunnel_sockets(TunnelSockets::Off))
        .await
        .expect("an executor with tunnels over the attach stream");
    let sb = bench_sandbox(&exec).await;
    let link_sb = bench_sandbox(&link_exec).await;
    start_echo_servers(&*sb).await;
    start_echo_servers(&*link_sb).await;
    let direct = loopback_echo().await;
    let load = load_average();
    println!("# Tunnel benchmark (N = {n}; load average at start: {load})\n");

    let data = pattern(BULK, 7);
    bulk(tunnel(&*sb).await, &data).await; // warm-up, not counted
    bulk(tunnel(&*link_sb).await, &data).await;
    let (mut own, mut link, mut base, mut engine) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        own.push(bulk(tunnel(&*sb).await, &data).await);
        let tcp = tokio::net::TcpStream::connect(direct).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        base.push(bulk(tcp, &data).await);
        link.push(bulk(tunnel(&*link_sb).await, &data).await);
        engine.push(docker_cat(sb.id(), &data).await);
    }
    let (own, link, base, engine) = (median(own), median(link), median(base), median(engine));
    let mib = BULK as f64 / f64::from(1 << 20);
    let ratio = |d: Duration| base.as_secs_f64() / d.as_secs_f64();
    let mut own_rtt = pings(tunnel(&*sb).await).await;
    let mut link_rtt = pings(tunnel(&*link_sb).await).await;
    let tcp = tokio::net::TcpStream::connect(direct).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut direct_rtt = pings(tcp).await;
    let rtt = percentile(&mut own_rtt, 0.5);
    let load = load_average();

    println!("| figure | tunnel | direct loopback echo (same run) | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| 10 MiB echoed, own socket (median of {n} alternated rounds) | {:.1} MiB/s | {:.1} MiB/s | {:.3}× | ≥ 0.5× {} |",
        mib / own.as_secs_f64(),
        mib / base.as_secs_f64(),
        ratio(own),
        if ratio(own) >= 0.5 { "ok" } else { "MISSED" }
    );
    println!(
        "| 10 MiB echoed, over the attach stream (`TunnelSockets::Off`) | {:.1} MiB/s | | {:.3}× | (fallback) |",
        mib / link.as_secs_f64(),
        ratio(link)
    );
    println!(
        "| the engine's stream alone: `docker exec -i <same container> cat` | {:.1} MiB/s | | {:.3}× | (context) |",
        mib / engine.as_secs_f64(),
        ratio(engine)
    );
    println!(
        "| 1-byte round trip p50 ({PINGS}), own socket | {:.3} ms | {:.3} ms | | ≤ 1 ms {} |",
        rtt.as_secs_f64() * 1e3,
        percentile(&mut direct_rtt, 0.5).as_secs_f64() * 1e3,
        if rtt <= Duration::from_millis(1) {
            "ok"
        } else {
            "MISSED"
        }
    );
    println!(
        "| 1-byte round trip p50 ({PINGS}), over the attach stream | {:.3} ms | | | (fallback) |",
        percentile(&mut link_rtt, 0.5).as_secs_f64() * 1e3,
    );
    println!("\nload average at the end: {load}");
    sb.destroy().await.unwrap();
    link_sb.destroy().await.unwrap();
    exec.shutdown().await.unwrap();
    link_exec.shutdown().await.unwrap();
}
