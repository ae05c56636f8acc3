//! The host side of handed-over tunnels ([`TunnelSockets`]): a directory per sandbox, mounted
//! read-only at [`MOUNT`], holding the unix socket its supervisor hands tunnels to.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use agent_core::supervisor::Handoff;

use crate::config::TunnelSockets;

/// Where a sandbox sees its directory.
const MOUNT: &str = "/run/agent-tunnels";
/// The socket's name in it.
const SOCKET: &str = "tunnel.sock";

/// The directory under which each sandbox gets one of its own.
pub(crate) struct SocketRoot {
    dir: PathBuf,
    /// A private temporary root, removed with the executor.
    _temp: Option<tempfile::TempDir>,
}

impl SocketRoot {
    /// The root `config` asks for, made ready; `None` (tunnels go over the attach stream) when it
    /// asks for none, when the engine is not local (`Auto`), or when the directory cannot be made
    /// (logged).
    pub(crate) fn new(config: &TunnelSockets, local_engine: bool) -> Option<Self> {
        let made = match config {
            TunnelSockets::Off => return None,
            TunnelSockets::Auto if !local_engine => return None,
            TunnelSockets::Auto => tempfile::Builder::new()
                .prefix("agent-tunnels-")
                .tempdir()
                .and_then(|temp| {
                    traversable(temp.path())?;
                    Ok(Self {
                        dir: temp.path().to_path_buf(),
                        _temp: Some(temp),
                    })
                }),
            TunnelSockets::Dir(dir) => std::fs::create_dir_all(dir)
                .and_then(|()| traversable(dir))
                .map(|()| Self {
                    dir: dir.clone(),
                    _temp: None,
                }),
        };
        match made {
            Ok(root) => Some(root),
            Err(e) => {
                tracing::warn!(
                    "tunnels go over the attach stream: no directory for their sockets ({e})"
                );
                None
            }
        }
    }

    /// A new sandbox's directory and listening socket.
    pub(crate) fn sandbox(&self) -> std::io::Result<SandboxSockets> {
        let dir = self.dir.join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir)?;
        let made = traversable(&dir)
            .and_then(|()| Handoff::bind(&dir.join(SOCKET), format!("{MOUNT}/{SOCKET}")));
        match made {
            Ok(handoff) => Ok(SandboxSockets { dir, handoff }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

/// Mode 0711: the sandbox's user (not the host's) may pass through, nobody may list it.
fn traversable(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

/// One sandbox's socket and its directory (both removed on drop).
pub(crate) struct SandboxSockets {
    dir: PathBuf,
    handoff: Handoff,
}

impl SandboxSockets {
    /// The bind mount that shows the directory to the sandbox, read-only.
    pub(crate) fn bind(&self) -> String {
        format!("{}:{MOUNT}:ro", self.dir.display())
    }

    pub(crate) fn handoff(&self) -> &Handoff {
        &self.handoff
    }
}

impl Drop for SandboxSockets {
    fn drop(&mut self) {
        // The handoff removes its socket when it drops, after this: remove it first.
        let _ = std::fs::remove_file(self.dir.join(SOCKET));
        let _ = std::fs::remove_dir(&self.dir);
    }
}
