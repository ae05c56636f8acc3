//! [`DockerSandbox`]: one job's container, driven through its supervisor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use agent_core::executor::{normalize_workspace_path, TarStream, MAX_GET_FILE_BYTES};
use agent_core::{
    JobId, OutputSink, OutputStream, Sandbox, SandboxError, SandboxErrorKind, StepKind,
    StepRequest, StepResult, Termination,
};
use async_trait::async_trait;
use bollard::Docker;
use bytes::Bytes;
use serde_json::json;

use crate::conn::{short, Conn, Replies};
use crate::executor::ExecInner;

/// How long past a step's own timeout the host waits for the supervisor to report its end.
const HOST_GRACE: Duration = Duration::from_secs(30);

/// A started container with a live supervisor (not yet tied to a job when it sits in the pool).
pub(crate) struct Core {
    pub(crate) container_id: String,
    pub(crate) docker: Docker,
    pub(crate) conn: Arc<Conn>,
    pub(crate) reader: tokio::task::JoinHandle<()>,
    pub(crate) removed: AtomicBool,
}

impl Core {
    /// Force-removes the container (idempotent; a container already gone is fine).
    pub(crate) async fn remove(&self) -> Result<(), SandboxError> {
        if self.removed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let res = remove_container(&self.docker, &self.container_id).await;
        self.reader.abort();
        res
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The container itself stays until destroy, shutdown or the reaper removes it.
        self.reader.abort();
    }
}

/// Force-removes a container by id or name; a container already gone is not an error.
pub(crate) async fn remove_container(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // 409: removal already in progress.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(SandboxError::new(
            SandboxErrorKind::Backend,
            format!("could not remove container {}: {e}", short(id)),
        )
        .with_source(e)),
    }
}

/// A job's sandbox: a hardened container with a supervisor inside.
///
/// Dropping it without [`Sandbox::destroy`] removes the container in the background (a
/// fallback; call `destroy`). Containers left by a crash are removed by
/// [`DockerExecutor::reap`](agent_core::Executor::reap).
pub struct DockerSandbox {
    core: Arc<Core>,
    job_id: JobId,
    name: String,
    env: Vec<(String, String)>,
    executor: Weak<ExecInner>,
    destroyed: AtomicBool,
}

impl std::fmt::Debug for DockerSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSandbox")
            .field("container", &short(&self.core.container_id))
            .field("name", &self.name)
            .field("job_id", &self.job_id)
            .finish()
    }
}

impl DockerSandbox {
    pub(crate) fn new(
        core: Arc<Core>,
        job_id: JobId,
        name: String,
        env: Vec<(String, String)>,
        executor: Weak<ExecInner>,
    ) -> Self {
        Self {
            core,
            job_id,
            name,
            env,
            executor,
            destroyed: AtomicBool::new(false),
        }
    }

    /// The container's name (`agent-<job_id>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job this sandbox belongs to.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    fn check_alive(&self) -> Result<(), SandboxError> {
        if self.destroyed.load(Ordering::Acquire) {
            return Err(SandboxError::new(
                SandboxErrorKind::Gone,
                format!("sandbox {} was destroyed", self.name),
            ));
        }
        Ok(())
    }

    async fn write(&self, path: &str, content: &[u8]) -> Result<(), SandboxError> {
        self.check_alive()?;
        let rel = normalize_workspace_path(path)?;
        let frame = self
            .core
            .conn
            .call(json!({"op": "write", "path": rel}), content)
            .await?;
        match frame.event.ev.as_str() {
            "ok" => Ok(()),
            _ => Err(supervisor_error(&frame.event, path)),
        }
    }
}

fn supervisor_error(event: &crate::protocol::Event, path: &str) -> SandboxError {
    let msg = event.msg.clone().unwrap_or_else(|| "failed".to_string());
    match event.kind.as_deref() {
        Some("path_refused") => SandboxError::path_refused(path, &msg),
        Some("not_found") => SandboxError::new(
            SandboxErrorKind::NotFound,
            format!("{path:?}: no such file in /workspace"),
        ),
        Some("too_large") => {
            SandboxError::new(SandboxErrorKind::TooLarge, format!("{path:?}: {msg}"))
        }
        Some("invalid") => SandboxError::new(SandboxErrorKind::Invalid, format!("{path:?}: {msg}")),
        _ => SandboxError::new(SandboxErrorKind::Backend, msg),
    }
}

/// The last `cap` bytes of a stream, and how many bytes it had in all.
struct Tail {
    buf: Vec<u8>,
    cap: usize,
    total: u64,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            total: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
        } else {
            self.buf.extend_from_slice(data);
            if self.buf.len() > self.cap {
                let excess = self.buf.len() - self.cap;
                self.buf.drain(..excess);
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Sends a kill for a step whose `run_step` future is dropped before the step ended.
struct KillOnDrop {
    conn: Arc<Conn>,
    id: u64,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.conn.forget(self.id);
        // Queued so that it reaches the supervisor before the next request: a late kill must
        // never hit the step that follows.
        self.conn
            .queue_urgent(json!({"op": "kill", "target": self.id, "reason": "cancelled"}));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let conn = self.conn.clone();
            handle.spawn(async move {
                let _ = conn.flush_urgent().await;
            });
        }
    }
}

fn result(exit_code: i32, termination: Termination, started: Instant) -> StepResult {
    StepResult {
        exit_code,
        termination,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration: started.elapsed(),
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.core.container_id
    }

    async fn run_step(
        &self,
        request: StepRequest,
        output: OutputSink,
    ) -> Result<StepResult, SandboxError> {
        let started = Instant::now();
        self.check_alive()?;
        if request.cancel.is_cancelled() {
            return Ok(result(-1, Termination::Cancelled, started));
        }
        let argv: Vec<String> = match &request.step.kind {
            StepKind::Shell { command } => vec!["bash".into(), "-c".into(), command.clone()],
            StepKind::Python { code } => {
                let rel = format!(".agent/step-{}.py", request.index);
                self.write(&rel, code.as_bytes()).await?;
                vec!["python3".into(), format!("/workspace/{rel}")]
            }
            StepKind::WriteFile { path, content } => {
                // A refused path is an `Err` with `PathRefused` (the conformance suite's contract).
                self.write(path, content.as_bytes()).await?;
                return Ok(result(0, Termination::Exited, started));
            }
        };
        let mut env = serde_json::Map::new();
        for (k, v) in self.env.iter().chain(request.env.iter()) {
            env.insert(k.clone(), json!(v));
        }
        let timeout_ms = u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX);
        let header = json!({
            "op": "run",
            "argv": argv,
            "cwd": "/workspace",
            "env": env,
            "timeout_ms": timeout_ms.max(1),
            "max_output": request.max_output_bytes,
        });
        let conn = self.core.conn.clone();
        let (id, mut replies) = conn.open(header, b"", None).await?;
        let mut guard = KillOnDrop {
            conn: conn.clone(),
            id,
            armed: true,
        };
        let mut stdout = Tail::new(request.tail_bytes);
        let mut stderr = Tail::new(request.tail_bytes);
        // `sleep` saturates: a step timeout too large for an `Instant` (user input) must not
        // panic here.
        let host_deadline = tokio::time::sleep(request.timeout.saturating_add(HOST_GRACE));
        tokio::pin!(host_deadline);
        let cancel = request.cancel.clone();
        let mut cancel_sent = false;
        loop {
            tokio::select! {
                biased;
                frame = replies.recv() => {
                    let Some(frame) = frame else {
                        guard.armed = false;
                        return Err(SandboxError::new(
                            SandboxErrorKind::Gone,
                            format!(
                                "sandbox {} died while running step {} (container removed or killed)",
                                self.name, request.index
                            ),
                        ));
                    };
                    match frame.event.ev.as_str() {
                        "out" => {
                            let stream = if frame.event.s == 2 {
                                stderr.push(&frame.body);
                                OutputStream::Stderr
                            } else {
                                stdout.push(&frame.body);
                                OutputStream::Stdout
                            };
                            output(stream, frame.body);
                        }
                        "exit" => {
                            guard.armed = false;
                            let termination = match frame.event.term.as_deref() {
                                Some("timed_out") => Termination::TimedOut,
                                Some("cancelled") => Termination::Cancelled,
                                Some("output_limit") => Termination::OutputLimit,
                                Some("oom") => Termination::OutOfMemory,
                                _ => Termination::Exited,
                            };
                            let capped = termination == Termination::OutputLimit;
                            let cap = request.tail_bytes as u64;
                            return Ok(StepResult {
                                exit_code: frame.event.code,
                                termination,
                                stdout_tail: stdout.text(),
                                stderr_tail: stderr.text(),
                                stdout_truncated: stdout.total > cap || (capped && stdout.total > 0),
                                stderr_truncated: stderr.total > cap || (capped && stderr.total > 0),
                                duration: started.elapsed(),
                            });
                        }
                        "err" => {
                            guard.armed = false;
                            return Err(SandboxError::new(
                                SandboxErrorKind::Backend,
                                frame.event.msg.unwrap_or_else(|| "step failed to run".into()),
                            ));
                        }
                        _ => {}
                    }
                }
                _ = cancel.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    conn.notify(json!({"op": "kill", "target": id, "reason": "cancelled"})).await?;
                }
                () = &mut host_deadline => {
                    return Err(SandboxError::new(
                        SandboxErrorKind::Backend,
                        format!(
                            "the supervisor in {} did not report the end of step {} in time",
                            self.name, request.index
                        ),
                    ));
                }
            }
        }
    }

    async fn put_file(&self, path: &str, content: Bytes) -> Result<(), SandboxError> {
        self.write(path, &content).await
    }

    async fn get_file(&self, path: &str) -> Result<Bytes, SandboxError> {
        self.check_alive()?;
        let rel = normalize_workspace_path(path)?;
        let frame = self
            .core
            .conn
            .call(
                json!({"op": "read", "path": rel, "max": MAX_GET_FILE_BYTES}),
                b"",
            )
            .await?;
        match frame.event.ev.as_str() {
            "data" => Ok(frame.body),
            _ => Err(supervisor_error(&frame.event, path)),
        }
    }

    async fn export_workspace(&self) -> Result<TarStream, SandboxError> {
        self.check_alive()?;
        let (id, replies) = self
            .core
            .conn
            .open(json!({"op": "export"}), b"", Some(16))
            .await?;
        let conn = self.core.conn.clone();
        let name = self.name.clone();
        let stream = futures::stream::unfold(
            (Some(replies), conn, id, name),
            |(replies, conn, id, name)| async move {
                let mut replies: Replies = replies?;
                loop {
                    match replies.recv().await {
                        Some(frame) => match frame.event.ev.as_str() {
                            "chunk" => {
                                return Some((Ok(frame.body), (Some(replies), conn, id, name)))
                            }
                            "ok" => return None,
                            "err" => {
                                let err = SandboxError::new(
                                    SandboxErrorKind::Backend,
                                    frame.event.msg.unwrap_or_else(|| "export failed".into()),
                                );
                                return Some((Err(err), (None, conn, id, name)));
                            }
                            _ => continue,
                        },
                        None => {
                            conn.forget(id);
                            let err = SandboxError::new(
                                SandboxErrorKind::Gone,
                                format!("sandbox {name} went away during the workspace export"),
                            );
                            return Some((Err(err), (None, conn, id, name)));
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let res = self.core.remove().await;
        if let Some(exec) = self.executor.upgrade() {
            exec.forget_container(&self.core.container_id);
        }
        res
    }
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        if self.destroyed.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let core = self.core.clone();
        let executor = self.executor.clone();
        handle.spawn(async move {
            if let Err(e) = core.remove().await {
                tracing::warn!("dropped sandbox: {e}");
            }
            if let Some(exec) = executor.upgrade() {
                exec.forget_container(&core.container_id);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!(t.text(), "cdef");
        t.push(b"g");
        assert_eq!(t.text(), "defg");
        t.push(b"0123456789");
        assert_eq!(t.text(), "6789");
        assert_eq!(t.total, 17);
    }
}
