//! Protocol upgrades (WebSocket): the handshake is relayed to a replica
//! over a connection of its own, and once the replica switches protocols
//! the bytes are relayed both ways until either side closes. Which replica,
//! and counting the call in flight while the tunnel is open, is the
//! outbound listener's part.

use std::io;
use std::time::Duration;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt};
use log::debug;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::client::CallError;
use super::forward::{copy_request_headers, is_hop_by_hop, HeaderPlan};

/// The largest response head a replica may send before switching protocols.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes read from the replica at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Where and how to open the tunnel.
pub struct Tunnel<'a> {
    /// `host:port` of the replica.
    pub address: &'a str,
    /// Path to request, without the query.
    pub path: &'a str,
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
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
}

impl Handshake {
    /// The replica's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The app's answer. On 101 the tunnel opens: the app's bytes are
    /// written to the replica by a task on this worker, the replica's bytes
    /// stream back as the body; `guard` lives as long as the tunnel. Any
    /// other status is passed on with its body, and the connection closes.
    pub fn into_response<G: Unpin + 'static>(self, payload: Payload, guard: G) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        for (name, value) in self.headers.iter() {
            if !is_hop_by_hop(name, &self.headers) && *name != header::CONTENT_LENGTH {
                response.append_header((name.clone(), value.clone()));
            }
        }
        let body = relay_from(self.early, self.reader, guard);
        if self.status == StatusCode::SWITCHING_PROTOCOLS {
            let protocol = self
                .headers
                .get(header::UPGRADE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("websocket"));
            actix_rt::spawn(relay_to(payload, self.writer));
            return response.upgrade(protocol).body(BodyStream::new(body));
        }
        match content_length(&self.headers) {
            Some(length) => response.body(SizedStream::new(length, body)),
            None => response.body(BodyStream::new(body)),
        }
    }
}

/// Sends the handshake of `req` to the replica and reads its answer's head.
pub async fn open(
    tunnel: Tunnel<'_>,
    req: &HttpRequest,
    request_id: &HeaderValue,
) -> Result<Handshake, CallError> {
    let connect = TcpStream::connect(tunnel.address);
    let stream = match tokio::time::timeout(tunnel.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(CallError::Connect(err)),
        Err(_) => {
            return Err(CallError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "not connected within connect_timeout",
            )))
        }
    };
    let (mut reader, mut writer) = stream.into_split();
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
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(tunnel.path.as_bytes());
    if let Some(query) = req.uri().query() {
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

async fn read_head(
    reader: &mut OwnedReadHalf,
) -> Result<(StatusCode, HeaderMap, Bytes), CallError> {
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

/// The replica's bytes as a body stream, starting with `early`; holds
/// `guard` until the replica closes.
fn relay_from<G: Unpin + 'static>(
    early: Bytes,
    reader: OwnedReadHalf,
    guard: G,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let first = futures_util::stream::iter((!early.is_empty()).then_some(Ok(early)));
    let rest = futures_util::stream::unfold((reader, guard), |(mut reader, guard)| async move {
        let mut chunk = BytesMut::with_capacity(READ_CHUNK);
        match reader.read_buf(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(chunk.freeze()), (reader, guard))),
            Err(err) => Some((Err(err), (reader, guard))),
        }
    });
    first.chain(rest)
}

/// Writes the app's bytes to the replica until the app closes, then closes
/// the replica's side so it can finish too.
async fn relay_to(mut payload: Payload, mut writer: OwnedWriteHalf) {
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else { break };
        if writer.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
    debug!("upgrade tunnel: the app closed its side");
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

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(
            find_head_end(b"HTTP/1.1 101 X\r\nA: b\r\n\r\nrest"),
            Some(20)
        );
        assert_eq!(find_head_end(b"HTTP/1.1 101 X\r\n"), None);
    }
}
