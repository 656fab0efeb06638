//! A message's trailers (RFC 9110, 6.5): header fields sent after its body,
//! such as gRPC's `grpc-status`. HTTP/2 carries them in a last HEADERS
//! frame; they are known only once the body has ended, so a message that
//! may have some carries a [`Trailers`] slot, filled by whoever reads the
//! body to its end and read by whoever sends the message on after its body.
//! A request's slot is in its extensions (put there by the HTTP/2
//! listener), an answer's in the response's (put there by `forward` for an
//! answer from an HTTP/2 replica). An HTTP/1 peer gets no trailers: the
//! HTTP/1 path never looks for a slot.

use std::cell::RefCell;
use std::rc::Rc;

use http::HeaderMap;

/// The trailers of one message, filled when its body ends (shared between
/// the body's reader and the message's sender).
#[derive(Debug, Clone, Default)]
pub struct Trailers(Rc<RefCell<Option<HeaderMap>>>);

impl Trailers {
    /// The body ended with `trailers`.
    pub fn fill(&self, trailers: HeaderMap) {
        *self.0.borrow_mut() = Some(trailers);
    }

    /// Whether the body ended with trailers (still in the slot).
    pub fn is_filled(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// A copy of the trailers, once the body ended with some (a request
    /// body sent again on a retry sends them again).
    pub fn get(&self) -> Option<HeaderMap> {
        self.0.borrow().clone()
    }

    /// The trailers, once the body ended with some; the slot is empty after.
    pub fn take(&self) -> Option<HeaderMap> {
        self.0.borrow_mut().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_slot_is_shared_by_its_clones_and_empty_once_taken() {
        let slot = Trailers::default();
        let reader = slot.clone();
        assert!(slot.take().is_none());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        reader.fill(trailers);
        let taken = slot.take().and_then(|t| t.get("grpc-status").cloned());
        assert_eq!(taken, Some(HeaderValue::from_static("0")));
        assert!(reader.take().is_none());
    }
}
