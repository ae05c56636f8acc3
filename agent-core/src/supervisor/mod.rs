//! The sandbox supervisor and the framed protocol spoken with it, independent of any backend.
//!
//! Every sandbox runs one long-lived **supervisor** ([`SOURCE`], a Python program using only
//! built-in modules, run as `python3 -I -S -c <SOURCE> contained`). It starts processes, streams
//! their output, enforces timeouts, output caps and kills, and reads and writes files confined
//! to the workspace. The host talks to it over its stdin and stdout through a [`Link`], which
//! needs nothing but an [`AsyncRead`](tokio::io::AsyncRead) and an
//! [`AsyncWrite`](tokio::io::AsyncWrite): Docker's attach stream, a Kubernetes pod attach, or a
//! local process's pipes ([`LocalSupervisor`], for tests — **not** a sandbox) all work the same.
//!
//! # Frame format
//!
//! ```text
//! frame  = header "\n" body
//! header = one line of UTF-8 JSON, an object; never contains a raw newline
//! body   = exactly `n` raw bytes when the header has "n" (absent or 0: no body)
//! ```
//!
//! Bodies are raw bytes (output, file content, tar data): no base64, no escaping. Headers are at
//! most [`MAX_HEADER_BYTES`] and bodies from the supervisor at most [`MAX_BODY_BYTES`]; a frame
//! breaking these rules, or a header that does not parse, ends the link.
//!
//! - **Host → supervisor** headers are `{"id": N, "op": KIND, ...fields}` — a [`Request`]. `N` is
//!   a [`RequestId`] the host picks, unique on the link.
//! - **Supervisor → host** headers are `{"id": N, "ev": KIND, ...fields}` — an [`Event`] for
//!   request `N`. The first frame is `ready` (no id); a request's frames end with a final
//!   event ([`Event::is_final`]: `exit`, `ok`, `data`, `err`).
//!
//! Requests are multiplexed: any number may be open at once, and the frames of different
//! requests interleave freely (a [`Request::Kill`] names its target request). A request can be a
//! **stream**: more host → supervisor frames may be sent under its id ([`Link::send`] with
//! `Some(id)`), and the supervisor may send non-final frames under it for as long as it is open
//! — this is how a new bidirectional operation (e.g. a tunnel: open / data / credit / close) is
//! added without changing the framing. Both kind enums are `#[non_exhaustive]` and grow by
//! adding variants; the supervisor answers an `op` it does not know with
//! `{"ev": "err", "kind": "invalid"}`.
//!
//! Flow control: per-request frames queue on the host without bound unless the request was
//! opened with a window ([`Link::open`]), which back-pressures the whole link (the export uses
//! it; it is alone on the link). A stream sharing the link with running processes must use its
//! own credit window instead, so one busy stream never stalls another.

mod frame;
#[cfg(unix)]
mod handoff;
mod link;
mod local;
mod tunnel;

pub use frame::{
    encode, ErrorKind, Event, Frame, FrameDecoder, KillReason, Ready, Request, RequestId,
    MAX_BODY_BYTES, MAX_HEADER_BYTES,
};
#[cfg(unix)]
pub use handoff::Handoff;
pub use link::{Handshake, HandshakeError, Link, Replies, SupervisorLog};
pub use local::LocalSupervisor;
pub use tunnel::{Tunnel, DEFAULT_TUNNEL_WINDOW};

/// The supervisor's Python source (built-in modules only; runs on Python ≥ 3.8).
///
/// Run it as `python3 -I -S -c <SOURCE> contained` as the only process of a sandbox (under an
/// init as PID 1, or as PID 1): killing a process then kills every process of the sandbox but
/// PID 1 and the supervisor. `python3 -I -S -c <SOURCE> local <DIR>` runs it as a plain host
/// process over the workspace `DIR`, killing only process groups — isolating nothing.
pub const SOURCE: &str = include_str!("supervisor.py");

/// The command line that runs the supervisor inside a sandbox (`contained` mode).
pub fn contained_command() -> Vec<String> {
    vec![
        "python3".into(),
        "-I".into(),
        "-S".into(),
        "-c".into(),
        SOURCE.into(),
        "contained".into(),
    ]
}
