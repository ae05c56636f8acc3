//! The HTTP accept loop, built to hold under connection floods: HTTP/1.1 connections with a
//! header-read timeout (which is also the idle timeout of a kept-alive connection), a connection
//! limit with back-pressure that first sheds the oldest connections still waiting for their first
//! request, a request announcing a body above the limit answered 413 before anything is read, and
//! the process's file-descriptor limit raised at start-up.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::error::ApiError;

/// File descriptors kept free for everything but client connections (the SQLite store, the
/// Docker engine's socket, artifacts being written, log files).
pub const RESERVED_FDS: u64 = 1024;

/// The most connections served at once when neither the configuration nor the descriptor limit
/// says less.
pub const MAX_CONNECTIONS_CAP: usize = 100_000;

/// The default header-read (and keep-alive idle) timeout.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How connections are limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; past it the server sheds the oldest connection that has not
    /// sent a request yet, or stops accepting (the kernel's backlog holds newcomers) until one
    /// ends.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from when the connection opens or
    /// goes idle after a response; then the connection is closed.
    pub header_timeout: Duration,
    /// A request whose `Content-Length` is larger is answered 413 at once, unread.
    pub max_body_bytes: usize,
}

/// Raises the soft limit on open files to the hard limit (idle connections each hold one) and
/// returns the limit in force. Failing to raise it is logged, not fatal.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            let current = rlimit::Resource::NOFILE
                .get()
                .map(|(soft, _)| soft)
                .unwrap_or(RESERVED_FDS * 2);
            tracing::warn!(error = %e, limit = current, "cannot raise the open-files limit");
            current
        }
    }
}

/// The connection limit for a descriptor limit: all of it but [`RESERVED_FDS`], at least 64, at
/// most [`MAX_CONNECTIONS_CAP`].
pub fn max_connections_for(fd_limit: u64) -> usize {
    let n = fd_limit.saturating_sub(RESERVED_FDS).max(64);
    usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(MAX_CONNECTIONS_CAP)
}

/// The connections that have not sent a request yet, oldest first, so that the oldest can be shed
/// when the server is full.
#[derive(Default)]
struct Waiting {
    next: AtomicU64,
    conns: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock().insert(id, token.clone());
        (id, token)
    }

    /// The connection sent a request: it is no longer sheddable.
    fn started(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the oldest connection that has not sent a request; false when there is none.
    fn shed_oldest(&self) -> bool {
        match self.lock().pop_first() {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// A 413 for a request announcing a body larger than `max`, before any of it is read.
fn announced_too_large(req: &Request<Incoming>, max: usize) -> Option<Response> {
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    if len <= u64::try_from(max).unwrap_or(u64::MAX) {
        return None;
    }
    let mut resp = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than the server accepts ({max} bytes)"),
    )
    .into_response();
    // The unread body must not be taken for the next request.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(resp)
}

/// Whether an accept error concerns only the one connection (try the next at once).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets the open connections
/// finish their requests (closing idle ones) and returns once all have ended.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let waiting = Arc::new(Waiting::default());
    let tasks = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        // Back-pressure: a slot before accepting. When full, shed the oldest connection that
        // never sent a request (an idle flood or a slowloris, not a client being served); when
        // every connection is busy, wait for one to end.
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                waiting.shed_oldest();
                tokio::select! {
                    p = Arc::clone(&slots).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: wait a little instead of spinning.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (id, shed) = waiting.register();
        let service = {
            let router = router.clone();
            let waiting = Arc::clone(&waiting);
            let max_body = limits.max_body_bytes;
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                waiting.started(id);
                let router = router.clone();
                async move {
                    if let Some(resp) = announced_too_large(&req, max_body) {
                        return Ok::<_, Infallible>(resp);
                    }
                    req.extensions_mut().insert(ConnectInfo(addr));
                    router.oneshot(req.map(axum::body::Body::new)).await
                }
            })
        };
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = shutdown.clone();
        let waiting = Arc::clone(&waiting);
        tasks.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %addr, "connection ended with an error");
                    }
                }
                _ = shed.cancelled() => {
                    tracing::debug!(%addr, "closing a connection that sent no request: the server is full");
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shed.cancelled() => {}
                    }
                }
            }
            waiting.started(id);
        });
    }
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_leaves_descriptors_free() {
        assert_eq!(max_connections_for(20_000), 18_976);
        assert_eq!(max_connections_for(100), 64);
        assert_eq!(max_connections_for(u64::MAX), MAX_CONNECTIONS_CAP);
    }

    #[test]
    fn the_oldest_waiting_connection_is_shed_first() {
        let w = Waiting::default();
        let (a, ta) = w.register();
        let (_b, tb) = w.register();
        let (c, tc) = w.register();
        w.started(a);
        assert!(w.shed_oldest());
        assert!(!ta.is_cancelled() && tb.is_cancelled() && !tc.is_cancelled());
        w.started(c);
        assert!(!w.shed_oldest());
        assert!(!tc.is_cancelled());
    }
}
