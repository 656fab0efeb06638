//! The request body limit: the body is counted as it streams to the
//! upstream and cut once it crosses `max_body_bytes`, so the upstream sees
//! an aborted request and the client a 413. Nothing is buffered for it.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::{Bytes, Payload};
use futures_util::Stream;

/// A request body that stops with [`BodyError::TooLarge`] past its limit.
pub struct LimitedPayload {
    payload: Payload,
    /// Bytes still allowed; `u64::MAX` for no limit.
    allowed: u64,
    limit: Option<u64>,
}

impl LimitedPayload {
    /// `payload`, allowed at most `limit` bytes (`None`: any size).
    pub fn new(payload: Payload, limit: Option<u64>) -> LimitedPayload {
        LimitedPayload {
            payload,
            allowed: limit.unwrap_or(u64::MAX),
            limit,
        }
    }
}

/// Why a request body stopped streaming.
#[derive(Debug)]
pub enum BodyError {
    /// The client sent more than `max_body_bytes` (the limit).
    TooLarge(u64),
    /// The client's body broke off or was malformed.
    Client(PayloadError),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(limit) => write!(f, "the request body is over max_body_bytes {limit}"),
            Self::Client(err) => write!(f, "reading the request body failed: {err}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl Stream for LimitedPayload {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match Pin::new(&mut this.payload).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                match this.allowed.checked_sub(len) {
                    Some(left) => {
                        this.allowed = left;
                        Poll::Ready(Some(Ok(chunk)))
                    }
                    None => Poll::Ready(Some(Err(BodyError::TooLarge(
                        this.limit.unwrap_or(u64::MAX),
                    )))),
                }
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(BodyError::Client(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
