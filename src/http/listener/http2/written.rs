//! What the sidecar writes on an HTTP/2 connection, read for what the `h2`
//! server does without telling: each `RST_STREAM` frame is counted by its
//! error code, whether the listener's dispatcher reset the stream (a
//! client that grants no window for `client_write_timeout`, an answer body
//! that broke off) or the `h2` server did before any handler saw it (a
//! stream past `http2_max_concurrent_streams`, a malformed head); and an
//! answer head on a stream the dispatcher never took in is the `h2`
//! server's own bare 431 for a head over the header list limit, counted
//! as a refused head.
//!
//! The scan walks frame headers only (nine bytes a frame, four more for a
//! `RST_STREAM`); the payloads it skips are never copied.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};

/// The length of an HTTP/2 frame header.
const HEAD: usize = 9;
/// The frame type of `HEADERS`.
const HEADERS: u8 = 0x1;
/// The frame type of `RST_STREAM`.
const RST_STREAM: u8 = 0x3;
/// The length of a `RST_STREAM` payload: its error code.
const CODE: usize = 4;

/// The error codes of RFC 9113 (section 7) in order, as metric labels;
/// any later code counts as `other`.
const REASONS: [&str; 14] = [
    "no_error",
    "protocol_error",
    "internal_error",
    "flow_control_error",
    "settings_timeout",
    "stream_closed",
    "frame_size_error",
    "refused_stream",
    "cancel",
    "compression_error",
    "connect_error",
    "enhance_your_calm",
    "inadequate_security",
    "http_1_1_required",
];

/// One listener's counters of what its HTTP/2 connections write: its
/// `http2_streams_reset_total` series, one per error code and one for
/// codes past them, and its `http_heads_refused_total` series for the
/// heads the `h2` server refused itself; shared by its connections.
#[derive(Clone)]
pub struct WrittenCounters(Arc<Counters>);

struct Counters {
    resets: [IntCounter; REASONS.len() + 1],
    refused_heads: IntCounter,
}

impl WrittenCounters {
    /// The series of `listener`: `resets` has the labels `listener` and
    /// `reason`, `refused_heads` is the series of the refused heads.
    pub fn new(resets: &IntCounterVec, refused_heads: IntCounter, listener: &str) -> Self {
        let resets = std::array::from_fn(|code| {
            let reason = REASONS.get(code).copied().unwrap_or("other");
            resets.with_label_values(&[listener, reason])
        });
        WrittenCounters(Arc::new(Counters {
            resets,
            refused_heads,
        }))
    }

    fn count_reset(&self, code: u32) {
        let at = usize::try_from(code).map_or(REASONS.len(), |code| code.min(REASONS.len()));
        self.0.resets[at].inc();
    }
}

/// The highest stream the dispatcher of a connection took in, shared with
/// the connection's [`WrittenFrames`]: the client opens its streams in
/// increasing order, so an answer head on a stream past it is none of the
/// dispatcher's.
#[derive(Debug, Clone, Default)]
pub struct TakenIn(Rc<Cell<u32>>);

impl TakenIn {
    /// The dispatcher took in stream `id`.
    pub fn took(&self, id: u32) {
        self.0.set(self.0.get().max(id));
    }

    fn highest(&self) -> u32 {
        self.0.get()
    }
}

/// The frames written so far on one connection: where the next frame
/// header starts, and the frames among them that are counted.
pub struct WrittenFrames {
    counters: WrittenCounters,
    taken_in: TakenIn,
    /// The frame header under way (and a `RST_STREAM`'s error code).
    frame: [u8; HEAD + CODE],
    /// How many of its bytes were written.
    have: usize,
    /// The payload bytes of the current frame still to pass by.
    skip: usize,
}

impl WrittenFrames {
    /// A connection's scan, from its first frame (a server writes no
    /// preface but its SETTINGS frame).
    pub fn new(counters: WrittenCounters) -> WrittenFrames {
        WrittenFrames {
            counters,
            taken_in: TakenIn::default(),
            frame: [0; HEAD + CODE],
            have: 0,
            skip: 0,
        }
    }

    /// What the connection's dispatcher tells of the streams it takes in.
    pub fn taken_in(&self) -> TakenIn {
        self.taken_in.clone()
    }

    /// Takes `bytes`, the next ones written on the connection.
    pub fn wrote(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let passed = self.skip.min(bytes.len());
                self.skip -= passed;
                bytes = &bytes[passed..];
                continue;
            }
            let wanted = if self.have >= HEAD && self.is_reset() {
                HEAD + CODE
            } else {
                HEAD
            };
            let taken = (wanted - self.have).min(bytes.len());
            self.frame[self.have..self.have + taken].copy_from_slice(&bytes[..taken]);
            self.have += taken;
            bytes = &bytes[taken..];
            if self.have < wanted || (self.have == HEAD && self.is_reset()) {
                continue;
            }
            if self.have == HEAD + CODE {
                let code = &self.frame[HEAD..];
                self.counters
                    .count_reset(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
            } else {
                if self.frame[3] == HEADERS && self.stream() > self.taken_in.highest() {
                    self.counters.0.refused_heads.inc();
                }
                self.skip = self.length();
            }
            self.have = 0;
        }
    }

    /// The payload length of the current frame.
    fn length(&self) -> usize {
        let length = u32::from_be_bytes([0, self.frame[0], self.frame[1], self.frame[2]]);
        length as usize
    }

    /// The stream of the current frame.
    fn stream(&self) -> u32 {
        let id = [self.frame[5], self.frame[6], self.frame[7], self.frame[8]];
        u32::from_be_bytes(id) & 0x7fff_ffff
    }

    /// Whether the current frame is a `RST_STREAM` with its error code.
    fn is_reset(&self) -> bool {
        self.frame[3] == RST_STREAM && self.length() == CODE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len() as u32;
        let mut frame = length.to_be_bytes()[1..].to_vec();
        frame.extend([kind, 0]);
        frame.extend(stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn family() -> IntCounterVec {
        IntCounterVec::new(Opts::new("resets", "test"), &["listener", "reason"]).expect("a family")
    }

    fn counted(family: &IntCounterVec, reason: &str) -> u64 {
        family.with_label_values(&["outbound", reason]).get()
    }

    #[test]
    fn resets_and_heads_of_the_h2_server_are_counted_wherever_the_writes_split_them() {
        let mut written = frame(0x4, 0, &[0; 6]); // SETTINGS
        written.extend(frame(HEADERS, 1, &[0x88; 40])); // the dispatcher's head
        written.extend(frame(RST_STREAM, 1, &7u32.to_be_bytes())); // REFUSED_STREAM
        written.extend(frame(0x0, 3, &[RST_STREAM; 100])); // DATA that looks like one
        written.extend(frame(RST_STREAM, 3, &8u32.to_be_bytes())); // CANCEL
        written.extend(frame(RST_STREAM, 5, &0x99u32.to_be_bytes())); // unknown
        written.extend(frame(HEADERS, 7, &[0x88; 4])); // the h2 server's own 431
        for split in [1, 2, 5, 9, 13, written.len()] {
            let family = family();
            let refused = IntCounter::new("refused", "test").expect("a counter");
            let counters = WrittenCounters::new(&family, refused.clone(), "outbound");
            let mut scan = WrittenFrames::new(counters);
            scan.taken_in().took(3);
            scan.taken_in().took(1);
            for piece in written.chunks(split) {
                scan.wrote(piece);
            }
            assert_eq!(counted(&family, "refused_stream"), 1, "split {split}");
            assert_eq!(counted(&family, "cancel"), 1, "split {split}");
            assert_eq!(counted(&family, "other"), 1, "split {split}");
            assert_eq!(counted(&family, "no_error"), 0, "split {split}");
            assert_eq!(refused.get(), 1, "split {split}");
        }
    }
}
