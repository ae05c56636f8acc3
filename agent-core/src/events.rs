//! Job event logs: numbering, batched persistence, live fan-out and replay-then-follow
//! subscriptions.
//!
//! Every event of a job gets the next sequence number at once ([`EventSink::emit`] never waits for
//! the store), and events reach the writer in sequence order even from concurrent emitters.
//! A writer task per job appends events to the [`JobStore`] in batches and only then broadcasts
//! them, so a subscriber that first listens and then reads the store misses nothing: anything not
//! yet stored has not been broadcast yet.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::warn;

use crate::error::Result;
use crate::job::{EventKind, JobEvent, JobId};
use crate::store::JobStore;

/// How many events a replay reads from the store per query.
const REPLAY_PAGE: usize = 500;

/// The most events the writer appends in one batch.
const WRITE_BATCH: usize = 1024;

enum Command {
    Event(JobEvent),
    Flush(oneshot::Sender<()>),
}

/// Emits a job's events. Cheap to clone; clones may emit from several threads at once.
#[derive(Clone)]
pub struct EventSink {
    job_id: JobId,
    /// The last sequence number handed out (and the output counted against the log cap). Held
    /// while the event is queued, so that events reach the writer in sequence order even when
    /// emitted concurrently (the store refuses a batch out of order, and a live follower skips
    /// an event numbered below one it has seen).
    seq: Arc<Mutex<SinkState>>,
    tx: mpsc::UnboundedSender<Command>,
    cap: Option<LogCap>,
}

/// A cap on the step output a job's log keeps (see [`EventSink::with_log_cap`]).
#[derive(Clone, Debug)]
pub struct LogCap {
    /// Bytes of output text kept per job.
    pub max_bytes: u64,
    /// Counts the bytes not kept (shared by every job of a manager).
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Default)]
struct SinkState {
    seq: u64,
    output_bytes: u64,
    truncated: bool,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("job_id", &self.job_id)
            .field("seq", &self.last_seq().seq)
            .finish()
    }
}

impl EventSink {
    /// Starts a writer task for `job_id` whose next event gets `last_seq + 1`. Events are appended
    /// to `store` and then sent to `live`.
    pub fn spawn(
        job_id: JobId,
        last_seq: u64,
        store: Arc<dyn JobStore>,
        live: broadcast::Sender<JobEvent>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(job_id, rx, store, live));
        Self {
            job_id,
            seq: Arc::new(Mutex::new(SinkState {
                seq: last_seq,
                ..SinkState::default()
            })),
            tx,
            cap: None,
        }
    }

    /// Keeps at most `cap.max_bytes` of step output ([`EventKind::Output`] text) in this job's
    /// log: the output that crosses the cap is cut there and followed by one
    /// [`EventKind::Log`] marker saying so; later output is not stored (nor broadcast) and is
    /// added to `cap.dropped`. Other events are always kept. The count starts at zero for each
    /// sink (a job's run).
    pub fn with_log_cap(mut self, cap: LogCap) -> Self {
        self.cap = Some(cap);
        self
    }

    fn last_seq(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // The guarded section cannot panic; recover the number rather than cascading.
        self.seq.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job these events belong to.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// Records an event; returns its sequence number. Never waits for the store (only for other
    /// emitters of the same job, for the moment it takes to queue an event).
    /// An output event over the log cap is not stored; its number is then the last one handed
    /// out.
    pub fn emit(&self, kind: EventKind) -> u64 {
        let mut state = self.last_seq();
        let (kind, marker) = match self.capped(&mut state, kind) {
            Some(kept) => kept,
            None => return state.seq,
        };
        let mut seq = state.seq;
        for kind in std::iter::once(kind).chain(marker) {
            seq += 1;
            let event = JobEvent {
                job_id: self.job_id,
                seq,
                at: Utc::now(),
                kind,
            };
            // The writer only stops when every sink is dropped, so a send cannot fail while
            // `self` exists; if it somehow does, the event is lost and logged rather than
            // panicking.
            if self.tx.send(Command::Event(event)).is_err() {
                warn!(job_id = %self.job_id, seq, "event writer is gone; event dropped");
            }
        }
        state.seq = seq;
        seq
    }

    /// What of `kind` the log cap lets through (`None`: nothing), and the marker to add after it
    /// when it is the event that reaches the cap.
    fn capped(
        &self,
        state: &mut SinkState,
        kind: EventKind,
    ) -> Option<(EventKind, Option<EventKind>)> {
        let Some(cap) = &self.cap else {
            return Some((kind, None));
        };
        let EventKind::Output {
            index,
            stream,
            mut text,
        } = kind
        else {
            return Some((kind, None));
        };
        let len = text.len() as u64;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if state.truncated {
            cap.dropped.fetch_add(len, relaxed);
            return None;
        }
        let room = cap.max_bytes.saturating_sub(state.output_bytes);
        if len <= room {
            state.output_bytes += len;
            return Some((
                EventKind::Output {
                    index,
                    stream,
                    text,
                },
                None,
            ));
        }
        let mut keep = usize::try_from(room).unwrap_or(usize::MAX).min(text.len());
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        text.truncate(keep);
        state.output_bytes += keep as u64;
        state.truncated = true;
        cap.dropped.fetch_add(len - keep as u64, relaxed);
        let marker = EventKind::Log {
            message: format!(
                "[log truncated: this job's log keeps at most {} bytes of step output \
                 (AGENT_MAX_LOG_BYTES); later output is not stored here — the steps' result \
                 tails and the workspace ZIP are unaffected]",
                cap.max_bytes
            ),
        };
        if text.is_empty() {
            return Some((marker, None));
        }
        Some((
            EventKind::Output {
                index,
                stream,
                text,
            },
            Some(marker),
        ))
    }

    /// Waits until every event emitted so far is stored and broadcast.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_loop(
    job_id: JobId,
    mut rx: mpsc::UnboundedReceiver<Command>,
    store: Arc<dyn JobStore>,
    live: broadcast::Sender<JobEvent>,
) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Event(e) => batch.push(e),
                Command::Flush(done) => flushes.push(done),
            }
            if batch.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = append_with_retry(&*store, job_id, &batch).await {
                warn!(%job_id, error = %e, events = batch.len(), "could not store job events");
            }
            for event in batch.drain(..) {
                // No receivers is fine.
                let _ = live.send(event);
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn append_with_retry(
    store: &dyn JobStore,
    job_id: JobId,
    batch: &[JobEvent],
) -> Result<(), crate::store::StoreError> {
    let mut delay = std::time::Duration::from_millis(5);
    for _ in 0..5 {
        match store.append_events(job_id, batch).await {
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    store.append_events(job_id, batch).await
}

/// Replays a job's stored events with `seq > after`, then follows `live` until the final status
/// event (or until `live` closes). Events are delivered once each, in order.
pub(crate) fn replay_then_follow(
    store: Arc<dyn JobStore>,
    job_id: JobId,
    after: u64,
    mut live: broadcast::Receiver<JobEvent>,
    already_final: bool,
) -> BoxStream<'static, Result<JobEvent>> {
    let stream = async_stream(move |tx| async move {
        let mut last = after;
        if replay(&*store, job_id, &mut last, &tx).await.is_break() || already_final {
            return;
        }
        loop {
            match live.recv().await {
                Ok(event) if event.job_id == job_id && event.seq > last => {
                    last = event.seq;
                    let is_final = event.is_final();
                    if tx.send(Ok(event)).await.is_err() || is_final {
                        return;
                    }
                }
                Ok(_) => {}
                // Fell behind the live channel: catch up from the store.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if replay(&*store, job_id, &mut last, &tx).await.is_break() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    stream.boxed()
}

/// Sends stored events with `seq > *last`; `Break` when the receiver is gone, the final event was
/// sent, or the store failed (the error is sent).
async fn replay(
    store: &dyn JobStore,
    job_id: JobId,
    last: &mut u64,
    tx: &mpsc::Sender<Result<JobEvent>>,
) -> ControlFlow<()> {
    loop {
        let page = match store.events(job_id, *last, REPLAY_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return ControlFlow::Break(());
            }
        };
        let n = page.len();
        for event in page {
            *last = event.seq;
            let is_final = event.is_final();
            if tx.send(Ok(event)).await.is_err() || is_final {
                return ControlFlow::Break(());
            }
        }
        if n < REPLAY_PAGE {
            return ControlFlow::Continue(());
        }
    }
}

/// A tiny channel-backed stream generator (avoids a macro dependency).
fn async_stream<T, F, Fut>(f: F) -> impl futures::Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(f(tx));
    let guard = AbortOnDrop(task);
    stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|item| (item, (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Job, JobSpec, Step};
    use crate::store::memory::MemoryStore;

    /// Output past the cap is cut at a character boundary, followed by one marker, and the rest
    /// is counted, not stored; other events still are.
    #[tokio::test]
    async fn the_log_cap_truncates_output_with_one_marker_and_counts_the_rest() {
        use crate::job::OutputStream;
        let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
        let job = Job::new(JobId::new(), JobSpec::from_steps(vec![Step::shell("true")]));
        store.insert_job(&job).await.unwrap();
        let (live, _rx) = broadcast::channel(64);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sink = EventSink::spawn(job.id, 0, store.clone(), live).with_log_cap(LogCap {
            max_bytes: 10,
            dropped: dropped.clone(),
        });
        let out = |text: &str| EventKind::Output {
            index: 0,
            stream: OutputStream::Stdout,
            text: text.to_string(),
        };
        sink.emit(out("12345678"));
        // "é" is two bytes: the cut falls before it, not inside it.
        sink.emit(out("9é-more"));
        sink.emit(out("never stored"));
        sink.emit(EventKind::Log {
            message: "still kept".into(),
        });
        sink.flush().await;
        let stored = store.events(job.id, 0, 100).await.unwrap();
        let texts: Vec<String> = stored
            .iter()
            .map(|e| match &e.kind {
                EventKind::Output { text, .. } => format!("out:{text}"),
                EventKind::Log { message } => format!("log:{message}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert_eq!(texts[0], "out:12345678");
        assert_eq!(texts[1], "out:9");
        assert!(texts[2].starts_with("log:[log truncated"), "{texts:?}");
        assert!(texts[2].contains("AGENT_MAX_LOG_BYTES"), "{texts:?}");
        assert_eq!(texts[3], "log:still kept");
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(
            dropped.load(std::sync::atomic::Ordering::Relaxed),
            ("é-more".len() + "never stored".len()) as u64
        );
    }

    /// Emitters on several threads at once (as a sandbox's stdout and stderr readers are): every
    /// event is stored and broadcast exactly once, in sequence order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_emitters_never_reorder_or_lose_events() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 10_000;
        let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
        let job = Job::new(JobId::new(), JobSpec::from_steps(vec![Step::shell("true")]));
        store.insert_job(&job).await.unwrap();
        let (live, mut rx) = broadcast::channel((THREADS * PER_THREAD) as usize + 16);
        let sink = EventSink::spawn(job.id, 0, store.clone(), live);
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for _ in 0..PER_THREAD {
                        sink.emit(EventKind::Log {
                            message: String::new(),
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        sink.flush().await;
        let total = THREADS * PER_THREAD;
        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push(event.seq);
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "broadcast order");
        let stored = store.events(job.id, 0, usize::MAX).await.unwrap();
        assert_eq!(stored.len() as u64, total, "every event is stored");
        assert_eq!(store.last_seq(job.id).await.unwrap(), total);
    }
}
