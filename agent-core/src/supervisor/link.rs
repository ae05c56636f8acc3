//! [`Link`]: the host end of the supervisor protocol over any byte pipe pair.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::frame::{
    encode, ErrorKind, Event, Frame, FrameDecoder, KillReason, Ready, Request, RequestId,
};
use crate::executor::{
    ExecRequest, FileListing, OutputSink, SandboxError, SandboxErrorKind, TarStream,
};
use crate::job::{OutputStream, StepResult, Termination};

/// How long past a process's own timeout the host waits for the supervisor to report its end.
const HOST_GRACE: Duration = Duration::from_secs(30);

/// How many stderr lines of the supervisor are kept to explain a failed start.
const STDERR_LINES: usize = 5;

type Writer = Pin<Box<dyn AsyncWrite + Send>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The supervisor's stderr: each line logged (`tracing` warn, tagged with the link's label), the
/// last few kept to explain a supervisor that died before it came up.
///
/// A backend feeds it whatever the supervisor writes to stderr ([`SupervisorLog::push`]); a
/// backend that gets stdout and stderr as one multiplexed stream (Docker's attach) splits them
/// and pushes the stderr part here.
#[derive(Clone, Debug)]
pub struct SupervisorLog {
    inner: Arc<Mutex<LogState>>,
}

#[derive(Debug)]
struct LogState {
    label: String,
    partial: Vec<u8>,
    last: VecDeque<String>,
}

impl SupervisorLog {
    /// A log whose lines are tagged with `label` (e.g. the container's short id).
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogState {
                label: label.into(),
                partial: Vec::new(),
                last: VecDeque::new(),
            })),
        }
    }

    /// Adds bytes the supervisor wrote to stderr.
    pub fn push(&self, data: &[u8]) {
        let mut st = lock(&self.inner);
        st.partial.extend_from_slice(data);
        while let Some(pos) = st.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = st.partial.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            tracing::warn!(sandbox = %st.label, "{line}");
            if st.last.len() == STDERR_LINES {
                st.last.pop_front();
            }
            st.last.push_back(line);
        }
        if st.partial.len() > 8192 {
            st.partial.clear();
        }
    }

    /// Copies `stderr` into the log until it ends (spawned by backends with a separate stderr
    /// pipe).
    pub fn pump(&self, mut stderr: impl AsyncRead + Send + Unpin + 'static) {
        let log = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                log.push(&buf[..n]);
            }
        });
    }

    /// The last lines, joined with ` | `.
    fn tail(&self) -> String {
        let st = lock(&self.inner);
        st.last
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(&*String::from_utf8_lossy(&st.partial)))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Why the supervisor did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// No `ready` within the time given.
    #[error("the supervisor did not come up within {0:?}")]
    TimedOut(Duration),
    /// Its output ended (or broke the protocol) first; the message says what it printed last.
    #[error("{0}")]
    Exited(String),
}

/// The pending `ready` of a link just started: wait for it once the process is running.
#[derive(Debug)]
pub struct Handshake(oneshot::Receiver<Result<Ready, String>>);

impl Handshake {
    /// Waits for the supervisor's `ready` for at most `timeout`.
    pub async fn wait(self, timeout: Duration) -> Result<Ready, HandshakeError> {
        match tokio::time::timeout(timeout, self.0).await {
            Err(_) => Err(HandshakeError::TimedOut(timeout)),
            Ok(Err(_)) => Err(HandshakeError::Exited(
                "the supervisor link was dropped".into(),
            )),
            Ok(Ok(r)) => r.map_err(HandshakeError::Exited),
        }
    }
}

enum Route {
    Unbounded(mpsc::UnboundedSender<Frame>),
    Bounded(mpsc::Sender<Frame>),
}

/// Where the frames of one request arrive, in order; `None` once the link is closed.
#[derive(Debug)]
pub struct Replies(RepliesInner);

#[derive(Debug)]
enum RepliesInner {
    Unbounded(mpsc::UnboundedReceiver<Frame>),
    Bounded(mpsc::Receiver<Frame>),
}

impl Replies {
    /// The next frame of the request.
    pub async fn recv(&mut self) -> Option<Frame> {
        match &mut self.0 {
            RepliesInner::Unbounded(rx) => rx.recv().await,
            RepliesInner::Bounded(rx) => rx.recv().await,
        }
    }
}

struct Shared {
    label: String,
    writer: tokio::sync::Mutex<Option<Writer>>,
    routes: Mutex<HashMap<RequestId, Route>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Frames that must reach the supervisor before any later one (kills queued from `Drop`,
    /// where nothing can be awaited).
    urgent: Mutex<Vec<u8>>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection to one supervisor: requests multiplexed by id over one byte pipe pair, a reader
/// task routing each frame to whoever waits for its request.
///
/// Backend-neutral: anything that reaches a supervisor's stdin and stdout as
/// [`AsyncWrite`]/[`AsyncRead`] can use it (Docker's attach, a Kubernetes pod attach, a local
/// process's pipes). Cheap to clone; the reader task stops when the last clone is dropped or the
/// supervisor's output ends.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
    _reader: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("label", &self.shared.label)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Link {
    /// Starts the link over the supervisor's stdout (`reader`) and stdin (`writer`). `label`
    /// names the sandbox in errors and logs; `log` collects the supervisor's stderr (its last
    /// lines explain a supervisor that died before [`Handshake::wait`] saw it ready).
    pub fn start(
        label: impl Into<String>,
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + 'static,
        log: SupervisorLog,
    ) -> (Link, Handshake) {
        let shared = Arc::new(Shared {
            label: label.into(),
            writer: tokio::sync::Mutex::new(Some(Box::pin(writer))),
            routes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            urgent: Mutex::new(Vec::new()),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(read_loop(shared.clone(), reader, log, ready_tx));
        (
            Link {
                shared,
                _reader: Arc::new(AbortOnDrop(task)),
            },
            Handshake(ready_rx),
        )
    }

    /// Whether the link is closed: the supervisor's output ended (it died, or the sandbox was
    /// removed) or [`Link::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The label given at start.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// Closes the supervisor's stdin: it kills every process it started and exits. Nothing can
    /// be sent afterwards ([`Link::is_closed`] is true at once).
    pub async fn close(&self) {
        let writer = self.shared.writer.lock().await.take();
        self.shared.closed.store(true, Ordering::Release);
        if let Some(mut w) = writer {
            let _ = w.shutdown().await;
        }
    }

    /// A `Gone` error naming the sandbox.
    pub fn gone(&self) -> SandboxError {
        SandboxError::new(
            SandboxErrorKind::Gone,
            format!(
                "sandbox {} is gone (its supervisor connection closed)",
                self.shared.label
            ),
        )
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<RequestId, Route>> {
        lock(&self.shared.routes)
    }

    fn new_id(&self) -> RequestId {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request whose frames arrive on the returned [`Replies`] until a final one.
    ///
    /// `window: Some(n)` bounds the frames buffered for this request to `n`: the reader waits
    /// for the consumer, which back-pressures the supervisor — and every other request on this
    /// link, so use it only for a bulk transfer that is alone on the link (the export). Streams
    /// that share the link with others need their own flow control (credits) instead.
    pub async fn open(
        &self,
        request: &Request,
        body: &[u8],
        window: Option<usize>,
    ) -> Result<(RequestId, Replies), SandboxError> {
        let id = self.new_id();
        let replies = {
            let mut routes = self.routes();
            if self.is_closed() {
                return Err(self.gone());
            }
            match window {
                Some(cap) => {
                    let (tx, rx) = mpsc::channel(cap.max(1));
                    routes.insert(id, Route::Bounded(tx));
                    Replies(RepliesInner::Bounded(rx))
                }
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    routes.insert(id, Route::Unbounded(tx));
                    Replies(RepliesInner::Unbounded(rx))
                }
            }
        };
        if let Err(e) = self.send_raw(encode(id, request, body)).await {
            self.forget(id);
            return Err(e);
        }
        Ok((id, replies))
    }

    /// Sends a request and waits for its final frame.
    pub async fn call(&self, request: &Request, body: &[u8]) -> Result<Frame, SandboxError> {
        let (id, mut replies) = self.open(request, body, None).await?;
        while let Some(frame) = replies.recv().await {
            if frame.event.is_final() {
                return Ok(frame);
            }
        }
        self.forget(id);
        Err(self.gone())
    }

    /// Sends a frame under an existing request id (for requests that are streams: more frames
    /// of the same stream, host → supervisor), or a message that expects no reply under a fresh
    /// id (`id: None`).
    pub async fn send(
        &self,
        id: Option<RequestId>,
        request: &Request,
        body: &[u8],
    ) -> Result<(), SandboxError> {
        let id = id.unwrap_or_else(|| self.new_id());
        self.send_raw(encode(id, request, body)).await
    }

    /// Queues a frame that goes out before any later one, without waiting (for `Drop`), and
    /// flushes it from a spawned task when a runtime is there.
    pub fn send_soon(&self, request: &Request) {
        let id = self.new_id();
        lock(&self.shared.urgent).extend_from_slice(&encode(id, request, b""));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let link = self.clone();
            handle.spawn(async move {
                let _ = link.send_raw(Vec::new()).await;
            });
        }
    }

    /// Stops routing the frames of a request (they are dropped).
    pub fn forget(&self, id: RequestId) {
        self.routes().remove(&id);
    }

    /// Writes `bytes` (whole frames) to the supervisor, after any urgent ones.
    ///
    /// The write runs in a task of its own, so it is never cut short: a caller dropped mid-send
    /// (a tunnel's pump ending, a cancelled step) still leaves whole frames on the wire. A frame
    /// cut in two would make the supervisor read the next frames as the rest of its body.
    async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), SandboxError> {
        if self.is_closed() {
            return Err(self.gone());
        }
        let shared = self.shared.clone();
        let write = tokio::spawn(async move {
            let mut guard = shared.writer.lock().await;
            let urgent = std::mem::take(&mut *lock(&shared.urgent));
            if urgent.is_empty() && bytes.is_empty() {
                return Ok(true);
            }
            let Some(w) = guard.as_mut() else {
                return Ok(false);
            };
            w.write_all(&urgent).await?;
            w.write_all(&bytes).await?;
            w.flush().await.map(|()| true)
        });
        match write.await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(self.gone()),
            Ok(Err(e)) => Err(self.gone().with_source(e)),
            Err(e) => Err(self.gone().with_source(e)),
        }
    }

    // ---- the operations every sandbox needs ----

    /// Answers once the supervisor does.
    pub async fn ping(&self) -> Result<(), SandboxError> {
        let frame = self.call(&Request::Ping, b"").await?;
        match frame.event {
            Event::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes `content` to the workspace-relative `rel` (parents created; confined to the
    /// workspace by the supervisor). `shown` is the path as the caller gave it, for errors.
    pub async fn write_file(
        &self,
        rel: &str,
        content: &[u8],
        shown: &str,
    ) -> Result<(), SandboxError> {
        let frame = self
            .call(&Request::Write { path: rel.into() }, content)
            .await?;
        match frame.event {
            Event::Ok => Ok(()),
            other => Err(file_error(&other, shown)),
        }
    }

    /// Reads the workspace-relative `rel` (a regular file of at most `max` bytes).
    pub async fn read_file(&self, rel: &str, max: u64, shown: &str) -> Result<Bytes, SandboxError> {
        let frame = self
            .call(
                &Request::Read {
                    path: rel.into(),
                    max,
                },
                b"",
            )
            .await?;
        match frame.event {
            Event::Data => Ok(frame.body),
            other => Err(file_error(&other, shown)),
        }
    }

    /// The regular files under the workspace-relative directory `rel` ([`Request::List`]):
    /// the first `max`, and how many there are.
    pub async fn list_files(
        &self,
        rel: &str,
        max: usize,
        shown: &str,
    ) -> Result<FileListing, SandboxError> {
        let request = Request::List {
            path: rel.into(),
            max: u64::try_from(max).unwrap_or(u64::MAX),
        };
        let frame = self.call(&request, b"").await?;
        match frame.event {
            Event::Data => {
                #[derive(serde::Deserialize)]
                struct Listed {
                    files: Vec<(String, u64)>,
                    total: usize,
                }
                let listed: Listed = serde_json::from_slice(&frame.body).map_err(|e| {
                    SandboxError::new(
                        SandboxErrorKind::Backend,
                        format!("the supervisor's listing of /workspace/{rel} is malformed: {e}"),
                    )
                })?;
                Ok(FileListing {
                    files: listed
                        .files
                        .into_iter()
                        .map(|(path, size_bytes)| crate::inputs::InputFile { path, size_bytes })
                        .collect(),
                    total: listed.total,
                })
            }
            Event::Err {
                kind: ErrorKind::NotFound,
                ..
            } => Err(SandboxError::new(
                SandboxErrorKind::NotFound,
                format!("{shown} is not a directory"),
            )),
            other => Err(file_error(&other, shown)),
        }
    }

    /// Starts a service ([`Request::Service`]) and waits until it listens on every one of `ports`.
    pub async fn start_service(
        &self,
        name: &str,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        ports: Vec<u16>,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        let request = Request::Service {
            name: name.to_string(),
            argv,
            env,
            ports,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.call(&request, b"").await?.event {
            Event::Ok => Ok(()),
            Event::Err { message, .. } => {
                Err(SandboxError::new(SandboxErrorKind::Backend, message))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Streams the workspace as a tar (made by the supervisor, back-pressured).
    pub async fn export(&self) -> Result<TarStream, SandboxError> {
        let (id, replies) = self.open(&Request::Export, b"", Some(16)).await?;
        let link = self.clone();
        let stream = futures::stream::unfold(Some(replies), move |replies| {
            let link = link.clone();
            async move {
                let mut replies = replies?;
                loop {
                    let Some(frame) = replies.recv().await else {
                        link.forget(id);
                        let err = SandboxError::new(
                            SandboxErrorKind::Gone,
                            format!(
                                "sandbox {} went away during the workspace export",
                                link.label()
                            ),
                        );
                        return Some((Err(err), None));
                    };
                    match frame.event {
                        Event::Chunk => return Some((Ok(frame.body), Some(replies))),
                        Event::Ok => return None,
                        Event::Err { message, .. } => {
                            let err = SandboxError::new(SandboxErrorKind::Backend, message);
                            return Some((Err(err), None));
                        }
                        _ => continue,
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    /// Runs a process to its end, streaming its output to `output`.
    ///
    /// A process that exits non-zero, times out, is cancelled, runs out of memory or floods its
    /// output is an `Ok` result saying so; `Err` means the link or the supervisor failed.
    /// Dropping the future kills the process (the kill reaches the supervisor before any later
    /// request).
    pub async fn exec(
        &self,
        request: &ExecRequest,
        output: OutputSink,
    ) -> Result<StepResult, SandboxError> {
        let started = Instant::now();
        if request.cancel.is_cancelled() {
            return Ok(StepResult::cancelled(started.elapsed()));
        }
        let timeout_ms = u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX);
        let run = Request::Run {
            argv: request.argv.clone(),
            cwd: request.cwd.clone().unwrap_or_default(),
            env: request.env.iter().cloned().collect(),
            timeout_ms: timeout_ms.max(1),
            max_output: Some(request.max_output_bytes),
        };
        let (id, mut replies) = self.open(&run, b"", None).await?;
        let mut guard = KillOnDrop {
            link: self.clone(),
            id,
            armed: true,
        };
        let mut stdout = Tail::new(request.tail_bytes);
        let mut stderr = Tail::new(request.tail_bytes);
        // `sleep` saturates: a timeout too large for an `Instant` (user input) must not panic.
        let host_deadline = tokio::time::sleep(request.timeout.saturating_add(HOST_GRACE));
        tokio::pin!(host_deadline);
        let cancel = request.cancel.clone();
        let mut cancel_sent = false;
        // What the errors below name.
        let (sandbox, program) = (
            self.label(),
            request.argv.first().map_or("a process", String::as_str),
        );
        loop {
            tokio::select! {
                biased;
                frame = replies.recv() => {
                    let Some(frame) = frame else {
                        guard.armed = false;
                        return Err(SandboxError::new(
                            SandboxErrorKind::Gone,
                            format!(
                                "sandbox {sandbox} died while running {program} (removed or killed)"
                            ),
                        ));
                    };
                    match frame.event {
                        Event::Out { stream } => {
                            match stream {
                                OutputStream::Stdout => stdout.push(&frame.body),
                                OutputStream::Stderr => stderr.push(&frame.body),
                            }
                            output(stream, frame.body);
                        }
                        Event::Exit { code, termination } => {
                            guard.armed = false;
                            let capped = termination == Termination::OutputLimit;
                            let cap = request.tail_bytes as u64;
                            return Ok(StepResult {
                                exit_code: code,
                                termination,
                                stdout_tail: stdout.text(),
                                stderr_tail: stderr.text(),
                                stdout_truncated: stdout.total > cap || (capped && stdout.total > 0),
                                stderr_truncated: stderr.total > cap || (capped && stderr.total > 0),
                                duration: started.elapsed(),
                                python: None,
                            });
                        }
                        Event::Err { message, .. } => {
                            guard.armed = false;
                            return Err(SandboxError::new(SandboxErrorKind::Backend, message));
                        }
                        _ => {}
                    }
                }
                _ = cancel.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    let kill = Request::Kill { target: id, reason: KillReason::Cancelled };
                    self.send(None, &kill, b"").await?;
                }
                () = &mut host_deadline => {
                    return Err(SandboxError::new(
                        SandboxErrorKind::Backend,
                        format!(
                            "the supervisor in {sandbox} did not report the end of {program} in time"
                        ),
                    ));
                }
            }
        }
    }
}

/// Kills a process whose `exec` future is dropped before it ended.
struct KillOnDrop {
    link: Link,
    id: RequestId,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.link.forget(self.id);
        // Ahead of the next request: a late kill must never hit the process that follows.
        self.link.send_soon(&Request::Kill {
            target: self.id,
            reason: KillReason::Cancelled,
        });
    }
}

fn unexpected(event: &Event) -> SandboxError {
    match event {
        Event::Err { message, .. } => SandboxError::new(SandboxErrorKind::Backend, message.clone()),
        other => SandboxError::new(
            SandboxErrorKind::Backend,
            format!("the supervisor answered {other:?}"),
        ),
    }
}

/// The error for a failed file operation on `path`.
fn file_error(event: &Event, path: &str) -> SandboxError {
    let Event::Err { kind, message } = event else {
        return unexpected(event);
    };
    match kind {
        ErrorKind::PathRefused => SandboxError::path_refused(path, message),
        ErrorKind::NotFound => SandboxError::new(
            SandboxErrorKind::NotFound,
            format!("{path:?}: no such file in /workspace"),
        ),
        ErrorKind::TooLarge => {
            SandboxError::new(SandboxErrorKind::TooLarge, format!("{path:?}: {message}"))
        }
        ErrorKind::Invalid => {
            SandboxError::new(SandboxErrorKind::Invalid, format!("{path:?}: {message}"))
        }
        ErrorKind::Backend | ErrorKind::Refused => {
            SandboxError::new(SandboxErrorKind::Backend, message.clone())
        }
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

impl Shared {
    async fn route(&self, frame: Frame) {
        let Some(id) = frame.id else {
            return;
        };
        let is_final = frame.event.is_final();
        let bounded = {
            let mut routes = lock(&self.routes);
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
            lock(&self.routes).remove(&id);
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut reader: impl AsyncRead + Send + Unpin,
    log: SupervisorLog,
    ready_tx: oneshot::Sender<Result<Ready, String>>,
) {
    let mut ready_tx = Some(ready_tx);
    let mut decoder = FrameDecoder::default();
    let mut failure: Option<String> = None;
    'read: loop {
        match reader.read_buf(decoder.buffer(64 << 10)).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                failure = Some(format!("the supervisor's output failed: {e}"));
                break;
            }
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(Frame {
                    event: Event::Ready(ready),
                    ..
                })) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(Ok(ready));
                    }
                }
                Ok(Some(frame)) => shared.route(frame).await,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break 'read;
                }
            }
        }
    }
    if let Some(f) = &failure {
        tracing::warn!(sandbox = %shared.label, "supervisor connection lost: {f}");
    }
    shared.closed.store(true, Ordering::Release);
    lock(&shared.routes).clear();
    if let Some(tx) = ready_tx.take() {
        let why = failure.unwrap_or_else(|| {
            let tail = log.tail();
            if tail.is_empty() {
                "the supervisor exited before it came up".to_string()
            } else {
                format!("the supervisor exited before it came up: {tail}")
            }
        });
        let _ = tx.send(Err(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};

    /// Reads one request frame as the supervisor does: a header line, then `n` bytes.
    async fn read_request(
        r: &mut (impl tokio::io::AsyncBufRead + Unpin),
    ) -> (serde_json::Value, Vec<u8>) {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let header: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut body = vec![0u8; header["n"].as_u64().unwrap_or(0) as usize];
        r.read_exact(&mut body).await.unwrap();
        (header, body)
    }

    #[tokio::test]
    async fn a_send_given_up_midway_still_leaves_whole_frames_on_the_wire() {
        // The supervisor's stdin holds 1 KiB: a 64 KiB frame is written in many pieces.
        let (host_w, sup_r) = tokio::io::duplex(1024);
        let (_sup_w, host_r) = tokio::io::duplex(1024);
        let (link, _handshake) = Link::start("t", host_r, host_w, SupervisorLog::new("t"));
        let body = vec![7u8; 64 << 10];
        let given_up = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            link.send(Some(1), &Request::Data, &body),
        )
        .await;
        assert!(given_up.is_err(), "the send could not have finished");
        let next = tokio::spawn({
            let link = link.clone();
            async move { link.send(Some(2), &Request::Close, b"").await }
        });
        let mut sup_r = tokio::io::BufReader::new(sup_r);
        let bound = std::time::Duration::from_secs(10);
        let ((first, first_body), (second, _)) = tokio::time::timeout(bound, async {
            (
                read_request(&mut sup_r).await,
                read_request(&mut sup_r).await,
            )
        })
        .await
        .expect("two whole frames (a cut one leaves the reader waiting for its body)");
        assert_eq!(
            (first["id"].as_u64(), first["op"].as_str()),
            (Some(1), Some("data"))
        );
        assert!(first_body == body, "the first frame's body is whole");
        assert_eq!(
            (second["id"].as_u64(), second["op"].as_str()),
            (Some(2), Some("close"))
        );
        next.await.unwrap().unwrap();
    }

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

    #[test]
    fn stderr_lines_are_kept() {
        let log = SupervisorLog::new("t");
        log.push(b"one\ntw");
        log.push(b"o\nthree");
        assert_eq!(log.tail(), "one | two | three");
    }
}
