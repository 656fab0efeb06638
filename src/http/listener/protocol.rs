//! Which HTTP a client speaks on a plain-text connection, told from its
//! first bytes: HTTP/2 with prior knowledge (what gRPC clients use for
//! `http://` targets) opens with the 24-byte client preface (RFC 9113,
//! 3.4), HTTP/1.1 with a request line. The bytes are peeked, not read, so
//! the parser of the protocol chosen reads them all.

use std::io;
use std::time::Duration;

use actix_http::Protocol;
use actix_rt::net::TcpStream;

/// The client preface of HTTP/2.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a connection whose bytes so far begin the preface is looked
/// at again for the rest (a peek returns at once while bytes wait unread,
/// so it cannot wait for more by itself).
pub const RECHECK: Duration = Duration::from_millis(5);

/// The protocol of the client on `io`: HTTP/2 once its first bytes are the
/// whole preface, HTTP/1.1 as soon as one differs from it (or the client
/// closed); fails with `TimedOut` when the client has not told which within
/// `limit` (`client_header_timeout`: a connection that sends nothing is
/// closed as one that sends no head).
pub async fn detect(io: &TcpStream, limit: Duration) -> io::Result<Protocol> {
    let peek = async {
        let mut first = [0u8; PREFACE.len()];
        loop {
            let n = io.peek(&mut first).await?;
            if n == 0 || first[..n] != PREFACE[..n] {
                return Ok(Protocol::Http1);
            }
            if n == PREFACE.len() {
                return Ok(Protocol::Http2);
            }
            // A beginning of the preface: the rest is on its way.
            tokio::time::sleep(RECHECK).await;
        }
    };
    tokio::time::timeout(limit, peek).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client sent no request within client_header_timeout",
        ))
    })
}
