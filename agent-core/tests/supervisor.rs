//! The real supervisor, run as a local process over pipes, driven through the same backend-neutral
//! [`Link`] the Docker executor uses; and the supervisor's own Python tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_core::executor::{discard_output, ExecRequest, OutputSink};
use agent_core::supervisor::{LocalSupervisor, SOURCE};
use agent_core::testing::{collect_bytes, tar_entries, Collected};
use agent_core::{SandboxErrorKind, Termination};
use tokio_util::sync::CancellationToken;

/// Generous bound that only guards against a hang.
const QUICK: Duration = Duration::from_secs(30);

fn sh(command: &str) -> ExecRequest {
    ExecRequest::new(vec!["sh".into(), "-c".into(), command.into()], QUICK)
}

/// Whether a process runs (zombies do not count).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(st) => {
            let state = st[st.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        }
    }
}

/// Waits (bounded) until a pid file written by a process exists, and returns the pid.
async fn pid_from(file: &Path) -> u32 {
    for _ in 0..3000 {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", file.display());
}

#[test]
fn the_supervisors_python_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/supervisor");
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(&dir)
        .args(["-p", "test_*.py"])
        .output()
        .expect("python3 runs");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python tests failed:\n{log}");
    assert!(
        log.contains("Ran ") && log.contains("OK"),
        "unexpected unittest output:\n{log}"
    );
    // The embedded source is the tested file.
    assert_eq!(
        std::fs::read_to_string(dir.join("supervisor.py")).unwrap(),
        SOURCE
    );
}

#[tokio::test]
async fn processes_run_stream_and_end_as_they_should() {
    let ws = tempfile::tempdir().unwrap();
    let sup = LocalSupervisor::start(ws.path()).await.unwrap();
    let link = sup.link().clone();
    assert!(sup.ready().pid.is_some());
    assert!(!sup.ready().oom, "no cgroup counters in local mode");
    link.ping().await.unwrap();

    // Exit codes, separate streams, tails.
    let out = Collected::default();
    let mut req = sh("printf 'a%.0s' $(seq 100); echo E >&2; exit 3");
    req.tail_bytes = 10;
    let r = link.exec(&req, out.sink()).await.unwrap();
    assert_eq!((r.exit_code, r.termination), (3, Termination::Exited));
    assert_eq!(out.stdout(), "a".repeat(100));
    assert_eq!(out.stderr(), "E\n");
    assert_eq!(r.stdout_tail, "a".repeat(10));
    assert!(r.stdout_truncated && !r.stderr_truncated);
    let r = link
        .exec(&sh("kill -9 $$"), discard_output())
        .await
        .unwrap();
    assert_eq!(r.exit_code, 137);

    // Environment and working directory.
    std::fs::create_dir(ws.path().join("sub")).unwrap();
    let out = Collected::default();
    let mut req = sh("echo \"$GREETING\"; pwd");
    req.env = vec![("GREETING".into(), "hello there".into())];
    req.cwd = Some("sub".into());
    link.exec(&req, out.sink()).await.unwrap();
    let want = format!(
        "hello there\n{}\n",
        ws.path().canonicalize().unwrap().join("sub").display()
    );
    assert_eq!(out.stdout(), want);
    let r = link.exec(&sh("true"), discard_output()).await;
    assert!(r.unwrap().success());

    // A missing program is an exit code, not a link failure.
    let out = Collected::default();
    let r = link
        .exec(
            &ExecRequest::new(vec!["no-such-program-xyz".into()], QUICK),
            out.sink(),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 127);
    assert!(
        out.stderr().contains("no-such-program-xyz"),
        "{}",
        out.stderr()
    );

    // A timeout kills the whole process group.
    let pidfile = ws.path().join("t.pid");
    let mut req = sh("sleep 60 & echo $! > t.pid; wait");
    req.timeout = Duration::from_millis(300);
    let r = link.exec(&req, discard_output()).await.unwrap();
    assert_eq!(r.termination, Termination::TimedOut);
    assert_ne!(r.exit_code, 0);
    let bg = pid_from(&pidfile).await;
    assert!(!alive(bg), "the timed-out step's child {bg} survived");

    // Cancellation through the token.
    let cancel = CancellationToken::new();
    let mut req = sh("echo waiting; sleep 60");
    req.cancel = cancel.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink: OutputSink = Arc::new(move |_, b| {
        let _ = tx.send(b);
    });
    let running = {
        let link = link.clone();
        tokio::spawn(async move { link.exec(&req, sink).await })
    };
    tokio::time::timeout(QUICK, rx.recv())
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    let r = tokio::time::timeout(QUICK, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.termination, Termination::Cancelled);

    // The output cap: exactly the cap is forwarded, then the process is stopped.
    let out = Collected::default();
    let mut req = sh("yes");
    req.max_output_bytes = 5000;
    let r = link.exec(&req, out.sink()).await.unwrap();
    assert_eq!(r.termination, Termination::OutputLimit);
    assert_eq!(out.len(), 5000);
    assert!(r.stdout_truncated);

    // Dropping the exec future kills the process.
    let pidfile = ws.path().join("d.pid");
    {
        let req = sh("echo $$ > d.pid; exec sleep 60");
        let fut = link.exec(&req, discard_output());
        let _ = tokio::time::timeout(Duration::from_millis(500), fut).await;
    }
    let pid = pid_from(&pidfile).await;
    let mut gone = false;
    for _ in 0..3000 {
        if !alive(pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "a dropped exec's process {pid} survived");
    // … and the link still works for the next one.
    assert!(link
        .exec(&sh("true"), discard_output())
        .await
        .unwrap()
        .success());

    // Closing the link ends the supervisor and what it runs.
    let pidfile = ws.path().join("s.pid");
    let held = {
        let link = link.clone();
        tokio::spawn(async move {
            link.exec(&sh("echo $$ > s.pid; exec sleep 60"), discard_output())
                .await
        })
    };
    let pid = pid_from(&pidfile).await;
    assert_eq!(sup.shutdown().await.unwrap(), Some(0));
    assert!(
        !alive(pid),
        "a process outlived its supervisor: {:?}",
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
    );
    // Either the supervisor reported the kill before it exited, or the link closed first.
    match tokio::time::timeout(QUICK, held).await.unwrap().unwrap() {
        Ok(r) => assert_eq!(r.exit_code, 137, "{r:?}"),
        Err(e) => assert_eq!(e.kind, SandboxErrorKind::Gone, "{e}"),
    }
    assert!(link.is_closed());
    assert_eq!(link.ping().await.unwrap_err().kind, SandboxErrorKind::Gone);
}

#[tokio::test]
async fn requests_are_multiplexed_on_one_link() {
    let ws = tempfile::tempdir().unwrap();
    let sup = LocalSupervisor::start(ws.path()).await.unwrap();
    let link = sup.link().clone();
    // The first process waits for a file that only a later request writes: it can only end if
    // requests are served while it runs.
    let out = Collected::default();
    let first = {
        let link = link.clone();
        let sink = out.sink();
        tokio::spawn(async move {
            link.exec(
                &sh("while [ ! -e go ]; do sleep 0.01; done; echo first"),
                sink,
            )
            .await
        })
    };
    let mut others = Vec::new();
    for i in 0..8 {
        let link = link.clone();
        others.push(tokio::spawn(async move {
            let out = Collected::default();
            link.exec(&sh(&format!("echo other-{i}")), out.sink())
                .await
                .unwrap();
            out.stdout()
        }));
    }
    for (i, o) in others.into_iter().enumerate() {
        assert_eq!(o.await.unwrap(), format!("other-{i}\n"));
    }
    link.write_file("go", b"", "go").await.unwrap();
    let r = tokio::time::timeout(QUICK, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.success());
    assert_eq!(out.stdout(), "first\n");
    sup.shutdown().await.unwrap();
}

#[tokio::test]
async fn files_are_confined_to_the_workspace() {
    let root = tempfile::tempdir().unwrap();
    let ws = root.path().join("ws");
    let outside = root.path().join("outside");
    std::fs::create_dir(&ws).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), ws.join("leak")).unwrap();
    std::fs::create_dir(ws.join("real")).unwrap();
    std::os::unix::fs::symlink("real", ws.join("in")).unwrap();
    let sup = LocalSupervisor::start(&ws).await.unwrap();
    let link = sup.link().clone();

    // Written, read back byte-exact (newlines, NULs), overwritten, parents created.
    let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    link.write_file("a/b/c.bin", &body, "a/b/c.bin")
        .await
        .unwrap();
    assert_eq!(std::fs::read(ws.join("a/b/c.bin")).unwrap(), body);
    assert_eq!(
        &link.read_file("a/b/c.bin", 1 << 20, "x").await.unwrap()[..],
        &body[..]
    );
    link.write_file("a/b/c.bin", b"short", "x").await.unwrap();
    assert_eq!(
        &link.read_file("a/b/c.bin", 100, "x").await.unwrap()[..],
        b"short"
    );
    link.write_file("in/through.txt", b"ok", "x").await.unwrap();
    assert_eq!(std::fs::read(ws.join("real/through.txt")).unwrap(), b"ok");

    // Refused: links leading out, `..` (even unnormalised), with nothing written outside.
    for path in ["out/x", "leak", "../outside/y", "a/../../outside/z"] {
        let err = link.write_file(path, b"no", path).await.unwrap_err();
        assert_eq!(
            err.kind,
            SandboxErrorKind::PathRefused,
            "write {path}: {err}"
        );
        let err = link.read_file(path, 100, path).await.unwrap_err();
        assert_eq!(
            err.kind,
            SandboxErrorKind::PathRefused,
            "read {path}: {err}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(
        link.read_file("missing", 100, "missing")
            .await
            .unwrap_err()
            .kind,
        SandboxErrorKind::NotFound
    );
    assert_eq!(
        link.read_file("a/b/c.bin", 2, "x").await.unwrap_err().kind,
        SandboxErrorKind::TooLarge
    );

    // The export: a tar of the workspace, relative paths, links stored as links.
    let entries = tar_entries(&collect_bytes(link.export().await.unwrap()).await);
    let seen: Vec<&String> = entries.keys().collect();
    for want in ["a/b/c.bin", "leak", "out", "real/through.txt"] {
        assert!(entries.contains_key(want), "{want} missing in {seen:?}");
    }
    assert!(entries["leak"].kind.is_symlink());
    assert_eq!(entries["a/b/c.bin"].content, b"short");
    assert!(!seen.iter().any(|p| p.contains("secret")), "{seen:?}");
    sup.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_supervisor_that_cannot_start_says_why() {
    let err = LocalSupervisor::start(Path::new("/nonexistent/workspace"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, SandboxErrorKind::Invalid);
}

#[tokio::test]
async fn a_handed_over_tunnel_carries_bytes_and_only_its_key_is_taken() {
    use agent_core::supervisor::Handoff;
    use agent_core::testing::tunnels::{echo_through, pattern};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (dirs, sup, handoff, path, echo) = handoff_setup().await;
    let link = sup.link().clone();

    let data = pattern(3 << 20, 5);
    let tunnel = handoff.connect(&link, echo.port()).await.unwrap();
    let back = tokio::time::timeout(QUICK, echo_through(tunnel, &data))
        .await
        .unwrap();
    assert!(back == data, "3 MiB came back changed");

    // A connection that presents no key it waits for is closed, and takes no tunnel's place.
    let mut stranger = tokio::net::UnixStream::connect(&path).await.unwrap();
    stranger.write_all(b"0123456789abcdef\n").await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(QUICK, stranger.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a stranger's connection was kept");
    let mut tunnel = handoff.connect(&link, echo.port()).await.unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tunnel.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    drop(tunnel);

    // No listener on the port: refused, as a tunnel on the link is.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = handoff.connect(&link, port).await.err().unwrap();
    assert_eq!(err.kind, SandboxErrorKind::Refused, "{err}");

    // A socket the supervisor cannot reach: unavailable (the caller falls back to the link).
    let elsewhere =
        Handoff::bind(&dirs[1].path().join("gone.sock"), "/nonexistent/gone.sock").unwrap();
    let err = elsewhere.connect(&link, echo.port()).await.err().unwrap();
    assert_eq!(err.kind, SandboxErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("tunnel socket"), "{err}");

    // Dropping the handoff removes its socket.
    drop(handoff);
    assert!(!path.exists());
    sup.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_without_a_key_hold_few_host_descriptors_and_only_slow_their_own_tunnels() {
    use agent_core::testing::tunnels::{echo_through, pattern};
    use tokio::io::AsyncReadExt;

    let (_dirs, sup, handoff, path, echo) = handoff_setup().await;
    let link = sup.link().clone();

    // 50 connections that send nothing: all but a few are closed at once.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::UnixStream::connect(&path).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut closed = 0;
    for s in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 40,
        "only {closed} of 50 keyless connections were closed"
    );
    // While they hold the rest, a tunnel still opens: handed over once they are cut off, or
    // else on the caller's other transport (an `Unavailable` error).
    match handoff.connect(&link, echo.port()).await {
        Ok(tunnel) => {
            let data = pattern(100_000, 3);
            assert!(echo_through(tunnel, &data).await == data);
        }
        Err(e) => assert_eq!(e.kind, SandboxErrorKind::Unavailable, "{e}"),
    }
    drop(idle);
    // Once they are gone, tunnels are handed over again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tunnel = handoff.connect(&link, echo.port()).await.unwrap();
    let data = pattern(100_000, 4);
    assert!(echo_through(tunnel, &data).await == data);
    sup.shutdown().await.unwrap();
}

/// A local supervisor (a workspace and a socket directory, kept alive by the first value) with a
/// handoff socket, its path (a local supervisor sees the host's paths as they are), and an echo
/// server on the host's loopback.
async fn handoff_setup() -> (
    [tempfile::TempDir; 2],
    LocalSupervisor,
    agent_core::supervisor::Handoff,
    std::path::PathBuf,
    std::net::SocketAddr,
) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let sup = LocalSupervisor::start(dirs[0].path()).await.unwrap();
    let path = dirs[1].path().join("tunnel.sock");
    let handoff = agent_core::supervisor::Handoff::bind(&path, path.to_str().unwrap()).unwrap();
    let echo = agent_core::testing::tunnels::loopback_echo().await;
    (dirs, sup, handoff, path, echo)
}
