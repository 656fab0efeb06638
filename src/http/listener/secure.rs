//! The TLS step of accepting a client, as the listener's [`Termination`]
//! says: a handshake (mutual, in the mesh) within `client_header_timeout`,
//! or, when plain text is taken too (`permissive`), a handshake only for a
//! client whose first byte opens one. A refused handshake closes the
//! connection with no HTTP answer; each handshake is counted in
//! `tls_handshakes_total` by result, and a refused one is logged with its
//! reason and peer (the first of each reason in full, the others summed up
//! by `logging::summary`, so a scanner cannot flood the log). The caller's
//! verified SPIFFE ID goes with the connection as its [`PeerIdentity`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_http::Protocol;
use actix_rt::net::TcpStream;
use actix_web::http::header::HeaderValue;
use log::warn;
use prometheus::IntCounter;
use rustls::CertificateError;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::http::wire::Wire;
use crate::logging::summary::{self, Topic};
use crate::metrics::Metrics;
use crate::tls::{peer_identity, wrong_identity_of, Termination};

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

/// How a listener takes TLS: its termination, and the series its
/// handshakes are counted in, resolved when the listener starts.
pub struct Secure {
    termination: Arc<Termination>,
    listener: &'static str,
    /// One series per [`Handshake`], in its order.
    counted: [IntCounter; Handshake::ALL.len()],
}

impl Secure {
    /// TLS as `termination` says on `listener`, counted in `metrics`.
    pub fn new(termination: Arc<Termination>, listener: &'static str, metrics: &Metrics) -> Secure {
        Secure {
            termination,
            listener,
            counted: Handshake::ALL.map(|result| {
                metrics
                    .tls_handshakes
                    .with_label_values(&[listener, result.as_str()])
            }),
        }
    }
}

/// How a handshake ended: the `result` label of `tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    Ok,
    /// The client presented no certificate where one is required.
    NoClientCert,
    /// Its chain does not lead to the trust bundle.
    UnknownCa,
    /// Its certificate is expired or not valid yet.
    Expired,
    /// Its certificate carries no SPIFFE ID of the trust domain.
    BadIdentity,
    /// Anything else: not TLS at all, a broken handshake, no handshake in
    /// time, an alert from the client.
    Protocol,
}

impl Handshake {
    const ALL: [Handshake; 6] = [
        Handshake::Ok,
        Handshake::NoClientCert,
        Handshake::UnknownCa,
        Handshake::Expired,
        Handshake::BadIdentity,
        Handshake::Protocol,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NoClientCert => "no_client_cert",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::BadIdentity => "bad_identity",
            Self::Protocol => "protocol",
        }
    }

    /// The summary topic of a refusal for this reason.
    fn topic(self) -> &'static str {
        match self {
            Self::Ok => "tls_handshake_ok",
            Self::NoClientCert => "tls_refused_no_client_cert",
            Self::UnknownCa => "tls_refused_unknown_ca",
            Self::Expired => "tls_refused_expired",
            Self::BadIdentity => "tls_refused_bad_identity",
            Self::Protocol => "tls_refused_protocol",
        }
    }

    /// Why the handshake that failed with `err` was refused.
    fn refused(err: &io::Error) -> Handshake {
        let Some(error) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Self::Protocol;
        };
        if wrong_identity_of(error).is_some() {
            return Self::BadIdentity;
        }
        match error {
            rustls::Error::NoCertificatesPresented => Self::NoClientCert,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => Self::UnknownCa,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => Self::Expired,
            _ => Self::Protocol,
        }
    }
}

/// Takes the client on `io` (from `peer`) as `secure` says (plain text
/// when `None`), the handshake bounded by `within`; the stream and the
/// caller's verified identity, or why the client was refused.
/// The protocol a connection speaks: HTTP/2 when its TLS handshake chose
/// `h2` by ALPN, else the one its first bytes showed (`detected`).
pub fn protocol(wire: &ClientWire, detected: Protocol) -> Protocol {
    match wire {
        Wire::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => Protocol::Http2,
        _ => detected,
    }
}

pub async fn accept(
    io: TcpStream,
    secure: Option<&Secure>,
    peer: Option<SocketAddr>,
    within: Duration,
) -> io::Result<(ClientWire, Option<PeerIdentity>)> {
    let Some(secure) = secure else {
        return Ok((Wire::Plain(io), None));
    };
    let termination = &secure.termination;
    let handshake = actix_rt::time::timeout(within, async {
        if termination.accepts_plain() && !opens_tls(&io).await? {
            return Ok(Wire::Plain(io));
        }
        let stream = TlsAcceptor::from(Arc::clone(termination.config()))
            .accept(io)
            .await?;
        Ok(Wire::Tls(Box::new(stream)))
    });
    let result = handshake.await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no TLS handshake within client_header_timeout",
        ))
    });
    let count = |result: Handshake| secure.counted[result as usize].inc();
    match result {
        // Plain text, taken as such (`permissive`): no handshake to count.
        Ok(plain @ Wire::Plain(_)) => Ok((plain, None)),
        Ok(Wire::Tls(stream)) => {
            count(Handshake::Ok);
            let identity = peer_identity(stream.get_ref().1.peer_certificates())
                .and_then(|id| HeaderValue::from_str(&id).ok())
                .map(PeerIdentity);
            Ok((Wire::Tls(stream), identity))
        }
        Err(err) => {
            let refused = Handshake::refused(&err);
            count(refused);
            let topic = Topic {
                kind: refused.topic(),
                listener: secure.listener,
                service: "unknown",
            };
            if summary::first(topic) {
                let peer = peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
                warn!(
                    "{} listener: TLS handshake from {peer} refused ({}): {err}; connection closed",
                    secure.listener,
                    refused.as_str()
                );
            }
            Err(err)
        }
    }
}

/// Whether the client's first byte opens a TLS handshake (waits for it).
async fn opens_tls(io: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let read = io.peek(&mut first).await?;
    Ok(read == 1 && first[0] == TLS_HANDSHAKE)
}
