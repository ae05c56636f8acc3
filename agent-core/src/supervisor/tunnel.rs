//! Tunnels: byte streams to a TCP port inside the sandbox, multiplexed on the supervisor link
//! ([`Request::Connect`]).
//!
//! Each direction has its own credit window: the supervisor sends at most `window` bytes the host
//! has not credited, and the host sends at most `window` bytes the supervisor has not credited.
//! The host credits the supervisor only once bytes have moved into the [`Tunnel`]'s own bounded
//! buffer, so a reader that stops reading stops its tunnel, and nothing else: not a step's output,
//! not another tunnel. Nothing is buffered beyond two windows per direction.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{oneshot, Semaphore};

use super::frame::{ErrorKind, Event, Request, RequestId};
use super::link::{Link, Replies};
use crate::executor::{SandboxError, SandboxErrorKind};

/// The default window of each direction of a tunnel: 256 KiB.
pub const DEFAULT_TUNNEL_WINDOW: usize = 256 << 10;

/// The largest data frame a tunnel sends.
const TUNNEL_CHUNK: usize = 64 << 10;

/// A byte stream to a port inside the sandbox. Reading gives the service's bytes (end of file
/// when it shut its side); writing sends to it; `shutdown` shuts the write side; dropping it ends
/// the tunnel.
#[derive(Debug)]
pub struct Tunnel {
    io: DuplexStream,
    port: u16,
    /// Dropped with the tunnel: tells the pump to abort it.
    _alive: oneshot::Sender<()>,
}

impl Tunnel {
    /// The port inside the sandbox.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Link {
    /// Opens a tunnel to `127.0.0.1:port` inside the sandbox, with `window` bytes of credit each
    /// way ([`DEFAULT_TUNNEL_WINDOW`] is a good default). Nothing listening there is a
    /// [`SandboxErrorKind::Refused`] error.
    pub async fn connect(&self, port: u16, window: usize) -> Result<Tunnel, SandboxError> {
        let window = window.max(1);
        let request = Request::Connect {
            port,
            window: window as u64,
        };
        let (id, mut replies) = self.open(&request, b"", None).await?;
        if let Err(e) = opened(self, id, &mut replies, SandboxErrorKind::Backend).await {
            let _ = self.send(Some(id), &Request::Abort, b"").await;
            return Err(e);
        }
        let (user, pump_end) = tokio::io::duplex(window);
        let (alive, dropped) = oneshot::channel();
        tokio::spawn(pump(self.clone(), id, replies, pump_end, window, dropped));
        Ok(Tunnel {
            io: user,
            port,
            _alive: alive,
        })
    }
}

/// Waits for a tunnel's first answer: `Ok` once it is open; else its error (the id forgotten),
/// [`SandboxErrorKind::Refused`] when nothing listens and `failed` when the supervisor could not
/// open it for another reason.
pub(super) async fn opened(
    link: &Link,
    id: RequestId,
    replies: &mut Replies,
    failed: SandboxErrorKind,
) -> Result<(), SandboxError> {
    let error = match replies.recv().await.map(|f| f.event) {
        Some(Event::Started { .. }) => return Ok(()),
        None => return Err(link.gone()),
        Some(Event::Err { kind, message }) => {
            let kind = match kind {
                ErrorKind::Refused => SandboxErrorKind::Refused,
                ErrorKind::Invalid => SandboxErrorKind::Invalid,
                _ => failed,
            };
            SandboxError::new(kind, message)
        }
        Some(other) => SandboxError::new(
            SandboxErrorKind::Backend,
            format!("the supervisor answered a tunnel with {other:?}"),
        ),
    };
    link.forget(id);
    Err(error)
}

/// Moves a tunnel's bytes between the link and the duplex pipe, until both directions end.
async fn pump(
    link: Link,
    id: RequestId,
    mut replies: Replies,
    end: DuplexStream,
    window: usize,
    mut dropped: oneshot::Receiver<()>,
) {
    let (mut from_user, mut to_user) = tokio::io::split(end);
    // Credit for sending to the service: `window` bytes, refilled by its credits.
    let send_credit = Arc::new(Semaphore::new(window));
    let chunk = window.min(TUNNEL_CHUNK);

    let up_credit = send_credit.clone();
    let up_link = link.clone();
    let upward = async move {
        let mut buf = vec![0u8; chunk];
        loop {
            let Ok(permit) = up_credit.acquire_many(chunk as u32).await else {
                return;
            };
            let n = match from_user.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    drop(permit);
                    let _ = up_link.send(Some(id), &Request::Close, b"").await;
                    return;
                }
                Ok(n) => n,
            };
            permit.forget();
            up_credit.add_permits(chunk - n);
            if up_link
                .send(Some(id), &Request::Data, &buf[..n])
                .await
                .is_err()
            {
                return;
            }
        }
    };

    let down_link = link.clone();
    let downward = async move {
        let mut user_gone = false;
        loop {
            let frame = tokio::select! {
                frame = replies.recv() => frame,
                _ = &mut dropped, if !user_gone => {
                    user_gone = true;
                    let _ = down_link.send(Some(id), &Request::Abort, b"").await;
                    continue;
                }
            };
            let Some(frame) = frame else { break };
            match frame.event {
                Event::Chunk => {
                    let n = frame.body.len() as u64;
                    if !user_gone && to_user.write_all(&frame.body).await.is_err() {
                        // The user dropped the tunnel: end it.
                        user_gone = true;
                        let _ = down_link.send(Some(id), &Request::Abort, b"").await;
                    }
                    if !user_gone {
                        let credit = Request::Credit { bytes: n };
                        let _ = down_link.send(Some(id), &credit, b"").await;
                    }
                }
                Event::Credit { bytes } => {
                    send_credit.add_permits(usize::try_from(bytes).unwrap_or(0).min(window));
                }
                Event::Eof => {
                    let _ = to_user.shutdown().await;
                }
                Event::Ok | Event::Err { .. } => break,
                _ => {}
            }
        }
        // Ended (or the link is gone): nothing more to send either.
        send_credit.close();
        let _ = to_user.shutdown().await;
    };
    // The tunnel is over when the supervisor says so (or the link is gone); the upward half may
    // end before that (the user shut its side) but never holds the pump up after it.
    tokio::select! {
        () = downward => {}
        () = async { upward.await; std::future::pending::<()>().await } => {}
    }
    link.forget(id);
}
