//! [`LocalSupervisor`]: the supervisor as a plain host process. **Not a sandbox.**

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::frame::Ready;
use super::link::{HandshakeError, Link, SupervisorLog};
use crate::executor::{SandboxError, SandboxErrorKind};

/// The real supervisor run as a local process in `local` mode, over its stdin/stdout pipes,
/// driven through the same [`Link`] as every backend.
///
/// **It isolates nothing**: processes run as the current user with the host's files, network and
/// environment; only the supervisor's own file operations are confined to the workspace
/// directory. Killing a process kills its process group (not what it moved out of it). For
/// tests of the protocol and of code built on [`Link`].
#[derive(Debug)]
pub struct LocalSupervisor {
    link: Link,
    ready: Ready,
    child: Child,
    workspace: PathBuf,
}

impl LocalSupervisor {
    /// Starts `python3` (from `PATH`) running the supervisor over `workspace` (which must
    /// exist) and waits until it is ready.
    pub async fn start(workspace: &Path) -> Result<Self, SandboxError> {
        let workspace = workspace.canonicalize().map_err(|e| {
            SandboxError::new(
                SandboxErrorKind::Invalid,
                format!("workspace {}: {e}", workspace.display()),
            )
        })?;
        let mut child = Command::new("python3")
            .arg("-I")
            .arg("-S")
            .arg("-c")
            .arg(super::SOURCE)
            .arg("local")
            .arg(&workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                SandboxError::new(
                    SandboxErrorKind::Unavailable,
                    format!("cannot start python3 for a local supervisor: {e}"),
                )
                .with_source(e)
            })?;
        let label = format!("local:{}", workspace.display());
        let log = SupervisorLog::new(label.clone());
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SandboxError::new(
                SandboxErrorKind::Backend,
                "the local supervisor's pipes are missing",
            ));
        };
        log.pump(stderr);
        let (link, handshake) = Link::start(label, stdout, stdin, log);
        let ready = handshake
            .wait(Duration::from_secs(30))
            .await
            .map_err(|e| match e {
                HandshakeError::TimedOut(_) => {
                    SandboxError::new(SandboxErrorKind::Backend, e.to_string())
                }
                _ => SandboxError::new(SandboxErrorKind::Unavailable, e.to_string()),
            })?;
        Ok(Self {
            link,
            ready,
            child,
            workspace,
        })
    }

    /// The link to it.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// What it said when it came up.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The workspace directory (canonical).
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// Closes its stdin (it kills what it started and exits) and waits for it; returns its exit
    /// code.
    pub async fn shutdown(mut self) -> Result<Option<i32>, SandboxError> {
        self.link.close().await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .map_err(|_| {
                SandboxError::new(
                    SandboxErrorKind::Backend,
                    "the local supervisor did not exit after its stdin closed",
                )
            })?
            .map_err(|e| SandboxError::new(SandboxErrorKind::Backend, e.to_string()))?;
        Ok(status.code())
    }
}
