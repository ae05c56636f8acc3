//! The conformance suite every [`Executor`] must pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::agent::step::{RunStep, StepRequest};
use crate::executor::{
    discard_output, ExecRequest, Executor, OutputSink, Sandbox, SandboxError, SandboxErrorKind,
    SandboxSpec,
};
use crate::job::{JobId, OutputStream, Step, StepResult, Termination};

/// Generous bound on steps that should finish quickly; only guards against a hang.
const QUICK: Duration = Duration::from_secs(30);

/// Runs the executor conformance suite: panics, naming the check, on the first failure.
///
/// Every [`Executor`] (the fake one and the Docker one) must pass it. It creates two sandboxes
/// with the executor's default image and network `none`, and checks, through
/// [`Sandbox::exec`] directly and through job steps lowered to it by [`RunStep`]:
///
/// - `exec`: argv passed as is (no shell), the working directory, the sandbox's environment
///   (from [`SandboxSpec::env`]) with the request's added and overriding it, a missing program
///   as exit code 127;
/// - shell exit codes (0, 3, 137 for a process killed by SIGKILL) and `Termination::Exited`;
/// - stdout and stderr kept apart, each in order, in the sink and in the result's tails;
/// - output streamed while the step runs (the first chunk arrives while the step still waits for
///   a file the test writes only after receiving it — no timing thresholds);
/// - a Python step's output and exit code;
/// - a `write_file` step, then reading the file back with `get_file` and with `cat`; `put_file`;
/// - environment variables from [`StepRequest::env`] and from the sandbox's spec;
/// - tails limited to [`StepRequest::tail_bytes`] with the truncation flag;
/// - a timeout → `TimedOut` with a non-zero exit code; cancellation → `Cancelled`;
/// - an output cap → `OutputLimit`, truncated, no more than the cap forwarded;
/// - paths `../x`, `/etc/x` and links leading out refused with `PathRefused` (`put_file`,
///   `get_file` and `write_file` steps); a missing file is `NotFound`;
/// - `export`: a tar with the written files under relative paths, no `..`, links
///   stored as links;
/// - stateful Python: variables, imports and open files kept between steps, the final
///   expression's value, changed files, exceptions, a timeout or an `os._exit` losing the state
///   and the next step starting a new interpreter;
/// - `destroy` is idempotent and the sandbox is unusable afterwards.
///
/// It takes a few seconds (one step waits for its 1 s timeout).
pub async fn executor_suite(executor: Arc<dyn Executor>) {
    assert!(
        !executor.name().is_empty(),
        "executor name must not be empty"
    );
    let spec = SandboxSpec::new()
        .with_job(JobId::new())
        .with_env("AGENT_SUITE_JOB_VAR", "from-job");
    let sandbox = executor
        .create(&spec)
        .await
        .unwrap_or_else(|e| panic!("create a sandbox: {e}"));
    assert!(!sandbox.id().is_empty(), "sandbox id must not be empty");

    processes(&*sandbox).await;
    exit_codes(&*sandbox).await;
    separated_streams(&*sandbox).await;
    streams_while_running(&*sandbox).await;
    python_step(&*sandbox).await;
    files(&*sandbox).await;
    environment(&*sandbox).await;
    tails(&*sandbox).await;
    timeout(&*sandbox).await;
    cancel(&*sandbox).await;
    output_cap(&*sandbox).await;
    refused_paths(&*sandbox).await;
    export(&*sandbox).await;
    stateful_python(&*sandbox).await;

    sandbox
        .destroy()
        .await
        .unwrap_or_else(|e| panic!("destroy: {e}"));
    sandbox
        .destroy()
        .await
        .unwrap_or_else(|e| panic!("destroy must be idempotent, the second call failed: {e}"));
    assert!(
        sandbox
            .run_step(request(Step::shell("true")), discard_output())
            .await
            .is_err(),
        "run_step on a destroyed sandbox must fail"
    );
    assert!(
        sandbox
            .exec(
                ExecRequest::new(vec!["true".into()], QUICK),
                discard_output()
            )
            .await
            .is_err(),
        "exec on a destroyed sandbox must fail"
    );

    // A sandbox destroyed while a step runs: the step ends, destroy succeeds.
    let sandbox: Arc<dyn Sandbox> = Arc::from(
        executor
            .create(&spec.clone().with_job(JobId::new()))
            .await
            .unwrap_or_else(|e| panic!("create a second sandbox: {e}")),
    );
    let (sink, mut rx) = channel_sink();
    let running = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            let req = StepRequest::new(
                0,
                Step::shell("echo started; sleep 60"),
                Duration::from_secs(120),
            );
            sandbox.run_step(req, sink).await
        })
    };
    wait_for_output(&mut rx, "started", "destroy-while-running").await;
    sandbox
        .destroy()
        .await
        .unwrap_or_else(|e| panic!("destroy while a step runs: {e}"));
    let outcome = tokio::time::timeout(QUICK, running)
        .await
        .expect("a step still runs after its sandbox was destroyed")
        .unwrap();
    if let Ok(result) = outcome {
        assert!(
            !result.success(),
            "a step killed by destroy must not succeed: {result:?}"
        );
    }
    sandbox
        .destroy()
        .await
        .unwrap_or_else(|e| panic!("destroy again: {e}"));
}

fn request(step: Step) -> StepRequest {
    StepRequest::new(0, step, QUICK)
}

/// Output collected from a sink, per stream, for tests.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<(Vec<u8>, Vec<u8>)>>);

impl Collected {
    /// A sink that appends to this collection.
    pub fn sink(&self) -> OutputSink {
        let me = self.clone();
        Arc::new(move |stream, bytes: Bytes| {
            let mut both = me.0.lock().unwrap();
            match stream {
                OutputStream::Stdout => both.0.extend_from_slice(&bytes),
                OutputStream::Stderr => both.1.extend_from_slice(&bytes),
            }
        })
    }
    /// Everything written to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap().0).into_owned()
    }
    /// Everything written to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap().1).into_owned()
    }
    /// Bytes collected from both streams.
    pub fn len(&self) -> usize {
        let both = self.0.lock().unwrap();
        both.0.len() + both.1.len()
    }
    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn channel_sink() -> (OutputSink, mpsc::UnboundedReceiver<(OutputStream, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink: OutputSink = Arc::new(move |stream, bytes| {
        let _ = tx.send((stream, bytes));
    });
    (sink, rx)
}

async fn wait_for_output(
    rx: &mut mpsc::UnboundedReceiver<(OutputStream, Bytes)>,
    needle: &str,
    check: &str,
) {
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(QUICK, rx.recv()).await;
        match next {
            Ok(Some((_, bytes))) => {
                seen.extend_from_slice(&bytes);
                if String::from_utf8_lossy(&seen).contains(needle) {
                    return;
                }
            }
            Ok(None) => panic!("{check}: the step ended before printing {needle:?}"),
            Err(_) => panic!("{check}: no {needle:?} in the output while the step runs"),
        }
    }
}

/// Calls `call` with a sink that collects its output: its result and what it printed.
async fn collect<F>(check: &str, call: impl FnOnce(OutputSink) -> F) -> (StepResult, Collected)
where
    F: std::future::Future<Output = Result<StepResult, SandboxError>>,
{
    let collected = Collected::default();
    let result = call(collected.sink())
        .await
        .unwrap_or_else(|e| panic!("{check}: {e}"));
    (result, collected)
}

async fn run(sandbox: &dyn Sandbox, req: StepRequest, check: &str) -> (StepResult, Collected) {
    collect(check, |sink| sandbox.run_step(req, sink)).await
}

async fn shell(sandbox: &dyn Sandbox, command: &str, check: &str) -> (StepResult, Collected) {
    run(sandbox, request(Step::shell(command)), check).await
}

/// `put_file`, which must succeed (`check` names the call in a failure).
async fn put(sandbox: &dyn Sandbox, path: &str, content: impl Into<Bytes>, check: &str) {
    sandbox
        .put_file(path, content.into())
        .await
        .unwrap_or_else(|e| panic!("{check}: {e}"));
}

/// `get_file`, which must succeed: the file's content.
async fn get(sandbox: &dyn Sandbox, path: &str, check: &str) -> Bytes {
    sandbox
        .get_file(path)
        .await
        .unwrap_or_else(|e| panic!("{check}: {e}"))
}

/// Runs a step that must succeed: its result and what it printed.
async fn run_ok(sandbox: &dyn Sandbox, req: StepRequest, check: &str) -> (StepResult, Collected) {
    let (result, out) = run(sandbox, req, check).await;
    assert!(result.success(), "{check}: {result:?}");
    (result, out)
}

/// Runs `command` as a shell step that must succeed; what it printed.
async fn shell_ok(sandbox: &dyn Sandbox, command: &str, check: &str) -> Collected {
    run_ok(sandbox, request(Step::shell(command)), check)
        .await
        .1
}

async fn exec(sandbox: &dyn Sandbox, req: ExecRequest, check: &str) -> (StepResult, Collected) {
    collect(check, |sink| sandbox.exec(req, sink)).await
}

fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest::new(args.iter().map(|a| a.to_string()).collect(), QUICK)
}

async fn processes(sandbox: &dyn Sandbox) {
    // argv reaches the program as is: no shell splits or expands it.
    let (r, out) = exec(
        sandbox,
        argv(&["printf", "[%s]", "a b", "$HOME", "*", ""]),
        "exec argv",
    )
    .await;
    assert!(r.success(), "exec argv: {r:?}");
    assert_eq!(out.stdout(), "[a b][$HOME][*][]", "exec argv");

    // The working directory, relative to the workspace root.
    put(
        sandbox,
        "suite-cwd/sub/marker",
        &b"m"[..],
        "exec cwd: put_file",
    )
    .await;
    let mut req = argv(&["ls"]);
    req.cwd = Some("suite-cwd/sub".into());
    let (r, out) = exec(sandbox, req, "exec cwd").await;
    assert!(r.success(), "exec cwd: {r:?}");
    assert_eq!(
        out.stdout(),
        "marker
",
        "exec cwd: ls runs in the directory"
    );
    let (_, out) = exec(sandbox, argv(&["ls", "suite-cwd"]), "exec cwd default").await;
    assert_eq!(
        out.stdout(),
        "sub
",
        "exec: the default cwd is the workspace root"
    );

    // The sandbox's environment, and the request's on top of it.
    let (_, out) = exec(
        sandbox,
        argv(&["sh", "-c", "echo \"$AGENT_SUITE_JOB_VAR\""]),
        "exec env",
    )
    .await;
    assert_eq!(out.stdout(), "from-job\n", "exec: the sandbox's env");
    let mut req = argv(&["sh", "-c", "echo \"$AGENT_SUITE_JOB_VAR|$AGENT_SUITE_X\""]);
    req.env = vec![
        ("AGENT_SUITE_JOB_VAR".into(), "overridden".into()),
        ("AGENT_SUITE_X".into(), "x".into()),
    ];
    let (_, out) = exec(sandbox, req, "exec env override").await;
    assert_eq!(
        out.stdout(),
        "overridden|x\n",
        "exec: the request's env is added and wins"
    );

    // A program that does not exist: exit code 127, like a shell, not a sandbox failure.
    let (r, out) = exec(
        sandbox,
        argv(&["agent-suite-no-such-program"]),
        "exec missing program",
    )
    .await;
    assert_eq!(r.exit_code, 127, "exec missing program: {r:?}");
    assert!(
        out.stderr().contains("agent-suite-no-such-program"),
        "exec missing program: stderr names it: {:?}",
        out.stderr()
    );
}

async fn exit_codes(sandbox: &dyn Sandbox) {
    let (ok, out) = shell(sandbox, "echo hello", "exit 0").await;
    assert_eq!(ok.exit_code, 0, "exit 0: {ok:?}");
    assert_eq!(ok.termination, Termination::Exited, "exit 0: {ok:?}");
    assert!(ok.success(), "exit 0 must be a success: {ok:?}");
    assert_eq!(out.stdout(), "hello\n", "exit 0: streamed stdout");
    assert_eq!(ok.stdout_tail, "hello\n", "exit 0: stdout tail");
    assert!(
        !ok.stdout_truncated,
        "exit 0: a short stdout is not truncated"
    );

    let (three, _) = shell(sandbox, "exit 3", "exit 3").await;
    assert_eq!(three.exit_code, 3, "exit 3: {three:?}");
    assert_eq!(three.termination, Termination::Exited, "exit 3: {three:?}");
    assert!(!three.success(), "exit 3 is not a success");

    let (killed, _) = shell(sandbox, "kill -KILL $$", "killed by SIGKILL").await;
    assert_eq!(
        killed.exit_code, 137,
        "a step killed by signal 9 exits with 128+9: {killed:?}"
    );
    assert!(!killed.success());
}

async fn separated_streams(sandbox: &dyn Sandbox) {
    let command = "for i in 1 2 3; do echo out$i; echo err$i >&2; done";
    let (result, out) = run_ok(sandbox, request(Step::shell(command)), "stdout/stderr").await;
    assert_eq!(
        out.stdout(),
        "out1\nout2\nout3\n",
        "stdout/stderr: streamed stdout"
    );
    assert_eq!(
        out.stderr(),
        "err1\nerr2\nerr3\n",
        "stdout/stderr: streamed stderr"
    );
    assert_eq!(
        result.stdout_tail, "out1\nout2\nout3\n",
        "stdout/stderr: stdout tail"
    );
    assert_eq!(
        result.stderr_tail, "err1\nerr2\nerr3\n",
        "stdout/stderr: stderr tail"
    );
}

async fn streams_while_running(sandbox: &dyn Sandbox) {
    // The step prints, then waits until the test creates a file: it cannot end before the test
    // has seen its first output, so that output must have been streamed while it ran.
    sandbox
        .run_step(request(Step::shell("rm -f .suite-go")), discard_output())
        .await
        .unwrap_or_else(|e| panic!("streaming: cleanup: {e}"));
    let (sink, mut rx) = channel_sink();
    let step = Step::shell("echo a; while [ ! -e .suite-go ]; do sleep 0.05; done; echo b");
    let fut = sandbox.run_step(request(step), sink);
    let probe = async {
        wait_for_output(&mut rx, "a", "streaming").await;
        sandbox
            .put_file(".suite-go", Bytes::from_static(b"go"))
            .await
            .unwrap_or_else(|e| panic!("streaming: put_file: {e}"));
    };
    let (result, ()) = tokio::join!(fut, probe);
    let result = result.unwrap_or_else(|e| panic!("streaming: run_step failed: {e}"));
    assert!(result.success(), "streaming: {result:?}");
    assert_eq!(result.stdout_tail, "a\nb\n", "streaming: stdout tail");
    let mut rest = Vec::new();
    while let Ok((_, bytes)) = rx.try_recv() {
        rest.extend_from_slice(&bytes);
    }
    assert!(
        String::from_utf8_lossy(&rest).contains('b'),
        "streaming: the second line must be streamed too"
    );
}

async fn python_step(sandbox: &dyn Sandbox) {
    let code = "import sys\nprint('py', 6 * 7)\nprint('warn', file=sys.stderr)\nsys.exit(4)\n";
    let mut req = request(Step::python(code));
    req.index = 7;
    let (result, out) = run(sandbox, req, "python").await;
    assert_eq!(result.exit_code, 4, "python: exit code: {result:?}");
    assert_eq!(
        result.termination,
        Termination::Exited,
        "python: {result:?}"
    );
    assert_eq!(out.stdout(), "py 42\n", "python: stdout");
    assert_eq!(out.stderr(), "warn\n", "python: stderr");
}

/// Runs a stateful Python step with its own index (its files are `.agent/step-<index>.*`).
async fn stateful(
    sandbox: &dyn Sandbox,
    index: usize,
    code: &str,
    timeout: Duration,
) -> (StepResult, Collected) {
    let req = StepRequest::new(index, Step::python_stateful(code), timeout);
    let (result, out) = run(sandbox, req, code).await;
    assert!(
        result.python.is_some(),
        "{code}: no Python outcome: {result:?}"
    );
    (result, out)
}

async fn stateful_python(sandbox: &dyn Sandbox) {
    let (r, out) = stateful(
        sandbox,
        100,
        "import sys\nx = 41\nprint('set')\nprint('err', file=sys.stderr)",
        QUICK,
    )
    .await;
    assert!(r.success(), "stateful: {r:?}");
    assert_eq!(
        (out.stdout().as_str(), out.stderr().as_str()),
        ("set\n", "err\n")
    );
    let py = r.python.unwrap();
    assert!(
        py.fresh_interpreter && !py.state_lost,
        "stateful: first step: {py:?}"
    );
    assert_eq!(py.value, None);

    // State carries: a variable, an import, an open file; the final expression is the value.
    let (r, out) = stateful(
        sandbox,
        101,
        "f = open('kept.txt', 'w')\nf.write('one')\nf.flush()\nprint(sys.version_info[0])\nx + 1",
        QUICK,
    )
    .await;
    assert!(r.success(), "stateful: {r:?}");
    assert_eq!(out.stdout(), "3\n");
    let py = r.python.unwrap();
    assert_eq!(py.value.as_deref(), Some("42"), "stateful: value: {py:?}");
    assert!(!py.fresh_interpreter, "stateful: second step: {py:?}");
    assert_eq!(
        py.files,
        vec!["kept.txt".to_string()],
        "stateful: changed files"
    );
    let (r, _) = stateful(
        sandbox,
        102,
        "f.write(' two'); f.close()\nopen('kept.txt').read()",
        QUICK,
    )
    .await;
    assert_eq!(r.python.unwrap().value.as_deref(), Some("'one two'"));

    // An exception: exit code 1, the error named, the traceback on stderr, the state kept.
    let (r, out) = stateful(sandbox, 103, "y = 1\nraise ValueError('boom')", QUICK).await;
    assert_eq!(
        (r.exit_code, r.termination),
        (1, Termination::Exited),
        "{r:?}"
    );
    assert_eq!(r.python.unwrap().error.as_deref(), Some("ValueError: boom"));
    assert!(
        out.stderr().contains("Traceback") && out.stderr().contains("raise ValueError"),
        "{}",
        out.stderr()
    );
    assert!(
        !out.stderr().contains("pykernel") && !out.stderr().contains("in run"),
        "kernel frames shown: {}",
        out.stderr()
    );
    let (r, _) = stateful(sandbox, 104, "x, y", QUICK).await;
    assert_eq!(r.python.unwrap().value.as_deref(), Some("(41, 1)"));

    // A timeout ends the interpreter: the step says its state was lost; the next one is fresh.
    // (3 s: the print must get out before the timeout even on a loaded machine.)
    let (r, out) = stateful(
        sandbox,
        105,
        "import time\nprint('waiting', flush=True)\ntime.sleep(60)",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r.termination, Termination::TimedOut, "{r:?}");
    assert_eq!(out.stdout(), "waiting\n");
    let py = r.python.unwrap();
    assert!(py.state_lost, "timed out: {py:?}");
    assert!(py.note.as_deref().unwrap_or("").contains("lost"), "{py:?}");
    let (r, _) = stateful(sandbox, 106, "'x' in globals()", QUICK).await;
    let py = r.python.unwrap();
    assert!(py.fresh_interpreter, "after a timeout: {py:?}");
    assert_eq!(py.value.as_deref(), Some("False"));

    // Code that kills its own interpreter: a failed step that says the state was lost.
    stateful(sandbox, 107, "z = 5", QUICK).await;
    let (r, out) = stateful(sandbox, 108, "import os\nos._exit(3)", QUICK).await;
    assert!(!r.success(), "{r:?}");
    let py = r.python.unwrap();
    assert!(py.state_lost, "interpreter killed: {py:?}");
    assert!(out.stderr().contains("state was lost"), "{}", out.stderr());
    let (r, _) = stateful(sandbox, 109, "'z' in globals()", QUICK).await;
    let py = r.python.unwrap();
    assert!(
        py.fresh_interpreter && py.value.as_deref() == Some("False"),
        "{py:?}"
    );
}

async fn files(sandbox: &dyn Sandbox) {
    let write = request(Step::write_file("suite/dir/a.txt", "hello file\n"));
    run_ok(sandbox, write, "write_file step").await;
    let content = get(sandbox, "suite/dir/a.txt", "get_file after write_file").await;
    assert_eq!(&content[..], b"hello file\n", "get_file after write_file");
    let check = "get_file with a /workspace path";
    let same = get(sandbox, "/workspace/suite/dir/a.txt", check).await;
    assert_eq!(&same[..], b"hello file\n", "{check}");
    let out = shell_ok(sandbox, "cat suite/dir/a.txt", "cat after write_file").await;
    assert_eq!(out.stdout(), "hello file\n", "cat after write_file");

    let binary: Vec<u8> = (0..=255u8).collect();
    put(sandbox, "suite/bin.dat", binary.clone(), "put_file").await;
    let back = get(sandbox, "suite/bin.dat", "get_file after put_file").await;
    assert_eq!(
        &back[..],
        &binary[..],
        "put_file/get_file round trip (binary)"
    );
    let out = shell_ok(sandbox, "wc -c < suite/bin.dat", "wc after put_file").await;
    assert_eq!(out.stdout().trim(), "256", "a put file is visible to steps");

    // Overwrite truncates.
    put(
        sandbox,
        "suite/dir/a.txt",
        &b"x"[..],
        "put_file over a file",
    )
    .await;
    let over = get(sandbox, "suite/dir/a.txt", "overwrite").await;
    assert_eq!(&over[..], b"x", "overwrite");

    let missing = sandbox.get_file("suite/missing.txt").await.unwrap_err();
    assert_eq!(
        missing.kind,
        SandboxErrorKind::NotFound,
        "get_file of a missing file: {missing}"
    );
}

async fn environment(sandbox: &dyn Sandbox) {
    let mut req = request(Step::shell(
        "echo \"$AGENT_SUITE_VAR|$AGENT_SUITE_JOB_VAR\"",
    ));
    req.env
        .push(("AGENT_SUITE_VAR".into(), "value with spaces".into()));
    let (_, out) = run_ok(sandbox, req, "env").await;
    assert_eq!(
        out.stdout(),
        "value with spaces|from-job\n",
        "env: StepRequest.env and SandboxSpec.env must be visible to the step"
    );
}

async fn tails(sandbox: &dyn Sandbox) {
    let mut req = request(Step::shell(
        "head -c 5000 /dev/zero | tr '\\0' x; printf END",
    ));
    req.tail_bytes = 100;
    let (result, out) = run_ok(sandbox, req, "tails").await;
    assert_eq!(
        out.stdout().len(),
        5003,
        "tails: the sink gets all the output"
    );
    assert_eq!(
        result.stdout_tail.len(),
        100,
        "tails: tail_bytes bytes are kept"
    );
    assert!(
        result.stdout_tail.ends_with("xxEND"),
        "tails: the tail is the end"
    );
    assert!(result.stdout_truncated, "tails: stdout_truncated");
    assert!(!result.stderr_truncated, "tails: stderr was empty");
}

async fn timeout(sandbox: &dyn Sandbox) {
    let req = StepRequest::new(
        0,
        Step::shell("echo before; sleep 30"),
        Duration::from_secs(1),
    );
    let run_it = sandbox.run_step(req, discard_output());
    let result = tokio::time::timeout(QUICK, run_it)
        .await
        .expect("timeout: the step was not killed at its timeout")
        .unwrap_or_else(|e| panic!("timeout: run_step failed: {e}"));
    assert_eq!(
        result.termination,
        Termination::TimedOut,
        "timeout: {result:?}"
    );
    assert_ne!(
        result.exit_code, 0,
        "timeout: exit code must not be 0: {result:?}"
    );
    assert!(!result.success());
    assert_eq!(
        result.stdout_tail, "before\n",
        "timeout: partial output is kept"
    );
}

async fn cancel(sandbox: &dyn Sandbox) {
    let (sink, mut rx) = channel_sink();
    let req = StepRequest::new(0, Step::shell("echo started; sleep 30"), QUICK);
    let token = req.cancel.clone();
    let fut = sandbox.run_step(req, sink);
    let canceller = async {
        wait_for_output(&mut rx, "started", "cancel").await;
        token.cancel();
    };
    let (result, ()) = tokio::time::timeout(QUICK, async { tokio::join!(fut, canceller) })
        .await
        .expect("cancel: the step was not stopped by its cancellation token");
    let result = result.unwrap_or_else(|e| panic!("cancel: run_step failed: {e}"));
    assert_eq!(
        result.termination,
        Termination::Cancelled,
        "cancel: {result:?}"
    );
    assert!(!result.success());
}

async fn output_cap(sandbox: &dyn Sandbox) {
    let cap = 64 * 1024;
    let req = request(Step::shell("yes flood")).with_max_output_bytes(cap);
    let (result, out) = run(sandbox, req, "output cap").await;
    assert_eq!(
        result.termination,
        Termination::OutputLimit,
        "output cap: {result:?}"
    );
    assert!(
        result.stdout_truncated,
        "output cap: the capped stream is marked truncated: {result:?}"
    );
    let forwarded = out.stdout().len() + out.stderr().len();
    assert!(
        forwarded as u64 <= cap,
        "output cap: {forwarded} bytes forwarded, more than the cap of {cap}"
    );
    assert!(
        forwarded > 0,
        "output cap: output before the cap is forwarded"
    );
}

/// Checks that `what` (a call naming a path) was refused with `PathRefused`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, SandboxError>, what: &str) {
    match result {
        Err(err) => assert_eq!(err.kind, SandboxErrorKind::PathRefused, "{what}: {err}"),
        Ok(value) => panic!("{what} must be refused, got {value:?}"),
    }
}

async fn refused_paths(sandbox: &dyn Sandbox) {
    for bad in ["../x", "/etc/x", "a/../../x", "/workspace/../etc/x"] {
        let put = sandbox.put_file(bad, Bytes::from_static(b"x")).await;
        assert_refused(put, &format!("put_file({bad:?})"));
        assert_refused(sandbox.get_file(bad).await, &format!("get_file({bad:?})"));
        let step = sandbox
            .run_step(request(Step::write_file(bad, "x")), discard_output())
            .await;
        assert_refused(step, &format!("a write_file step to {bad:?}"));
    }
    // Links leading out of the workspace.
    let links = "ln -sfn /etc suite-escape && ln -sf /etc/hostname suite-host";
    shell_ok(sandbox, links, "symlinks").await;
    for bad in ["suite-escape/agent-suite-x", "suite-host"] {
        let put = sandbox.put_file(bad, Bytes::from_static(b"x")).await;
        assert_refused(
            put,
            &format!("put_file through a link leading out ({bad:?})"),
        );
    }
    for bad in ["suite-escape/hostname", "suite-host"] {
        let get = sandbox.get_file(bad).await;
        assert_refused(
            get,
            &format!("get_file through a link leading out ({bad:?})"),
        );
    }
}

async fn export(sandbox: &dyn Sandbox) {
    put(sandbox, "export/top.txt", &b"top"[..], "export: put_file").await;
    put(
        sandbox,
        "export/sub/deep.txt",
        &b"deep"[..],
        "export: put_file",
    )
    .await;
    shell_ok(
        sandbox,
        "ln -sf /etc/hostname export/link",
        "export: symlink",
    )
    .await;

    let stream = sandbox
        .export()
        .await
        .unwrap_or_else(|e| panic!("export: {e}"));
    let tar_bytes = super::collect_bytes(stream).await;
    let found = super::tar_entries(&tar_bytes);
    let names: Vec<&String> = found.keys().collect();
    let top = found
        .get("export/top.txt")
        .unwrap_or_else(|| panic!("export: export/top.txt missing; entries: {names:?}"));
    assert!(top.kind.is_file(), "export: top.txt is a file");
    assert_eq!(top.content, b"top", "export: top.txt content");
    let deep = found
        .get("export/sub/deep.txt")
        .unwrap_or_else(|| panic!("export: export/sub/deep.txt missing; entries: {names:?}"));
    assert_eq!(deep.content, b"deep", "export: deep.txt content");
    let link = found
        .get("export/link")
        .unwrap_or_else(|| panic!("export: export/link missing; entries: {names:?}"));
    assert!(
        link.kind.is_symlink(),
        "export: a link is stored as a link, not followed"
    );
    assert_eq!(
        link.link.as_deref(),
        Some("/etc/hostname"),
        "export: the link's target"
    );
}
