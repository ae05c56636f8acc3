//! The wire format: frames, the typed requests and events they carry, and the decoder.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::job::{OutputStream, Termination};

/// The longest header accepted from the supervisor.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// The longest body accepted from the supervisor (a [`Request::Read`] answer is at most
/// [`MAX_GET_FILE_BYTES`](crate::executor::MAX_GET_FILE_BYTES); other bodies are ≤ 1 MiB).
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Names one request and every frame that belongs to it (chosen by the host, unique per link).
pub type RequestId = u64;

/// Why a step is killed, as sent in [`Request::Kill`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KillReason {
    /// The job or the caller cancelled it.
    Cancelled,
    /// The host's clock says it ran too long.
    TimedOut,
}

/// A request, host → supervisor: the header's `"op"` and its fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Runs a process. Answered by [`Event::Started`], [`Event::Out`]…, then [`Event::Exit`] (or
    /// [`Event::Err`] when the supervisor itself failed).
    Run {
        /// Program and arguments (`argv[0]` is looked up in `PATH`).
        argv: Vec<String>,
        /// Working directory relative to the workspace root (`""`: the root).
        cwd: String,
        /// Variables added to the supervisor's base environment.
        env: BTreeMap<String, String>,
        /// Killed after this many milliseconds (`term: timed_out`).
        timeout_ms: u64,
        /// Stopped once stdout + stderr exceed this many bytes (`term: output_limit`).
        max_output: Option<u64>,
    },
    /// Kills the process of request `target` and everything it started. No answer; the target
    /// ends with [`Event::Exit`].
    Kill {
        /// The [`Request::Run`] to kill.
        target: RequestId,
        /// Reported as the target's termination.
        reason: KillReason,
    },
    /// Writes the body to a file under the workspace (parents created, confined). Answered by
    /// [`Event::Ok`] or [`Event::Err`].
    Write {
        /// Workspace-relative path (already normalised by the host).
        path: String,
    },
    /// Reads a regular file under the workspace. Answered by [`Event::Data`] (the file is the
    /// body) or [`Event::Err`].
    Read {
        /// Workspace-relative path.
        path: String,
        /// Refuse files larger than this (`too_large`).
        max: u64,
    },
    /// Streams the workspace as a tar: [`Event::Chunk`]s, then [`Event::Ok`] or [`Event::Err`].
    Export,
    /// Lists the regular files under a workspace directory without reading them. Answered by
    /// [`Event::Data`] whose body is `{"files": [[path, size], …], "total": n}` (the first
    /// `max` in the export's order, paths relative to the directory; links neither followed
    /// nor listed), or [`Event::Err`] (`not_found`: no such directory).
    List {
        /// Workspace-relative directory (`""`: the workspace).
        path: String,
        /// The most files named (all are counted in `total`).
        max: u64,
    },
    /// Answered by [`Event::Ok`].
    Ping,
    /// Opens a tunnel: a byte stream to `127.0.0.1:port` inside the sandbox. Answered by
    /// [`Event::Started`] (connected) or a final [`Event::Err`] ([`ErrorKind::Refused`]: nothing
    /// listens); then [`Event::Chunk`]s (the service's bytes, at most `window` uncredited),
    /// [`Event::Credit`]s, [`Event::Eof`], and a final [`Event::Ok`] or [`Event::Err`]. The host
    /// sends [`Request::Data`], [`Request::Credit`], [`Request::Close`] and [`Request::Abort`]
    /// under the same id.
    Connect {
        /// The TCP port on the sandbox's loopback.
        port: u16,
        /// Bytes either side may send ahead of the other's credits.
        window: u64,
    },
    /// Opens a tunnel handed over on a connection of its own: the supervisor connects to the
    /// unix socket `path` (one the host listens on, as the sandbox sees it) and writes `key` and
    /// a newline there, then connects to `127.0.0.1:port`, and copies bytes both ways. Answered by
    /// [`Event::Started`] once both are connected, or a final [`Event::Err`]
    /// ([`ErrorKind::Refused`]: nothing listens on the port; [`ErrorKind::Backend`]: the socket
    /// cannot be reached), then a final [`Event::Ok`] once both directions are done.
    Handoff {
        /// The TCP port on the sandbox's loopback.
        port: u16,
        /// The host's listening unix socket, as a path inside the sandbox.
        path: String,
        /// Names this tunnel to the host's listener (random, one use).
        key: String,
    },
    /// Tunnel data for the service (the body), at most the window ahead of its credits.
    Data,
    /// The host has taken `bytes` of the tunnel's data: the supervisor may send that much more.
    Credit {
        /// How many bytes.
        bytes: u64,
    },
    /// No more tunnel data from the host: the socket's write side is shut after what came before.
    Close,
    /// Ends a tunnel at once, both directions.
    Abort,
    /// Starts a service (a desktop, Jupyter Lab): a long-lived process in a session of its own
    /// that killing a step spares and that ends with the sandbox. Answered by [`Event::Started`],
    /// then a final [`Event::Ok`] once `127.0.0.1:port` accepts connections for each of `ports`,
    /// or [`Event::Err`]
    /// (it exited first, or did not listen within `timeout_ms`; the message has its log's tail).
    Service {
        /// A short alphanumeric name (its log is `/tmp/agent-service-<name>-<pid>.log`).
        name: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Variables added to the supervisor's base environment.
        env: BTreeMap<String, String>,
        /// The ports it is ready once it listens on.
        ports: Vec<u16>,
        /// How long it may take to listen.
        timeout_ms: u64,
    },
}

/// What kind of failure an [`Event::Err`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// A path leaves the workspace (`..`, a link pointing out).
    PathRefused,
    /// No such file.
    NotFound,
    /// Too large, or no space left.
    TooLarge,
    /// The request cannot be done (not a regular file, unknown operation…).
    Invalid,
    /// The supervisor failed.
    Backend,
    /// A connection was refused (nothing listens on the port).
    Refused,
}

/// How a process ended, as the supervisor says it (`term`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Term {
    Exited,
    TimedOut,
    Cancelled,
    OutputLimit,
    Oom,
}

impl From<Term> for Termination {
    fn from(t: Term) -> Self {
        match t {
            Term::Exited => Termination::Exited,
            Term::TimedOut => Termination::TimedOut,
            Term::Cancelled => Termination::Cancelled,
            Term::OutputLimit => Termination::OutputLimit,
            Term::Oom => Termination::OutOfMemory,
        }
    }
}

/// What the supervisor said when it came up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ready {
    /// Its process id.
    pub pid: Option<u32>,
    /// The uid it runs as.
    pub uid: Option<u32>,
    /// The Python version (`"3.11"`).
    pub python: Option<String>,
    /// Whether out-of-memory kills can be detected (a memory cgroup counter is readable).
    pub oom: bool,
}

/// An event, supervisor → host: the header's `"ev"` and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The supervisor is up (the first frame, without a request id).
    Ready(Ready),
    /// The process of a [`Request::Run`] started.
    Started {
        /// Its pid (inside the sandbox).
        pid: Option<u32>,
    },
    /// Output of a [`Request::Run`]; the body is the bytes.
    Out {
        /// Which stream.
        stream: OutputStream,
    },
    /// The process of a [`Request::Run`] ended (final).
    Exit {
        /// Exit code, 128+N for signal N.
        code: i32,
        /// How it ended.
        termination: Termination,
    },
    /// Done (final).
    Ok,
    /// A file's content is the body (final).
    Data,
    /// A piece of a stream (an export's tar bytes, a tunnel's data) is the body.
    Chunk,
    /// A tunnel's service took `bytes` more of the host's data: the host may send that much more.
    Credit {
        /// How many bytes.
        bytes: u64,
    },
    /// A tunnel's service shut its side: no more [`Event::Chunk`]s.
    Eof,
    /// The request failed (final).
    Err {
        /// What kind of failure.
        kind: ErrorKind,
        /// For people.
        message: String,
    },
}

impl Event {
    /// Whether this event ends its request (no more frames follow for its id).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Event::Exit { .. } | Event::Ok | Event::Data | Event::Err { .. }
        )
    }
}

/// The kinds of event (`"ev"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EventKind {
    Ready,
    Started,
    Out,
    Exit,
    Ok,
    Data,
    Chunk,
    Credit,
    Eof,
    Err,
}

/// An event header as it is on the wire: the kind and every field any kind may carry.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    id: Option<RequestId>,
    ev: EventKind,
    #[serde(default)]
    n: usize,
    #[serde(default)]
    s: u8,
    #[serde(default)]
    code: i32,
    #[serde(default)]
    term: Option<Term>,
    #[serde(default)]
    kind: Option<ErrorKind>,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    python: Option<String>,
    #[serde(default)]
    oom: bool,
    #[serde(default)]
    bytes: u64,
}

impl RawEvent {
    fn into_event(self) -> Result<Event, String> {
        Ok(match self.ev {
            EventKind::Ready => Event::Ready(Ready {
                pid: self.pid,
                uid: self.uid,
                python: self.python,
                oom: self.oom,
            }),
            EventKind::Started => Event::Started { pid: self.pid },
            EventKind::Out => Event::Out {
                stream: match self.s {
                    1 => OutputStream::Stdout,
                    2 => OutputStream::Stderr,
                    s => return Err(format!("output on unknown stream {s}")),
                },
            },
            EventKind::Exit => Event::Exit {
                code: self.code,
                termination: self.term.ok_or("an exit without `term`")?.into(),
            },
            EventKind::Ok => Event::Ok,
            EventKind::Data => Event::Data,
            EventKind::Chunk => Event::Chunk,
            EventKind::Credit => Event::Credit { bytes: self.bytes },
            EventKind::Eof => Event::Eof,
            EventKind::Err => Event::Err {
                kind: self.kind.unwrap_or(ErrorKind::Backend),
                message: self.msg.unwrap_or_else(|| "failed".to_string()),
            },
        })
    }
}

/// One frame from the supervisor: its request id (none for [`Event::Ready`]), event and body.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Frame {
    /// The request it belongs to.
    pub id: Option<RequestId>,
    /// What it says.
    pub event: Event,
    /// The raw body (output bytes, file content, tar bytes).
    pub body: Bytes,
}

/// Reassembles frames from bytes as they arrive, in whatever pieces.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    pending: Option<(Option<RequestId>, Event, usize)>,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl FrameDecoder {
    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read more bytes into, with room for at least `min` more.
    pub(crate) fn buffer(&mut self, min: usize) -> &mut BytesMut {
        let want = match &self.pending {
            Some((_, _, need)) => need.saturating_sub(self.buf.len()).max(min),
            None => min,
        };
        self.buf.reserve(want);
        &mut self.buf
    }

    /// The next complete frame, if any; `Err` when the supervisor broke the protocol (the link
    /// cannot continue).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.pending.is_none() {
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_HEADER_BYTES {
                    return Err("the supervisor sent an over-long header".into());
                }
                return Ok(None);
            };
            let line = self.buf.split_to(pos + 1);
            let head = &line[..pos];
            let bad = |e: &dyn std::fmt::Display| {
                format!(
                    "the supervisor sent a bad header ({e}): {:?}",
                    String::from_utf8_lossy(&head[..head.len().min(200)])
                )
            };
            let raw: RawEvent = serde_json::from_slice(head).map_err(|e| bad(&e))?;
            if raw.n > MAX_BODY_BYTES {
                return Err(bad(&format!("a body of {} bytes", raw.n)));
            }
            let (id, n) = (raw.id, raw.n);
            let event = raw.into_event().map_err(|e| bad(&e))?;
            self.pending = Some((id, event, n));
        }
        let need = self.pending.as_ref().map_or(0, |p| p.2);
        if self.buf.len() < need {
            return Ok(None);
        }
        let body = self.buf.split_to(need).freeze();
        let Some((id, event, _)) = self.pending.take() else {
            return Ok(None);
        };
        if self.buf.is_empty() && self.buf.capacity() > (1 << 20) {
            self.buf = BytesMut::new();
        }
        Ok(Some(Frame { id, event, body }))
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: RequestId,
    #[serde(flatten)]
    request: &'a Request,
    #[serde(skip_serializing_if = "is_zero")]
    n: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Encodes a request frame: the header line (with `"id"`, and `"n"` when there is a body), then
/// the body.
pub fn encode(id: RequestId, request: &Request, body: &[u8]) -> Vec<u8> {
    let envelope = Envelope {
        id,
        request,
        n: body.len(),
    };
    // Serialising plain strings, integers and maps cannot fail.
    let mut out = serde_json::to_vec(&envelope).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let wire = b"{\"ev\":\"ready\",\"uid\":1000,\"oom\":true}\n{\"id\":3,\"ev\":\"out\",\"s\":1,\"n\":5}\nhel\nl{\"id\":3,\"ev\":\"exit\",\"code\":137,\"term\":\"timed_out\"}\n";
        for split in 0..wire.len() {
            let mut dec = FrameDecoder::default();
            let mut frames = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                dec.push(part);
                while let Some(f) = dec.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 3, "split at {split}");
            match &frames[0].event {
                Event::Ready(r) => {
                    assert_eq!(r.uid, Some(1000));
                    assert!(r.oom);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(frames[1].id, Some(3));
            assert_eq!(
                frames[1].event,
                Event::Out {
                    stream: OutputStream::Stdout
                }
            );
            assert_eq!(&frames[1].body[..], b"hel\nl");
            assert_eq!(
                frames[2].event,
                Event::Exit {
                    code: 137,
                    termination: Termination::TimedOut
                }
            );
            assert!(frames[2].event.is_final());
            assert!(!frames[1].event.is_final());
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        for wire in [
            &b"not json\n"[..],
            b"{\"ev\":\"nonsense\"}\n",
            b"{\"id\":1,\"ev\":\"out\",\"s\":3}\n",
            b"{\"id\":1,\"ev\":\"exit\",\"code\":0}\n",
            b"{\"id\":1,\"ev\":\"data\",\"n\":99999999999}\n",
        ] {
            let mut dec = FrameDecoder::default();
            dec.push(wire);
            assert!(
                dec.next_frame().is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut dec = FrameDecoder::default();
        dec.push(&vec![b'x'; MAX_HEADER_BYTES + 1]);
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn errors_carry_kind_and_message() {
        let mut dec = FrameDecoder::default();
        dec.push(b"{\"id\":9,\"ev\":\"err\",\"kind\":\"path_refused\",\"msg\":\"nope\"}\n");
        let f = dec.next_frame().unwrap().unwrap();
        assert_eq!(
            f.event,
            Event::Err {
                kind: ErrorKind::PathRefused,
                message: "nope".into()
            }
        );
    }

    #[test]
    fn requests_carry_op_id_and_length() {
        let out = encode(7, &Request::Write { path: "a".into() }, b"xyz");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once('\n').unwrap();
        let v: serde_json::Value = serde_json::from_str(head).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 7, "op": "write", "path": "a", "n": 3})
        );
        assert_eq!(body, "xyz");

        let out = encode(8, &Request::Ping, b"");
        assert_eq!(out, b"{\"id\":8,\"op\":\"ping\"}\n");
        let out = encode(
            9,
            &Request::Kill {
                target: 3,
                reason: KillReason::Cancelled,
            },
            b"",
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 9, "op": "kill", "target": 3, "reason": "cancelled"})
        );
    }
}
