//! The request body's limits as it streams to the upstream, nothing
//! buffered for them: cut once it crosses `max_body_bytes` (the upstream
//! sees an aborted request, the client a 413), and given up once the client
//! pauses longer than `client_body_timeout` between two reads (408). Either
//! is the client's doing, never the replica's.
//!
//! A gRPC call over HTTP/2 is a stream of messages that may stay open for
//! hours (a watch, a chat, a subscription), its caller silent for minutes
//! between two of them: there the pause is not timed (the caller's
//! deadline bounds the call, and the HTTP/2 dispatcher's PINGs find a
//! dead caller, not the sidecar's idea of an upload), and `max_body_bytes`
//! bounds each message, as gRPC's own receive limit does, not the sum of
//! the stream.
//!
//! A body that may be retried is kept as it streams ([`BodyCopy`]), and a
//! try lends it ([`LentBody`]): one that could not reach its replica gives
//! it back untouched for the next.

use std::cell::RefCell;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::HttpRequest;
use futures_util::stream::Peekable;
use futures_util::{Stream, StreamExt};

use super::connection::connection_data;
use super::deadline::Pause;
use super::framing::{ChunkRefusal, MAX_BODY_BYTES};
use super::stream::ChunkVerdict;
use crate::config::ListenerLimits;
use crate::error::ProxyError;

/// What `max_body_bytes` bounds in a request: its whole body, or each
/// message of a gRPC call over HTTP/2 (see [`LimitedPayload::grpc_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// The body as a whole (its `Content-Length`, or what streams).
    Whole,
    /// Each message of a gRPC message stream, by its length prefix.
    EachMessage,
}

/// A request body that stops with [`BodyError::TooLarge`] past its limit
/// and with [`BodyError::TimedOut`] when the client pauses too long.
pub struct LimitedPayload {
    payload: Payload,
    /// Bytes still allowed; `u64::MAX` for no limit (or one per message).
    allowed: u64,
    limit: Option<u64>,
    /// `client_body_timeout`; `None` for a gRPC stream's body.
    longest_pause: Option<Duration>,
    /// A gRPC stream's messages, each held to `max_body_bytes`.
    messages: Option<GrpcMessages>,
    /// The client's pause under way.
    pause: Pause,
    /// A copy of what passed, kept while it fits (see [`LimitedPayload::keep_copy`]).
    copy: Option<Rc<RefCell<BodyCopy>>>,
}

impl LimitedPayload {
    /// `payload` under `limits` (`max_body_bytes`, `client_body_timeout`).
    pub fn new(payload: Payload, limits: &ListenerLimits) -> LimitedPayload {
        LimitedPayload {
            payload,
            allowed: limits.max_body_bytes.unwrap_or(u64::MAX),
            limit: limits.max_body_bytes,
            longest_pause: Some(limits.client_body_timeout),
            messages: None,
            pause: Pause::default(),
            copy: None,
        }
    }

    /// `payload`, the message stream of a gRPC call over HTTP/2, under
    /// `limits`: no pause between two reads is too long, and
    /// `max_body_bytes` bounds each message, not the whole stream.
    pub fn grpc_stream(payload: Payload, limits: &ListenerLimits) -> LimitedPayload {
        LimitedPayload {
            payload,
            allowed: u64::MAX,
            limit: limits.max_body_bytes,
            longest_pause: None,
            messages: limits.max_body_bytes.map(GrpcMessages::new),
            pause: Pause::default(),
            copy: None,
        }
    }

    /// Whether this is the message stream of a gRPC call over HTTP/2
    /// ([`LimitedPayload::grpc_stream`]).
    pub fn is_grpc_stream(&self) -> bool {
        self.longest_pause.is_none()
    }

    /// Keeps a copy of the body as it streams, while it stays within
    /// `limit` bytes: once the body has ended within it, the copy can send
    /// it again (a body whose length was not announced, retried).
    pub fn keep_copy(&mut self, limit: u32) -> Rc<RefCell<BodyCopy>> {
        let copy = Rc::new(RefCell::new(BodyCopy {
            bytes: BytesMut::new(),
            room: limit as usize,
            state: Copying::Filling,
        }));
        self.copy = Some(Rc::clone(&copy));
        copy
    }
}

/// Where a try gives back a streamed request body it took none of (see
/// [`LentBody`]).
pub type BodyHome = Rc<RefCell<Option<Peekable<LimitedPayload>>>>;

/// A streamed request body as one try sends it. A try that ends before it
/// took any of the body (its connection to the replica failed) gives it
/// back to its home, when it has one, so that another try can send it
/// whole; without a home it is just the body.
pub struct LentBody {
    /// Only `None` once given back.
    body: Option<Peekable<LimitedPayload>>,
    home: Option<BodyHome>,
    /// The try took something of it (a chunk, an error or its end).
    taken: bool,
}

impl LentBody {
    /// `body`, lent from `home` if it has one.
    pub fn new(body: Peekable<LimitedPayload>, home: Option<BodyHome>) -> LentBody {
        LentBody {
            body: Some(body),
            home,
            taken: false,
        }
    }
}

impl Stream for LentBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(body) = &mut this.body else {
            return Poll::Ready(None);
        };
        let item = body.poll_next_unpin(cx);
        this.taken |= item.is_ready();
        item
    }
}

impl Drop for LentBody {
    fn drop(&mut self) {
        if let (false, Some(home), Some(body)) = (self.taken, &self.home, self.body.take()) {
            *home.borrow_mut() = Some(body);
        }
    }
}

/// The copy of a streamed request body [`LimitedPayload::keep_copy`] keeps.
pub struct BodyCopy {
    bytes: BytesMut,
    /// Bytes the copy may still take.
    room: usize,
    state: Copying,
}

/// How far a [`BodyCopy`] got.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Copying {
    /// The body is still streaming, and all of it so far is copied.
    Filling,
    /// The body ended, all of it copied.
    Whole,
    /// The body outgrew the copy or broke off: it cannot be sent again.
    Lost,
}

impl BodyCopy {
    fn add(&mut self, chunk: &Bytes) {
        if self.state != Copying::Filling {
            return;
        }
        match self.room.checked_sub(chunk.len()) {
            Some(room) => {
                self.room = room;
                self.bytes.extend_from_slice(chunk);
            }
            None => self.lose(),
        }
    }

    fn lose(&mut self) {
        self.state = Copying::Lost;
        self.bytes = BytesMut::new();
    }

    /// The whole body, once it ended within the copy's limit (taken: the
    /// copy is empty afterwards).
    pub fn take_whole(&mut self) -> Option<Bytes> {
        (self.state == Copying::Whole).then(|| {
            self.state = Copying::Lost;
            std::mem::take(&mut self.bytes).freeze()
        })
    }
}

/// The messages of a gRPC stream as they pass, each a 5-byte prefix (a
/// compression flag and a 4-byte big-endian length) and that many bytes:
/// a prefix that announces more than the limit stops the stream before
/// the message's first byte goes on.
struct GrpcMessages {
    /// `max_body_bytes`, per message.
    limit: u64,
    /// The prefix read so far, of the message to come.
    prefix: [u8; GRPC_PREFIX],
    prefix_read: usize,
    /// Bytes of the current message still to pass.
    left: u64,
}

/// The length of a gRPC message's prefix.
const GRPC_PREFIX: usize = 5;

impl GrpcMessages {
    fn new(limit: u64) -> GrpcMessages {
        GrpcMessages {
            limit,
            prefix: [0; GRPC_PREFIX],
            prefix_read: 0,
            left: 0,
        }
    }

    /// Follows `chunk`, the next bytes of the stream: the announced length
    /// of a message over the limit, if the chunk starts one.
    fn pass(&mut self, mut chunk: &[u8]) -> Result<(), u64> {
        while !chunk.is_empty() {
            if self.left > 0 {
                let passed = chunk
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= passed as u64;
                chunk = &chunk[passed..];
                continue;
            }
            let taken = chunk.len().min(GRPC_PREFIX - self.prefix_read);
            self.prefix[self.prefix_read..self.prefix_read + taken]
                .copy_from_slice(&chunk[..taken]);
            self.prefix_read += taken;
            chunk = &chunk[taken..];
            if self.prefix_read == GRPC_PREFIX {
                self.prefix_read = 0;
                let [_, a, b, c, d] = self.prefix;
                let length = u64::from(u32::from_be_bytes([a, b, c, d]));
                if length > self.limit {
                    return Err(length);
                }
                self.left = length;
            }
        }
        Ok(())
    }
}

/// Why a request body stopped streaming.
#[derive(Debug)]
pub enum BodyError {
    /// The client sent more than `max_body_bytes` (the limit).
    TooLarge(u64),
    /// A gRPC message announced more bytes (`length`) than
    /// `max_body_bytes` (`limit`) allows one message.
    MessageTooLarge { limit: u64, length: u64 },
    /// The client sent nothing for `client_body_timeout` (this long).
    TimedOut(Duration),
    /// The client's body broke off or was malformed.
    Client(PayloadError),
}

impl BodyError {
    /// Whether the client sent more than `max_body_bytes` allows (the
    /// whole body, or one gRPC message).
    pub fn is_over_limit(&self) -> bool {
        matches!(self, Self::TooLarge(_) | Self::MessageTooLarge { .. })
    }

    /// The answer to a client whose body for `req` stopped so: a body
    /// that broke off where its connection refused a chunk-size line is
    /// answered for that line.
    pub fn refusal(&self, req: &HttpRequest) -> ProxyError {
        let chunk = match self {
            Self::Client(_) => {
                connection_data::<ChunkVerdict>(req).and_then(|verdict| verdict.get())
            }
            _ => None,
        };
        match (self, chunk) {
            (_, Some(ChunkRefusal::TooLarge(Some(limit)))) => ProxyError::BodyTooLarge(format!(
                "a chunk size announces a request body over max_body_bytes {limit}"
            )),
            (_, Some(ChunkRefusal::TooLarge(None))) => ProxyError::BodyTooLarge(format!(
                "a chunk size announces a request body over {MAX_BODY_BYTES} bytes, more than any body may hold"
            )),
            (_, Some(ChunkRefusal::Malformed)) => ProxyError::BadRequest(
                "a chunk-size line of the request body is not a valid size".to_string(),
            ),
            (Self::TooLarge(_) | Self::MessageTooLarge { .. }, None) => {
                ProxyError::BodyTooLarge(self.to_string())
            }
            (Self::TimedOut(_), None) => ProxyError::BodyTimeout(self.to_string()),
            (Self::Client(_), None) => ProxyError::BadRequest(self.to_string()),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(limit) => write!(f, "the request body is over max_body_bytes {limit}"),
            Self::MessageTooLarge { limit, length } => write!(
                f,
                "a gRPC message of {length} bytes is over max_body_bytes {limit}"
            ),
            Self::TimedOut(pause) => write!(
                f,
                "the client sent no request body bytes for client_body_timeout {}ms",
                pause.as_millis()
            ),
            Self::Client(err) => write!(f, "reading the request body failed: {err}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl Stream for LimitedPayload {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match Pin::new(&mut this.payload).poll_next(cx) {
            Poll::Ready(item) => item,
            Poll::Pending => {
                let Some(longest) = this.longest_pause else {
                    return Poll::Pending;
                };
                this.pause.start(longest);
                return if this.pause.passed(cx) {
                    Poll::Ready(Some(Err(BodyError::TimedOut(longest))))
                } else {
                    Poll::Pending
                };
            }
        };
        if let (Some(messages), Some(Ok(chunk))) = (&mut this.messages, &item) {
            if let Err(length) = messages.pass(chunk) {
                let limit = messages.limit;
                if let Some(copy) = &this.copy {
                    copy.borrow_mut().lose();
                }
                return Poll::Ready(Some(Err(BodyError::MessageTooLarge { limit, length })));
            }
        }
        this.pause.stop();
        if let Some(copy) = &this.copy {
            let mut copy = copy.borrow_mut();
            match &item {
                Some(Ok(chunk)) if this.allowed >= chunk.len() as u64 => copy.add(chunk),
                None if copy.state == Copying::Filling => copy.state = Copying::Whole,
                None => {}
                Some(_) => copy.lose(),
            }
        }
        Poll::Ready(match item {
            Some(Ok(chunk)) => match this.allowed.checked_sub(chunk.len() as u64) {
                Some(left) => {
                    this.allowed = left;
                    Some(Ok(chunk))
                }
                None => Some(Err(BodyError::TooLarge(this.limit.unwrap_or(u64::MAX)))),
            },
            Some(Err(err)) => Some(Err(BodyError::Client(err))),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(limit: usize) -> BodyCopy {
        BodyCopy {
            bytes: BytesMut::new(),
            room: limit,
            state: Copying::Filling,
        }
    }

    #[test]
    fn a_body_that_ended_within_the_limit_is_whole_once() {
        let mut kept = copy(8);
        kept.add(&Bytes::from_static(b"abc"));
        assert_eq!(kept.take_whole(), None, "not ended yet");
        kept.add(&Bytes::from_static(b"defgh"));
        kept.state = Copying::Whole;
        assert_eq!(kept.take_whole(), Some(Bytes::from_static(b"abcdefgh")));
        assert_eq!(kept.take_whole(), None, "taken");
    }

    #[test]
    fn each_grpc_message_is_held_to_the_limit_wherever_chunks_split_it() {
        let message = |length: u32| {
            let mut bytes = vec![0];
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend(std::iter::repeat_n(b'x', length as usize));
            bytes
        };
        let mut stream = [message(8), message(0), message(8), message(8)].concat();
        let mut messages = GrpcMessages::new(8);
        // Split everywhere, prefixes too: 32 bytes of messages in all,
        // more than the limit, each within it.
        for chunk in stream.chunks(3) {
            assert_eq!(messages.pass(chunk), Ok(()));
        }
        stream = [message(8), message(9)].concat();
        let mut messages = GrpcMessages::new(8);
        assert_eq!(messages.pass(&stream[..15]), Ok(()));
        assert_eq!(
            messages.pass(&stream[15..]),
            Err(9),
            "its prefix announced 9"
        );
    }

    #[test]
    fn a_body_past_the_limit_is_lost_and_keeps_nothing() {
        let mut kept = copy(4);
        kept.add(&Bytes::from_static(b"abc"));
        kept.add(&Bytes::from_static(b"de"));
        assert!(kept.bytes.is_empty(), "nothing held past the limit");
        kept.add(&Bytes::from_static(b"f"));
        assert_eq!(kept.take_whole(), None);
    }
}
