//! One HTTP/2 connection, served on the `h2` crate: the handshake within
//! `client_header_timeout`, SETTINGS that advertise the listener's limits
//! (`http2_max_concurrent_streams`, a header list as large as
//! `max_header_bytes` allows an HTTP/1 head) with bounded windows and send
//! buffers, `h2`'s guards against rapid reset and error floods, the
//! connection closed once idle for `keep_alive`, and, while it has open
//! streams, a PING every `client_body_timeout`: a client that leaves one
//! unanswered until the next is dead, and its connection closed. Each stream becomes a
//! request for the worker's app (its body streaming off the stream, its
//! trailers kept); its answer's head goes out, then its body as the client
//! grants window (a stream whose client grants none for
//! `client_write_timeout` is reset), then the answer's trailers, if it has
//! any, else the end of the stream (a gRPC answer whose body breaks off
//! ends with 14 UNAVAILABLE in its trailers, any other is reset). When the
//! sidecar drains or its listeners close, the connection gets a GOAWAY:
//! the streams it already took finish, no new one starts.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING, UPGRADE,
};
use actix_http::{
    BoxedPayloadStream, HttpMessage, Method, Payload, Request, Response, ResponseHead, StatusCode,
    Version,
};
use actix_service::Service;
use actix_web::web::Bytes;
use h2::server::{Builder, SendResponse};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use log::{debug, warn};
use prometheus::IntCounter;
use tokio::time::{sleep_until, Instant, Sleep};

use super::incoming::Incoming;
use super::{prepare, Streams};
use crate::http::grpc;
use crate::http::listener::connection::ConnectionData;
use crate::http::listener::stream::ClientStream;
use crate::http::trailers::Trailers;
use crate::logging::summary::{self, Topic};

/// The window of each stream a client sends on: what one request body may
/// have in flight before the handler takes it.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The window of a whole connection: what all its request bodies may have
/// in flight together.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// What one stream's answer may have buffered for sending before it waits
/// for the client's window.
const SEND_BUFFER: usize = 256 * 1024;
/// Streams the client reset before they were taken in that may wait at
/// once; past them the connection is closed (`ENHANCE_YOUR_CALM`): the
/// rapid reset attack.
const PENDING_RESETS: usize = 20;
/// Streams the sidecar had to reset for the client's errors on one
/// connection; past them the connection is closed (`ENHANCE_YOUR_CALM`).
const ERROR_RESETS: usize = 256;

/// A listener's HTTP/2 limits, fixed when it starts.
#[derive(Clone, Copy)]
pub struct Settings {
    /// `outbound` or `inbound`, for the log.
    pub listener: &'static str,
    /// `http2_max_concurrent_streams`, advertised in SETTINGS.
    pub max_streams: u32,
    /// The largest header list a client may send, as HPACK counts it (32
    /// bytes more per field than the field's name and value): twice
    /// `max_header_bytes`, so a head over `max_header_bytes` as an HTTP/1
    /// head counts gets `check_head`'s 431 with its reason, and a much
    /// larger one is refused by `h2` (a bare 431) before a handler runs.
    pub max_header_list: u32,
    /// `client_header_timeout`: the connection preface and SETTINGS.
    pub handshake_within: Duration,
    /// `keep_alive`: how long a connection with no stream is kept.
    pub keep_alive: Duration,
    /// `client_write_timeout`: how long an answer waits for window.
    pub write_timeout: Duration,
    /// `client_body_timeout`: while streams are open, how often the client
    /// is sent a PING, and how long it has to answer it before its
    /// connection is closed as dead.
    pub keepalive: Duration,
}

/// What a connection's streams share with it.
struct Shared<S> {
    app: Rc<S>,
    data: ConnectionData,
    streams: Streams,
    peer: Option<SocketAddr>,
    write_timeout: Duration,
    /// Streams taken in and not yet answered to their end.
    open: Cell<usize>,
    /// Since when it has had no open stream.
    idle_since: Cell<Instant>,
}

/// One open stream, counted among its connection's until dropped.
struct Open<S>(Rc<Shared<S>>);

impl<S> Open<S> {
    fn new(shared: &Rc<Shared<S>>) -> Open<S> {
        shared.open.set(shared.open.get() + 1);
        Open(Rc::clone(shared))
    }
}

impl<S> Drop for Open<S> {
    fn drop(&mut self) {
        let open = self.0.open.get().saturating_sub(1);
        self.0.open.set(open);
        if open == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

/// Serves the HTTP/2 client on `io` with the worker's `app` until the
/// connection closes; a GOAWAY goes out once `stopping` resolves (the
/// sidecar drains, or the listener closes). A connection closed for a
/// flood (`ENHANCE_YOUR_CALM`: CONTINUATION frames past the header list
/// limit, streams reset faster than they are taken in, too many stream
/// errors) is counted in `flooded`.
pub async fn serve<S, B>(
    io: ClientStream,
    app: Rc<S>,
    settings: Settings,
    stopping: impl Future<Output = ()>,
    flooded: IntCounter,
) where
    S: Service<Request> + 'static,
    S::Error: Into<Response<BoxBody>>,
    S::Response: Into<Response<B>>,
    B: MessageBody + 'static,
{
    let data = ConnectionData::of(&io);
    let taken_in = io.taken_in().unwrap_or_default();
    let streams = data.get::<Streams>().cloned().unwrap_or_default();
    let peer = io.peer_addr();
    let handshake = Builder::new()
        .max_concurrent_streams(settings.max_streams)
        .max_header_list_size(settings.max_header_list)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_local_error_reset_streams(Some(ERROR_RESETS))
        .handshake::<_, Bytes>(io);
    let mut connection = match tokio::time::timeout(settings.handshake_within, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => {
            debug!("an HTTP/2 handshake from {peer:?} failed: {err}");
            return;
        }
        Err(_) => {
            debug!("no HTTP/2 handshake from {peer:?} within client_header_timeout");
            return;
        }
    };
    let shared = Rc::new(Shared {
        app,
        data,
        streams,
        peer,
        write_timeout: settings.write_timeout,
        open: Cell::new(0),
        // A new connection idles from when its first request is due: it
        // has `client_header_timeout` for it, as an HTTP/1 one has, even
        // under a shorter `keep_alive`.
        idle_since: Cell::new(
            Instant::now()
                + settings
                    .handshake_within
                    .saturating_sub(settings.keep_alive),
        ),
    });
    let mut stopping = pin!(stopping);
    let mut idle = pin!(sleep_until(shared.idle_since.get() + settings.keep_alive));
    let mut keepalive = Keepalive {
        pings: connection.ping_pong(),
        next: Box::pin(sleep_until(Instant::now() + settings.keepalive)),
        every: settings.keepalive,
        unanswered: false,
    };
    let mut going_away = false;
    loop {
        let accepted = poll_fn(|cx| {
            if let Poll::Ready(accepted) = connection.poll_accept(cx) {
                return Poll::Ready(Some(accepted));
            }
            if keepalive.found_dead(cx, shared.open.get() > 0) {
                debug!(
                    "the HTTP/2 client at {peer:?} answered no PING within client_body_timeout {}ms; connection closed",
                    settings.keepalive.as_millis()
                );
                return Poll::Ready(Some(None));
            }
            if going_away {
                return Poll::Pending;
            }
            if stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if idle.as_mut().poll(cx).is_ready() {
                let (open, since) = (shared.open.get(), shared.idle_since.get());
                if open == 0 && Instant::now() >= since + settings.keep_alive {
                    return Poll::Ready(None);
                }
                let from = if open == 0 { since } else { Instant::now() };
                idle.as_mut().reset(from + settings.keep_alive);
                // Polled once more so the timer's new deadline wakes us.
                let _ = idle.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await;
        match accepted {
            // Stopping, or idle: the streams taken finish, none starts.
            None => {
                connection.graceful_shutdown();
                going_away = true;
            }
            Some(Some(Ok((request, respond)))) => {
                taken_in.took(respond.stream_id().into());
                actix_rt::spawn(answer(request, respond, Open::new(&shared)));
            }
            Some(Some(Err(err))) => {
                if err.reason() == Some(Reason::ENHANCE_YOUR_CALM) {
                    flooded.inc();
                    let topic = Topic {
                        kind: "http2_flood",
                        listener: settings.listener,
                        service: "unknown",
                    };
                    if summary::first(topic) {
                        warn!(
                            "{} listener: the HTTP/2 client at {peer:?} flooded its connection ({err}); connection closed",
                            settings.listener
                        );
                    }
                } else {
                    debug!("the HTTP/2 connection from {peer:?} ended: {err}");
                }
                return;
            }
            Some(None) => return,
        }
    }
}

/// The PINGs that tell a dead client on a connection with open streams (a
/// long gRPC stream whose caller's host vanished sends nothing, and no
/// other limit times it): one every `every` while streams are open, and
/// the client is dead when the last is still unanswered at the next.
struct Keepalive {
    pings: Option<PingPong>,
    next: Pin<Box<Sleep>>,
    every: Duration,
    unanswered: bool,
}

impl Keepalive {
    /// Takes the client's PONG, sends the next PING when it is due (if
    /// streams are `open`); whether the client left the last unanswered.
    fn found_dead(&mut self, cx: &mut Context<'_>, open: bool) -> bool {
        let Some(pings) = &mut self.pings else {
            return false;
        };
        if self.unanswered && pings.poll_pong(cx).is_ready() {
            self.unanswered = false;
        }
        if self.next.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.unanswered {
            return true;
        }
        self.unanswered = open && pings.send_ping(Ping::opaque()).is_ok();
        self.next.as_mut().reset(Instant::now() + self.every);
        // Polled once more so the timer's new deadline wakes us.
        let _ = self.next.as_mut().poll(cx);
        false
    }
}

/// Answers one stream: its request through the app, then the answer
/// (see the module doc).
async fn answer<S, B>(
    request: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    open: Open<S>,
) where
    S: Service<Request> + 'static,
    S::Error: Into<Response<BoxBody>>,
    S::Response: Into<Response<B>>,
    B: MessageBody + 'static,
{
    let shared = &open.0;
    let (parts, body) = request.into_parts();
    let trailers = (!body.is_end_stream()).then(Trailers::default);
    let mut req = match &trailers {
        None => Request::new(),
        Some(trailers) => {
            let incoming = Incoming::new(body, trailers.clone());
            let payload: BoxedPayloadStream = Box::pin(incoming);
            Request::with_payload(Payload::Stream { payload })
        }
    };
    let head_only = parts.method == Method::HEAD;
    let head = req.head_mut();
    head.method = parts.method;
    head.uri = parts.uri;
    head.version = Version::HTTP_2;
    head.headers = parts.headers.into();
    head.peer_addr = shared.peer;
    prepare(head);
    {
        let mut extensions = req.extensions_mut();
        extensions.insert(shared.data.clone());
        if let Some(trailers) = trailers {
            extensions.insert(trailers);
        }
    }
    let waiting = shared.streams.enter();
    let response = match shared.app.call(req).await {
        Ok(response) => response.into().map_into_boxed_body(),
        Err(response) => response.into(),
    };
    drop(waiting);
    send(response, respond, head_only, shared.write_timeout).await;
}

/// Sends `response` on the stream of `respond`: its head, its body as the
/// client grants window (none of it for a `HEAD`), then its trailers or
/// the end of the stream.
async fn send(
    response: Response<BoxBody>,
    mut respond: SendResponse<Bytes>,
    head_only: bool,
    write_timeout: Duration,
) {
    let trailers = response.extensions().get::<Trailers>().cloned();
    let (response, body) = response.into_parts();
    let mut size = body.size();
    let head = http_head(response.head(), &mut size);
    // An empty body still ends after its trailers when it may have some
    // (an HTTP/2 replica's answer with `content-length: 0` and trailers).
    let ended = head_only
        || match size {
            BodySize::None => true,
            BodySize::Sized(0) => trailers.is_none(),
            BodySize::Sized(_) | BodySize::Stream => false,
        };
    let mut stream = match respond.send_response(head, ended) {
        Ok(stream) => stream,
        // Reset by the client, or the connection is gone.
        Err(err) => {
            debug!("an HTTP/2 answer head was not sent: {err}");
            return;
        }
    };
    if ended {
        return;
    }
    let mut body = pin!(body);
    while let Some(chunk) = poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                debug!("an HTTP/2 answer body broke off: {err}");
                // A gRPC caller is told so in trailers (checked only now:
                // an answer whose body ends well never needs to know).
                let told = grpc::is_grpc(&response.head().headers)
                    && stream.send_trailers(grpc::broken_off(err.as_ref())).is_ok();
                if !told {
                    stream.send_reset(Reason::INTERNAL_ERROR);
                }
                return;
            }
        };
        if !send_data(&mut stream, chunk, write_timeout).await {
            return;
        }
    }
    let ended = match trailers.and_then(|trailers| trailers.take()) {
        Some(trailers) => stream.send_trailers(trailers),
        None => stream.send_data(Bytes::new(), true),
    };
    if let Err(err) = ended {
        debug!("an HTTP/2 answer was not ended: {err}");
    }
}

/// Sends `data` as the client grants window; whether it all went (a stream
/// the client reset or gave no window for `write_timeout` is left, reset).
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    write_timeout: Duration,
) -> bool {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = tokio::time::timeout(write_timeout, poll_fn(|cx| stream.poll_capacity(cx)));
        let granted = match granted.await {
            Ok(Some(Ok(granted))) => granted,
            // Reset by the client, or the connection is gone.
            Ok(_) => return false,
            Err(_) => {
                warn!(
                    "an HTTP/2 client granted no window for its answer within client_write_timeout {}ms; stream reset",
                    write_timeout.as_millis()
                );
                stream.send_reset(Reason::CANCEL);
                return false;
            }
        };
        let piece = data.split_to(granted.min(data.len()));
        if stream.send_data(piece, false).is_err() {
            return false;
        }
    }
    true
}

/// The value of a `date` header for now: formatted once a second on each
/// worker, as actix-http dates its HTTP/1 answers.
fn date() -> HeaderValue {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(formatted_at, value)| {
        if *formatted_at != second {
            if let Ok(formatted) = HeaderValue::try_from(httpdate::fmt_http_date(now)) {
                *value = formatted;
                *formatted_at = second;
            }
        }
        value.clone()
    })
}

/// The HTTP/2 head of an answer whose body is `size` long: its status and
/// headers, less those HTTP/2 forbids, with the length of a sized body and
/// a `date` unless it has one.
fn http_head(head: &ResponseHead, size: &mut BodySize) -> http::Response<()> {
    if matches!(
        head.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) || head.status.is_informational()
    {
        *size = BodySize::None;
    }
    let mut response = http::Response::new(());
    *response.status_mut() = head.status;
    *response.version_mut() = http::Version::HTTP_2;
    let headers = response.headers_mut();
    headers.reserve(head.headers.len() + 1);
    let sized = matches!(size, BodySize::Sized(_));
    for (name, value) in head.headers.iter() {
        let skip = *name == CONNECTION
            || *name == TRANSFER_ENCODING
            || *name == UPGRADE
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
            || (sized && *name == CONTENT_LENGTH);
        if !skip {
            headers.append(name.clone(), value.clone());
        }
    }
    if let BodySize::Sized(length) = size {
        headers.insert(CONTENT_LENGTH, (*length).into());
    }
    if !headers.contains_key(DATE) {
        headers.insert(DATE, date());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::header::{HeaderName, HeaderValue as Value};

    fn head(status: StatusCode, headers: &[(&'static str, &'static str)]) -> ResponseHead {
        let mut head = ResponseHead::new(status);
        for (name, value) in headers {
            head.headers
                .append(HeaderName::from_static(name), Value::from_static(value));
        }
        head
    }

    #[test]
    fn connection_specific_fields_go_and_a_sized_body_says_its_length() {
        let answer = head(
            StatusCode::OK,
            &[
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("transfer-encoding", "chunked"),
                ("content-length", "99"),
                ("x-kept", "1"),
            ],
        );
        let mut size = BodySize::Sized(12);
        let sent = http_head(&answer, &mut size);
        let names: Vec<&str> = sent.headers().keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["x-kept", "content-length", "date"]);
        assert_eq!(sent.headers()[CONTENT_LENGTH], "12");
        assert_eq!(sent.version(), http::Version::HTTP_2);
    }

    #[test]
    fn a_no_content_answer_has_no_body_and_a_dated_answer_keeps_its_date() {
        let answer = head(
            StatusCode::NO_CONTENT,
            &[("date", "Sun, 06 Dec 2026 20:00:00 GMT")],
        );
        let mut size = BodySize::Stream;
        let sent = http_head(&answer, &mut size);
        assert_eq!(size, BodySize::None);
        assert_eq!(sent.headers()[DATE], "Sun, 06 Dec 2026 20:00:00 GMT");
        assert!(!sent.headers().contains_key(CONTENT_LENGTH));
    }
}
