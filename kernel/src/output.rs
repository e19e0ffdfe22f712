//! Output items of a cell and the per-cell caps that keep the runtime's memory bounded.
//!
//! [`OutputItem`] has the JSON shape of DSGym's manager API (Jupyter's message types):
//! `{"type":"stream","name":"stdout","text":...}`, `{"type":"result","data":{mime:..}}`,
//! `{"type":"display_data","data":{...}}`, `{"type":"error","name","value","traceback"}`.
//!
//! [`OutputCollector`] applies [`OutputCaps`] while items arrive: each stream keeps its
//! first and last bytes (head + tail) with a line saying how many bytes were cut, rich
//! values and tracebacks are cut the same way, and images are capped in count and size.
//! Whatever a kernel floods, one cell holds a bounded amount of memory.

use std::collections::VecDeque;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::protocol::{MimeBundle, StreamName, is_binary_image};

/// One output item of a cell, in DSGym's (Jupyter's) JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Stream {
        name: StreamName,
        text: String,
    },
    Result {
        data: MimeBundle,
    },
    DisplayData {
        data: MimeBundle,
    },
    Error {
        name: String,
        value: String,
        traceback: Vec<String>,
    },
}

impl OutputItem {
    /// The `text/plain` of a result or display item.
    pub fn text_plain(&self) -> Option<&str> {
        match self {
            OutputItem::Result { data } | OutputItem::DisplayData { data } => {
                data.get("text/plain").map(String::as_str)
            }
            _ => None,
        }
    }

    /// The decoded PNG of a display item, if it carries one.
    pub fn image_png(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        match self {
            OutputItem::Result { data } | OutputItem::DisplayData { data } => data
                .get("image/png")
                .map(|b64| base64::engine::general_purpose::STANDARD.decode(b64)),
            _ => None,
        }
    }
}

/// Per-cell limits on what the runtime keeps of a cell's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputCaps {
    /// Bytes kept per stream (stdout, stderr): half from the start, half from the end.
    pub stream_bytes: usize,
    /// Bytes kept of each text value of a result or display item (text/plain, text/html).
    pub rich_text_bytes: usize,
    /// Images (image/png, image/jpeg...) kept per cell.
    pub images: usize,
    /// Base64 bytes of one image.
    pub image_bytes: usize,
    /// Base64 bytes of all images of a cell.
    pub total_image_bytes: usize,
    /// Result, display and error items kept per cell.
    pub rich_items: usize,
    /// Bytes kept of an error's value and of its traceback (each).
    pub error_bytes: usize,
    /// Separate stream items kept (alternating stdout/stderr writes make new items).
    pub stream_items: usize,
}

impl Default for OutputCaps {
    fn default() -> Self {
        OutputCaps {
            stream_bytes: 64 << 10,
            rich_text_bytes: 256 << 10,
            images: 16,
            image_bytes: 4 << 20,
            total_image_bytes: 16 << 20,
            rich_items: 64,
            error_bytes: 32 << 10,
            stream_items: 1024,
        }
    }
}

/// What the caps removed from a cell's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Truncation {
    pub stdout_bytes_cut: u64,
    pub stderr_bytes_cut: u64,
    pub rich_bytes_cut: u64,
    pub images_dropped: u64,
    pub items_dropped: u64,
}

impl Truncation {
    pub fn any(&self) -> bool {
        *self != Truncation::default()
    }
}

#[derive(Debug, Default)]
struct StreamState {
    /// Bytes kept from the start of this stream.
    head: usize,
    /// Whether the head kept so far ends with a newline.
    head_newline: bool,
    /// The most recent bytes once the head is full (at most `stream_bytes / 2`).
    tail: VecDeque<u8>,
    /// Bytes between head and tail, dropped.
    cut: u64,
    overflowing: bool,
}

/// Collects a cell's items, applying [`OutputCaps`] as they arrive.
#[derive(Debug)]
pub struct OutputCollector {
    caps: OutputCaps,
    items: Vec<OutputItem>,
    streams: [StreamState; 2],
    stream_items: usize,
    rich_items: usize,
    images: usize,
    image_bytes: usize,
    truncation: Truncation,
}

impl OutputCollector {
    pub fn new(caps: OutputCaps) -> OutputCollector {
        OutputCollector {
            caps,
            items: Vec::new(),
            streams: Default::default(),
            stream_items: 0,
            rich_items: 0,
            images: 0,
            image_bytes: 0,
            truncation: Truncation::default(),
        }
    }

    fn head_cap(&self) -> usize {
        self.caps.stream_bytes / 2
    }

    fn tail_cap(&self) -> usize {
        self.caps.stream_bytes - self.head_cap()
    }

    /// Add stream text.
    pub fn push_stream(&mut self, name: StreamName, text: &str) {
        if text.is_empty() {
            return;
        }
        let idx = name as usize;
        let head_cap = self.head_cap();
        let st = &self.streams[idx];
        let mut rest = text;
        if !st.overflowing {
            let room = head_cap.saturating_sub(st.head);
            let take = floor_char_boundary(text, room.min(text.len()));
            if take > 0 && self.append_head(name, &text[..take]) {
                rest = &text[take..];
            }
        }
        if !rest.is_empty() {
            self.push_tail(idx, rest.as_bytes());
        }
    }

    /// Append to the head: merge with the previous item if it is the same stream.
    fn append_head(&mut self, name: StreamName, text: &str) -> bool {
        let st = &mut self.streams[name as usize];
        if let Some(OutputItem::Stream {
            name: last,
            text: t,
        }) = self.items.last_mut()
            && *last == name
        {
            t.push_str(text);
        } else {
            if self.stream_items >= self.caps.stream_items {
                return false;
            }
            self.stream_items += 1;
            self.items.push(OutputItem::Stream {
                name,
                text: text.to_owned(),
            });
        }
        st.head += text.len();
        st.head_newline = text.ends_with('\n');
        true
    }

    fn push_tail(&mut self, idx: usize, bytes: &[u8]) {
        let cap = self.tail_cap();
        let st = &mut self.streams[idx];
        st.overflowing = true;
        if bytes.len() >= cap {
            st.cut += (st.tail.len() + bytes.len() - cap) as u64;
            st.tail.clear();
            st.tail.extend(&bytes[bytes.len() - cap..]);
        } else {
            st.tail.extend(bytes);
            let excess = st.tail.len().saturating_sub(cap);
            if excess > 0 {
                st.tail.drain(..excess);
                st.cut += excess as u64;
            }
        }
    }

    /// Emit the cut line and the tail of an overflowing stream, in order.
    fn close_overflow(&mut self, name: StreamName) {
        let idx = name as usize;
        if !self.streams[idx].overflowing {
            return;
        }
        let st = &mut self.streams[idx];
        st.overflowing = false;
        let mut tail: Vec<u8> = st.tail.drain(..).collect();
        // The tail may start inside a UTF-8 sequence: drop the partial character.
        let skip = tail.iter().take_while(|b| (**b & 0xC0) == 0x80).count();
        tail.drain(..skip);
        let cut = st.cut + skip as u64;
        st.cut = 0;
        let tail = String::from_utf8_lossy(&tail).into_owned();
        match name {
            StreamName::Stdout => self.truncation.stdout_bytes_cut += cut,
            StreamName::Stderr => self.truncation.stderr_bytes_cut += cut,
        }
        let sep = if st.head_newline || st.head == 0 {
            ""
        } else {
            "\n"
        };
        let mut text = format!(
            "{sep}[... {cut} bytes of {} cut by dsbox: a cell keeps the first and last {} KiB of each stream ...]\n",
            name.as_str(),
            self.caps.stream_bytes / 2 / 1024,
        );
        text.push_str(&tail);
        st.head_newline = text.ends_with('\n');
        // Always kept, even past `stream_items`: the reader must see that bytes were cut.
        self.items.push(OutputItem::Stream { name, text });
    }

    fn close_overflows(&mut self) {
        self.close_overflow(StreamName::Stdout);
        self.close_overflow(StreamName::Stderr);
    }

    /// Add a result, display or error item.
    pub fn push_rich(&mut self, item: OutputItem) {
        self.close_overflows();
        if self.rich_items >= self.caps.rich_items {
            self.truncation.items_dropped += 1;
            return;
        }
        let item = match item {
            OutputItem::Result { data } => OutputItem::Result {
                data: self.cap_bundle(data),
            },
            OutputItem::DisplayData { data } => {
                let data = self.cap_bundle(data);
                if data.is_empty() {
                    return;
                }
                OutputItem::DisplayData { data }
            }
            OutputItem::Error {
                name,
                value,
                traceback,
            } => OutputItem::Error {
                name,
                value: self.cut_text(value, self.caps.error_bytes),
                traceback: self.cap_traceback(traceback),
            },
            stream @ OutputItem::Stream { .. } => stream,
        };
        self.rich_items += 1;
        self.items.push(item);
    }

    fn cap_bundle(&mut self, mut data: MimeBundle) -> MimeBundle {
        let mut dropped_note = None;
        for (mime, value) in std::mem::take(&mut data) {
            if is_binary_image(&mime) {
                let len = value.len();
                if self.images >= self.caps.images
                    || len > self.caps.image_bytes
                    || self.image_bytes + len > self.caps.total_image_bytes
                {
                    self.truncation.images_dropped += 1;
                    dropped_note = Some(format!(
                        "[dsbox: {mime} of {len} base64 bytes dropped: a cell keeps {} images of at most {} KiB, {} KiB in total]",
                        self.caps.images,
                        self.caps.image_bytes / 1024,
                        self.caps.total_image_bytes / 1024
                    ));
                    continue;
                }
                self.images += 1;
                self.image_bytes += len;
                data.insert(mime, value);
            } else {
                let value = self.cut_text(value, self.caps.rich_text_bytes);
                data.insert(mime, value);
            }
        }
        if let Some(note) = dropped_note {
            let plain = data.entry("text/plain".to_owned()).or_default();
            if !plain.is_empty() {
                plain.push('\n');
            }
            plain.push_str(&note);
        }
        data
    }

    fn cut_text(&mut self, text: String, limit: usize) -> String {
        if text.len() <= limit {
            return text;
        }
        let head = floor_char_boundary(&text, limit / 2);
        let tail_start = ceil_char_boundary(&text, text.len() - (limit - limit / 2));
        let cut = tail_start - head;
        self.truncation.rich_bytes_cut += cut as u64;
        format!(
            "{}\n[... {cut} bytes cut by dsbox ...]\n{}",
            &text[..head],
            &text[tail_start..]
        )
    }

    fn cap_traceback(&mut self, lines: Vec<String>) -> Vec<String> {
        let total: usize = lines.iter().map(|l| l.len() + 1).sum();
        if total <= self.caps.error_bytes {
            return lines;
        }
        // Keep whole lines from both ends: the last lines say where and what failed.
        let budget = self.caps.error_bytes;
        let mut head = Vec::new();
        let mut used = 0;
        for line in &lines {
            if used + line.len() + 1 > budget / 4 {
                break;
            }
            used += line.len() + 1;
            head.push(line.clone());
        }
        let mut tail = Vec::new();
        for line in lines[head.len()..].iter().rev() {
            if used + line.len() + 1 > budget {
                break;
            }
            used += line.len() + 1;
            tail.push(line.clone());
        }
        let omitted = lines.len() - head.len() - tail.len();
        if tail.is_empty()
            && let Some(last) = lines.last()
        {
            tail.push(self.cut_text(last.clone(), budget / 2));
        }
        self.truncation.rich_bytes_cut += (total - used) as u64;
        head.push(format!("[... {omitted} traceback lines cut by dsbox ...]"));
        head.extend(tail.into_iter().rev());
        head
    }

    /// Add any item (streams are merged and capped, the rest as [`push_rich`](Self::push_rich)).
    pub fn push(&mut self, item: OutputItem) {
        match item {
            OutputItem::Stream { name, text } => self.push_stream(name, &text),
            other => self.push_rich(other),
        }
    }

    /// Replace the last error item (used to turn a timeout's KeyboardInterrupt into a
    /// TimeoutError that keeps the traceback).
    pub(crate) fn last_error_mut(&mut self) -> Option<&mut OutputItem> {
        self.items
            .iter_mut()
            .rev()
            .find(|i| matches!(i, OutputItem::Error { .. }))
    }

    /// Add an item the runtime itself produced (always kept).
    pub(crate) fn push_runtime_error(&mut self, name: &str, value: String) {
        self.close_overflows();
        self.items.push(OutputItem::Error {
            name: name.to_owned(),
            value: value.clone(),
            traceback: vec![format!("{name}: {value}")],
        });
    }

    /// The items, with every cut stream's tail in place, and what was cut.
    pub fn finish(mut self) -> (Vec<OutputItem>, Truncation) {
        self.close_overflows();
        (self.items, self.truncation)
    }

    /// Bytes of text currently held (for tests of the bound).
    pub fn held_bytes(&self) -> usize {
        let items: usize = self
            .items
            .iter()
            .map(|i| match i {
                OutputItem::Stream { text, .. } => text.len(),
                OutputItem::Result { data } | OutputItem::DisplayData { data } => {
                    data.values().map(String::len).sum()
                }
                OutputItem::Error {
                    value, traceback, ..
                } => value.len() + traceback.iter().map(String::len).sum::<usize>(),
            })
            .sum();
        items + self.streams.iter().map(|s| s.tail.len()).sum::<usize>()
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(stream_bytes: usize) -> OutputCaps {
        OutputCaps {
            stream_bytes,
            ..OutputCaps::default()
        }
    }

    fn stdout_text(items: &[OutputItem]) -> String {
        items
            .iter()
            .filter_map(|i| match i {
                OutputItem::Stream {
                    name: StreamName::Stdout,
                    text,
                } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn small_output_is_kept_whole_and_merged_in_order() {
        let mut c = OutputCollector::new(OutputCaps::default());
        c.push_stream(StreamName::Stdout, "a\n");
        c.push_stream(StreamName::Stdout, "b\n");
        c.push_stream(StreamName::Stderr, "e\n");
        c.push_stream(StreamName::Stdout, "c\n");
        let (items, cut) = c.finish();
        assert_eq!(items.len(), 3);
        assert_eq!(stdout_text(&items), "a\nb\nc\n");
        assert!(!cut.any());
    }

    #[test]
    fn a_flood_keeps_head_and_tail_and_says_how_much_was_cut() {
        let mut c = OutputCollector::new(caps(1000));
        let mut total = 0u64;
        for i in 0..100_000 {
            let line = format!("line {i}\n");
            total += line.len() as u64;
            c.push_stream(StreamName::Stdout, &line);
            assert!(c.held_bytes() <= 1000 + 200, "held {}", c.held_bytes());
        }
        let (items, cut) = c.finish();
        let text = stdout_text(&items);
        assert!(text.starts_with("line 0\nline 1\n"));
        assert!(text.ends_with("line 99999\n"));
        // ASCII text: exactly 500 bytes of head and 500 of tail are kept.
        assert_eq!(cut.stdout_bytes_cut + 1000, total);
        assert!(text.contains(&format!(
            "[... {} bytes of stdout cut by dsbox",
            cut.stdout_bytes_cut
        )));
    }

    #[test]
    fn cut_output_stays_valid_utf8_and_ordered_before_later_items() {
        let mut c = OutputCollector::new(caps(100));
        for _ in 0..1000 {
            c.push_stream(StreamName::Stdout, "é€😀");
        }
        c.push_rich(OutputItem::Error {
            name: "ValueError".into(),
            value: "bad".into(),
            traceback: vec![],
        });
        let (items, _) = c.finish();
        assert!(matches!(items.last(), Some(OutputItem::Error { .. })));
        let text = stdout_text(&items);
        assert!(text.contains("cut by dsbox"));
        assert!(!text.contains('\u{FFFD}'), "{text}");
    }

    #[test]
    fn alternating_streams_are_bounded_in_items() {
        let mut c = OutputCollector::new(OutputCaps::default());
        for _ in 0..100_000 {
            c.push_stream(StreamName::Stdout, "o");
            c.push_stream(StreamName::Stderr, "e");
        }
        let (items, cut) = c.finish();
        assert!(items.len() <= OutputCaps::default().stream_items + 2);
        // Every byte is either kept (outside the cut lines) or counted as cut.
        let kept: u64 = items
            .iter()
            .map(|i| match i {
                OutputItem::Stream { text, .. } => text
                    .lines()
                    .filter(|l| !l.contains("cut by dsbox"))
                    .map(|l| l.len() as u64)
                    .sum(),
                _ => 0,
            })
            .sum();
        assert_eq!(kept + cut.stdout_bytes_cut + cut.stderr_bytes_cut, 200_000);
    }

    #[test]
    fn images_are_capped_in_count_and_size() {
        let mut c = OutputCollector::new(OutputCaps {
            images: 2,
            image_bytes: 8,
            ..OutputCaps::default()
        });
        let img = |b64: &str| OutputItem::DisplayData {
            data: [
                ("image/png".to_owned(), b64.to_owned()),
                ("text/plain".to_owned(), "<Figure>".to_owned()),
            ]
            .into(),
        };
        c.push(img("AAAA"));
        c.push(img("AAAAAAAAAAAA")); // too big
        c.push(img("BBBB"));
        c.push(img("CCCC")); // over count
        let (items, cut) = c.finish();
        assert_eq!(cut.images_dropped, 2);
        let pngs = items.iter().filter(|i| i.image_png().is_some()).count();
        assert_eq!(pngs, 2);
        assert!(items[1].text_plain().unwrap().contains("dropped"));
    }

    #[test]
    fn rich_text_and_tracebacks_are_cut() {
        let mut c = OutputCollector::new(OutputCaps {
            rich_text_bytes: 100,
            error_bytes: 200,
            ..OutputCaps::default()
        });
        c.push(OutputItem::Result {
            data: [("text/plain".to_owned(), "x".repeat(10_000))].into(),
        });
        c.push(OutputItem::Error {
            name: "RecursionError".into(),
            value: "v".repeat(1000),
            traceback: (0..1000).map(|i| format!("frame {i}")).collect(),
        });
        let (items, cut) = c.finish();
        assert!(items[0].text_plain().unwrap().len() < 200);
        match &items[1] {
            OutputItem::Error {
                value, traceback, ..
            } => {
                assert!(value.len() < 300);
                assert!(traceback.len() < 60);
                assert_eq!(traceback.last().unwrap(), "frame 999");
                assert!(traceback.iter().any(|l| l.contains("traceback lines cut")));
            }
            other => panic!("{other:?}"),
        }
        assert!(cut.rich_bytes_cut > 10_000);
    }

    #[test]
    fn items_serialize_in_dsgym_shape() {
        let item = OutputItem::Stream {
            name: StreamName::Stdout,
            text: "hi".into(),
        };
        assert_eq!(
            serde_json::to_string(&item).unwrap(),
            r#"{"type":"stream","name":"stdout","text":"hi"}"#
        );
        let item = OutputItem::Result {
            data: [("text/plain".to_owned(), "2".to_owned())].into(),
        };
        assert_eq!(
            serde_json::to_string(&item).unwrap(),
            r#"{"type":"result","data":{"text/plain":"2"}}"#
        );
    }
}
