//! The agent's step kinds lowered to the sandbox's process-level surface — in one place, so no
//! backend knows what a step is.
//!
//! - `shell`: `bash -c <command>` in the workspace root;
//! - `python`: the code is written to `.agent/step-<index>.py` with [`Sandbox::put_file`], then
//!   run as `python3 .agent/step-<index>.py`;
//! - `write_file`: [`Sandbox::put_file`] (a refused path is an `Err` with `PathRefused`); no
//!   process runs.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::executor::{
    ExecRequest, OutputSink, Sandbox, SandboxError, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TAIL_BYTES,
};
use crate::job::{Step, StepKind, StepResult, Termination};

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
        format!(".agent/step-{}.py", self.index)
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
        let ended = |exit_code, termination| StepResult {
            exit_code,
            termination,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: started.elapsed(),
        };
        if request.cancel.is_cancelled() {
            return Ok(ended(-1, Termination::Cancelled));
        }
        let argv = match &request.step.kind {
            StepKind::Shell { command } => vec!["bash".into(), "-c".into(), command.clone()],
            StepKind::Python { code } => {
                let file = request.python_file();
                self.put_file(&file, Bytes::from(code.clone().into_bytes()))
                    .await?;
                vec!["python3".into(), file]
            }
            StepKind::WriteFile { path, content } => {
                self.put_file(path, Bytes::from(content.clone().into_bytes()))
                    .await?;
                return Ok(ended(0, Termination::Exited));
            }
        };
        self.exec(request.exec(argv), output).await
    }
}
