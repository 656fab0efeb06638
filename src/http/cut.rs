//! Why an answer's body was cut after its head went out, when the cause
//! was the caller's own request body rather than the replica: the body
//! went over `max_body_bytes`, or it broke off (the caller reset its
//! HTTP/2 stream, as a gRPC client cancelling a call does, or went away).
//! The stream to the replica is then reset by the sidecar, and the answer
//! ends with the error [`CallerCut::error`] makes of it; whoever counts the
//! call (the replica's breaker, `grpc_responses_total`) reads it back with
//! [`CallerCut::of`], so the replica is not blamed for it.

use std::fmt;
use std::io;

use actix_http::error::PayloadError;

/// How the caller's request body cut its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerCut {
    /// It went over `max_body_bytes` (the whole body, or one gRPC message).
    OverLimit,
    /// It broke off: the caller reset its stream or went away.
    BrokeOff,
}

/// The error inside the [`PayloadError`] of an answer cut by a request
/// body that broke off.
#[derive(Debug)]
struct BrokeOff;

impl fmt::Display for BrokeOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the caller's request body broke off")
    }
}

impl std::error::Error for BrokeOff {}

impl CallerCut {
    /// The error an answer cut so ends with: [`PayloadError::Overflow`]
    /// for a body over its limit (nothing else in an answer's body makes
    /// one), an I/O error of its own for a body that broke off.
    pub fn error(self) -> PayloadError {
        match self {
            CallerCut::OverLimit => PayloadError::Overflow,
            CallerCut::BrokeOff => PayloadError::Io(io::Error::other(BrokeOff)),
        }
    }

    /// How the caller cut the answer that ended with `error`; `None`: the
    /// replica's doing (or the connection's).
    pub fn of(error: &PayloadError) -> Option<CallerCut> {
        match error {
            PayloadError::Overflow => Some(CallerCut::OverLimit),
            PayloadError::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<BrokeOff>()) => {
                Some(CallerCut::BrokeOff)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cut_is_read_back_from_its_error_and_nothing_else_is() {
        for cut in [CallerCut::OverLimit, CallerCut::BrokeOff] {
            assert_eq!(CallerCut::of(&cut.error()), Some(cut));
        }
        let reset = PayloadError::Io(io::Error::other("connection reset"));
        assert_eq!(CallerCut::of(&reset), None);
        assert_eq!(CallerCut::of(&PayloadError::Incomplete(None)), None);
    }
}
