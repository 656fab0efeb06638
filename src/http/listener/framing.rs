//! Follows the HTTP/1.1 framing of the bytes a client sends (request heads,
//! `Content-Length` and chunked bodies) to find the one thing the parser
//! accepts that a front proxy may read differently: a line in a request
//! head that ends in a bare LF instead of CRLF. Such a byte is turned into
//! a NUL, which the parser refuses (400, connection closed), so the head is
//! never routed.
//!
//! The scan follows the parser's own rules for where a head and a body end,
//! and stops for good where it cannot follow the bytes (an upgrade to
//! WebSocket, `CONNECT`) or where the parser refuses the head anyway
//! (conflicting or unreadable framing headers).

/// The largest chunked body accepted when `max_body_bytes` is not set:
/// what a signed 64-bit file offset holds (nginx's bound too). A chunk size
/// past it, such as 16 EiB, is refused with 413.
pub(super) const MAX_BODY_BYTES: u64 = i64::MAX as u64;

/// The most of each head line kept to read framing headers; framing values
/// longer than this are not valid, and the parser refuses them.
const LINE_KEPT: usize = 64;

/// Where the scan is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head.
    Head,
    /// In a `Content-Length` body: this many bytes to go.
    Body(u64),
    /// In a chunk-size line, before its CR (the size so far).
    ChunkSize(u64),
    /// In a chunk extension, before its CR.
    ChunkExtension(u64),
    /// The LF ending a chunk-size line.
    ChunkSizeLf(u64),
    /// In chunk data: this many bytes to go.
    ChunkData(u64),
    /// The CR after chunk data.
    ChunkDataCr,
    /// The LF after chunk data.
    ChunkDataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    /// In a trailer line, before its CR.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF ending the chunked body.
    EndLf,
    /// Not scanned any more.
    Done,
}

/// What one request head says about the body after it.
#[derive(Debug, Default)]
struct HeadSoFar {
    /// A line of the head has started (empty lines before the request line
    /// do not count).
    started: bool,
    /// The request line has ended.
    request_line_done: bool,
    connect: bool,
    content_length: Option<u64>,
    chunked: bool,
    websocket: bool,
    /// A framing header this scan cannot read; the parser refuses it.
    unreadable: bool,
}

/// The scan of one connection's incoming bytes.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: HeadSoFar,
    line: [u8; LINE_KEPT],
    line_len: usize,
    /// The last byte seen was a CR.
    after_cr: bool,
    /// Request heads that have ended on this connection.
    heads_done: u64,
    /// `max_body_bytes`, when set.
    max_body_bytes: Option<u64>,
    /// The most a chunked body may announce: `max_body_bytes`, or
    /// [`MAX_BODY_BYTES`].
    body_allowed: u64,
    /// What the chunked body under way has announced so far.
    body_announced: u64,
}

/// What [`Framing::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanVerdict {
    /// Nothing to refuse.
    Clean,
    /// A head line ended in a bare LF at this offset of the scanned bytes;
    /// the byte was turned into a NUL.
    BareLf(usize),
    /// A chunk-size line is refused at this offset of the scanned bytes;
    /// nothing from there on may reach the parser.
    Chunk(usize, ChunkRefusal),
}

/// Why a chunk-size line is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRefusal {
    /// Not a chunk size: a byte other than a hex digit, whitespace, `;` or
    /// CR (a bare LF, `-5`, `5g`), or a size past 64 bits (400).
    Malformed,
    /// The body would be larger than `max_body_bytes` (this, when set),
    /// or than [`MAX_BODY_BYTES`] (413).
    TooLarge(Option<u64>),
}

impl Default for Framing {
    fn default() -> Self {
        Framing::new(None)
    }
}

impl Framing {
    /// The scan of a connection whose bodies may hold `max_body_bytes`.
    pub fn new(max_body_bytes: Option<u64>) -> Framing {
        Framing {
            state: State::Head,
            head: HeadSoFar::default(),
            line: [0; LINE_KEPT],
            line_len: 0,
            after_cr: false,
            heads_done: 0,
            max_body_bytes,
            body_allowed: max_body_bytes.unwrap_or(MAX_BODY_BYTES),
            body_announced: 0,
        }
    }

    /// No scan: the connection's bytes are not HTTP/1 (an HTTP/2 client's
    /// frames, which the HTTP/2 server checks itself).
    pub fn off() -> Framing {
        Framing {
            state: State::Done,
            ..Framing::new(None)
        }
    }

    /// Whether part of a request head after the connection's first has
    /// arrived and the rest has not (the parser times only the first head).
    pub fn later_head_under_way(&self) -> bool {
        self.state == State::Head
            && self.heads_done > 0
            && (self.head.started || self.line_len > 0 || self.after_cr)
    }

    /// Whether the connection's first request head has not ended yet.
    pub fn first_head_under_way(&self) -> bool {
        self.state == State::Head && self.heads_done == 0
    }

    /// Whether a request body has started and not ended.
    pub fn body_under_way(&self) -> bool {
        !matches!(self.state, State::Head | State::Done)
    }

    /// Scans the next bytes the client sent, in order; poisons a bare LF
    /// in a head (see the module doc) and stops scanning after it.
    pub fn scan(&mut self, bytes: &mut [u8]) -> ScanVerdict {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Done => return ScanVerdict::Clean,
                State::Head => match self.head_bytes(&bytes[at..]) {
                    Ok(used) => at += used,
                    Err(offset) => {
                        bytes[at + offset] = 0;
                        self.state = State::Done;
                        return ScanVerdict::BareLf(at + offset);
                    }
                },
                State::Body(left) | State::ChunkData(left) => {
                    let take = left.min((bytes.len() - at) as u64);
                    at += take as usize;
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), left) => State::Body(left),
                        (_, 0) => State::ChunkDataCr,
                        (_, left) => State::ChunkData(left),
                    };
                }
                _ => match self.chunked_byte(bytes[at]) {
                    Ok(state) => {
                        self.state = state;
                        at += 1;
                    }
                    Err(refusal) => {
                        self.state = State::Done;
                        return ScanVerdict::Chunk(at, refusal);
                    }
                },
            }
        }
        ScanVerdict::Clean
    }

    /// Scans head bytes up to the end of the head or of `bytes`; returns
    /// how many were used, or the offset of a bare LF.
    fn head_bytes(&mut self, bytes: &[u8]) -> Result<usize, usize> {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                self.keep(rest);
                self.after_cr = rest.last() == Some(&b'\r');
                return Ok(bytes.len());
            };
            let ended_by_cr = if lf == 0 {
                self.after_cr
            } else {
                rest[lf - 1] == b'\r'
            };
            if !ended_by_cr {
                return Err(at + lf);
            }
            self.keep(&rest[..lf]);
            self.after_cr = false;
            at += lf + 1;
            if self.end_line() {
                return Ok(at);
            }
        }
        Ok(at)
    }

    /// Keeps the first bytes of the current line.
    fn keep(&mut self, bytes: &[u8]) {
        let room = LINE_KEPT - self.line_len;
        let take = room.min(bytes.len());
        self.line[self.line_len..self.line_len + take].copy_from_slice(&bytes[..take]);
        self.line_len += take;
    }

    /// Reads the head line just ended (CR included); true when it ended the head.
    fn end_line(&mut self) -> bool {
        let len = self.line_len;
        self.line_len = 0;
        let line = self.line[..len]
            .strip_suffix(b"\r")
            .unwrap_or(&self.line[..len]);
        if line.is_empty() {
            if !self.head.started {
                return false;
            }
            let head = std::mem::take(&mut self.head);
            self.state = body_after(&head);
            self.body_announced = 0;
            self.heads_done += 1;
            return true;
        }
        self.head.started = true;
        if !self.head.request_line_done {
            self.head.request_line_done = true;
            self.head.connect = line.starts_with(b"CONNECT ");
            return false;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let complete = len < LINE_KEPT;
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            match (complete, self.head.content_length, length) {
                (true, None, Some(length)) => self.head.content_length = Some(length),
                _ => self.head.unreadable = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            match (complete, self.head.chunked) {
                (true, false) if value.eq_ignore_ascii_case(b"chunked") => self.head.chunked = true,
                _ => self.head.unreadable = true,
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") && value.eq_ignore_ascii_case(b"websocket")
        {
            self.head.websocket = true;
        }
        false
    }

    /// The next state of a chunked body after `byte`, or why its
    /// chunk-size line is refused.
    fn chunked_byte(&mut self, byte: u8) -> Result<State, ChunkRefusal> {
        let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
        Ok(match (self.state, byte) {
            (State::ChunkSize(size), b'\r') | (State::ChunkExtension(size), b'\r') => {
                if size > self.body_allowed - self.body_announced {
                    return Err(ChunkRefusal::TooLarge(self.max_body_bytes));
                }
                self.body_announced += size;
                State::ChunkSizeLf(size)
            }
            (State::ChunkSize(size), b';' | b' ' | b'\t') => State::ChunkExtension(size),
            (State::ChunkSize(size), b) => match hex(b)
                .and_then(|digit| size.checked_mul(16).and_then(|s| s.checked_add(digit)))
            {
                Some(size) => State::ChunkSize(size),
                None => return Err(ChunkRefusal::Malformed),
            },
            (State::ChunkExtension(size), _) => State::ChunkExtension(size),
            (State::ChunkSizeLf(0), b'\n') => State::TrailerStart,
            (State::ChunkSizeLf(size), b'\n') => State::ChunkData(size),
            (State::ChunkDataCr, b'\r') => State::ChunkDataLf,
            (State::ChunkDataLf, b'\n') => State::ChunkSize(0),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart, _) | (State::Trailer, _) if byte != b'\r' => State::Trailer,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Head,
            // Anything else breaks the chunked grammar: the parser refuses
            // the body and closes the connection.
            _ => State::Done,
        })
    }
}

/// Where the bytes after a complete head belong, as the parser decides it.
fn body_after(head: &HeadSoFar) -> State {
    if head.unreadable || head.connect {
        State::Done
    } else if head.chunked {
        State::ChunkSize(0)
    } else if head.websocket {
        State::Done
    } else {
        match head.content_length {
            Some(length) if length > 0 => State::Body(length),
            _ => State::Head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` split into pieces of `step` bytes; returns the
    /// verdicts that were not clean and the bytes as the parser sees them.
    fn scan_in_steps(input: &[u8], step: usize) -> (Vec<ScanVerdict>, Vec<u8>) {
        let mut framing = Framing::default();
        let mut bytes = input.to_vec();
        let mut found = Vec::new();
        for (index, piece) in bytes.chunks_mut(step).enumerate() {
            match framing.scan(piece) {
                ScanVerdict::Clean => {}
                ScanVerdict::BareLf(at) => found.push(ScanVerdict::BareLf(index * step + at)),
                ScanVerdict::Chunk(at, why) => {
                    found.push(ScanVerdict::Chunk(index * step + at, why))
                }
            }
        }
        (found, bytes)
    }

    fn clean_at_every_split(input: &[u8]) {
        for step in 1..=input.len() {
            let (found, bytes) = scan_in_steps(input, step);
            assert_eq!(found, vec![], "split every {step} bytes");
            assert_eq!(bytes, input, "nothing changed");
        }
    }

    fn bare_lf_at(input: &[u8], offset: usize) {
        for step in 1..=input.len() {
            let (found, bytes) = scan_in_steps(input, step);
            assert_eq!(
                found,
                vec![ScanVerdict::BareLf(offset)],
                "split every {step}"
            );
            assert_eq!(bytes[offset], 0);
        }
    }

    #[test]
    fn crlf_heads_pass_untouched() {
        clean_at_every_split(
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        clean_at_every_split(b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn a_bare_lf_anywhere_in_a_head_is_poisoned() {
        bare_lf_at(b"GET /a HTTP/1.1\nHost: a\r\n\r\n", 15);
        bare_lf_at(b"GET /a HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 24);
        bare_lf_at(b"GET /a HTTP/1.1\r\nHost: a\r\n\n", 26);
        bare_lf_at(b"\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    }

    #[test]
    fn bodies_may_hold_bare_lfs_and_the_next_head_is_still_checked() {
        let sized = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\nx\ny\nz\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        clean_at_every_split(sized);
        let mut next_bad = sized[..sized.len() - 4].to_vec();
        next_bad.extend_from_slice(b"\n\r\n");
        bare_lf_at(&next_bad, next_bad.len() - 3);
        let chunked = b"POST /a HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked\r\n\r\n3;x=\"y\"\r\na\nb\r\n0\r\nX-T: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        clean_at_every_split(chunked);
        let mut big_chunk =
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1A\r\n".to_vec();
        big_chunk.extend_from_slice(&[b'\n'; 0x1A]);
        big_chunk.extend_from_slice(b"\r\n0\r\n\r\n");
        let bad_at = big_chunk.len() + "GET /b HTTP/1.1".len();
        big_chunk.extend_from_slice(b"GET /b HTTP/1.1\nHost: a\r\n\r\n");
        bare_lf_at(&big_chunk, bad_at);
    }

    #[test]
    fn a_later_head_is_under_way_from_its_first_byte_to_its_end() {
        let mut framing = Framing::default();
        assert!(framing.first_head_under_way(), "from connecting");
        framing.scan(&mut b"GET /a HTTP/1.1\r\nHost: a".to_vec());
        assert!(
            !framing.later_head_under_way(),
            "the first head is the parser's"
        );
        assert!(framing.first_head_under_way());
        framing.scan(&mut b"\r\n\r\n".to_vec());
        assert!(!framing.later_head_under_way(), "idle between requests");
        assert!(!framing.first_head_under_way());
        assert!(!Framing::off().first_head_under_way(), "not HTTP/1");
        framing.scan(&mut b"G".to_vec());
        assert!(framing.later_head_under_way());
        framing.scan(&mut b"ET /b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec());
        assert!(!framing.later_head_under_way());
    }

    #[test]
    fn the_scan_stops_where_bytes_are_no_longer_http() {
        let websocket = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x02\n\n";
        clean_at_every_split(websocket);
        let connect = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\n\n";
        clean_at_every_split(connect);
        let conflicting =
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n\n";
        clean_at_every_split(conflicting);
    }
}
