//! Steps against the real engine: kinds, exit codes, streams, order, live streaming.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    Executor, JobSpec, OutputStream, RunStep, Sandbox, SandboxErrorKind, Step, StepRequest,
    Termination,
};
use bytes::Bytes;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_kinds_exit_codes_streams_and_order() {
    let Some(exec) = docker(config("steps")).await else {
        return;
    };
    let spec = JobSpec::from_steps(vec![Step::shell("true")]).with_env("GREETING", "hello");
    let sb = sandbox(&exec, &spec).await;

    // shell: stdout vs stderr, exact exit codes, job env.
    let (r, out, err) = sh(&*sb, "echo to-out; echo to-err >&2; echo $GREETING; exit 3").await;
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.termination, Termination::Exited);
    assert!(!r.success());
    assert_eq!(out, "to-out\nhello\n");
    assert_eq!(err, "to-err\n");
    assert_eq!(r.stdout_tail, "to-out\nhello\n");
    assert_eq!(r.stderr_tail, "to-err\n");

    let (r, _, _) = sh(&*sb, "true").await;
    assert!(r.success());
    let (r, _, _) = sh(&*sb, "kill -TERM $$").await;
    assert_eq!(r.exit_code, 128 + 15, "signalled → 128+signal");
    let (r, _, err) = sh(&*sb, "no-such-command-xyz").await;
    assert_eq!(r.exit_code, 127);
    assert!(err.contains("not found"), "{err}");

    // order within each stream.
    let (r, out, err) = sh(
        &*sb,
        "for i in $(seq 1 300); do echo out$i; echo err$i >&2; done",
    )
    .await;
    assert!(r.success());
    let want_out: String = (1..=300).map(|i| format!("out{i}\n")).collect();
    let want_err: String = (1..=300).map(|i| format!("err{i}\n")).collect();
    assert_eq!(out, want_out);
    assert_eq!(err, want_err);

    // python: saved in the workspace, run with python3, exit code kept.
    let (r, out) = run(
        &*sb,
        7,
        Step::python(
            "import sys, os\nprint('py', os.getcwd())\nprint('warn', file=sys.stderr)\nsys.exit(5)",
        ),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.exit_code, 5);
    assert_eq!(out.text(OutputStream::Stdout), "py /workspace\n");
    assert_eq!(out.text(OutputStream::Stderr), "warn\n");
    let saved = sb.get_file(".agent/step-7.py").await.unwrap();
    assert!(String::from_utf8_lossy(&saved).contains("sys.exit(5)"));

    // write_file: written under /workspace, readable by later steps.
    let (r, _) = run(
        &*sb,
        8,
        Step::write_file("notes/a.txt", "content\n"),
        Duration::from_secs(30),
    )
    .await;
    assert!(r.success());
    let (r, out, _) = sh(&*sb, "cat /workspace/notes/a.txt; stat -c %U notes/a.txt").await;
    assert!(r.success());
    assert_eq!(out, "content\nagent\n");

    // a write_file step with a bad path is refused with a clear error.
    let err = sb
        .run_step(
            StepRequest::new(9, Step::write_file("../x", "no"), Duration::from_secs(30)),
            agent_core::executor::discard_output(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, agent_core::SandboxErrorKind::PathRefused);
    assert!(err.to_string().contains("refused"), "{err}");

    // the tail keeps the end, and says it was truncated.
    let mut req = StepRequest::new(10, Step::shell("seq 1 5000"), Duration::from_secs(30));
    req.tail_bytes = 10;
    let r = sb
        .run_step(req, agent_core::executor::discard_output())
        .await
        .unwrap();
    assert_eq!(r.stdout_tail, "4999\n5000\n");
    assert!(r.stdout_truncated);
    assert!(!r.stderr_truncated);

    sb.destroy().await.unwrap();
    sb.destroy().await.unwrap(); // idempotent
    assert!(sh_err(&*sb).await);
    exec.shutdown().await.unwrap();
}

async fn sh_err(sb: &dyn Sandbox) -> bool {
    sb.run_step(
        StepRequest::new(0, Step::shell("true"), Duration::from_secs(5)),
        agent_core::executor::discard_output(),
    )
    .await
    .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_while_the_step_runs() {
    let Some(exec) = docker(config("live")).await else {
        return;
    };
    let sb: Arc<Box<dyn Sandbox>> = Arc::new(sandbox(&exec, &JobSpec::from_prompt("x")).await);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink: agent_core::OutputSink = Arc::new(move |s, b: Bytes| {
        let _ = tx.send((s, b));
    });
    let cmd = "echo first; while [ ! -e /workspace/go ]; do sleep 0.02; done; echo second";
    let runner = {
        let sb = sb.clone();
        tokio::spawn(async move {
            sb.run_step(
                StepRequest::new(0, Step::shell(cmd), Duration::from_secs(60)),
                sink,
            )
            .await
        })
    };
    let (stream, first) = rx.recv().await.unwrap();
    assert_eq!(
        (stream, &first[..]),
        (OutputStream::Stdout, &b"first\n"[..])
    );
    assert!(
        !runner.is_finished(),
        "the step cannot end before the test lets it"
    );
    sb.put_file("go", Bytes::from_static(b"")).await.unwrap();
    let r = runner.await.unwrap().unwrap();
    assert!(r.success());
    assert_eq!(r.stdout_tail, "first\nsecond\n");
    finish(exec, &**sb).await;
}

/// Step timeouts are user input: one too large for an `Instant`, or for a `poll()` timeout in the
/// supervisor, still runs the step (and a later short one is still enforced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_step_timeouts_run_the_step() {
    let Some(exec) = docker(config("huge-timeout")).await else {
        return;
    };
    let sb = sandbox(&exec, &JobSpec::from_steps(vec![Step::shell("true")])).await;
    for timeout in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(40 * 86400),
    ] {
        let (r, out) = run(&*sb, 0, Step::shell("sleep 0.2; echo ok"), timeout).await;
        assert_eq!(r.termination, Termination::Exited, "{timeout:?}: {r:?}");
        assert_eq!(out.text(OutputStream::Stdout), "ok\n", "{timeout:?}");
    }
    let (r, _) = run(&*sb, 1, Step::shell("sleep 60"), Duration::from_secs(1)).await;
    assert_eq!(r.termination, Termination::TimedOut);
    finish(exec, &*sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_files_names_files_and_sizes_without_reading_them() {
    let Some(exec) = docker(config("list")).await else {
        return;
    };
    let sb = sandbox(&exec, &JobSpec::from_steps(vec![Step::shell("true")])).await;
    // A sparse file as large as the workspace cap lets a step write: an export would carry all
    // its bytes; a listing reads none of them.
    let (r, _, err) = sh(
        &*sb,
        "mkdir -p d/e && printf abc > b.txt && : > d/a.bin && printf 12345 > d/e/z \
         && truncate -s 900M d/big && ln -s /etc out && ln -s b.txt d/link && mkfifo d/fifo",
    )
    .await;
    assert!(r.success(), "{err}");
    let file = |path: &str, size_bytes: u64| agent_core::inputs::InputFile {
        path: path.into(),
        size_bytes,
    };
    let all = sb.list_files("", 100).await.unwrap();
    assert_eq!(
        all.files,
        vec![
            file("b.txt", 3),
            file("d/a.bin", 0),
            file("d/big", 900 << 20),
            file("d/e/z", 5)
        ]
    );
    assert_eq!(all.total, 4);
    // A directory: paths relative to it; `max` names the first ones and counts them all.
    let some = sb.list_files("/workspace/d/", 1).await.unwrap();
    assert_eq!((some.files, some.total), (vec![file("a.bin", 0)], 3));
    for (dir, kind) in [
        ("b.txt", SandboxErrorKind::NotFound),
        ("missing", SandboxErrorKind::NotFound),
        ("out", SandboxErrorKind::PathRefused),
        ("../etc", SandboxErrorKind::PathRefused),
    ] {
        let err = sb.list_files(dir, 100).await.unwrap_err();
        assert_eq!(err.kind, kind, "{dir}: {err}");
    }
    finish(exec, &*sb).await;
}
