//! Timeouts, cancellation, output floods, OOM and fork bombs: the step's processes really die.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    Executor, JobSpec, OutputStream, ResourceLimits, RunStep, Sandbox, Step, StepRequest,
    Termination,
};
use bytes::Bytes;
use common::*;
use tokio_util::sync::CancellationToken;

/// Process names in the container, other than the init, the supervisor and `ps` itself.
async fn processes(sb: &dyn Sandbox) -> String {
    let (r, out, _) = sh(sb, "ps -eo pid=,comm=").await;
    assert!(r.success());
    out.lines()
        .filter(|l| {
            !l.contains("docker-init")
                && !l.contains("python3")
                && !l.contains(" ps")
                && !l.contains(" bash")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancel_and_flood_kill_everything() {
    let Some(exec) = docker(config("kill")).await else {
        return;
    };
    let sb: Arc<Box<dyn Sandbox>> = Arc::new(sandbox(&exec, &JobSpec::from_prompt("x")).await);

    // Timeout: the step, its background child and a setsid'd grandchild are all gone.
    let (r, out) = run(
        &**sb,
        0,
        Step::shell(
            "echo before > t.txt; (setsid sleep 1001 &); sleep 1002 & echo started; sleep 1000",
        ),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(r.termination, Termination::TimedOut);
    assert_eq!(r.exit_code, 128 + 9);
    assert_eq!(out.text(OutputStream::Stdout), "started\n");
    let ps = processes(&**sb).await;
    assert!(!ps.contains("sleep"), "sleep survived the timeout:\n{ps}");

    // Cancel: killed as soon as the token fires.
    let cancel = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink: agent_core::OutputSink = Arc::new(move |_, b: Bytes| {
        let _ = tx.send(b);
    });
    let runner = {
        let sb = sb.clone();
        let req = StepRequest::new(
            1,
            Step::shell("echo c > c.txt; echo go; exec sleep 1000"),
            Duration::from_secs(600),
        )
        .with_cancel(cancel.clone());
        tokio::spawn(async move { sb.run_step(req, sink).await })
    };
    assert_eq!(&rx.recv().await.unwrap()[..], b"go\n");
    cancel.cancel();
    let r = runner.await.unwrap().unwrap();
    assert_eq!(r.termination, Termination::Cancelled);
    assert_eq!(r.exit_code, 128 + 9);
    let ps = processes(&**sb).await;
    assert!(!ps.contains("sleep"), "sleep survived the cancel:\n{ps}");

    // An already-cancelled request does not run at all.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let r = sb
        .run_step(
            StepRequest::new(2, Step::shell("touch never.txt"), Duration::from_secs(5))
                .with_cancel(cancelled),
            agent_core::executor::discard_output(),
        )
        .await
        .unwrap();
    assert_eq!(r.termination, Termination::Cancelled);

    // A 100 MiB flood is stopped at the cap (10 MiB by default).
    let out = Collected::default();
    let r = sb
        .run_step(
            StepRequest::new(3, Step::shell("echo f > f.txt; head -c 104857600 /dev/zero | tr '\\0' x; echo not-reached > g.txt"), Duration::from_secs(120)),
            out.sink(),
        )
        .await
        .unwrap();
    assert_eq!(r.termination, Termination::OutputLimit);
    assert!(r.stdout_truncated);
    assert_eq!(
        out.bytes() as u64,
        agent_core::executor::DEFAULT_MAX_OUTPUT_BYTES
    );
    assert!(r.stdout_tail.chars().all(|c| c == 'x'));
    let ps = processes(&**sb).await;
    assert!(
        !ps.contains("head") && !ps.contains(" tr"),
        "flood survived:\n{ps}"
    );

    // A small cap works too.
    let r = sb
        .run_step(
            StepRequest::new(4, Step::shell("yes"), Duration::from_secs(60))
                .with_max_output_bytes(1000),
            out.sink(),
        )
        .await
        .unwrap();
    assert_eq!(r.termination, Termination::OutputLimit);

    // Files written before each kill are still there; the sandbox still works.
    let (r, stdout, _) = sh(&**sb, "cat t.txt c.txt f.txt; ls").await;
    assert!(r.success());
    assert!(stdout.starts_with("before\nc\nf\n"), "{stdout}");
    assert!(
        !stdout.contains("never.txt") && !stdout.contains("g.txt"),
        "{stdout}"
    );

    // Dropping a run_step future kills the step too.
    let fut = sb.run_step(
        StepRequest::new(5, Step::shell("exec sleep 999"), Duration::from_secs(600)),
        agent_core::executor::discard_output(),
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), fut).await;
    let mut gone = false;
    for _ in 0..50 {
        if !processes(&**sb).await.contains("sleep") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "an abandoned step kept running");

    finish(exec, &**sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_reported_as_such() {
    let Some(exec) = docker(config("oom")).await else {
        return;
    };
    let limits = ResourceLimits {
        memory_bytes: 64 << 20,
        ..ResourceLimits::default()
    };
    let spec = JobSpec::from_prompt("x").with_limits(limits);
    let sb = sandbox(&exec, &spec).await;
    let (r, _) = run(
        &*sb,
        0,
        Step::python("chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.termination, Termination::OutOfMemory, "{r:?}");
    assert_eq!(r.exit_code, 128 + 9);
    // The sandbox survives its step's OOM.
    let (r, out, _) = sh(&*sb, "echo alive").await;
    assert!(r.success());
    assert_eq!(out, "alive\n");
    // A plain failure is not an OOM.
    let (r, _, _) = sh(&*sb, "exit 9").await;
    assert_eq!(r.termination, Termination::Exited);
    finish(exec, &*sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained() {
    let Some(exec) = docker(config("forkbomb")).await else {
        return;
    };
    let limits = ResourceLimits {
        pids: 64,
        ..ResourceLimits::default()
    };
    let sb = sandbox(&exec, &JobSpec::from_prompt("x").with_limits(limits)).await;
    let bomb = tokio::spawn({
        let sb: Arc<Box<dyn Sandbox>> = Arc::new(sb);
        let sb2 = sb.clone();
        async move {
            let r = run(
                &**sb2,
                0,
                Step::shell("bomb() { bomb | bomb & }; bomb; sleep 1000"),
                Duration::from_secs(4),
            )
            .await;
            (sb, r)
        }
    });
    // The host stays responsive while the bomb runs: the engine answers, host processes run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    exec.ping().await.unwrap();
    let status = tokio::process::Command::new("true").status().await.unwrap();
    assert!(status.success());
    let (sb, (r, _)) = bomb.await.unwrap();
    assert_eq!(r.termination, Termination::TimedOut);
    // Everything the bomb made is gone and the sandbox works again.
    let (r, out, _) = sh(&**sb, "echo ok; ps -e --no-headers | wc -l").await;
    assert!(r.success(), "{r:?}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ok"));
    let count: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(count <= 5, "{count} processes left after the bomb");
    finish(exec, &**sb).await;
}
