//! The bytes under a replica connection: a TCP socket, or TLS over one
//! (tokio-rustls, configured by the service's [`Origination`]), read and
//! written as a [`Wire`]. Both are framed and pooled alike.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::CallError;
use crate::http::wire::Wire;
use crate::tls::{wrong_identity_of, Origination};

/// A replica connection's byte stream: plain text, or TLS verified as the
/// service's origination asks.
pub type Transport = Wire<TlsStream<TcpStream>>;

impl Transport {
    /// Opens TLS over `socket` to the replica at `address` (`host:port`):
    /// the name sent and verified is the origination's, else the host.
    /// The error says why the handshake or the verification failed:
    /// [`CallError::Identity`] when the replica's chain verified but its
    /// SPIFFE ID is not the one asked for, [`CallError::Tls`] otherwise.
    pub async fn secure(
        socket: TcpStream,
        address: &str,
        origination: &Origination,
    ) -> Result<Transport, CallError> {
        Self::handshake(socket, address, origination, origination.config()).await
    }

    /// Opens TLS as [`Transport::secure`] does, offering `h2` by ALPN; a
    /// replica that does not choose it is refused (it would not take the
    /// HTTP/2 preface).
    pub async fn secure_http2(
        socket: TcpStream,
        address: &str,
        origination: &Origination,
    ) -> Result<Transport, CallError> {
        let transport =
            Self::handshake(socket, address, origination, origination.http2_config()).await?;
        match &transport {
            Transport::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => Ok(transport),
            _ => Err(CallError::Tls(
                "the replica did not choose h2 by ALPN (protocol: http2)".to_string(),
            )),
        }
    }

    async fn handshake(
        socket: TcpStream,
        address: &str,
        origination: &Origination,
        config: &Arc<ClientConfig>,
    ) -> Result<Transport, CallError> {
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let name = origination.server_name(host).map_err(CallError::Tls)?;
        let connector = TlsConnector::from(Arc::clone(config));
        match connector.connect(name, socket).await {
            Ok(tls) => Ok(Transport::Tls(Box::new(tls))),
            Err(err) => Err(handshake_failure(&err)),
        }
    }

    /// Its two halves, to read and write from separate tasks (an upgrade
    /// tunnel): the socket's own for plain text, tokio's split for TLS,
    /// whose reads and writes share one session.
    pub fn into_split(self) -> (Box<dyn AsyncRead + Unpin>, Box<dyn AsyncWrite + Unpin>) {
        match self {
            Transport::Plain(socket) => {
                let (reader, writer) = socket.into_split();
                (Box::new(reader), Box::new(writer))
            }
            tls @ Transport::Tls(_) => {
                let (reader, writer) = tokio::io::split(tls);
                (Box::new(reader), Box::new(writer))
            }
        }
    }

    /// The TCP socket underneath.
    #[cfg(test)]
    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether an idle connection is still fit for a request: nothing has
    /// arrived on it since its last read but what TLS itself sends (a
    /// session ticket, a key update: rustls takes those in). An end of
    /// stream, a reset or bytes no request asked for make it unfit. Costs
    /// no system call unless the socket has signalled something since its
    /// last read.
    pub fn quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Transport::Plain(socket) => match socket.poll_read_ready(&mut cx) {
                // Nothing has arrived since the last read drained the socket.
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                // Something arrived: only a spurious wake-up leaves it usable.
                Poll::Ready(Ok(())) => matches!(
                    socket.try_read(&mut [0u8; 1]),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock
                ),
            },
            Transport::Tls(tls) => {
                let mut byte = [0u8; 1];
                let mut unasked = ReadBuf::new(&mut byte);
                // Pending: no plaintext, no end, no error.
                Pin::new(&mut **tls)
                    .poll_read(&mut cx, &mut unasked)
                    .is_pending()
            }
        }
    }
}

/// Why a handshake failed: a replica with another identity, or in words
/// rustls's error (a certificate for another name, an unknown issuer, an
/// alert from the replica) when there is one, else the socket's.
fn handshake_failure(err: &io::Error) -> CallError {
    let rustls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(wrong) = rustls_error.and_then(wrong_identity_of) {
        return CallError::Identity(wrong.to_string());
    }
    match err.get_ref() {
        Some(inner) => CallError::Tls(inner.to_string()),
        None => CallError::Tls(err.to_string()),
    }
}
