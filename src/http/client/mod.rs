//! The HTTP/1 client that calls replicas (and, inbound, the app): one per
//! worker, keep-alive connections pooled per replica address, request and
//! response bodies streamed through actix-http's client codec.
//!
//! It is the request path's own rather than awc's because of what awc
//! costs per request: a new codec whose configuration starts a date task
//! and timer on the worker (a wake-up of the event loop each time), two
//! fresh 8 KiB buffers, and a hashed pool lookup behind a semaphore. Here
//! the worker's connections share one codec configuration, and a pooled
//! connection keeps its codec. A replica of a service with TLS is called
//! over TLS (`stream.rs`) made as the service's `Origination` says, and its
//! connections are pooled like plain ones: one handshake per connection.
//! awc stays for the sidecar's own calls (registry, JWKS, OTLP), which are
//! few. Replicas of a service called over HTTP/2 get streams on one
//! multiplexed connection per worker instead (`http2.rs`).

mod http2;
mod pool;
mod response;
mod stream;

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::error::ParseError;
use actix_http::h1::{ClientCodec, Message};
use actix_http::{KeepAlive, Method, RequestHead, RequestHeadType, ResponseHead};
use actix_http::{ServiceConfig, ServiceConfigBuilder, StatusCode};
use actix_web::web::Bytes;
use actix_web::HttpRequest;
use futures_util::StreamExt;
use log::debug;
use tokio::net::TcpStream;

use crate::config::format_duration;
use crate::error::ProxyError;
use crate::http::listener::{BodyError, LentBody};
use crate::http::trailers::Trailers;
use crate::metrics::PoolGauges;
use crate::tls::Origination;
pub use pool::MAX_IDLE_PER_REPLICA;
use pool::{Connection, Counted, Pool, IDLE_TIMEOUT};
pub use response::UpstreamResponse;
pub(crate) use stream::Transport;

/// One worker's client; not `Send` (it lives on its worker).
pub struct Client {
    shared: Rc<Shared>,
    connect_timeout: Duration,
}

/// What a worker's calls share: the codec configuration and the pools.
struct Shared {
    config: ServiceConfig,
    pool: RefCell<Pool>,
    /// The HTTP/2 connections.
    http2: RefCell<http2::Pool>,
}

/// A request body as the client sends it.
pub enum OutgoingBody {
    /// No body.
    Empty,
    /// The whole body, sent with its `Content-Length`.
    Full(Bytes),
    /// The body as it arrives from the caller: `Some(n)` bytes sent with a
    /// `Content-Length` of `n`, `None` sent chunked.
    Stream(LentBody, Option<u64>),
}

/// A request body as the client sends it over HTTP/2, and the caller's
/// [`Trailers`], sent after it once the caller's body ended with some.
pub struct Http2Body {
    /// The body.
    pub body: OutgoingBody,
    /// The slot the caller's trailers fill, if they may come.
    pub trailers: Option<Trailers>,
}

impl OutgoingBody {
    fn size(&self) -> BodySize {
        match self {
            OutgoingBody::Empty => BodySize::None,
            OutgoingBody::Full(bytes) => BodySize::Sized(bytes.len() as u64),
            OutgoingBody::Stream(_, Some(length)) => BodySize::Sized(*length),
            OutgoingBody::Stream(_, None) => BodySize::Stream,
        }
    }
}

/// The kind of failure of a call that got no answer, as the breaker,
/// retries and both listeners' answers tell them apart; the `kind` label of
/// `upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Connection refused, reset or not made in time.
    Connect,
    /// The TLS handshake failed, or the replica's certificate did not
    /// verify; the breaker and retries take it as a connect failure.
    Tls,
    /// No response head within the try's timeout.
    Timeout,
    /// The connection closed or reset before a response head arrived.
    Reset,
    /// The answer was not valid HTTP, or its body broke off.
    Protocol,
}

impl UpstreamError {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Protocol => "protocol",
        }
    }
}

/// Why a call (a forwarded request or an upgrade handshake) got no answer:
/// the one error both listeners turn into their answer, with
/// [`CallError::refusal`].
#[derive(Debug)]
pub enum CallError {
    /// The request could not be formed (a Host or path the grammar rejects):
    /// it never left.
    Unsendable(String),
    /// The caller's body broke off or crossed its limit: the caller's doing.
    Body(BodyError),
    /// No connection could be made within the connect timeout.
    Connect(io::Error),
    /// The TLS handshake failed or the replica's certificate did not
    /// verify (why, in words).
    Tls(String),
    /// The replica's certificate verified, but its SPIFFE ID is not the
    /// one the meshed service expects (why, in words); the breaker and
    /// retries take it as a TLS failure.
    Identity(String),
    /// The peer took no body bytes, or sent no answer head after the
    /// body, within the call's timeout.
    Timeout,
    /// The connection failed or closed before the answer head.
    Closed(io::Error),
    /// The answer was not valid HTTP/1, or the replica broke the HTTP/2
    /// protocol.
    Protocol(String),
}

/// Who a call went to, as an answer names it, and the timeout key that
/// bounded the call with its value.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
    /// `service/address` for a replica, `the app at address` inbound.
    pub name: &'a dyn fmt::Display,
    /// The key whose value bounded the wait for the answer, and the value.
    pub bound: (&'static str, Duration),
}

impl CallError {
    /// The kind of failure the breaker, retries and `upstream_errors_total`
    /// hear; `None` when the call failed by the caller's doing (the peer is
    /// not to blame).
    pub fn kind(&self) -> Option<UpstreamError> {
        match self {
            Self::Unsendable(_) | Self::Body(_) => None,
            Self::Connect(_) => Some(UpstreamError::Connect),
            Self::Tls(_) | Self::Identity(_) => Some(UpstreamError::Tls),
            Self::Timeout => Some(UpstreamError::Timeout),
            Self::Closed(_) => Some(UpstreamError::Reset),
            Self::Protocol(_) => Some(UpstreamError::Protocol),
        }
    }

    /// The answer to the caller of `req` whose call to `peer` failed so;
    /// one mapping for both listeners.
    pub fn refusal(self, req: &HttpRequest, peer: Peer<'_>) -> ProxyError {
        let name = peer.name;
        match self {
            Self::Unsendable(message) => ProxyError::BadRequest(message),
            Self::Body(error) => error.refusal(req),
            Self::Connect(err) => {
                ProxyError::UpstreamConnect(format!("cannot connect to {name}: {err}"))
            }
            Self::Tls(why) => ProxyError::UpstreamTls(format!("TLS to {name} failed: {why}")),
            Self::Identity(why) => {
                ProxyError::UpstreamIdentity(format!("{name} is not the peer expected: {why}"))
            }
            Self::Timeout => {
                let (key, limit) = peer.bound;
                ProxyError::Timeout(format!(
                    "no answer from {name} within {key} {}",
                    format_duration(limit)
                ))
            }
            Self::Closed(err) => ProxyError::UpstreamReset(format!(
                "{name} closed the connection before answering: {err}"
            )),
            Self::Protocol(why) => {
                ProxyError::UpstreamProtocol(format!("{name} answered with invalid HTTP: {why}"))
            }
        }
    }
}

impl Client {
    /// A client for the current worker; connections are made within
    /// `connect_timeout`. Must be called on the worker's runtime: it starts
    /// the task that closes the pool's stale connections.
    pub fn new(connect_timeout: Duration) -> Client {
        let config = ServiceConfigBuilder::new()
            .keep_alive(KeepAlive::Timeout(IDLE_TIMEOUT))
            .build();
        let shared = Rc::new(Shared {
            config,
            pool: RefCell::new(Pool::default()),
            http2: RefCell::new(http2::Pool::default()),
        });
        actix_rt::spawn(sweep_idle(Rc::downgrade(&shared)));
        Client {
            shared,
            connect_timeout,
        }
    }

    /// Sends `head` with `body` to `address` (`host:port`) over a pooled
    /// connection or a new one (made within the connect timeout), in plain
    /// text, or over TLS made as `origination` says. The replica is timed,
    /// not the caller: `timeout` bounds each wait for the replica to take
    /// body bytes and the wait for its answer head once the body is
    /// complete, while the caller's pauses in its body are bounded by its
    /// listener's `client_body_timeout`. A pooled connection that turns out
    /// to have been closed by the replica is replaced by a new one when the
    /// request can safely be sent again. The connection counts in `gauges`,
    /// the replica's `upstream_connections`.
    pub async fn send(
        &self,
        address: &str,
        origination: Option<&Arc<Origination>>,
        gauges: Option<&Arc<PoolGauges>>,
        head: RequestHead,
        mut body: OutgoingBody,
        timeout: Duration,
    ) -> Result<UpstreamResponse, CallError> {
        let head = Rc::new(head);
        let pooled = self
            .shared
            .pool
            .borrow_mut()
            .take(address, origination, gauges);
        if let Some(mut connection) = pooled {
            match exchange(&mut connection.framed, &head, &mut body, timeout).await {
                Ok(answer) => return Ok(self.answer(answer, connection)),
                Err(CallError::Closed(err)) if resendable(&head.method, &body) => {
                    debug!("a pooled connection to {address} was closed ({err}); using a new one");
                }
                Err(err) => return Err(err),
            }
        }
        let mut connection = self.connect(address, origination, gauges).await?;
        let answer = exchange(&mut connection.framed, &head, &mut body, timeout).await?;
        Ok(self.answer(answer, connection))
    }

    /// Sends `head` with `body` (and its trailers) to `address` over
    /// HTTP/2, as a stream on the worker's multiplexed connection to it (a
    /// new one when it has none with room); otherwise as [`Client::send`]
    /// does.
    pub async fn send_http2(
        &self,
        address: &str,
        origination: Option<&Arc<Origination>>,
        gauges: Option<&Arc<PoolGauges>>,
        head: RequestHead,
        body: Http2Body,
        timeout: Duration,
    ) -> Result<UpstreamResponse, CallError> {
        http2::send(self, address, origination, gauges, head, body, timeout).await
    }

    /// A new connection to `address`, its TLS handshake included when
    /// `origination` asks for one, within the connect timeout.
    async fn connect(
        &self,
        address: &str,
        origination: Option<&Arc<Origination>>,
        gauges: Option<&Arc<PoolGauges>>,
    ) -> Result<Connection, CallError> {
        let stream = open_transport(address, origination, self.connect_timeout).await?;
        let codec = ClientCodec::new(self.shared.config.clone());
        Ok(Connection::new(
            Framed::new(stream, codec),
            Rc::from(address),
            origination.cloned(),
            Counted::in_use(gauges),
        ))
    }

    /// The answer with `connection` either back in the pool (no body) or
    /// carrying the body.
    fn answer(&self, head: ResponseHead, connection: Connection) -> UpstreamResponse {
        if connection.framed.codec_ref().message_type() == actix_http::h1::MessageType::None {
            self.shared.pool.borrow_mut().put(connection);
            UpstreamResponse::without_body(head)
        } else {
            UpstreamResponse::streaming(head, connection, Rc::clone(&self.shared))
        }
    }
}

/// A connection to `address` (to its host on the mesh's inbound port for a
/// meshed replica), its TLS handshake included when `origination` asks for
/// one, within `connect_timeout`: what a pooled connection and an
/// upgrade tunnel are made on.
pub(crate) async fn open_transport(
    address: &str,
    origination: Option<&Arc<Origination>>,
    connect_timeout: Duration,
) -> Result<Transport, CallError> {
    let connecting = async {
        let socket = dial(address, origination).await?;
        match origination {
            None => Ok(Transport::Plain(socket)),
            Some(origination) => Transport::secure(socket, address, origination).await,
        }
    };
    actix_rt::time::timeout(connect_timeout, connecting)
        .await
        .unwrap_or_else(|_| {
            Err(CallError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "not connected within connect_timeout",
            )))
        })
}

/// The TCP connection a call to the replica at `address` is made on: to
/// the address itself, or for a meshed replica to its host on the mesh's
/// inbound port (`Origination::dial`).
async fn dial(
    address: &str,
    origination: Option<&Arc<Origination>>,
) -> Result<TcpStream, CallError> {
    let dialled = origination.map_or(Cow::Borrowed(address), |o| o.dial(address));
    open_socket(&dialled).await.map_err(CallError::Connect)
}

/// A TCP connection to `address`, without Nagle's delay.
async fn open_socket(address: &str) -> io::Result<TcpStream> {
    // Discovery gives IP literals: no resolver call for those.
    let socket = match address.parse::<SocketAddr>() {
        Ok(literal) => TcpStream::connect(literal).await?,
        Err(_) => TcpStream::connect(address).await?,
    };
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// Whether sending a request with `method` twice has the effect of sending
/// it once (RFC 9110 9.2.2): such a request may be sent again after a
/// failure that may have reached the replica.
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a request that met a closed pooled connection may be sent again
/// on a new one: its body is still at hand, and sending it twice is
/// harmless should the replica have seen the first.
fn resendable(method: &Method, body: &OutgoingBody) -> bool {
    idempotent(method) && !matches!(body, OutgoingBody::Stream(..))
}

/// Writes the request and reads the answer head; informational answers
/// (1xx) before it are passed over. The replica gets `timeout` for each
/// wait on it (see [`Client::send`]).
async fn exchange(
    framed: &mut Framed<Transport, ClientCodec>,
    head: &Rc<RequestHead>,
    body: &mut OutgoingBody,
    timeout: Duration,
) -> Result<ResponseHead, CallError> {
    let size = body.size();
    let mut framed = Pin::new(framed);
    framed
        .as_mut()
        .write(Message::Item((
            RequestHeadType::Rc(Rc::clone(head), None),
            size,
        )))
        .map_err(CallError::Closed)?;
    match body {
        OutgoingBody::Empty => {}
        OutgoingBody::Full(bytes) => {
            let chunk = Message::Chunk(Some(bytes.clone()));
            framed.as_mut().write(chunk).map_err(CallError::Closed)?;
            framed
                .as_mut()
                .write(Message::Chunk(None))
                .map_err(CallError::Closed)?;
        }
        OutgoingBody::Stream(payload, _) => {
            stream_body(framed.as_mut(), payload, timeout).await?;
        }
    }
    // The body is complete: from here on only the replica is waited for.
    actix_rt::time::timeout(timeout, answer_head(framed))
        .await
        .unwrap_or(Err(CallError::Timeout))
}

/// Flushes what is left of the request and reads the answer head.
async fn answer_head(
    mut framed: Pin<&mut Framed<Transport, ClientCodec>>,
) -> Result<ResponseHead, CallError> {
    poll_fn(|cx| framed.as_mut().flush(cx))
        .await
        .map_err(CallError::Closed)?;
    loop {
        match poll_fn(|cx| framed.as_mut().next_item(cx)).await {
            Some(Ok(answer))
                if answer.status.is_informational()
                    && answer.status != StatusCode::SWITCHING_PROTOCOLS => {}
            Some(Ok(answer)) => return Ok(answer),
            Some(Err(ParseError::Io(err))) => return Err(CallError::Closed(err)),
            Some(Err(err)) => return Err(CallError::Protocol(err.to_string())),
            None => {
                return Err(CallError::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed by the replica",
                )))
            }
        }
    }
}

/// Streams the caller's body to the replica as it arrives: what came is
/// passed on whenever the caller keeps us waiting, and the write buffer is
/// flushed whenever it fills, so no more than a buffer's worth is held.
/// A replica that takes no bytes for `timeout` is timed out.
async fn stream_body(
    mut framed: Pin<&mut Framed<Transport, ClientCodec>>,
    payload: &mut LentBody,
    timeout: Duration,
) -> Result<(), CallError> {
    loop {
        let next = poll_fn(|cx| {
            let next = payload.poll_next_unpin(cx);
            if next.is_pending() && !framed.is_write_buf_empty() {
                if let Poll::Ready(Err(err)) = framed.as_mut().flush(cx) {
                    return Poll::Ready(Err(CallError::Closed(err)));
                }
            }
            next.map(Ok)
        })
        .await?;
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(CallError::Body)?;
        framed
            .as_mut()
            .write(Message::Chunk(Some(chunk)))
            .map_err(CallError::Closed)?;
        if framed.is_write_buf_full() {
            actix_rt::time::timeout(timeout, poll_fn(|cx| framed.as_mut().flush(cx)))
                .await
                .map_err(|_| CallError::Timeout)?
                .map_err(CallError::Closed)?;
        }
    }
    framed
        .as_mut()
        .write(Message::Chunk(None))
        .map_err(CallError::Closed)
}

/// Every half idle timeout, closes the pool's stale connections; ends with
/// the worker's client.
async fn sweep_idle(shared: Weak<Shared>) {
    let mut ticks = actix_rt::time::interval(IDLE_TIMEOUT / 2);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.pool.borrow_mut().sweep();
        shared.http2.borrow_mut().sweep();
    }
}
