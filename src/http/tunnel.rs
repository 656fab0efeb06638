//! Protocol upgrades (WebSocket): the handshake is relayed to a replica
//! (or, inbound, the app) over a connection of its own (TLS when the
//! replica is called over TLS), and once it
//! switches protocols the bytes are relayed both ways until either side
//! closes, or until the shutdown grace of a stopping sidecar runs out: then
//! each side of a WebSocket gets a close frame (1001, going away) between
//! two of its frames. Which replica, and counting the call in flight while
//! the tunnel is open, is the listener's part.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::future::{select, Either};
use futures_util::{Stream, StreamExt};
use log::debug;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::client::{open_transport, CallError};
use super::forward::{copy_request_headers, is_hop_by_hop, HeaderPlan};
use super::listener::Stopping;
use crate::tls::Origination;

/// The largest response head a replica may send before switching protocols.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes read from the replica at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The close code of a WebSocket closed by the sidecar's stop: going away.
const GOING_AWAY: [u8; 2] = 1001u16.to_be_bytes();

/// The replica's side of a tunnel, read by the relay to the caller.
type ReadSide = Box<dyn AsyncRead + Unpin>;
/// The replica's side of a tunnel, written by the relay from the caller.
type WriteSide = Box<dyn AsyncWrite + Unpin>;

/// Where and how to open the tunnel.
pub struct Tunnel<'a> {
    /// `host:port` of the replica.
    pub address: &'a str,
    /// How the replica is called over TLS; `None`: plain text.
    pub origination: Option<&'a Arc<Origination>>,
    /// Path to request, without the query.
    pub path: &'a str,
    /// The query to request: the caller's, or what the listener left of it.
    pub query: Option<&'a str>,
    /// The `Sec-WebSocket-Protocol` to offer instead of the caller's, when
    /// the listener took a credential out of it (empty: offer none).
    pub subprotocols: Option<&'a str>,
    /// How the app's headers are passed on (`Host`, trace context); the
    /// handshake headers are always kept.
    pub headers: HeaderPlan<'a>,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Bound on the replica's answer to the handshake.
    pub answer_timeout: Duration,
}

/// The replica's answer to the handshake: its status, headers, and the
/// connection, ready to stream.
pub struct Handshake {
    status: StatusCode,
    headers: HeaderMap,
    /// Bytes read past the head (the start of the body or of the new protocol).
    early: Bytes,
    reader: ReadSide,
    writer: WriteSide,
}

impl Handshake {
    /// The replica's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer to the caller. On 101 the tunnel opens: the caller's
    /// bytes are written to the replica by a task on this worker, the
    /// replica's bytes stream back as the body; `guard` lives as long as
    /// the tunnel, which closes once `stopping`'s grace is over. Any other
    /// status is passed on with its body, and the connection closes.
    pub fn into_response<G: Unpin + 'static>(
        self,
        payload: Payload,
        guard: G,
        stopping: &Stopping,
    ) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        for (name, value) in self.headers.iter() {
            if !is_hop_by_hop(name, &self.headers) && *name != header::CONTENT_LENGTH {
                response.append_header((name.clone(), value.clone()));
            }
        }
        if self.status != StatusCode::SWITCHING_PROTOCOLS {
            let body = relay_from(self.early, self.reader, guard, None);
            return match content_length(&self.headers) {
                Some(length) => response.body(SizedStream::new(length, body)),
                None => response.body(BodyStream::new(body)),
            };
        }
        let protocol = self
            .headers
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("websocket"));
        let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
        let closing = |frames: Frames| Closing {
            grace_over: Box::pin(stopping.grace_over()),
            frames: websocket.then_some(frames),
        };
        actix_rt::spawn(relay_to(
            payload,
            self.writer,
            closing(Frames::from_caller()),
        ));
        let body = relay_from(
            self.early,
            self.reader,
            guard,
            Some(closing(Frames::from_replica())),
        );
        response.upgrade(protocol).body(BodyStream::new(body))
    }
}

/// Sends the handshake of `req` to the replica and reads its answer's head.
pub async fn open(
    tunnel: Tunnel<'_>,
    req: &HttpRequest,
    request_id: &HeaderValue,
) -> Result<Handshake, CallError> {
    let transport =
        open_transport(tunnel.address, tunnel.origination, tunnel.connect_timeout).await?;
    let (mut reader, mut writer) = transport.into_split();
    let head = request_head(&tunnel, req, request_id);
    writer.write_all(&head).await.map_err(CallError::Closed)?;
    let read = read_head(&mut reader);
    let (status, headers, early) = match tokio::time::timeout(tunnel.answer_timeout, read).await {
        Ok(result) => result?,
        Err(_) => return Err(CallError::Timeout),
    };
    Ok(Handshake {
        status,
        headers,
        early,
        reader,
        writer,
    })
}

fn request_head(tunnel: &Tunnel<'_>, req: &HttpRequest, request_id: &HeaderValue) -> Vec<u8> {
    let mut headers = HeaderMap::new();
    let plan = HeaderPlan {
        handshake: true,
        ..tunnel.headers
    };
    copy_request_headers(req, &mut headers, &plan, request_id);
    if !tunnel.headers.keep_host {
        if let Ok(host) = HeaderValue::from_str(tunnel.address) {
            headers.insert(header::HOST, host);
        }
    }
    if let Some(offer) = tunnel.subprotocols {
        headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
        if let Ok(offer) = HeaderValue::from_str(offer) {
            if !offer.is_empty() {
                headers.insert(header::SEC_WEBSOCKET_PROTOCOL, offer);
            }
        }
    }
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(tunnel.path.as_bytes());
    if let Some(query) = tunnel.query {
        head.push(b'?');
        head.extend_from_slice(query.as_bytes());
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers.iter() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

async fn read_head(reader: &mut ReadSide) -> Result<(StatusCode, HeaderMap, Bytes), CallError> {
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        if let Some(end) = find_head_end(&buffer) {
            let rest = buffer.split_off(end + 4);
            let (status, headers) = parse_head(&buffer[..end]).map_err(CallError::Protocol)?;
            return Ok((status, headers, rest.freeze()));
        }
        if buffer.len() > MAX_HEAD {
            return Err(CallError::Protocol(
                "the handshake answer's head is too large".to_string(),
            ));
        }
        let read = reader.read_buf(&mut buffer).await;
        match read {
            Ok(0) => {
                return Err(CallError::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before answering the handshake",
                )))
            }
            Ok(_) => {}
            Err(err) => return Err(CallError::Closed(err)),
        }
    }
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|window| window == b"\r\n\r\n")
}

/// Parses `HTTP/1.1 101 Switching Protocols` and its header lines.
fn parse_head(head: &[u8]) -> Result<(StatusCode, HeaderMap), String> {
    let text =
        std::str::from_utf8(head).map_err(|_| "the handshake answer is not text".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 status line: {status_line:?}"));
    }
    let status = code
        .parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("bad status in {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("bad header name {name:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("bad header value for {name}"))?;
        headers.append(name, value);
    }
    Ok((status, headers))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How one direction of an open tunnel ends when the sidecar's grace is
/// over: a WebSocket's at the next edge between two frames, with a close
/// frame; any other protocol's at once.
struct Closing {
    grace_over: Pin<Box<dyn Future<Output = ()>>>,
    /// The direction's frames, followed for a WebSocket.
    frames: Option<Frames>,
}

impl Closing {
    /// Follows `bytes` on their way; once the grace is over (`ending`),
    /// how many of them go before the close, and the close frame to send
    /// after them (`None` while the current frame goes on).
    fn pass(&mut self, bytes: &[u8], ending: bool) -> (usize, Option<Bytes>) {
        let Some(frames) = &mut self.frames else {
            return (
                if ending { 0 } else { bytes.len() },
                ending.then(Bytes::new),
            );
        };
        if !ending {
            frames.pass(bytes, false);
            return (bytes.len(), None);
        }
        if frames.at_edge() {
            return (0, Some(frames.close_frame()));
        }
        let sent = frames.pass(bytes, true);
        (sent, frames.at_edge().then(|| frames.close_frame()))
    }
}

/// The replica's bytes as a body stream, starting with `early`; holds
/// `guard` until the replica closes, or the tunnel closes as `closing` says.
fn relay_from<G: Unpin + 'static>(
    early: Bytes,
    reader: ReadSide,
    guard: G,
    closing: Option<Closing>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let relay = Relay {
        early: (!early.is_empty()).then_some(early),
        reader,
        _guard: guard,
        closing,
        ending: false,
    };
    futures_util::stream::unfold(Some(relay), |relay| async move {
        let mut relay = relay?;
        let chunk = match relay.next().await {
            Next::Bytes(chunk) => chunk,
            Next::GraceOver => {
                relay.ending = true;
                Bytes::new()
            }
            Next::Closed => return None,
            Next::Failed(err) => return Some((Err(err), None)),
        };
        let Some(closing) = &mut relay.closing else {
            return Some((Ok(chunk), Some(relay)));
        };
        let (sent, close) = closing.pass(&chunk, relay.ending);
        let Some(close) = close else {
            return Some((Ok(chunk), Some(relay)));
        };
        debug!("upgrade tunnel: closed at the end of the shutdown grace");
        let mut last = BytesMut::with_capacity(sent + close.len());
        last.extend_from_slice(&chunk[..sent]);
        last.extend_from_slice(&close);
        Some((Ok(last.freeze()), None))
    })
}

/// The replica's side of a tunnel, relayed to the caller.
struct Relay<G> {
    /// Bytes read with the handshake's answer, not yet relayed.
    early: Option<Bytes>,
    reader: ReadSide,
    _guard: G,
    closing: Option<Closing>,
    /// The grace is over: the tunnel closes at the current frame's end.
    ending: bool,
}

/// What happened next on the replica's side of a tunnel.
enum Next {
    Bytes(Bytes),
    /// The shutdown grace ran out first.
    GraceOver,
    Closed,
    Failed(io::Error),
}

impl<G> Relay<G> {
    async fn next(&mut self) -> Next {
        if let Some(early) = self.early.take() {
            return Next::Bytes(early);
        }
        let mut chunk = BytesMut::with_capacity(READ_CHUNK);
        let read = self.reader.read_buf(&mut chunk);
        let read = match self.closing.as_mut().filter(|_| !self.ending) {
            Some(closing) => {
                match select(std::pin::pin!(read), closing.grace_over.as_mut()).await {
                    Either::Left((read, _)) => read,
                    Either::Right(((), _)) => return Next::GraceOver,
                }
            }
            None => read.await,
        };
        match read {
            Ok(0) => Next::Closed,
            Ok(_) => Next::Bytes(chunk.freeze()),
            Err(err) => Next::Failed(err),
        }
    }
}

/// Writes the caller's bytes to the replica until the caller closes, or
/// the tunnel closes as `closing` says, then closes the replica's side so
/// it can finish too.
async fn relay_to(mut payload: Payload, mut writer: WriteSide, mut closing: Closing) {
    let mut ending = false;
    loop {
        let next = if ending {
            payload.next().await
        } else {
            match select(payload.next(), closing.grace_over.as_mut()).await {
                Either::Left((next, _)) => next,
                Either::Right(((), _)) => {
                    ending = true;
                    Some(Ok(Bytes::new()))
                }
            }
        };
        let Some(Ok(chunk)) = next else { break };
        let (sent, close) = closing.pass(&chunk, ending);
        if writer.write_all(&chunk[..sent]).await.is_err() {
            break;
        }
        if let Some(close) = close {
            let _ = writer.write_all(&close).await;
            debug!("upgrade tunnel: closed at the end of the shutdown grace");
            break;
        }
    }
    let _ = writer.shutdown().await;
    debug!("upgrade tunnel: the caller's side is closed");
}

/// Where the frames of one direction of a WebSocket end, followed as its
/// bytes pass, so that a close frame can go between two of them.
struct Frames {
    /// The current frame's head as read so far (2 to 14 bytes).
    head: [u8; 14],
    /// How much of `head` is read; 0 between frames and in a payload.
    read: usize,
    /// Payload bytes of the current frame still to pass.
    payload: u64,
    /// Whether this direction's frames are masked: the caller's are, so a
    /// close frame to the replica is masked too.
    masked: bool,
}

impl Frames {
    /// The frames a caller sends (masked).
    fn from_caller() -> Frames {
        Frames::new(true)
    }

    /// The frames a replica sends (unmasked).
    fn from_replica() -> Frames {
        Frames::new(false)
    }

    fn new(masked: bool) -> Frames {
        Frames {
            head: [0; 14],
            read: 0,
            payload: 0,
            masked,
        }
    }

    /// Whether the bytes so far end a frame.
    fn at_edge(&self) -> bool {
        self.read == 0 && self.payload == 0
    }

    /// Follows `bytes`; with `to_edge`, stops where the current frame ends.
    /// Returns how many bytes it followed.
    fn pass(&mut self, bytes: &[u8], to_edge: bool) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            if self.payload > 0 {
                let left = bytes.len() - at;
                let take = usize::try_from(self.payload).map_or(left, |payload| payload.min(left));
                self.payload -= take as u64;
                at += take;
            } else {
                self.head[self.read] = bytes[at];
                self.read += 1;
                at += 1;
                if self.read == head_length(&self.head[..self.read]) {
                    self.payload = payload_length(&self.head[..self.read]);
                    self.read = 0;
                }
            }
            if to_edge && self.at_edge() {
                break;
            }
        }
        at
    }

    /// A close frame saying "going away", masked when this direction's are.
    fn close_frame(&self) -> Bytes {
        const CLOSE: u8 = 0x88;
        if !self.masked {
            return Bytes::copy_from_slice(&[CLOSE, 2, GOING_AWAY[0], GOING_AWAY[1]]);
        }
        let key: [u8; 4] = rand::random();
        let code = [GOING_AWAY[0] ^ key[0], GOING_AWAY[1] ^ key[1]];
        let frame = [
            CLOSE,
            0x80 | 2,
            key[0],
            key[1],
            key[2],
            key[3],
            code[0],
            code[1],
        ];
        Bytes::copy_from_slice(&frame)
    }
}

/// The length of the frame head that begins with `head` (2 until its
/// second byte is known).
fn head_length(head: &[u8]) -> usize {
    let Some(second) = head.get(1) else {
        return 2;
    };
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The payload length a whole frame head gives.
fn payload_length(head: &[u8]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => head[2..10].iter().fold(0, |n, b| n << 8 | u64::from(*b)),
        short => u64::from(short),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switching_protocols_head_parses() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=";
        let (status, headers) = parse_head(head).expect("valid head");
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            headers
                .get("sec-websocket-accept")
                .and_then(|v| v.to_str().ok()),
            Some("abc=")
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(parse_head(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_head(b"HTTP/1.1 abc Nope").is_err());
        assert!(parse_head(b"HTTP/1.1 101 OK\r\nno colon here").is_err());
    }

    /// A frame of `payload` bytes, masked or not, as a peer sends it.
    fn frame(payload: &[u8], masked: bool) -> Vec<u8> {
        let mut frame = vec![0x82];
        let mask = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask | n as u8),
            n if n <= 0xffff => {
                frame.push(mask | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            frame.extend_from_slice(&[1, 2, 3, 4]);
        }
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn frame_edges_are_followed_across_chunks_of_any_size() {
        for masked in [false, true] {
            let mut stream = Vec::new();
            for size in [0, 5, 125, 126, 300, 70_000] {
                stream.extend(frame(&vec![7; size], masked));
            }
            let edges = [0, 5, 125, 126, 300, 70_000]
                .iter()
                .scan(0, |at, size| {
                    *at += frame(&vec![7; *size], masked).len();
                    Some(*at)
                })
                .collect::<Vec<_>>();
            for chunk in [1, 3, 1000, stream.len()] {
                let mut frames = Frames::new(masked);
                let mut at = 0;
                for piece in stream.chunks(chunk) {
                    frames.pass(piece, false);
                    at += piece.len();
                    assert_eq!(frames.at_edge(), edges.contains(&at), "at {at}");
                }
            }
            let mut frames = Frames::new(masked);
            let first = frames.pass(&stream[..10], true);
            assert_eq!(first, edges[0], "stops at the end of the first frame");
            let second = frames.pass(&stream[first..], true);
            assert_eq!(first + second, edges[1], "then of the second");
        }
    }

    #[test]
    fn close_frames_say_going_away_masked_towards_the_replica() {
        let to_caller = Frames::from_replica().close_frame();
        assert_eq!(&to_caller[..], &[0x88, 2, 0x03, 0xe9]);
        let to_replica = Frames::from_caller().close_frame();
        assert_eq!((to_replica[0], to_replica[1]), (0x88, 0x82));
        let key = &to_replica[2..6];
        assert_eq!(
            [to_replica[6] ^ key[0], to_replica[7] ^ key[1]],
            [0x03, 0xe9]
        );
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(
            find_head_end(b"HTTP/1.1 101 X\r\nA: b\r\n\r\nrest"),
            Some(20)
        );
        assert_eq!(find_head_end(b"HTTP/1.1 101 X\r\n"), None);
    }
}
