//! The agent's step kinds lowered to the sandbox's process-level surface — in one place, so no
//! backend knows what a step is.
//!
//! - `shell`: `bash -c <command>` in the workspace root;
//! - `python`: the code is written to `.agent/step-<index>.py` with [`Sandbox::put_file`], then
//!   run as `python3 .agent/step-<index>.py`;
//! - stateful `python`: the code is written the same way, then run by
//!   `python3 -I -S -c <pykernel.py>` (this crate's `agent/pykernel.py`), a client of the
//!   sandbox's one long-lived interpreter (it starts one when there is none). The client imports
//!   only built-in modules: its start-up is most of a stateful step's cost. The interpreter runs the code in its namespace with the
//!   client's stdout and stderr, and answers in `.agent/step-<index>.result.json`, read back
//!   with [`Sandbox::get_file`] into [`StepResult::python`]. The interpreter ends with a client
//!   that is killed (timeout, cancel, output cap), so such a step says its state was lost;
//! - `write_file`: [`Sandbox::put_file`] (a refused path is an `Err` with `PathRefused`); no
//!   process runs.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::executor::{
    ExecRequest, OutputSink, Sandbox, SandboxError, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TAIL_BYTES,
};
use crate::job::{PythonOutcome, Step, StepKind, StepResult, Termination};

/// The stateful-Python client and interpreter, run with `python3 -c`.
const PYKERNEL: &str = include_str!("pykernel.py");

/// A request to run one step of a job.
#[derive(Clone, Debug)]
pub struct StepRequest {
    /// The step's index within the job (names the Python file).
    pub index: usize,
    /// The step.
    pub step: Step,
    /// Kill the step after this long.
    pub timeout: Duration,
    /// Stop the step once it has written this many bytes (stdout + stderr).
    pub max_output_bytes: u64,
    /// How many bytes of each stream to keep in the result's tails.
    pub tail_bytes: usize,
    /// Environment variables for this step only, added to the sandbox's (the job's environment
    /// is given to the sandbox once, at create).
    pub env: Vec<(String, String)>,
    /// Cancelled → the step is killed and the result says `Cancelled`.
    pub cancel: CancellationToken,
}

impl StepRequest {
    /// A request with default caps and a fresh cancellation token.
    pub fn new(index: usize, step: Step, timeout: Duration) -> Self {
        Self {
            index,
            step,
            timeout,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            tail_bytes: DEFAULT_TAIL_BYTES,
            env: Vec::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Sets the cancellation token.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Sets the output cap.
    pub fn with_max_output_bytes(mut self, max: u64) -> Self {
        self.max_output_bytes = max;
        self
    }

    /// The workspace-relative file a Python step's code is saved to.
    pub fn python_file(&self) -> String {
        format!("{}/step-{}.py", crate::archive::SCRATCH_DIR, self.index)
    }

    /// The workspace-relative file a stateful Python step's answer is written to.
    pub fn python_result_file(&self) -> String {
        format!(
            "{}/step-{}.result.json",
            crate::archive::SCRATCH_DIR,
            self.index
        )
    }

    fn exec(&self, argv: Vec<String>) -> ExecRequest {
        ExecRequest {
            argv,
            env: self.env.clone(),
            cwd: None,
            timeout: self.timeout,
            max_output_bytes: self.max_output_bytes,
            tail_bytes: self.tail_bytes,
            cancel: self.cancel.clone(),
        }
    }
}

/// Runs job steps on any [`Sandbox`] (implemented for all of them; backends cannot override it).
#[async_trait]
pub trait RunStep {
    /// Runs a step to the end, streaming its output to `output`.
    ///
    /// A step that exits non-zero, times out, is cancelled, runs out of memory or floods its output
    /// is an `Ok` [`StepResult`] saying so; `Err` means the sandbox itself failed or refused a
    /// file (`PathRefused`, `TooLarge`…).
    async fn run_step(
        &self,
        request: StepRequest,
        output: OutputSink,
    ) -> Result<StepResult, SandboxError>;
}

#[async_trait]
impl<S: Sandbox + ?Sized> RunStep for S {
    async fn run_step(
        &self,
        request: StepRequest,
        output: OutputSink,
    ) -> Result<StepResult, SandboxError> {
        let started = Instant::now();
        if request.cancel.is_cancelled() {
            return Ok(StepResult::cancelled(started.elapsed()));
        }
        let argv = match &request.step.kind {
            StepKind::Shell { command } => vec!["bash".into(), "-c".into(), command.clone()],
            StepKind::Python { code, stateful } => {
                let file = request.python_file();
                self.put_file(&file, Bytes::from(code.clone().into_bytes()))
                    .await?;
                if *stateful {
                    return run_stateful(self, &request, file, output).await;
                }
                vec!["python3".into(), file]
            }
            StepKind::WriteFile { path, content } => {
                self.put_file(path, Bytes::from(content.clone().into_bytes()))
                    .await?;
                return Ok(StepResult::without_output(
                    0,
                    Termination::Exited,
                    started.elapsed(),
                ));
            }
        };
        self.exec(request.exec(argv), output).await
    }
}

/// Runs a stateful Python step (see the module docs) and reads the interpreter's answer.
async fn run_stateful<S: Sandbox + ?Sized>(
    sandbox: &S,
    request: &StepRequest,
    file: String,
    output: OutputSink,
) -> Result<StepResult, SandboxError> {
    let answer_file = request.python_result_file();
    let argv = vec![
        "python3".into(),
        "-I".into(),
        "-S".into(),
        "-c".into(),
        PYKERNEL.into(),
        file,
        answer_file.clone(),
    ];
    let mut result = sandbox.exec(request.exec(argv), output).await?;
    let outcome = match result.termination {
        Termination::Exited => match sandbox.get_file(&answer_file).await {
            Ok(answer) => read_answer(&answer),
            Err(e) => PythonOutcome {
                state_lost: true,
                note: Some(format!(
                    "the Python interpreter gave no answer ({}); its state may be lost",
                    e.message
                )),
                ..PythonOutcome::default()
            },
        },
        ended => PythonOutcome {
            state_lost: true,
            note: Some(format!(
                "the step {}: the Python interpreter was ended with it and its state \
                 (variables, imports, open files) was lost; the next stateful step starts a new \
                 one",
                match ended {
                    Termination::TimedOut => "timed out",
                    Termination::Cancelled => "was cancelled",
                    Termination::OutOfMemory => "ran out of memory",
                    Termination::OutputLimit => "wrote more than the output cap",
                    Termination::Exited => "ended",
                }
            )),
            ..PythonOutcome::default()
        },
    };
    result.python = Some(Box::new(outcome));
    Ok(result)
}

/// The interpreter's JSON answer, as [`PythonOutcome`].
fn read_answer(answer: &[u8]) -> PythonOutcome {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        files: Vec<String>,
        #[serde(default)]
        files_truncated: bool,
        #[serde(default)]
        steps: u64,
        #[serde(default)]
        lost: bool,
    }
    match serde_json::from_slice::<Answer>(answer) {
        Ok(a) => {
            PythonOutcome {
                note: if a.lost {
                    a.error.clone()
                } else if a.steps == 1 {
                    Some("a new Python interpreter was started: nothing from earlier steps is defined".into())
                } else {
                    None
                },
                value: a.value,
                error: if a.lost { None } else { a.error },
                files: a.files,
                files_truncated: a.files_truncated,
                fresh_interpreter: a.steps == 1,
                state_lost: a.lost,
            }
        }
        Err(e) => PythonOutcome {
            state_lost: true,
            note: Some(format!(
                "the Python interpreter's answer was unreadable: {e}"
            )),
            ..PythonOutcome::default()
        },
    }
}
