//! Handed-over tunnels: a byte stream to a port inside the sandbox on a unix-socket connection of
//! its own ([`Request::Handoff`]), rather than multiplexed on the link like a [`Tunnel`].
//!
//! The host listens on a unix socket in a directory the sandbox sees read-only (Docker: a bind
//! mount). To open a tunnel, the host asks the supervisor, over the link, to connect to that
//! socket and write a random one-use key there, then to connect to the port; the listener gives
//! the connection carrying that key to the waiting [`Handoff::connect`]. At most a few
//! connections may be waiting to present a key at once, so a sandbox cannot tie up the host's
//! file descriptors. Bytes then move between two
//! kernel sockets with no framing, no credits and no copy through the link, and the kernel's
//! socket buffers bound what is in flight, each tunnel apart from every other and from the link.
//!
//! The sandbox needs no network for this: a unix socket is reached through the filesystem. The
//! directory is mounted read-only, so the sandbox cannot put a link or another socket in the
//! host's way; the socket itself accepts any process that can reach it (mode 0666, as the
//! sandbox's user differs from the host's), and a connection is only used when it presents a key
//! the host is waiting for.
//!
//! [`Tunnel`]: super::Tunnel

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use super::frame::Request;
use super::link::Link;
use crate::executor::{SandboxError, SandboxErrorKind};

/// How long the supervisor may take to answer a handoff.
const HANDOFF_WAIT: Duration = Duration::from_secs(10);

/// How long a connection may take to present its key (the supervisor writes it as it connects),
/// and to arrive once the supervisor answered.
const KEY_WAIT: Duration = Duration::from_secs(2);

/// The most connections that have not yet presented a key, at once: more are closed at once, so
/// a sandbox that opens connections and sends nothing holds at most this many of the host's file
/// descriptors.
const MAX_UNKEYED: usize = 8;

/// The longest key line read from a connection (a key is 32 hex digits and a newline).
const MAX_KEY_LINE: usize = 80;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<UnixStream>>>>;

/// A unix socket on the host that a sandbox's supervisor hands tunnels to (see the module docs).
/// Dropping it stops listening and removes the socket file.
#[derive(Debug)]
pub struct Handoff {
    host_path: PathBuf,
    sandbox_path: String,
    pending: Pending,
    accept: tokio::task::JoinHandle<()>,
}

impl Handoff {
    /// Listens on a new unix socket at `host_path`, which the sandbox reaches as `sandbox_path`.
    /// Must be called within a Tokio runtime.
    pub fn bind(host_path: &Path, sandbox_path: impl Into<String>) -> io::Result<Self> {
        let listener = UnixListener::bind(host_path)?;
        // The sandbox's user is not the host's: anyone may connect, and a key is required.
        std::fs::set_permissions(
            host_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )?;
        let pending = Pending::default();
        let accept = tokio::spawn(accept_loop(listener, pending.clone()));

        Ok(Self {
            host_path: host_path.to_path_buf(),
            sandbox_path: sandbox_path.into(),
            pending,
            accept,
        })
    }

    /// Opens a tunnel to `127.0.0.1:port` inside the sandbox that `link` reaches, handed over on
    /// this socket. Nothing listening there is a [`SandboxErrorKind::Refused`] error; a
    /// supervisor that cannot reach the socket (it is not mounted in that sandbox) is a
    /// [`SandboxErrorKind::Unavailable`] one, and the caller may use [`Link::connect`] instead.
    pub async fn connect(&self, link: &Link, port: u16) -> Result<UnixStream, SandboxError> {
        let key = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(key.clone(), tx);
        // Removed however this ends, a dropped future included.
        let _waiting = Waiting {
            pending: &self.pending,
            key: &key,
        };
        self.open(link, port, &key, rx).await
    }

    async fn open(
        &self,
        link: &Link,
        port: u16,
        key: &str,
        arrived: oneshot::Receiver<UnixStream>,
    ) -> Result<UnixStream, SandboxError> {
        let request = Request::Handoff {
            port,
            path: self.sandbox_path.clone(),
            key: key.to_string(),
        };
        let (id, mut replies) = link.open(&request, b"", None).await?;
        let answer = tokio::time::timeout(
            HANDOFF_WAIT,
            super::tunnel::opened(link, id, &mut replies, SandboxErrorKind::Unavailable),
        )
        .await;
        match answer {
            Ok(opened) => opened?,
            Err(_) => {
                link.forget(id);
                return Err(SandboxError::new(
                    SandboxErrorKind::Unavailable,
                    format!("the supervisor did not answer a tunnel to port {port} within {HANDOFF_WAIT:?}"),
                ));
            }
        }
        // The supervisor copies until both directions end, then says so: until then the id is
        // in use, and its last frame is read (and the id forgotten) in the background.
        let done = link.clone();
        tokio::spawn(async move {
            while let Some(frame) = replies.recv().await {
                if frame.event.is_final() {
                    break;
                }
            }
            done.forget(id);
        });
        // The supervisor wrote the key before it answered: the connection is here, or about to
        // be, unless the listener closed it (too many connections without a key at once).
        match tokio::time::timeout(KEY_WAIT, arrived).await {
            Ok(Ok(stream)) => Ok(stream),
            // Once this waiter is gone the listener drops a late one, which ends the copy inside.
            _ => Err(SandboxError::new(
                SandboxErrorKind::Unavailable,
                format!("the tunnel to port {port} was not handed over within {KEY_WAIT:?}"),
            )),
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.host_path);
    }
}

/// Removes a waiter's key when dropped.
struct Waiting<'a> {
    pending: &'a Pending,
    key: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts connections and gives each, once it presented a key someone waits for, to that
/// waiter. A connection with no key, a wrong one or none in time is closed, and so is one that
/// arrives while [`MAX_UNKEYED`] others are still to present theirs.
async fn accept_loop(listener: UnixListener, pending: Pending) {
    let unkeyed = Arc::new(tokio::sync::Semaphore::new(MAX_UNKEYED));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!("tunnel socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = unkeyed.clone().try_acquire_owned() else {
            continue; // dropped: closed
        };
        let pending = pending.clone();
        tokio::spawn(async move {
            let read = tokio::time::timeout(KEY_WAIT, read_key(stream)).await;
            drop(slot);
            let Ok(Ok((stream, key))) = read else {
                return;
            };
            let waiter = lock(&pending).remove(&key);
            if let Some(waiter) = waiter {
                let _ = waiter.send(stream);
            }
        });
    }
}

/// Reads the key line byte by byte, so nothing after it is taken from the stream.
async fn read_key(mut stream: UnixStream) -> io::Result<(UnixStream, String)> {
    let mut key = Vec::with_capacity(40);
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        if key.len() == MAX_KEY_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "key line too long",
            ));
        }
        key.push(byte);
    }
    let key = String::from_utf8(key)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "key is not UTF-8"))?;
    Ok((stream, key))
}
