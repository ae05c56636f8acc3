//! The host end of the supervisor protocol: one attach stream per container, requests
//! multiplexed by id, a reader task routing frames to whoever waits for them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agent_core::{SandboxError, SandboxErrorKind};
use bollard::container::LogOutput;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{encode, Frame, FrameDecoder};

type OutputStreamBox =
    Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// What the supervisor said when it came up.
#[derive(Debug)]
pub(crate) struct Ready {
    /// The uid it runs as.
    pub(crate) uid: Option<u32>,
}

enum Route {
    Unbounded(mpsc::UnboundedSender<Frame>),
    Bounded(mpsc::Sender<Frame>),
}

/// Where a request's frames arrive.
pub(crate) enum Replies {
    Unbounded(mpsc::UnboundedReceiver<Frame>),
    Bounded(mpsc::Receiver<Frame>),
}

impl Replies {
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        match self {
            Replies::Unbounded(rx) => rx.recv().await,
            Replies::Bounded(rx) => rx.recv().await,
        }
    }
}

/// A connection to one container's supervisor.
pub(crate) struct Conn {
    container: String,
    writer: tokio::sync::Mutex<Writer>,
    routes: Mutex<HashMap<u64, Route>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Messages that must reach the supervisor before any later request (kills queued from
    /// `Drop`, where nothing can be awaited).
    urgent: Mutex<Vec<u8>>,
}

impl Conn {
    /// Starts the reader task over the attach output; `ready` fires when the supervisor is up.
    pub(crate) fn start(
        container: String,
        output: OutputStreamBox,
        input: Writer,
    ) -> (
        Arc<Conn>,
        oneshot::Receiver<Result<Ready, String>>,
        tokio::task::JoinHandle<()>,
    ) {
        let conn = Arc::new(Conn {
            container,
            writer: tokio::sync::Mutex::new(input),
            routes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            urgent: Mutex::new(Vec::new()),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(read_loop(conn.clone(), output, ready_tx));
        (conn, ready_rx, task)
    }

    /// Whether the attach stream has ended (the container died or was removed).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn gone(&self) -> SandboxError {
        SandboxError::new(
            SandboxErrorKind::Gone,
            format!(
                "sandbox container {} is gone (its supervisor connection closed)",
                short(&self.container)
            ),
        )
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Route>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a request whose replies arrive on the returned receiver. `bounded` applies
    /// back-pressure to the supervisor (used for archives).
    pub(crate) async fn open(
        &self,
        header: serde_json::Value,
        body: &[u8],
        bounded: Option<usize>,
    ) -> Result<(u64, Replies), SandboxError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replies = {
            let mut routes = self.lock_routes();
            if self.is_closed() {
                return Err(self.gone());
            }
            match bounded {
                Some(cap) => {
                    let (tx, rx) = mpsc::channel(cap.max(1));
                    routes.insert(id, Route::Bounded(tx));
                    Replies::Bounded(rx)
                }
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    routes.insert(id, Route::Unbounded(tx));
                    Replies::Unbounded(rx)
                }
            }
        };
        if let Err(e) = self.send_raw(&encode(id, header, body)).await {
            self.forget(id);
            return Err(e);
        }
        Ok((id, replies))
    }

    /// Sends a request and waits for its one final reply.
    pub(crate) async fn call(
        &self,
        header: serde_json::Value,
        body: &[u8],
    ) -> Result<Frame, SandboxError> {
        let (id, mut replies) = self.open(header, body, None).await?;
        while let Some(frame) = replies.recv().await {
            if frame.event.is_final() {
                return Ok(frame);
            }
        }
        self.forget(id);
        Err(self.gone())
    }

    /// Sends a message that expects no reply (a kill).
    pub(crate) async fn notify(&self, header: serde_json::Value) -> Result<(), SandboxError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send_raw(&encode(id, header, b"")).await
    }

    /// Queues a message that goes out before any later request, without waiting; call
    /// [`Conn::flush_urgent`] (e.g. from a spawned task) to send it even if nothing follows.
    pub(crate) fn queue_urgent(&self, header: serde_json::Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.urgent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(&encode(id, header, b""));
    }

    /// Sends queued urgent messages.
    pub(crate) async fn flush_urgent(&self) -> Result<(), SandboxError> {
        self.send_raw(b"").await
    }

    /// Stops routing replies of a request.
    pub(crate) fn forget(&self, id: u64) {
        self.lock_routes().remove(&id);
    }

    async fn send_raw(&self, bytes: &[u8]) -> Result<(), SandboxError> {
        if self.is_closed() {
            return Err(self.gone());
        }
        let mut w = self.writer.lock().await;
        let urgent = std::mem::take(
            &mut *self
                .urgent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if urgent.is_empty() && bytes.is_empty() {
            return Ok(());
        }
        let res = async {
            w.write_all(&urgent).await?;
            w.write_all(bytes).await?;
            w.flush().await
        }
        .await;
        res.map_err(|e| self.gone().with_source(e))
    }

    async fn route(&self, frame: Frame) {
        let Some(id) = frame.event.id else {
            return;
        };
        let is_final = frame.event.is_final();
        let bounded = {
            let mut routes = self.lock_routes();
            match routes.get(&id) {
                None => return,
                Some(Route::Unbounded(tx)) => {
                    let _ = tx.send(frame);
                    if is_final {
                        routes.remove(&id);
                    }
                    return;
                }
                Some(Route::Bounded(tx)) => tx.clone(),
            }
        };
        // Back-pressure: wait for the consumer (outside the lock).
        if bounded.send(frame).await.is_err() || is_final {
            self.forget(id);
        }
    }
}

async fn read_loop(
    conn: Arc<Conn>,
    mut output: OutputStreamBox,
    ready_tx: oneshot::Sender<Result<Ready, String>>,
) {
    let mut ready_tx = Some(ready_tx);
    let mut decoder = FrameDecoder::default();
    let mut stderr_line: Vec<u8> = Vec::new();
    let mut last_lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut failure: Option<String> = None;
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) => {
                decoder.push(&message);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) if frame.event.ev == "ready" => {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(Ok(Ready {
                                    uid: frame.event.uid,
                                }));
                            }
                        }
                        Ok(Some(frame)) => conn.route(frame).await,
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
            Ok(LogOutput::StdErr { message }) => {
                stderr_line.extend_from_slice(&message);
                while let Some(pos) = stderr_line.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = stderr_line.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    tracing::warn!(container = %short(&conn.container), "{line}");
                    if last_lines.len() == 5 {
                        last_lines.pop_front();
                    }
                    last_lines.push_back(line);
                }
                if stderr_line.len() > 8192 {
                    stderr_line.clear();
                }
            }
            Ok(_) => {}
            Err(e) => {
                failure = Some(format!("attach stream failed: {e}"));
                break;
            }
        }
    }
    if let Some(f) = &failure {
        tracing::warn!(container = %short(&conn.container), "supervisor connection lost: {f}");
    }
    conn.closed.store(true, Ordering::Release);
    conn.lock_routes().clear();
    if let Some(tx) = ready_tx.take() {
        let why = failure.unwrap_or_else(|| {
            last_lines.push_back(String::from_utf8_lossy(&stderr_line).into_owned());
            let tail = last_lines
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" | ");
            if tail.is_empty() {
                "the container exited before its supervisor came up".to_string()
            } else {
                format!("the container exited before its supervisor came up: {tail}")
            }
        });
        let _ = tx.send(Err(why));
    }
}

/// The first 12 characters of a container id.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
