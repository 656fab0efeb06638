//! A replica's answer: its head, and its body as a stream read straight
//! off the connection. Once the body has been read to its end the
//! connection goes back to the worker's pool; a body dropped early or cut
//! closes it. An HTTP/2 answer's body comes off its stream (`http2.rs`).

use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_codec::Framed;
use actix_http::error::PayloadError;
use actix_http::h1::ClientPayloadCodec;
use actix_http::header::HeaderMap;
use actix_http::{ResponseHead, StatusCode};
use actix_web::web::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::http2::Receiving;
use super::pool::{Connection, Counted};
use super::stream::Transport;
use super::Shared;
use crate::http::trailers::Trailers;
use crate::tls::Origination;

/// The answer head from a replica, with its body still to stream.
pub struct UpstreamResponse {
    head: ResponseHead,
    body: Body,
}

/// Where the rest of an answer's body is (HTTP/1's inline, not boxed: it
/// is the hot path, and boxing would allocate per answer).
enum Body {
    /// There is none, or its end was read.
    Done,
    /// On an HTTP/1 connection.
    Http1(Reading),
    /// On an HTTP/2 stream.
    Http2(Receiving),
}

struct Reading {
    framed: Framed<Transport, ClientPayloadCodec>,
    address: Rc<str>,
    /// The origination its TLS was opened with; `None`: plain text.
    origination: Option<Arc<Origination>>,
    /// Where the connection is counted in `upstream_connections`.
    counted: Counted,
    /// Where the connection goes back to once the body ends.
    shared: Rc<Shared>,
    /// The body runs until the replica closes (HTTP/1.0 without a length),
    /// so the end of the stream is its end, not a cut.
    ends_at_close: bool,
}

impl UpstreamResponse {
    /// An answer whose body is already over (none, or a `HEAD`'s).
    pub(super) fn without_body(head: ResponseHead) -> UpstreamResponse {
        UpstreamResponse {
            head,
            body: Body::Done,
        }
    }

    /// An HTTP/2 answer whose body comes off its stream.
    pub(super) fn http2(head: ResponseHead, body: Receiving) -> UpstreamResponse {
        UpstreamResponse {
            head,
            body: Body::Http2(body),
        }
    }

    /// An answer whose body is read from `connection` as it is streamed.
    pub(super) fn streaming(
        head: ResponseHead,
        connection: Connection,
        shared: Rc<Shared>,
    ) -> UpstreamResponse {
        let ends_at_close = head.version == actix_http::Version::HTTP_10
            && !head
                .headers
                .contains_key(actix_http::header::CONTENT_LENGTH);
        let Connection {
            framed,
            address,
            origination,
            counted,
            ..
        } = connection;
        UpstreamResponse {
            head,
            body: Body::Http1(Reading {
                framed: framed.into_map_codec(|codec| codec.into_payload_codec()),
                address,
                origination,
                counted,
                shared,
                ends_at_close,
            }),
        }
    }

    /// The replica's status.
    pub fn status(&self) -> StatusCode {
        self.head.status
    }

    /// The replica's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// Where the replica's trailers go once the body has ended: an HTTP/2
    /// answer's (an HTTP/1 answer's trailers, if chunked, are not kept).
    pub fn trailers(&self) -> Option<&Trailers> {
        match &self.body {
            Body::Http2(receiving) => Some(receiving.trailers()),
            _ => None,
        }
    }

    /// Takes the replica's headers out of the answer, to pass them on
    /// without copying; [`UpstreamResponse::headers`] is empty after.
    pub fn take_headers(&mut self) -> HeaderMap {
        std::mem::take(&mut self.head.headers)
    }

    /// The whole body, read into memory; [`PayloadError::Overflow`] once it
    /// crosses `limit` bytes.
    pub async fn body(&mut self, limit: usize) -> Result<Bytes, PayloadError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            if body.len() + chunk.len() > limit {
                return Err(PayloadError::Overflow);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

impl Stream for UpstreamResponse {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let reading = match &mut this.body {
            Body::Http1(reading) => reading,
            Body::Http2(receiving) => return Pin::new(receiving).poll_next(cx),
            Body::Done => return Poll::Ready(None),
        };
        let item = match Pin::new(&mut reading.framed).next_item(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        match item {
            Some(Ok(Some(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Some(Ok(None)) => {
                if let Body::Http1(done) = std::mem::replace(&mut this.body, Body::Done) {
                    done.release();
                }
                Poll::Ready(None)
            }
            Some(Err(err)) => {
                this.body = Body::Done;
                Poll::Ready(Some(Err(err)))
            }
            None => {
                let ends_at_close = reading.ends_at_close;
                this.body = Body::Done;
                if ends_at_close {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(PayloadError::Incomplete(None))))
                }
            }
        }
    }
}

impl Reading {
    /// The body was read to its end: the connection goes back to the pool
    /// (which keeps it only if it may carry another request).
    fn release(self) {
        let framed = self
            .framed
            .into_map_codec(|codec| codec.into_message_codec());
        self.shared.pool.borrow_mut().put(Connection::new(
            framed,
            self.address,
            self.origination,
            self.counted,
        ));
    }
}
