//! What the two proxy listeners (outbound, inbound) share about serving
//! HTTP to clients they do not trust: HTTP/1.1 and HTTP/2 with prior
//! knowledge on one port, told apart by a connection's first bytes; one
//! server builder that applies
//! `listeners.<name>.*` limits (head, body and write timeouts, keep-alive,
//! connections per worker), the strict checks of each request head, the one
//! rule for request paths, the request body limit, how the listeners drain
//! and stop,
//! and the open-files limit raised at start.

mod body;
mod connection;
mod deadline;
mod framing;
mod front;
mod head;
mod http2;
mod path;
mod protocol;
mod secure;
mod stopping;
mod stream;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol, Request, Response};
use actix_rt::net::TcpStream;
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, Service, ServiceFactory,
    ServiceFactoryExt,
};
use actix_web::dev::{AppConfig, Extensions, Server};
use actix_web::http::header::HeaderValue;
use actix_web::HttpRequest;
use futures_util::future::{ready, select, Either};
use log::{debug, info, warn};

pub use body::{BodyCopy, BodyError, BodyHome, LentBody, LimitedPayload};
pub use connection::connection_data;
pub use front::{Arrival, Front};
pub use path::normal_path;
pub use secure::PeerIdentity;
pub use stopping::Stopping;

use secure::Secure;
use stream::{ClientStream, Timeouts};

use crate::tls::Termination;

/// Connections the kernel queues before they are accepted.
const BACKLOG: u32 = 1024;

/// How long after the shutdown grace the listeners are stopped by force,
/// at least: the time tunnels still open when the grace ran out have to
/// send their close frames (`Stopping::grace_over`).
const TUNNELS_CLOSE_TIME: Duration = Duration::from_millis(250);

/// How long a client whose connection is closing gets to take the last
/// bytes before the socket is dropped, and to close its side (the
/// lingering close).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves the listener of `front` on `socket` (from [`listen`]) and applies
/// its limits to every client connection, taken in plain text or over TLS
/// as `tls` says (`secure.rs`), HTTP/1.1 or HTTP/2 by its first bytes; an
/// HTTP/1 connection's bytes (decrypted ones over TLS) pass the bare-LF
/// check before the parser (refusals counted in
/// `http_heads_refused_total`), an HTTP/2 connection is served by the
/// listener's own dispatcher (`http2::serve`), its requests made to read as
/// HTTP/1.1 ones and its streams counted against
/// `http2_max_concurrent_streams`; `factory` builds each worker's app (one,
/// shared by the worker's connections of both protocols), run on `workers`
/// threads. The server runs once awaited or
/// spawned; it stops on its handle (signals are the caller's), giving
/// in-flight requests the shutdown grace of `front`'s stop.
pub fn serve<F, I, S, B>(
    front: &Front,
    socket: std::net::TcpListener,
    workers: u32,
    tls: Option<Arc<Termination>>,
    factory: F,
) -> io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let (name, limits) = (front.listener, &front.limits);
    // Whole seconds, rounded up: never before the grace the stop counts
    // cuts from, and late enough for the close frames of the WebSockets
    // closed when it runs out.
    let forced = front.stopping().grace() + TUNNELS_CLOSE_TIME;
    let shutdown_secs = forced.as_secs() + u64::from(forced.subsec_nanos() > 0);
    let builder = actix_server::Server::build()
        .workers(workers as usize)
        .disable_signals()
        .shutdown_timeout(shutdown_secs)
        .max_concurrent_connections(limits.max_connections as usize);
    let stopping = builder.graceful_shutdown_signal();
    let (header_timeout, keep_alive) = (limits.client_header_timeout, limits.keep_alive);
    let timeouts = Timeouts {
        header: header_timeout,
        body: limits.client_body_timeout + CLIENT_DISCONNECT_TIMEOUT,
        linger: CLIENT_DISCONNECT_TIMEOUT,
        max_body_bytes: limits.max_body_bytes,
        write: limits.client_write_timeout,
    };
    let refused = front
        .metrics()
        .http_heads_refused
        .with_label_values(&[name, "bare_lf"]);
    // HTTP/2 connections closed for a flood: heads that never came whole,
    // or streams reset or refused past the guards.
    let flooded = front
        .metrics()
        .http_heads_refused
        .with_label_values(&[name, "http2_flood"]);
    // HTTP/2 streams the sidecar reset, by error code, and heads the
    // HTTP/2 server refused itself (past the header list limit).
    let written = http2::WrittenCounters::new(
        &front.metrics().http2_streams_reset,
        front
            .metrics()
            .http_heads_refused
            .with_label_values(&[name, "http2_header_list"]),
        name,
    );
    let secure = tls.map(|tls| Arc::new(Secure::new(tls, name, front.metrics())));
    let http2 = http2::Settings {
        listener: name,
        max_streams: limits.http2_max_concurrent_streams,
        max_header_list: limits.max_header_bytes.saturating_mul(2),
        handshake_within: header_timeout,
        keep_alive,
        write_timeout: limits.client_write_timeout,
        keepalive: limits.client_body_timeout,
    };
    let draining = Arc::clone(front.stopping());
    let builder = builder.listen(name, socket, move || {
        let (stopping, refused, secure) = (stopping.clone(), refused.clone(), secure.clone());
        let (draining, flooded) = (Arc::clone(&draining), flooded.clone());
        // The app config only feeds `connection_info()` fallbacks, which
        // the proxies do not use: they route on the request's own target.
        let app = map_config(factory().into_factory(), |_: ()| AppConfig::default())
            .map_err(|err| err.into().error_response());
        let written = written.clone();
        let accept = fn_service(move |io: TcpStream| {
            let (refused, secure, written) = (refused.clone(), secure.clone(), written.clone());
            async move {
                let accepted = tokio::time::Instant::now();
                let peer = io.peer_addr().ok();
                // Each write goes out at once: Nagle's algorithm would hold
                // an HTTP/2 answer back while an earlier one on the
                // connection waits for its ACK.
                if let Err(err) = io.set_nodelay(true) {
                    debug!("{name} listener: TCP_NODELAY not set for {peer:?}: {err}");
                }
                // A TLS client's first byte is no preface's: its protocol
                // is the one its handshake chose by ALPN.
                let detected = protocol::detect(&io, timeouts.header)
                    .await
                    .map_err(DispatchError::Io)?;
                let wire = secure::accept(io, secure.as_deref(), peer, header_timeout).await?;
                let protocol = secure::protocol(&wire.0, detected);
                let mut io = ClientStream::new(wire, protocol, name, peer, refused, timeouts);
                if protocol == Protocol::Http2 {
                    io.scan_written(http2::WrittenFrames::new(written));
                }
                // A client that kept its first bytes back, or took its time
                // over the handshake: what it waited counts against its
                // first head.
                if protocol == Protocol::Http1 && accepted.elapsed() > protocol::RECHECK {
                    io.time_first_head(accepted);
                }
                Ok::<_, DispatchError>((io, protocol, peer))
            }
        });
        // One app per worker, shared by its HTTP/1 and HTTP/2 connections.
        let serve = fn_factory(move || {
            let (app, stopping, draining) =
                (app.new_service(()), stopping.clone(), draining.clone());
            let flooded = flooded.clone();
            async move {
                let app = Rc::new(app.await.map_err(|err| {
                    warn!("{name} listener: a worker's app did not start: {err:?}");
                })?);
                let shared = Rc::clone(&app);
                let closing = stopping.clone();
                let http1 = HttpService::build()
                    .graceful_shutdown_signal(move || {
                        let closing = closing.clone();
                        async move { closing.notified().await }
                    })
                    .keep_alive(keep_alive)
                    .client_request_timeout(header_timeout)
                    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                    .on_connect_ext(|io: &ClientStream, data: &mut Extensions| {
                        connection::gather(io, data);
                    })
                    .h1(fn_factory(move || ready(Ok::<_, ()>(Rc::clone(&shared)))))
                    .new_service(())
                    .await?;
                let http1 = Rc::new(http1);
                Ok::<_, ()>(fn_service(
                    move |(io, protocol, peer): (ClientStream, Protocol, Option<SocketAddr>)| {
                        if protocol == Protocol::Http2 {
                            // A GOAWAY once the sidecar drains, or at the
                            // latest when the listener closes.
                            let (closing, drained) = (stopping.clone(), draining.drained());
                            let stop = async move {
                                let closed = pin!(closing.notified());
                                select(pin!(drained), closed).await;
                            };
                            let served =
                                http2::serve(io, Rc::clone(&app), http2, stop, flooded.clone());
                            Either::Left(async move {
                                served.await;
                                Ok(())
                            })
                        } else {
                            Either::Right(http1.call((io, peer)))
                        }
                    },
                ))
            }
        });
        accept.and_then(serve)
    })?;
    Ok(builder.run())
}

/// The client's IP address as `X-Forwarded-For` names it. The listeners
/// format it once per connection and keep it in the connection's data, so
/// a request on a kept-alive connection does not format it again.
#[derive(Debug, Clone)]
pub struct PeerIp(pub HeaderValue);

impl PeerIp {
    /// `ip` as a header value.
    pub fn new(ip: IpAddr) -> Option<PeerIp> {
        HeaderValue::try_from(ip.to_string()).ok().map(PeerIp)
    }

    /// The client IP of `req`: its connection's, or formatted now for a
    /// request that did not come through a listener.
    pub fn of(req: &HttpRequest) -> Option<PeerIp> {
        connection_data::<PeerIp>(req)
            .or_else(|| req.peer_addr().and_then(|peer| PeerIp::new(peer.ip())))
    }
}

/// A listening socket at `bind` for the listener `name` (address reuse on,
/// as servers do, so a restart does not wait for old connections'
/// TIME_WAIT). A failure names the listener and the address, e.g.
/// `cannot listen on 0.0.0.0:15001 (outbound listener): Address already in use`.
pub fn listen(name: &str, bind: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = match bind {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    socket
        .and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(bind)?;
            socket.listen(BACKLOG)?.into_std()
        })
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot listen on {bind} ({name} listener): {err}"),
            )
        })
}

/// Raises this process's soft limit on open files to its hard limit, so
/// thousands of client connections do not run out of descriptors; logs
/// the limit in force and warns when `connections` (what the listeners
/// may hold at once) exceed it.
pub fn raise_open_files_limit(connections: u64) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            warn!("cannot read or raise the open-files limit (RLIMIT_NOFILE): {err}");
            return;
        }
    };
    info!("open-files limit (RLIMIT_NOFILE): {limit}; the listeners may hold {connections} client connections");
    if connections > limit {
        warn!(
            "the listeners may hold {connections} client connections (max_connections x workers) but only {limit} files may be open: lower max_connections or raise the hard limit (ulimit -Hn)"
        );
    }
}
