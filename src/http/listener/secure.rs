//! The TLS step of accepting a client, as the listener's [`Termination`]
//! says: a handshake (mutual, in the mesh) within `client_header_timeout`,
//! or, when plain text is taken too (`permissive`), a handshake only for a
//! client whose first byte opens one. A refused handshake closes the
//! connection with no HTTP answer. The caller's verified SPIFFE ID goes
//! with the connection as its [`PeerIdentity`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_web::http::header::HeaderValue;
use log::debug;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::http::wire::Wire;
use crate::tls::{peer_identity, Termination};

/// A client connection's byte stream: plain text or server TLS.
pub type ClientWire = Wire<TlsStream<TcpStream>>;

/// The first byte of a TLS record that carries a handshake message: a
/// ClientHello opens with it, an HTTP/1 request line never does.
const TLS_HANDSHAKE: u8 = 0x16;

/// The SPIFFE ID the caller's certificate verified with, as the
/// `x-outrigger-peer-identity` header carries it; in the data of every
/// connection made over mutual TLS.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub HeaderValue);

impl PeerIdentity {
    /// The ID.
    pub fn as_str(&self) -> &str {
        // Made from a `&str` in `accept`, so always visible ASCII.
        self.0.to_str().unwrap_or_default()
    }
}

/// Takes the client on `io` (from `peer`) as `tls` says (plain text when
/// `None`), the handshake bounded by `within`; the stream and the caller's
/// verified identity, or why the client was refused.
pub async fn accept(
    io: TcpStream,
    tls: Option<&Arc<Termination>>,
    peer: Option<SocketAddr>,
    within: Duration,
) -> io::Result<(ClientWire, Option<PeerIdentity>)> {
    let Some(tls) = tls else {
        return Ok((Wire::Plain(io), None));
    };
    let secured = actix_rt::time::timeout(within, async {
        if tls.accepts_plain() && !opens_tls(&io).await? {
            return Ok((Wire::Plain(io), None));
        }
        let stream = TlsAcceptor::from(Arc::clone(tls.config()))
            .accept(io)
            .await?;
        let identity = peer_identity(stream.get_ref().1.peer_certificates())
            .and_then(|id| HeaderValue::from_str(&id).ok())
            .map(PeerIdentity);
        Ok((Wire::Tls(Box::new(stream)), identity))
    })
    .await
    .unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no TLS handshake within client_header_timeout",
        ))
    });
    if let Err(err) = &secured {
        let peer = peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
        debug!("TLS from {peer} refused: {err}");
    }
    secured
}

/// Whether the client's first byte opens a TLS handshake (waits for it).
async fn opens_tls(io: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let read = io.peek(&mut first).await?;
    Ok(read == 1 && first[0] == TLS_HANDSHAKE)
}
