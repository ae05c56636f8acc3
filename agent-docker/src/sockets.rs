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
            // A private directory inside the one named: its own mode is left as it is (it must
            // let the sandbox's user pass).
            TunnelSockets::Dir(dir) => std::fs::create_dir_all(dir)
                .and_then(|()| {
                    tempfile::Builder::new()
                        .prefix("agent-tunnels-")
                        .tempdir_in(dir)
                })
                .and_then(|temp| {
                    traversable(temp.path())?;
                    Ok(Self {
                        dir: temp.path().to_path_buf(),
                        _temp: Some(temp),
                    })
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
    /// The bind mount that shows the directory to the sandbox, read-only (an engine that cannot
    /// see the directory refuses it, rather than making an empty one).
    pub(crate) fn mount(&self) -> bollard::models::Mount {
        bollard::models::Mount {
            target: Some(MOUNT.to_string()),
            source: Some(self.dir.display().to_string()),
            typ: Some(bollard::models::MountTypeEnum::BIND),
            read_only: Some(true),
            ..Default::default()
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_directory_keeps_its_mode_and_gets_a_private_one_inside() {
        let named = tempfile::tempdir().unwrap();
        std::fs::set_permissions(named.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let root = SocketRoot::new(&TunnelSockets::Dir(named.path().to_path_buf()), false)
            .expect("a root in the named directory");
        assert_eq!(root.dir.parent(), Some(named.path()));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode(named.path()),
            0o1777,
            "the named directory is left as it was"
        );
        assert_eq!(mode(&root.dir), 0o711);
        let dir = root.dir.clone();
        drop(root);
        assert!(
            !dir.exists(),
            "the private directory goes with the executor"
        );
    }

    #[test]
    fn auto_uses_sockets_only_with_a_local_engine() {
        assert!(SocketRoot::new(&TunnelSockets::Auto, false).is_none());
        assert!(SocketRoot::new(&TunnelSockets::Off, true).is_none());
        assert!(SocketRoot::new(&TunnelSockets::Auto, true).is_some());
    }
}
