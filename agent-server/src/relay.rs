//! Relays a WebSocket to a byte stream, the way websockify does for VNC: each binary message from
//! the browser is written to the stream, and whatever the stream yields goes back as binary
//! messages. Nothing is buffered beyond one read: a slow browser slows the stream's reads, and a
//! slow stream slows the browser's messages.

use std::io;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest chunk read from the stream and sent as one WebSocket message.
pub const RELAY_CHUNK: usize = 64 << 10;

/// What crossed a relay, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the WebSocket to the stream.
    pub to_stream: u64,
    /// From the stream to the WebSocket.
    pub to_socket: u64,
}

/// Relays `socket` to `stream` until either side closes: when the browser closes, the stream is
/// dropped (closing it); when the stream ends, the WebSocket is closed with code 1000. A text
/// message is a protocol error (the socket is closed with 1003).
pub async fn relay<S>(socket: WebSocket, stream: S) -> io::Result<RelayStats>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut stats = RelayStats::default();
    let to_stream = &mut stats.to_stream;
    let upward = async {
        while let Some(msg) = rx.next().await {
            match msg.map_err(io::Error::other)? {
                Message::Binary(data) => {
                    writer.write_all(&data).await?;
                    *to_stream += data.len() as u64;
                }
                Message::Text(_) => return Ok(Some(1003)),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        writer.shutdown().await.ok();
        Ok::<_, io::Error>(None)
    };
    let to_socket = &mut stats.to_socket;
    let mut buf = BytesMut::with_capacity(RELAY_CHUNK);
    let downward = async {
        loop {
            buf.reserve(RELAY_CHUNK);
            let n = reader.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            *to_socket += n as u64;
            tx.send(Message::Binary(buf.split().freeze()))
                .await
                .map_err(io::Error::other)?;
        }
    };
    let outcome = tokio::select! {
        up = upward => up.map(|code| code.map(|c| (c, "text messages are not accepted"))),
        down = downward => down.map(|()| Some((1000, "the service closed the connection"))),
    };
    let close = match &outcome {
        Ok(Some((code, reason))) => Some((*code, *reason)),
        Ok(None) => None,
        Err(_) => Some((1011, "the connection to the service failed")),
    };
    if let Some((code, reason)) = close {
        let mut socket = match tx.reunite(rx) {
            Ok(socket) => socket,
            Err(_) => return outcome.map(|_| stats),
        };
        socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await
            .ok();
    }
    outcome.map(|_| stats)
}
