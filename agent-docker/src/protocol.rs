//! The framed protocol spoken with the supervisor inside each container.
//!
//! A frame is one line of JSON (the header) followed, when the header has `"n"`, by exactly `n`
//! raw bytes. Output and files travel as raw bytes: no base64, no escaping.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

/// The longest header accepted from the supervisor.
const MAX_HEADER: usize = 64 << 10;

/// A message from the supervisor.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Event {
    /// The request it answers (absent for `ready`).
    #[serde(default)]
    pub(crate) id: Option<u64>,
    /// What it is: `ready`, `started`, `out`, `exit`, `ok`, `data`, `chunk`, `err`.
    pub(crate) ev: String,
    /// For `out`: 1 = stdout, 2 = stderr.
    #[serde(default)]
    pub(crate) s: u8,
    /// Length of the body.
    #[serde(default)]
    pub(crate) n: usize,
    /// For `exit`: the exit code (128+N for signal N).
    #[serde(default)]
    pub(crate) code: i32,
    /// For `exit`: `exited`, `timed_out`, `cancelled`, `output_limit` or `oom`.
    #[serde(default)]
    pub(crate) term: Option<String>,
    /// For `err`: `path_refused`, `not_found`, `too_large`, `invalid`, `backend`.
    #[serde(default)]
    pub(crate) kind: Option<String>,
    /// For `err`: a message for people.
    #[serde(default)]
    pub(crate) msg: Option<String>,
    /// For `ready`: the supervisor's uid.
    #[serde(default)]
    pub(crate) uid: Option<u32>,
}

impl Event {
    /// Whether this event ends its request.
    pub(crate) fn is_final(&self) -> bool {
        matches!(self.ev.as_str(), "exit" | "ok" | "data" | "err")
    }
}

/// A header and its body.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) event: Event,
    pub(crate) body: Bytes,
}

/// Reassembles frames from the chunks the attach stream delivers.
#[derive(Default)]
pub(crate) struct FrameDecoder {
    buf: BytesMut,
    pending: Option<Event>,
}

impl FrameDecoder {
    /// Adds received bytes.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if any.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.pending.is_none() {
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_HEADER {
                    return Err("supervisor sent an over-long header".into());
                }
                return Ok(None);
            };
            let line = self.buf.split_to(pos + 1);
            let event: Event = serde_json::from_slice(&line[..pos]).map_err(|e| {
                format!(
                    "supervisor sent a bad header ({e}): {:?}",
                    String::from_utf8_lossy(&line[..pos.min(200)])
                )
            })?;
            self.pending = Some(event);
        }
        let need = self.pending.as_ref().map_or(0, |e| e.n);
        if self.buf.len() < need {
            return Ok(None);
        }
        let body = self.buf.split_to(need).freeze();
        let event = self.pending.take().unwrap_or_default();
        if self.buf.is_empty() && self.buf.capacity() > (1 << 20) {
            self.buf = BytesMut::new();
        }
        Ok(Some(Frame { event, body }))
    }
}

/// Encodes a request: the header (an object) with `"id"` and `"n"` set, then the body.
pub(crate) fn encode(id: u64, mut header: serde_json::Value, body: &[u8]) -> Vec<u8> {
    if let Some(obj) = header.as_object_mut() {
        obj.insert("id".into(), id.into());
        if !body.is_empty() {
            obj.insert("n".into(), body.len().into());
        }
    }
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let wire = b"{\"ev\":\"ready\",\"uid\":1000}\n{\"id\":3,\"ev\":\"out\",\"s\":1,\"n\":5}\nhel\nl{\"id\":3,\"ev\":\"exit\",\"code\":137,\"term\":\"timed_out\"}\n";
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
            assert_eq!(frames[0].event.ev, "ready");
            assert_eq!(frames[0].event.uid, Some(1000));
            assert_eq!(frames[1].event.id, Some(3));
            assert_eq!(&frames[1].body[..], b"hel\nl");
            assert_eq!(frames[2].event.code, 137);
            assert!(frames[2].event.is_final());
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut dec = FrameDecoder::default();
        dec.push(b"not json\n");
        assert!(dec.next_frame().is_err());
        let mut dec = FrameDecoder::default();
        dec.push(&vec![b'x'; MAX_HEADER + 1]);
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn requests_carry_id_and_length() {
        let out = encode(7, serde_json::json!({"op": "write", "path": "a"}), b"xyz");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once('\n').unwrap();
        let v: serde_json::Value = serde_json::from_str(head).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["n"], 3);
        assert_eq!(body, "xyz");
    }
}
