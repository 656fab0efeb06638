//! The HTTP call to a replica and the way its answer streams back: hop-by-hop
//! headers dropped, `X-Forwarded-*`, `x-request-id` and this hop's
//! `traceparent` set (`b3` passes untouched), bodies streamed
//! in both directions and never buffered whole. Over HTTP/2, trailers pass
//! both ways (the request's after its body, the replica's on the answer
//! given to the listener) and the caller's `te: trailers` goes on.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::error::PayloadError;
use actix_http::{HttpMessage, RequestHead};
use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, Uri, Version};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::future::{ready, Either};
use futures_util::stream::{FusedStream, Peekable};
use futures_util::{Stream, StreamExt};

pub use super::client::UpstreamResponse;
use super::client::{CallError, Client, Http2Body, OutgoingBody};
use super::grpc::GRPC_TIMEOUT;
use super::listener::{BodyCopy, BodyError, BodyHome, LentBody, LimitedPayload, PeerIp};
use super::request_id::REQUEST_ID;
use super::trailers::Trailers;
use crate::config::ReplicaProtocol;
use crate::metrics::PoolGauges;
use crate::tls::Origination;
use crate::trace::{Hop, TRACEPARENT, TRACESTATE};

/// The scheme the caller used, as seen by the replica.
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Where and how a request is forwarded: the replica (or, inbound, the
/// app) and what it is sent.
pub struct Target<'a> {
    /// `host:port` of the replica.
    pub address: &'a str,
    /// How to open TLS to it; `None`: plain text.
    pub origination: Option<&'a Arc<Origination>>,
    /// The replica's `upstream_connections`, which the connection counts
    /// in; `None` for the app.
    pub connections: Option<&'a Arc<PoolGauges>>,
    /// Path to request, without the query.
    pub path: &'a str,
    /// How the caller's headers become the replica's.
    pub headers: HeaderPlan<'a>,
    /// Bound on each wait for the replica: taking body bytes, and its
    /// answer head once the body is complete.
    pub timeout: Duration,
    /// The HTTP version to call it with.
    pub protocol: ReplicaProtocol,
}

/// How the caller's headers are turned into the replica's.
#[derive(Clone, Copy, Default)]
pub struct HeaderPlan<'a> {
    /// Pass the caller's `Host` on instead of the replica's address.
    pub keep_host: bool,
    /// An upgrade handshake: keep `Connection` and `Upgrade`.
    pub handshake: bool,
    /// Identity headers the sidecar sets (inbound); any `x-outrigger-*`
    /// header the caller sent is dropped first, so it cannot be spoofed.
    pub identity: Option<&'a HeaderMap>,
    /// Drop `Authorization`.
    pub strip_authorization: bool,
    /// Pass the caller's `X-Forwarded-*`, `X-Real-IP` and `Forwarded` on
    /// (a trusted proxy, or the app on the outbound side). Otherwise they
    /// are dropped, and `X-Forwarded-For` and `X-Forwarded-Proto` say only
    /// what the sidecar saw: the peer's address and `http`.
    pub trust_forwarding: bool,
    /// This hop's trace context: its `traceparent` replaces the caller's,
    /// and the caller's `tracestate` is dropped when the trace restarted.
    pub trace: Option<&'a Hop>,
    /// The `grpc-timeout` the replica is told (what is left of a gRPC
    /// caller's deadline), replacing the caller's.
    pub grpc_timeout: Option<&'a HeaderValue>,
}

/// A request body: none, small enough to keep and send again, or streamed
/// once from the app to the first replica tried.
pub enum RequestBody {
    /// No body.
    Empty,
    /// The whole body, kept so a retry can send it again.
    Replayable(Bytes),
    /// The body as it arrives, its first bytes already in; `None` once a
    /// try has taken it. With a [`Replay`] (a body of unannounced length
    /// that may be retried), it can be sent again once it ended within the
    /// replay limit, or when the try took none of it.
    Streaming(Option<Peekable<LimitedPayload>>, BodyLength, Option<Replay>),
}

/// How a streamed body that may be retried is sent again: its copy, whole
/// once the body ended within the replay limit, and the home a try that
/// took none of it (its connection failed) gives it back to.
pub struct Replay {
    copy: Rc<RefCell<BodyCopy>>,
    home: BodyHome,
}

impl RequestBody {
    /// Reads the body of `req`: kept in memory when it has a Content-Length
    /// of at most `replay_limit` bytes (when retries are possible at all),
    /// otherwise left to stream once its first bytes are in (a gRPC call's
    /// body, sent over HTTP/2 without a length, streams with a copy kept up
    /// to `replay_limit`: see [`RequestBody::replayable`]), so that a
    /// client that stalls or whose body is refused from the start holds no
    /// replica's connection and reaches no replica. A declared empty body
    /// (`Content-Length: 0`) is always kept: there is nothing to stream, and
    /// it is sent again as freely as no body.
    pub async fn read(
        req: &HttpRequest,
        payload: LimitedPayload,
        replay_limit: Option<u32>,
    ) -> Result<RequestBody, BodyError> {
        let length = body_length(req);
        let replayable = match (length, replay_limit) {
            (BodyLength::None, _) => return Ok(RequestBody::Empty),
            (BodyLength::Sized(0), _) => return Ok(RequestBody::Replayable(Bytes::new())),
            (BodyLength::Sized(n), Some(limit)) => n <= u64::from(limit),
            _ => false,
        };
        let mut payload = payload;
        let replay = match (length, replay_limit) {
            (BodyLength::Unknown, Some(limit)) if payload.is_grpc_stream() => Some(Replay {
                copy: payload.keep_copy(limit),
                home: BodyHome::default(),
            }),
            _ => None,
        };
        let mut payload = payload.peekable();
        if !replayable {
            match Pin::new(&mut payload).next_if(Result::is_err).await {
                Some(Err(err)) => return Err(err),
                // An HTTP/2 body without a length that ended at once: no
                // body, or an empty one when trailers follow it (they go
                // after it).
                None if matches!(length, BodyLength::Unknown) && payload.is_terminated() => {
                    let trailed = req
                        .extensions()
                        .get::<Trailers>()
                        .is_some_and(Trailers::is_filled);
                    return Ok(if trailed {
                        RequestBody::Replayable(Bytes::new())
                    } else {
                        RequestBody::Empty
                    });
                }
                _ => {}
            }
            return Ok(RequestBody::Streaming(Some(payload), length, replay));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(RequestBody::Replayable(body.freeze()))
    }

    /// Whether another try can send this body again: a streamed body
    /// only when the try gave it back untouched (it streams again), or when
    /// its copy holds all of it (it ended within the replay limit while
    /// the try sent it), which it becomes.
    pub fn replayable(&mut self) -> bool {
        if let RequestBody::Streaming(body, _, Some(replay)) = self {
            let back = replay.home.borrow_mut().take();
            if back.is_some() {
                *body = back;
                return true;
            }
            let whole = replay.copy.borrow_mut().take_whole();
            if let Some(whole) = whole {
                *self = RequestBody::Replayable(whole);
            }
        }
        !matches!(self, RequestBody::Streaming(..))
    }
}

/// Sends `req` with `body` to the replica, over HTTP/2 when its protocol
/// says so (`auto`: when `req` came over HTTP/2). The request head is made at
/// once; the future returned is only the client's call (see
/// `Client::send` for why it is not an `async fn`).
pub fn send<'a>(
    client: &'a Client,
    target: Target<'a>,
    req: &HttpRequest,
    body: &mut RequestBody,
    request_id: &HeaderValue,
) -> impl Future<Output = Result<UpstreamResponse, CallError>> + 'a {
    let http2 = target.protocol.calls_http2(req.version());
    match outgoing_request(&target, req, body, request_id) {
        Ok((mut head, body)) => {
            let (address, tls) = (target.address, target.origination);
            let (connections, timeout) = (target.connections, target.timeout);
            if http2 {
                if takes_trailers(req.headers()) {
                    head.headers
                        .insert(header::TE, HeaderValue::from_static("trailers"));
                }
                let body = Http2Body {
                    body,
                    trailers: req.extensions().get::<Trailers>().cloned(),
                };
                let call = client.send_http2(address, tls, connections, head, body, timeout);
                // Boxed: HTTP/2's state would otherwise widen every call's future.
                Either::Left(Either::Right(Box::pin(call)))
            } else {
                let call = client.send(address, tls, connections, head, body, timeout);
                Either::Left(Either::Left(call))
            }
        }
        Err(error) => Either::Right(ready(Err(error))),
    }
}

/// Whether the caller said it takes trailers (`te: trailers`), which a
/// call over HTTP/2 passes on: it is the one `te` HTTP/2 allows, and gRPC
/// servers refuse a call without it. (Over HTTP/1.1 `te` is hop-by-hop.)
fn takes_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).any(|value| {
        value.to_str().is_ok_and(|codings| {
            codings
                .split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
        })
    })
}

/// The head and body to send the replica for `req`.
fn outgoing_request(
    target: &Target<'_>,
    req: &HttpRequest,
    body: &mut RequestBody,
    request_id: &HeaderValue,
) -> Result<(RequestHead, OutgoingBody), CallError> {
    let mut head = RequestHead::default();
    head.method = req.method().clone();
    head.uri = upstream_uri(target.path, req.uri().query())?;
    copy_request_headers(req, &mut head.headers, &target.headers, request_id);
    if let Some(budget) = target.headers.grpc_timeout {
        head.headers.insert(GRPC_TIMEOUT.clone(), budget.clone());
    }
    if !target.headers.keep_host {
        let host = HeaderValue::from_str(target.address).map_err(|_| {
            CallError::Unsendable(format!("{} is not a valid Host", target.address))
        })?;
        // The caller's Host was not copied.
        head.headers.append(header::HOST, host);
    }
    let outgoing = match body {
        RequestBody::Empty => OutgoingBody::Empty,
        RequestBody::Replayable(bytes) => OutgoingBody::Full(bytes.clone()),
        RequestBody::Streaming(payload, length, replay) => {
            let payload = payload.take().ok_or_else(|| {
                CallError::Unsendable("the request body was already sent".to_string())
            })?;
            let payload = LentBody::new(payload, replay.as_ref().map(|r| Rc::clone(&r.home)));
            match length {
                BodyLength::Sized(n) => OutgoingBody::Stream(payload, Some(*n)),
                _ => OutgoingBody::Stream(payload, None),
            }
        }
    };
    Ok((head, outgoing))
}

/// What an answer holds while its body streams (the call's lease, a
/// concurrency slot), so the call counts as in flight until the body ends;
/// told when the body breaks off.
pub trait StreamGuard: Unpin + 'static {
    /// The body broke off after the head was passed on (the caller sees the
    /// answer cut). Nothing by default.
    fn broke(&mut self, _error: &PayloadError) {}

    /// The body ended, its trailers (if any) read. Nothing by default.
    fn ended(&mut self) {}
}

impl StreamGuard for () {}

/// A guard that may not be there (no cap applied): told when there is one.
impl<G: StreamGuard> StreamGuard for Option<G> {
    fn broke(&mut self, error: &PayloadError) {
        if let Some(guard) = self {
            guard.broke(error);
        }
    }

    fn ended(&mut self) {
        if let Some(guard) = self {
            guard.ended();
        }
    }
}

/// Streams the replica's answer back; `guard` lives until the body ends.
/// The replica's headers move into the answer as they are, less the
/// hop-by-hop ones and `Content-Length` (the body's framing sets it); an
/// HTTP/2 answer's `Trailers` go in the answer's extensions, for an
/// HTTP/2 caller's listener to send after the body.
pub fn respond<G: StreamGuard>(mut upstream: UpstreamResponse, guard: G) -> HttpResponse {
    let status = upstream.status();
    let trailers = upstream.trailers().cloned();
    let mut headers = upstream.take_headers();
    let length = headers
        .remove(header::CONTENT_LENGTH)
        .next()
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    strip_hop_by_hop(&mut headers);
    let body = GuardedBody {
        body: upstream,
        guard,
    };
    let mut response = match length {
        Some(length) => {
            HttpResponse::with_body(status, SizedStream::new(length, body)).map_into_boxed_body()
        }
        None => HttpResponse::with_body(status, BodyStream::new(body)).map_into_boxed_body(),
    };
    *response.headers_mut() = headers;
    if let Some(trailers) = trailers {
        response.extensions_mut().insert(trailers);
    }
    response
}

/// Removes the hop-by-hop headers of a message (most have none, and then
/// nothing is allocated).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop_by_hop = HopByHop::of(headers);
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| hop_by_hop.contains(name))
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// A response body stream that holds its guard until it ends, and tells
/// it when the body breaks.
struct GuardedBody<S, G> {
    body: S,
    guard: G,
}

impl<S, G> Stream for GuardedBody<S, G>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    G: StreamGuard,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = Pin::new(&mut this.body).poll_next(cx);
        match &item {
            Poll::Ready(Some(Err(error))) => this.guard.broke(error),
            Poll::Ready(None) => this.guard.ended(),
            _ => {}
        }
        item
    }
}

/// How the app framed its request body.
#[derive(Debug, Clone, Copy)]
pub enum BodyLength {
    /// No body.
    None,
    /// `Content-Length`.
    Sized(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// An HTTP/2 body without `Content-Length`: it ends with its stream
    /// (sent on chunked to an HTTP/1.1 replica).
    Unknown,
}

fn body_length(req: &HttpRequest) -> BodyLength {
    let headers = req.headers();
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return BodyLength::Sized(length);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return BodyLength::Chunked;
    }
    // HTTP/2 frames a body by its stream, not by a header; a GET or HEAD
    // has none, as over HTTP/1.1.
    if req.version() == Version::HTTP_2 && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return BodyLength::Unknown;
    }
    BodyLength::None
}

fn upstream_uri(path: &str, query: Option<&str>) -> Result<Uri, CallError> {
    let uri = match query {
        Some(query) => {
            let mut uri = String::with_capacity(path.len() + query.len() + 1);
            uri.push_str(path);
            uri.push('?');
            uri.push_str(query);
            Uri::try_from(uri)
        }
        None => Uri::try_from(path),
    };
    uri.map_err(|err| CallError::Unsendable(format!("cannot form the upstream URI: {err}")))
}

/// Copies the caller's headers into `out` (empty) for the replica as `plan`
/// says: hop-by-hop ones dropped, the caller's forwarding headers kept only
/// when trusted, `X-Forwarded-*` and `x-request-id` set.
/// Names and values are shared with the request, not copied; the one new
/// allocation is the `X-Forwarded-For` list.
pub fn copy_request_headers(
    req: &HttpRequest,
    out: &mut HeaderMap,
    plan: &HeaderPlan<'_>,
    request_id: &HeaderValue,
) {
    let headers = req.headers();
    let hop_by_hop = HopByHop::of(headers);
    // The caller's headers and the few the sidecar adds, without regrowing.
    out.reserve(headers.len() + 4);
    let handshake_header = |name: &HeaderName| {
        plan.handshake && (*name == header::CONNECTION || *name == header::UPGRADE)
    };
    let sidecar_owned = |name: &HeaderName| {
        (plan.identity.is_some() && name.as_str().starts_with("x-outrigger-"))
            || (!plan.trust_forwarding && is_forwarding_header(name))
            || (plan.strip_authorization && *name == header::AUTHORIZATION)
            || plan.trace.is_some_and(|hop| {
                *name == TRACEPARENT || (*name == TRACESTATE && !hop.continued())
            })
    };
    let mut forwarded_for: Option<String> = None;
    let (mut has_proto, mut has_id) = (false, false);
    for (name, value) in headers.iter() {
        if *name == header::X_FORWARDED_FOR {
            if let Some(value) = value.to_str().ok().filter(|_| plan.trust_forwarding) {
                let list = forwarded_for.get_or_insert_with(String::new);
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(value);
            }
            continue;
        }
        let skip = (hop_by_hop.contains(name) && !handshake_header(name))
            || *name == header::CONTENT_LENGTH
            // The listener already answered the caller's expectation.
            || *name == header::EXPECT
            || (*name == header::HOST && !plan.keep_host)
            || sidecar_owned(name);
        if !skip {
            has_proto |= *name == X_FORWARDED_PROTO;
            has_id |= *name == REQUEST_ID;
            out.append(name.clone(), value.clone());
        }
    }
    // What follows was skipped above or checked for: appending is enough.
    // The caller's list, if it sent one, with the caller's own IP after it.
    let forwarded_for = match (forwarded_for, PeerIp::of(req)) {
        (None, peer) => peer.map(|PeerIp(ip)| ip),
        (Some(mut list), peer) => {
            if let Some(ip) = peer.as_ref().and_then(|PeerIp(ip)| ip.to_str().ok()) {
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(ip);
            }
            HeaderValue::try_from(list).ok()
        }
    };
    if let Some(value) = forwarded_for {
        out.append(header::X_FORWARDED_FOR, value);
    }
    if !has_proto {
        out.append(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !has_id {
        out.append(REQUEST_ID.clone(), request_id.clone());
    }
    if let Some(hop) = plan.trace {
        out.append(TRACEPARENT.clone(), hop.traceparent.clone());
    }
    // The caller's `x-outrigger-*` headers were dropped above.
    for (name, value) in plan.identity.into_iter().flat_map(HeaderMap::iter) {
        out.append(name.clone(), value.clone());
    }
}

/// Whether `name` says where a request came from or how it arrived, as a
/// proxy in front writes it: `X-Forwarded-*`, `X-Real-IP`, `Forwarded`.
fn is_forwarding_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-forwarded-") || name == "x-real-ip" || name == "forwarded"
}

/// The `Upgrade` header of a request asking to switch protocols
/// (`Connection: upgrade` plus `Upgrade: <protocol>`).
pub fn upgrade_requested(headers: &HeaderMap) -> Option<&HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    named_in_connection(&header::UPGRADE, headers).then_some(upgrade)
}

/// Headers that describe one connection, not the message: never forwarded.
pub(crate) fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HopByHop::of(headers).contains(name)
}

/// The hop-by-hop headers of one message: the standard ones and those its
/// `Connection` names, looked up once for all of the message's headers.
struct HopByHop<'a> {
    connection: &'a [HeaderValue],
}

impl<'a> HopByHop<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        HopByHop {
            connection: headers.get_all(header::CONNECTION).as_slice(),
        }
    }

    fn contains(&self, name: &HeaderName) -> bool {
        matches!(
            name.as_str(),
            "connection"
                | "proxy-connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "proxy-authenticate"
                | "proxy-authorization"
        ) || named_in(self.connection, name)
    }
}

fn named_in_connection(name: &HeaderName, headers: &HeaderMap) -> bool {
    named_in(headers.get_all(header::CONNECTION).as_slice(), name)
}

/// Whether one of the `Connection` values lists `name`.
fn named_in(connection: &[HeaderValue], name: &HeaderName) -> bool {
    connection.iter().any(|value| {
        value
            .to_str()
            .map(|tokens| {
                tokens
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    /// The headers forwarded for `req` from a trusted caller (the outbound
    /// side's plan).
    fn forwarded(req: HttpRequest, keep_host: bool) -> HeaderMap {
        let mut out = HeaderMap::new();
        let plan = HeaderPlan {
            keep_host,
            trust_forwarding: true,
            ..HeaderPlan::default()
        };
        copy_request_headers(&req, &mut out, &plan, &HeaderValue::from_static("id-1"));
        out
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let req = TestRequest::default()
            .insert_header(("connection", "keep-alive, x-secret"))
            .insert_header(("keep-alive", "timeout=5"))
            .insert_header(("x-secret", "1"))
            .insert_header(("te", "trailers"))
            .insert_header(("proxy-authorization", "Basic x"))
            .insert_header(("upgrade", "h2c"))
            .insert_header(("x-kept", "yes"))
            .to_http_request();
        let out = forwarded(req, false);
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(out.get("x-kept").and_then(|v| v.to_str().ok()), Some("yes"));
    }

    #[test]
    fn an_answers_hop_by_hop_headers_are_stripped_and_the_rest_kept_in_place() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        left.sort();
        let expected = [
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(left, expected);
    }

    #[test]
    fn an_upgrade_handshake_keeps_connection_and_upgrade() {
        let req = TestRequest::default()
            .insert_header(("connection", "Upgrade"))
            .insert_header(("upgrade", "websocket"))
            .insert_header(("keep-alive", "timeout=5"))
            .to_http_request();
        assert_eq!(
            upgrade_requested(req.headers()).and_then(|v| v.to_str().ok()),
            Some("websocket")
        );
        let mut out = HeaderMap::new();
        let plan = HeaderPlan {
            handshake: true,
            ..HeaderPlan::default()
        };
        copy_request_headers(&req, &mut out, &plan, &HeaderValue::from_static("id"));
        assert!(out.contains_key("connection") && out.contains_key("upgrade"));
        assert!(!out.contains_key("keep-alive"));
        let plain = TestRequest::default()
            .insert_header(("upgrade", "h2c"))
            .to_http_request();
        assert_eq!(
            upgrade_requested(plain.headers()),
            None,
            "Upgrade without Connection: upgrade"
        );
    }

    /// Every value of `name` in `headers`, in order.
    fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        headers
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    #[test]
    fn repeated_headers_keep_every_value() {
        let req = TestRequest::default()
            .append_header(("x-multi", "a"))
            .append_header(("x-multi", "b"))
            .to_http_request();
        let out = forwarded(req, false);
        assert_eq!(values(&out, "x-multi"), vec!["a", "b"]);
    }

    #[test]
    fn forwarding_headers_are_added_and_appended() {
        let req = TestRequest::default()
            .peer_addr("10.1.2.3:5555".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "192.0.2.1"))
            .insert_header(("host", "budgeting"))
            .to_http_request();
        let out = forwarded(req, true);
        let get = |name: &str| {
            out.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some("192.0.2.1, 10.1.2.3")
        );
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(get("x-request-id").as_deref(), Some("id-1"));
        assert_eq!(get("host").as_deref(), Some("budgeting"));
    }

    #[test]
    fn the_callers_own_proto_and_request_id_pass_once_and_are_not_added_again() {
        let req = TestRequest::default()
            .insert_header(("x-forwarded-proto", "https"))
            .insert_header(("x-request-id", "from-caller"))
            .to_http_request();
        let out = forwarded(req, false);
        assert_eq!(values(&out, "x-forwarded-proto"), vec!["https"]);
        assert_eq!(values(&out, "x-request-id"), vec!["from-caller"]);
    }

    #[test]
    fn the_callers_forwarded_for_passes_when_its_address_is_unknown() {
        let req = TestRequest::default()
            .insert_header(("x-forwarded-for", "192.0.2.1"))
            .to_http_request();
        let out = forwarded(req, false);
        let value = out.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        assert_eq!(value, Some("192.0.2.1"));
    }

    #[test]
    fn an_untrusted_callers_forwarding_headers_are_replaced_or_dropped() {
        let req = TestRequest::default()
            .peer_addr("10.1.2.3:5555".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "192.0.2.1"))
            .insert_header(("x-forwarded-proto", "https"))
            .insert_header(("x-forwarded-host", "bank.example"))
            .insert_header(("x-forwarded-port", "443"))
            .insert_header(("x-real-ip", "192.0.2.1"))
            .insert_header(("forwarded", "for=192.0.2.1;proto=https"))
            .insert_header(("x-kept", "yes"))
            .to_http_request();
        let mut out = HeaderMap::new();
        copy_request_headers(
            &req,
            &mut out,
            &HeaderPlan::default(),
            &HeaderValue::from_static("id"),
        );
        assert_eq!(values(&out, "x-forwarded-for"), vec!["10.1.2.3"]);
        assert_eq!(values(&out, "x-forwarded-proto"), vec!["http"]);
        for gone in [
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
            "forwarded",
        ] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(values(&out, "x-kept"), vec!["yes"]);
    }

    #[test]
    fn the_hop_traceparent_replaces_the_callers_and_b3_passes_untouched() {
        let tracer = crate::trace::Tracer { sample_rate: 1.0 };
        let traced = |traceparent: &str| {
            let req = TestRequest::default()
                .insert_header(("traceparent", traceparent))
                .insert_header(("tracestate", "vendor=1"))
                .insert_header(("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"))
                .to_http_request();
            let hop = tracer.hop(req.headers());
            let mut out = HeaderMap::new();
            let plan = HeaderPlan {
                trace: Some(&hop),
                ..HeaderPlan::default()
            };
            copy_request_headers(&req, &mut out, &plan, &HeaderValue::from_static("id"));
            (hop, out)
        };
        let (hop, out) = traced("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(out.get_all("traceparent").count(), 1);
        assert_eq!(out.get("traceparent"), Some(&hop.traceparent));
        assert_eq!(
            out.get("tracestate").map(|v| v.as_bytes()),
            Some(&b"vendor=1"[..])
        );
        assert_eq!(
            out.get("b3").map(|v| v.as_bytes()),
            Some(&b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"[..])
        );
        let (hop, out) = traced("not-a-traceparent");
        assert_eq!(out.get("traceparent"), Some(&hop.traceparent));
        assert!(
            !out.contains_key("tracestate"),
            "a restarted trace has no state"
        );
    }

    #[test]
    fn the_host_is_left_to_the_replica_address_for_path_routes() {
        let req = TestRequest::default()
            .insert_header(("host", "127.0.0.1:15001"))
            .to_http_request();
        assert!(!forwarded(req, false).contains_key("host"));
    }

    #[test]
    fn the_upstream_uri_keeps_path_and_query() {
        let Ok(uri) = upstream_uri("/a/b", Some("x=1&y=%20")) else {
            panic!("a valid URI was refused");
        };
        assert_eq!(uri.to_string(), "/a/b?x=1&y=%20");
    }
}
