//! A raw HTTP/1.1 keep-alive client connection for the benches that load a server on loopback:
//! one request at a time, bodies by `Content-Length` (what the servers measured answer), so the
//! load generator costs next to nothing beside the server.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection, opened at the first request and again after the server
/// closed it.
pub(crate) struct Conn {
    addr: String,
    io: Option<BufStream<TcpStream>>,
    line: String,
    /// The body of the last response.
    pub(crate) body: Vec<u8>,
}

impl Conn {
    /// A connection to `addr` (`host:port`), not opened yet.
    pub(crate) fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            io: None,
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// Sends one request and reads the whole response; returns its status.
    pub(crate) async fn request(&mut self, req: &[u8]) -> std::io::Result<u16> {
        if self.io.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.io = Some(BufStream::new(s));
        }
        let io = self.io.as_mut().unwrap();
        io.write_all(req).await?;
        io.flush().await?;
        self.line.clear();
        if io.read_line(&mut self.line).await? == 0 {
            self.io = None;
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        let mut close = false;
        loop {
            self.line.clear();
            io.read_line(&mut self.line).await?;
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection")
                    && v.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        self.body.resize(len, 0);
        io.read_exact(&mut self.body).await?;
        if close {
            self.io = None;
        }
        Ok(status)
    }
}
