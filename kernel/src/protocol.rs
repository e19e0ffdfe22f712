//! The wire protocol between the runtime and a kernel: length-prefixed JSON frames.
//!
//! A frame is a `u32` big-endian length followed by that many bytes of UTF-8 JSON. The
//! runtime sends [`Request`]s; the kernel answers with [`KernelMessage`]s. Everything the
//! kernel sends is untrusted (it runs user code): frames are bounded by
//! [`MAX_KERNEL_FRAME`] before anything is allocated, unknown message types and unknown
//! fields are rejected, and every field is validated ([`KernelMessage::validate`]).

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Protocol version announced in the kernel's `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame accepted from a kernel (the kernel keeps its own frames far below).
pub const MAX_KERNEL_FRAME: usize = 16 << 20;

/// The largest request sent to a kernel (the code of one cell, JSON-encoded).
pub const MAX_REQUEST: usize = 16 << 20;

/// Limits on what one message may contain, beyond the frame size.
const MAX_MIME_ENTRIES: usize = 16;
const MAX_MIME_TYPE_LEN: usize = 128;
const MAX_NAME_LEN: usize = 256;
const MAX_TRACEBACK_LINES: usize = 10_000;

/// Errors of the wire protocol. The kernel-side ones mean the kernel must be restarted.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("kernel sent a frame of {len} bytes, over the {max}-byte limit")]
    FrameTooLarge { len: u64, max: usize },
    #[error("kernel sent a frame that is not a valid message ({len} bytes): {source}")]
    InvalidMessage {
        len: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("kernel sent an invalid `{kind}` message: {reason}")]
    InvalidField { kind: &'static str, reason: String },
    #[error(
        "the cell's code is {len} bytes encoded, over the {max}-byte limit: send less code per cell"
    )]
    RequestTooLarge { len: usize, max: usize },
    #[error("could not encode a request: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A message from the runtime to a kernel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request<'a> {
    /// Run one cell.
    Execute { id: u64, code: &'a str },
    /// Run a throwaway `1+1` through the whole cell path, leaving no trace (execution
    /// count, namespace, `_` unchanged): the first cell of a freshly forked kernel
    /// touches pages and caches that later ones reuse, so a pool warms its kernels.
    Warmup { id: u64 },
    /// Exit cleanly (the kernel flushes C stdio buffers and exits 0).
    Shutdown,
}

/// Which output stream a `stream` item belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// MIME type -> value (text, or base64 for binary images), as in Jupyter.
pub type MimeBundle = BTreeMap<String, String>;

/// How a cell ended, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoneStatus {
    Ok,
    Error,
    Interrupted,
}

/// Timings the kernel measured itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelTiming {
    /// From the request's arrival to `done`, in microseconds.
    pub run_us: u64,
}

/// A zygote child's CLOCK_MONOTONIC timestamps (ns; the same clock as the runtime's,
/// namespaces do not change it): first instruction after fork, join done, hello sent.
/// Untrusted like everything from a kernel: for measurements only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HelloTiming {
    pub forked_ns: u64,
    pub joined_ns: u64,
    pub ready_ns: u64,
    /// When each join step ended (at most [`MAX_TIMING_STEPS`]).
    #[serde(default)]
    pub steps: Vec<(String, u64)>,
}

/// Join steps a hello may report.
pub const MAX_TIMING_STEPS: usize = 32;

/// A message from a kernel to the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KernelMessage {
    /// Sent once, when the kernel is ready for its first cell.
    Hello {
        protocol: u32,
        pid: u32,
        python: String,
        /// A zygote child's own timestamps (absent for standalone kernels).
        #[serde(default)]
        timing: Option<HelloTiming>,
    },
    /// Text written to stdout or stderr (Python-level or fd-level).
    Stream {
        id: u64,
        name: StreamName,
        text: String,
    },
    /// The value of the cell's last expression.
    Result { id: u64, data: MimeBundle },
    /// `display(...)` or a matplotlib figure.
    DisplayData { id: u64, data: MimeBundle },
    /// An exception raised by the cell.
    Error {
        id: u64,
        name: String,
        value: String,
        traceback: Vec<String>,
    },
    /// The cell is finished; nothing more will come for this id.
    Done {
        id: u64,
        status: DoneStatus,
        execution_count: u64,
        timing: KernelTiming,
    },
    /// A zygote child failed to join its sandbox (sent instead of `hello`).
    JoinError {
        step: String,
        errno: i32,
        #[serde(default)]
        detail: String,
    },
}

impl KernelMessage {
    /// The message's type as it appears on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            KernelMessage::Hello { .. } => "hello",
            KernelMessage::Stream { .. } => "stream",
            KernelMessage::Result { .. } => "result",
            KernelMessage::DisplayData { .. } => "display_data",
            KernelMessage::Error { .. } => "error",
            KernelMessage::Done { .. } => "done",
            KernelMessage::JoinError { .. } => "join_error",
        }
    }

    /// Parse and validate one frame body from a kernel.
    pub fn parse(body: &[u8]) -> Result<KernelMessage, ProtocolError> {
        let msg: KernelMessage =
            serde_json::from_slice(body).map_err(|source| ProtocolError::InvalidMessage {
                len: body.len(),
                source,
            })?;
        msg.validate()?;
        Ok(msg)
    }

    /// Check the fields a type cannot express (sizes, MIME syntax, base64 images).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let kind = self.kind();
        let bad = |reason: String| Err(ProtocolError::InvalidField { kind, reason });
        match self {
            KernelMessage::Hello { python, timing, .. } => {
                if python.len() > MAX_NAME_LEN {
                    return bad(format!("python version of {} bytes", python.len()));
                }
                if let Some(t) = timing
                    && (t.steps.len() > MAX_TIMING_STEPS
                        || t.steps.iter().any(|(name, _)| name.len() > MAX_NAME_LEN))
                {
                    return bad(format!("{} timing steps", t.steps.len()));
                }
            }
            KernelMessage::Result { data, .. } | KernelMessage::DisplayData { data, .. } => {
                if data.is_empty() || data.len() > MAX_MIME_ENTRIES {
                    return bad(format!(
                        "{} MIME entries (1 to {MAX_MIME_ENTRIES} allowed)",
                        data.len()
                    ));
                }
                for (mime, value) in data {
                    if !valid_mime_type(mime) {
                        return bad(format!("invalid MIME type {:?}", truncated(mime)));
                    }
                    if is_binary_image(mime) && !is_base64(value) {
                        return bad(format!("{mime} value is not base64"));
                    }
                }
            }
            KernelMessage::Error {
                name, traceback, ..
            } => {
                if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\n') {
                    return bad(format!("exception name {:?}", truncated(name)));
                }
                if traceback.len() > MAX_TRACEBACK_LINES {
                    return bad(format!("{} traceback lines", traceback.len()));
                }
            }
            KernelMessage::JoinError { step, .. } => {
                if step.is_empty() || step.len() > MAX_NAME_LEN {
                    return bad(format!("step name {:?}", truncated(step)));
                }
            }
            KernelMessage::Stream { .. } | KernelMessage::Done { .. } => {}
        }
        Ok(())
    }
}

fn truncated(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `type/subtype` with the characters MIME allows (RFC 6838, restricted-name).
fn valid_mime_type(mime: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match mime.split_once('/') {
        Some((t, s)) => mime.len() <= MAX_MIME_TYPE_LEN && ok(t) && ok(s),
        None => false,
    }
}

/// Image types carried as base64 (SVG is text).
pub(crate) fn is_binary_image(mime: &str) -> bool {
    mime.starts_with("image/") && mime != "image/svg+xml"
}

fn is_base64(s: &str) -> bool {
    s.len().is_multiple_of(4)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// Encode a request as one frame (length prefix included).
pub fn encode_request(req: &Request<'_>) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = Vec::with_capacity(64 + request_code_len(req));
    buf.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut buf, req).map_err(ProtocolError::Encode)?;
    let len = buf.len() - 4;
    if len > MAX_REQUEST {
        return Err(ProtocolError::RequestTooLarge {
            len,
            max: MAX_REQUEST,
        });
    }
    // The limit above keeps len far below u32::MAX.
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

fn request_code_len(req: &Request<'_>) -> usize {
    match req {
        Request::Execute { code, .. } => code.len(),
        Request::Warmup { .. } | Request::Shutdown => 0,
    }
}

/// Splits a byte stream into frames without trusting the peer.
///
/// The buffer grows only to hold the frame being read (at most `max` + 4 bytes), and
/// shrinks back after a large frame, so a kernel cannot make the runtime hold more than
/// one maximal frame per connection. All state lives here, which makes reading
/// cancel-safe: a read interrupted by a timeout loses nothing.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

/// Bytes read per call when no larger frame is pending. Small, because every idle client
/// keeps this much (1,000 live kernels: 8 MiB); a larger frame is read in one call once
/// its header is in (the buffer grows to the frame's length).
const READ_CHUNK: usize = 8 << 10;
/// A buffer larger than this is given back once it is empty.
const KEEP_BUFFER: usize = 1 << 20;

impl FrameReader {
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
        }
    }

    /// The next complete frame's body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        match self.next_range()? {
            Some(range) => Ok(Some(&self.buf[range])),
            None => Ok(None),
        }
    }

    fn next_range(&mut self) -> Result<Option<Range<usize>>, ProtocolError> {
        let avail = self.end - self.start;
        if avail < 4 {
            return Ok(None);
        }
        let len = self.header_len();
        if len > self.max {
            return Err(ProtocolError::FrameTooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        if avail < 4 + len {
            return Ok(None);
        }
        let body = self.start + 4..self.start + 4 + len;
        self.start += 4 + len;
        if self.start == self.end {
            // Everything consumed: reuse the buffer from its beginning next time. The
            // returned range stays valid until the next call to `read_space`.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(body))
    }

    fn header_len(&self) -> usize {
        let h = &self.buf[self.start..self.start + 4];
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize
    }

    /// Space to read into; call [`FrameReader::advance`] with the number of bytes read.
    ///
    /// Call only after [`FrameReader::next_frame`] returned `Ok(None)`: the pending
    /// frame's length has then been checked against the limit.
    pub fn read_space(&mut self) -> &mut [u8] {
        let avail = self.end - self.start;
        let need = if avail >= 4 {
            (4 + self.header_len()).min(4 + self.max)
        } else {
            4
        };
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = avail;
        }
        let want = need.max(READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        } else if avail == 0 && self.buf.len() > KEEP_BUFFER {
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
        }
        &mut self.buf[self.end..]
    }

    /// Record that `n` bytes were read into [`FrameReader::read_space`].
    pub fn advance(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes currently held (for memory accounting in tests).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn feed(r: &mut FrameReader, mut bytes: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            while let Some(f) = r.next_frame().unwrap() {
                out.push(f.to_vec());
            }
            if bytes.is_empty() {
                return out;
            }
            let space = r.read_space();
            let n = chunk.min(space.len()).min(bytes.len());
            space[..n].copy_from_slice(&bytes[..n]);
            r.advance(n);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn frames_split_at_any_byte_boundary_are_reassembled() {
        let mut stream = frame(b"{\"a\":1}");
        stream.extend(frame(b""));
        stream.extend(frame(&vec![b'x'; 200_000]));
        stream.extend(frame(b"tail"));
        for chunk in [1, 3, 4, 5, 4096, 1 << 20] {
            let mut r = FrameReader::new(1 << 20);
            let frames = feed(&mut r, &stream, chunk);
            assert_eq!(frames.len(), 4, "chunk {chunk}");
            assert_eq!(frames[0], b"{\"a\":1}");
            assert!(frames[1].is_empty());
            assert_eq!(frames[2].len(), 200_000);
            assert_eq!(frames[3], b"tail");
        }
    }

    #[test]
    fn oversized_length_prefix_is_rejected_before_allocating() {
        let mut r = FrameReader::new(1024);
        let space = r.read_space();
        space[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        r.advance(4);
        match r.next_frame() {
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as u64);
                assert_eq!(max, 1024);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(
            r.capacity() <= READ_CHUNK,
            "buffer grew to {}",
            r.capacity()
        );
    }

    #[test]
    fn buffer_shrinks_after_a_large_frame() {
        let mut r = FrameReader::new(8 << 20);
        let frames = feed(&mut r, &frame(&vec![b'x'; 4 << 20]), 1 << 20);
        assert_eq!(frames[0].len(), 4 << 20);
        r.read_space();
        assert!(r.capacity() <= KEEP_BUFFER);
    }

    #[test]
    fn messages_parse_and_unknown_types_or_fields_are_rejected() {
        let ok = KernelMessage::parse(br#"{"type":"stream","id":3,"name":"stdout","text":"hi"}"#)
            .unwrap();
        assert_eq!(
            ok,
            KernelMessage::Stream {
                id: 3,
                name: StreamName::Stdout,
                text: "hi".into()
            }
        );
        for bad in [
            &br#"{"type":"launch_missiles","id":1}"#[..],
            br#"{"type":"stream","id":3,"name":"stdout","text":"hi","extra":1}"#,
            br#"{"type":"stream","id":3,"name":"stdin","text":"hi"}"#,
            br#"{"type":"stream","id":-1,"name":"stdout","text":"hi"}"#,
            br#"{"id":3}"#,
            b"not json",
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                matches!(
                    KernelMessage::parse(bad),
                    Err(ProtocolError::InvalidMessage { .. })
                ),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn fields_are_validated() {
        for bad in [
            &br#"{"type":"result","id":1,"data":{}}"#[..],
            br#"{"type":"result","id":1,"data":{"no-slash":"x"}}"#,
            br#"{"type":"result","id":1,"data":{"text/plain\n":"x"}}"#,
            br#"{"type":"display_data","id":1,"data":{"image/png":"not base64!"}}"#,
            br#"{"type":"error","id":1,"name":"","value":"","traceback":[]}"#,
            br#"{"type":"error","id":1,"name":"A\nB","value":"","traceback":[]}"#,
            br#"{"type":"join_error","step":"","errno":1}"#,
        ] {
            assert!(
                matches!(
                    KernelMessage::parse(bad),
                    Err(ProtocolError::InvalidField { .. })
                ),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let png = KernelMessage::parse(
            br#"{"type":"display_data","id":1,"data":{"image/png":"iVBORw0KGgo=","text/plain":"<Figure>"}}"#,
        );
        assert!(png.is_ok(), "{png:?}");
    }

    #[test]
    fn requests_are_framed_and_bounded() {
        let f = encode_request(&Request::Execute { id: 7, code: "1+1" }).unwrap();
        let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(len, f.len() - 4);
        assert_eq!(&f[4..], br#"{"type":"execute","id":7,"code":"1+1"}"#);
        let big = "x".repeat(MAX_REQUEST);
        assert!(matches!(
            encode_request(&Request::Execute { id: 1, code: &big }),
            Err(ProtocolError::RequestTooLarge { .. })
        ));
        let f = encode_request(&Request::Shutdown).unwrap();
        assert_eq!(&f[4..], br#"{"type":"shutdown"}"#);
    }
}
