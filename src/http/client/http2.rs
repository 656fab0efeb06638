//! HTTP/2 to replicas (`services[].protocol: http2`, or `auto` for a
//! caller that spoke HTTP/2), on the `h2` crate: prior knowledge over plain
//! TCP, `h2` by ALPN over TLS.
//!
//! A worker keeps one multiplexed connection per replica and sends its
//! requests to that replica as streams on it; a second connection opens
//! only while every one it has carries as many streams as the replica
//! allows (its `SETTINGS_MAX_CONCURRENT_STREAMS`). A connection that
//! refuses a new stream (a GOAWAY came, or it closed) leaves the pool: the
//! streams it still allows finish on it, and the request goes to a new
//! connection, which is safe because it never left. A connection's failure
//! ends only the streams on it, each with the [`CallError`] an HTTP/1 call
//! failing the same way gets. Bodies stream both ways under HTTP/2 flow
//! control: a request body is sent as the replica grants window, and an
//! answer's window is given back as the caller's side takes its bytes.
//! Trailers pass both ways: a request's (its [`Http2Body`]'s, filled when
//! the caller's body ended) follow its body, and the replica's are
//! read at the end of its answer into the answer's own [`Trailers`].
//! An idle connection counts in `upstream_connections` as idle, one with
//! streams as in use.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use actix_http::error::PayloadError;
use actix_http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, HOST};
use actix_http::{Method, RequestHead, ResponseHead, Version};
use actix_web::web::Bytes;
use foldhash::HashMap;
use futures_util::future::{select, Either};
use futures_util::{Stream, StreamExt};
use h2::client::{Builder, SendRequest};
use h2::{Ping, Reason, RecvStream, SendStream};
use log::debug;
use tokio::sync::Notify;

use super::pool::{Counted, IDLE_TIMEOUT};
use super::{
    dial, CallError, Client, Http2Body, OutgoingBody, Shared, Transport, UpstreamResponse,
};
use crate::http::cut::CallerCut;
use crate::http::trailers::Trailers;
use crate::metrics::PoolGauges;
use crate::tls::Origination;

/// The window of each stream the replica sends on: what one answer may
/// have in flight before its caller takes it.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The window of a whole connection: what all its answers may have in
/// flight together.
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// One worker's HTTP/2 connections, by replica address, and the
/// connections being made: a request that finds no room waits for the one
/// being made rather than make another.
#[derive(Default)]
pub(super) struct Pool {
    connections: HashMap<Rc<str>, Vec<Multiplexed>>,
    connecting: HashMap<Rc<str>, Rc<Notify>>,
}

/// A connection to one replica that streams are opened on.
struct Multiplexed {
    sender: SendRequest<Bytes>,
    /// The origination its TLS was opened with; `None`: plain text.
    origination: Option<Arc<Origination>>,
    state: Rc<ConnectionState>,
}

/// What a connection's streams and its driving task share.
struct ConnectionState {
    /// Streams open on it: requests whose answer body has not ended.
    streams: Cell<usize>,
    /// How many streams the replica allows at once, as last heard.
    max_streams: Cell<usize>,
    /// It takes no new stream: closed, failed, or told to go away.
    closed: Cell<bool>,
    /// Since when it has had no stream.
    idle_since: Cell<Instant>,
    /// Where it counts in `upstream_connections`.
    counted: RefCell<Counted>,
}

/// One stream's place on its connection, held until its answer body ends.
pub(super) struct StreamSlot(Rc<ConnectionState>);

impl StreamSlot {
    /// A new stream on the connection of `state`, for the replica of
    /// `gauges`.
    fn open(state: &Rc<ConnectionState>, gauges: Option<&Arc<PoolGauges>>) -> StreamSlot {
        let streams = state.streams.get();
        if streams == 0 {
            state.counted.borrow_mut().in_use_for(gauges);
        }
        state.streams.set(streams + 1);
        StreamSlot(Rc::clone(state))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let state = &self.0;
        let streams = state.streams.get().saturating_sub(1);
        state.streams.set(streams);
        if streams == 0 {
            state.idle_since.set(Instant::now());
            state.counted.borrow_mut().idle();
        }
    }
}

impl Multiplexed {
    /// Whether it may carry one more stream for a call made with
    /// `origination`.
    fn has_room_for(&self, origination: Option<&Arc<Origination>>) -> bool {
        let made_for = match (&self.origination, origination) {
            (None, None) => true,
            (Some(opened), Some(asked)) => Arc::ptr_eq(opened, asked),
            _ => false,
        };
        made_for
            && !self.state.closed.get()
            && self.state.streams.get() < self.state.max_streams.get()
    }
}

impl Pool {
    /// A connection to `address` made with `origination` with room for
    /// another stream, and the stream's slot on it; connections that closed
    /// are dropped on the way.
    fn stream(
        &mut self,
        address: &str,
        origination: Option<&Arc<Origination>>,
        gauges: Option<&Arc<PoolGauges>>,
    ) -> Option<(SendRequest<Bytes>, StreamSlot)> {
        let connections = self.connections.get_mut(address)?;
        connections.retain(|connection| !connection.state.closed.get());
        let connection = connections
            .iter()
            .find(|connection| connection.has_room_for(origination))?;
        let slot = StreamSlot::open(&connection.state, gauges);
        Some((connection.sender.clone(), slot))
    }

    /// What tells when the connection being made to `address` is made (or
    /// failed), if one is.
    fn connecting_to(&self, address: &str) -> Option<Rc<Notify>> {
        self.connecting.get(address).cloned()
    }

    /// Keeps `connection` for the next requests to `address`.
    fn add(&mut self, address: &str, connection: Multiplexed) {
        match self.connections.get_mut(address) {
            Some(connections) => connections.push(connection),
            None => {
                self.connections.insert(Rc::from(address), vec![connection]);
            }
        }
    }

    /// Lets go of the connections that closed or have had no stream for
    /// the idle timeout (a connection with no handle left and no stream
    /// closes), and forgets the replicas left with none.
    pub(super) fn sweep(&mut self) {
        let now = Instant::now();
        self.connections.retain(|_, connections| {
            connections.retain(|connection| {
                let state = &connection.state;
                let idle_for = now.saturating_duration_since(state.idle_since.get());
                !state.closed.get() && (state.streams.get() > 0 || idle_for <= IDLE_TIMEOUT)
            });
            !connections.is_empty()
        });
    }
}

/// Sends `head` with `body` (and then its [`Trailers`], if they were
/// filled) to `address` as a stream on a pooled
/// HTTP/2 connection of `client`, or on a new one (made within its connect
/// timeout); `timeout` bounds each wait for the replica as in
/// [`Client::send`].
pub(super) async fn send(
    client: &Client,
    address: &str,
    origination: Option<&Arc<Origination>>,
    gauges: Option<&Arc<PoolGauges>>,
    head: RequestHead,
    Http2Body { body, trailers }: Http2Body,
    timeout: Duration,
) -> Result<UpstreamResponse, CallError> {
    let (shared, connect_timeout) = (&client.shared, client.connect_timeout);
    let request = || request_of(&head, address, origination.is_some(), &body);
    let wait_until = Instant::now() + connect_timeout;
    let ((answer, outgoing), slot) = loop {
        let pooled = shared
            .http2
            .borrow_mut()
            .stream(address, origination, gauges);
        if let Some((sender, slot)) = pooled {
            match open_stream(sender, request()?, &body) {
                Ok(stream) => break (stream, slot),
                // Told to go away, or gone: nothing was sent.
                Err(err) if err.is_go_away() || err.is_io() => {
                    debug!("an HTTP/2 connection to {address} takes no new stream ({err}); trying another");
                    slot.0.closed.set(true);
                    continue;
                }
                Err(err) => return Err(call_error(err)),
            }
        }
        // No room: wait for the connection being made, if any, for up to
        // a connect timeout in all.
        let connecting = shared.http2.borrow().connecting_to(address);
        let left = wait_until.saturating_duration_since(Instant::now());
        if let Some(made) = connecting.filter(|_| !left.is_zero()) {
            let _ = actix_rt::time::timeout(left, made.notified()).await;
            continue;
        }
        let (sender, state) =
            connect(shared, connect_timeout, address, origination, gauges).await?;
        let slot = StreamSlot::open(&state, gauges);
        break (
            open_stream(sender, request()?, &body).map_err(call_error)?,
            slot,
        );
    };
    let (response, caller_cut) = match outgoing {
        None => (bounded(timeout, answer).await?, None),
        Some(outgoing) => {
            let caller_cut = CallerCutSlot::default();
            let pumped = pump(outgoing, body, trailers, timeout, caller_cut.clone());
            let mut pumping = Box::pin(pumped);
            let raced = match select(pumping.as_mut(), answer).await {
                Either::Left((sent, answer)) => {
                    sent?;
                    Raced::BodySent(answer)
                }
                Either::Right((answered, _)) => Raced::Answered(answered),
            };
            let response = match raced {
                Raced::BodySent(answer) => bounded(timeout, answer).await?,
                Raced::Answered(answered) => {
                    let response = answered.map_err(call_error)?;
                    // The answer came first: the rest of the body still goes.
                    actix_rt::spawn(pumping);
                    response
                }
            };
            (response, Some(caller_cut))
        }
    };
    let (parts, answer_body) = response.into_parts();
    let request_method = head.method.clone();
    let mut head = ResponseHead::new(parts.status);
    head.version = Version::HTTP_2;
    head.headers = HeaderMap::from(parts.headers);
    if answer_body.is_end_stream() {
        // The head ended the stream: the body is empty, and says so, so
        // the caller's answer ends with its head too (a gRPC trailers-only
        // answer stays one). A HEAD's length is its GET's, and 1xx, 204
        // and 304 carry none.
        let bodiless = head.status.is_informational()
            || matches!(head.status.as_u16(), 204 | 304)
            || request_method == Method::HEAD;
        if !bodiless && !head.headers.contains_key(CONTENT_LENGTH) {
            head.headers
                .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        return Ok(UpstreamResponse::without_body(head));
    }
    Ok(UpstreamResponse::http2(
        head,
        Receiving {
            body: answer_body,
            trailers: Trailers::default(),
            data_ended: false,
            caller_cut,
            _slot: slot,
        },
    ))
}

/// How the race between sending a request body and its answer ended.
enum Raced {
    /// The body is sent; the answer is still to come.
    BodySent(h2::client::ResponseFuture),
    /// The answer head (or the stream's failure) came first.
    Answered(Result<http::Response<RecvStream>, h2::Error>),
}

/// The answer head, within `timeout`.
async fn bounded(
    timeout: Duration,
    answer: h2::client::ResponseFuture,
) -> Result<http::Response<RecvStream>, CallError> {
    match actix_rt::time::timeout(timeout, answer).await {
        Ok(response) => response.map_err(call_error),
        Err(_) => Err(CallError::Timeout),
    }
}

/// The answer to come and, when there is a body to send, the stream to
/// send it on.
type Opened = (h2::client::ResponseFuture, Option<SendStream<Bytes>>);

/// Opens a stream for `request` on `sender`'s connection, ended at once
/// when there is no `body`; an error means the connection takes no new
/// stream, and nothing was sent.
fn open_stream(
    mut sender: SendRequest<Bytes>,
    request: http::Request<()>,
    body: &OutgoingBody,
) -> Result<Opened, h2::Error> {
    let empty = matches!(body, OutgoingBody::Empty);
    let (answer, outgoing) = sender.send_request(request, empty)?;
    Ok((answer, (!empty).then_some(outgoing)))
}

/// The HTTP/2 request for `head` to the replica at `address`: its `Host`
/// (or else the address) becomes `:authority`, and a body of known length
/// says it.
fn request_of(
    head: &RequestHead,
    address: &str,
    tls: bool,
    body: &OutgoingBody,
) -> Result<http::Request<()>, CallError> {
    let authority = head
        .headers
        .get(HOST)
        .map_or(address.as_bytes(), |host| host.as_bytes());
    let path = head.uri.path_and_query().map_or("/", |path| path.as_str());
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|err| CallError::Unsendable(format!("cannot form the HTTP/2 request: {err}")))?;
    let mut request = http::Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(head.headers.len() + 1);
    for (name, value) in head.headers.iter() {
        if *name != HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    let length = match body {
        OutgoingBody::Full(bytes) => Some(bytes.len() as u64),
        OutgoingBody::Stream(_, length) => *length,
        OutgoingBody::Empty => None,
    };
    if let Some(length) = length {
        headers.insert(http::header::CONTENT_LENGTH, length.into());
    }
    Ok(request)
}

/// A new connection to `address`, kept in the pool: TCP (and TLS with `h2`
/// by ALPN when `origination` asks), the HTTP/2 preface, and a PING
/// answered (so the replica's SETTINGS, its stream limit among them, are
/// in), within `connect_timeout`; a task drives it until it closes.
async fn connect(
    shared: &Rc<Shared>,
    connect_timeout: Duration,
    address: &str,
    origination: Option<&Arc<Origination>>,
    gauges: Option<&Arc<PoolGauges>>,
) -> Result<(SendRequest<Bytes>, Rc<ConnectionState>), CallError> {
    let _connecting = Connecting::start(shared, address);
    let connecting = async {
        let socket = dial(address, origination).await?;
        let transport = match origination {
            None => Transport::Plain(socket),
            Some(origination) => Transport::secure_http2(socket, address, origination).await?,
        };
        let (sender, mut connection) = Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(transport)
            .await
            .map_err(|err| CallError::Connect(io_error(err)))?;
        let mut ping = connection.ping_pong();
        let state = drive(connection, address, gauges);
        if let Some(ping) = &mut ping {
            ping.ping(Ping::opaque()).await.map_err(call_error)?;
        }
        Ok((sender, state))
    };
    let (sender, state) = actix_rt::time::timeout(connect_timeout, connecting)
        .await
        .unwrap_or_else(|_| {
            Err(CallError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "not connected within connect_timeout",
            )))
        })?;
    shared.http2.borrow_mut().add(
        address,
        Multiplexed {
            sender: sender.clone(),
            origination: origination.cloned(),
            state: Rc::clone(&state),
        },
    );
    Ok((sender, state))
}

/// Spawns the task that drives `connection` until it closes, keeping its
/// state: the replica's stream limit as last heard, and whether it closed.
fn drive(
    mut connection: h2::client::Connection<Transport, Bytes>,
    address: &str,
    gauges: Option<&Arc<PoolGauges>>,
) -> Rc<ConnectionState> {
    let state = Rc::new(ConnectionState {
        streams: Cell::new(0),
        max_streams: Cell::new(connection.max_concurrent_send_streams()),
        closed: Cell::new(false),
        idle_since: Cell::new(Instant::now()),
        counted: RefCell::new(Counted::in_use(gauges)),
    });
    let driven = Rc::clone(&state);
    let name: Rc<str> = Rc::from(address);
    actix_rt::spawn(async move {
        let ended = poll_fn(|cx| {
            let polled = Pin::new(&mut connection).poll(cx);
            driven
                .max_streams
                .set(connection.max_concurrent_send_streams());
            polled
        })
        .await;
        if let Err(err) = ended {
            debug!("the HTTP/2 connection to {name} ended: {err}");
        }
        driven.closed.set(true);
        // No longer counted, whatever still holds the state.
        drop(driven.counted.replace(Counted::in_use(None)));
    });
    state
}

/// A connection being made to an address, in its pool's `connecting` until
/// it is made or fails; the requests waiting for it are told then.
struct Connecting {
    shared: Rc<Shared>,
    address: Rc<str>,
}

impl Connecting {
    fn start(shared: &Rc<Shared>, address: &str) -> Connecting {
        let address: Rc<str> = Rc::from(address);
        let made = Rc::new(Notify::new());
        let mut pool = shared.http2.borrow_mut();
        pool.connecting.insert(Rc::clone(&address), made);
        Connecting {
            shared: Rc::clone(shared),
            address,
        }
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        let mut pool = self.shared.http2.borrow_mut();
        if let Some(made) = pool.connecting.remove(&self.address) {
            made.notify_waiters();
        }
    }
}

/// Set when a request's stream was reset because of the caller's body
/// (over its limit, or broken off), so that the answer this cuts says so
/// (see [`Receiving`]).
#[derive(Clone, Default)]
struct CallerCutSlot(Rc<Cell<Option<CallerCut>>>);

/// Sends `body` on `outgoing` as the replica grants window, then the
/// request's `trailers` if its body ended with some, else the end of the
/// stream; a caller's body that breaks off or goes over its limit resets
/// the stream, and says which in `caller_cut`.
async fn pump(
    mut outgoing: SendStream<Bytes>,
    body: OutgoingBody,
    trailers: Option<Trailers>,
    timeout: Duration,
    caller_cut: CallerCutSlot,
) -> Result<(), CallError> {
    match body {
        OutgoingBody::Empty => return Ok(()),
        OutgoingBody::Full(bytes) => send_data(&mut outgoing, bytes, timeout).await?,
        OutgoingBody::Stream(mut payload, _) => loop {
            match payload.next().await {
                Some(Ok(chunk)) => send_data(&mut outgoing, chunk, timeout).await?,
                Some(Err(err)) => {
                    caller_cut.0.set(Some(if err.is_over_limit() {
                        CallerCut::OverLimit
                    } else {
                        CallerCut::BrokeOff
                    }));
                    outgoing.send_reset(Reason::CANCEL);
                    return Err(CallError::Body(err));
                }
                None => break,
            }
        },
    }
    let ended = match trailers.and_then(|trailers| trailers.get()) {
        Some(trailers) => outgoing.send_trailers(trailers),
        None => outgoing.send_data(Bytes::new(), true),
    };
    ended.map_err(call_error)
}

/// Sends `data` as window is granted, each wait for it bounded by
/// `timeout`.
async fn send_data(
    outgoing: &mut SendStream<Bytes>,
    mut data: Bytes,
    timeout: Duration,
) -> Result<(), CallError> {
    while !data.is_empty() {
        outgoing.reserve_capacity(data.len());
        let granted = actix_rt::time::timeout(timeout, poll_fn(|cx| outgoing.poll_capacity(cx)))
            .await
            .map_err(|_| CallError::Timeout)?;
        let granted = match granted {
            Some(granted) => granted.map_err(call_error)?,
            None => {
                return Err(CallError::Closed(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the stream closed before the request body was sent",
                )))
            }
        };
        let chunk = data.split_to(granted.min(data.len()));
        outgoing.send_data(chunk, false).map_err(call_error)?;
    }
    Ok(())
}

/// The [`CallError`] an HTTP/2 failure is: what an HTTP/1 call failing the
/// same way gets. A connection's I/O failure, a GOAWAY or a reset stream
/// is the connection closing under the call; anything else is the replica
/// breaking the protocol.
fn call_error(err: h2::Error) -> CallError {
    if err.is_io() || err.is_go_away() || err.is_reset() {
        CallError::Closed(io_error(err))
    } else {
        CallError::Protocol(err.to_string())
    }
}

/// `err` as an I/O error: its own when it is one.
fn io_error(err: h2::Error) -> io::Error {
    if err.is_io() {
        if let Some(io) = err.into_io() {
            return io;
        }
        return io::Error::from(io::ErrorKind::ConnectionReset);
    }
    io::Error::new(io::ErrorKind::ConnectionReset, err.to_string())
}

/// An answer body arriving on a stream; its window is given back as its
/// bytes are taken, and the replica's trailers, if it sends any, fill
/// [`Receiving::trailers`] at its end. Dropped before its end, the stream
/// is reset. An answer cut because the caller's request body went over its
/// limit or broke off (the stream was reset for it) ends with the error of
/// that [`CallerCut`], the caller's doing; any other cut with
/// [`PayloadError::Http2Payload`].
pub(super) struct Receiving {
    body: RecvStream,
    trailers: Trailers,
    /// Its data has ended; the trailers are next.
    data_ended: bool,
    /// Set if the request had a body to send.
    caller_cut: Option<CallerCutSlot>,
    _slot: StreamSlot,
}

impl Receiving {
    /// The error the answer ends with, cut by `err` (see the type's doc).
    fn cut(&self, err: h2::Error) -> PayloadError {
        match self.caller_cut.as_ref().and_then(|cut| cut.0.get()) {
            Some(cut) => cut.error(),
            None => PayloadError::Http2Payload(err),
        }
    }

    /// Where the replica's trailers go once the body has ended.
    pub(super) fn trailers(&self) -> &Trailers {
        &self.trailers
    }
}

impl Stream for Receiving {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.data_ended {
            match ready!(this.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: the replica may send as much again.
                    let _ = this.body.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(data)));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(this.cut(err)))),
                None => this.data_ended = true,
            }
        }
        match ready!(this.body.poll_trailers(cx)) {
            Ok(Some(trailers)) => {
                this.trailers.fill(trailers);
                Poll::Ready(None)
            }
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(this.cut(err)))),
        }
    }
}
