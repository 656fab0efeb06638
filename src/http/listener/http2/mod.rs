//! The HTTP/2 side of a listener: each HTTP/2 connection (prior knowledge
//! in plain text, `h2` by ALPN over TLS) is served by the listener's own
//! dispatcher on the `h2` crate (`dispatcher.rs`), which advertises the
//! listener's limits in its SETTINGS, passes trailers both ways and sends a
//! GOAWAY when the sidecar stops; its request bodies come off their streams
//! with their trailers (`incoming.rs`). The streams reset on a connection
//! and the heads the `h2` server refuses on its own are counted from the
//! frames written (`written.rs`).
//!
//! What an HTTP/2 request needs before a handler reads it as it reads an
//! HTTP/1.1 one ([`prepare`]): its `:authority` becomes its `Host` (HTTP/2
//! sends no `Host`), so routing, the checks of its head and forwarding
//! treat both alike; `cookie` fields split over several lines are joined
//! into one (RFC 9113, 8.2.3: an HTTP/1.1 replica reads one `Cookie`
//! line); and the streams of its connection still waiting for their answer
//! are counted, so one connection cannot start unbounded work (the flood
//! guard of `http2_max_concurrent_streams`, which `check_head` applies,
//! beside the SETTINGS limit that a client resetting its streams escapes).
//!
//! The `h2` server itself refuses what HTTP/2 forbids in a request
//! (connection-specific headers such as `Connection` or
//! `Transfer-Encoding`, a `te` other than `trailers`, a body longer or
//! shorter than its `Content-Length`) by resetting the stream.

mod dispatcher;
mod incoming;
mod written;

pub use dispatcher::{serve, Settings};
pub use written::{TakenIn, WrittenCounters, WrittenFrames};

use std::cell::Cell;
use std::rc::Rc;

use actix_http::header::{HeaderMap, HeaderValue, COOKIE, HOST};
use actix_http::uri::{Parts, Uri};
use actix_http::RequestHead;
use actix_web::web::BytesMut;

/// The streams of one HTTP/2 connection whose answer head has not gone out
/// yet; kept in the connection's data.
#[derive(Debug, Clone, Default)]
pub struct Streams(Rc<Cell<u32>>);

impl Streams {
    /// How many streams of the connection wait for their answer, the one
    /// asking included.
    pub fn waiting(&self) -> u32 {
        self.0.get()
    }

    /// A stream's handler starts: it waits until the guard is dropped.
    /// Counted when the handler first runs, not when the stream arrives:
    /// the server takes in every stream a read brought before it runs any
    /// of their handlers.
    pub fn enter(&self) -> Waiting {
        self.0.set(self.0.get() + 1);
        Waiting(self.clone())
    }
}

/// One stream's place among its connection's [`Streams`], left when
/// dropped (its answer head is ready).
pub struct Waiting(Streams);

impl Drop for Waiting {
    fn drop(&mut self) {
        let streams = &self.0 .0;
        streams.set(streams.get().saturating_sub(1));
    }
}

/// Prepares the head of an HTTP/2 request for the handlers (see the
/// module doc).
pub fn prepare(head: &mut RequestHead) {
    authority_as_host(head);
    join_cookies(&mut head.headers);
}

/// Moves the `:authority` of `head` to its `Host` and leaves the target in
/// origin form (`/path?query`), as an HTTP/1.1 client sends it. A `Host`
/// that names another authority is kept beside the absolute target, for
/// `check_head` to refuse (RFC 9113, 8.3.1).
fn authority_as_host(head: &mut RequestHead) {
    let Some(authority) = head.uri.authority() else {
        return;
    };
    match head.headers.get(HOST) {
        Some(host)
            if !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            return;
        }
        Some(_) => {}
        None => {
            let Ok(host) = HeaderValue::from_str(authority.as_str()) else {
                return;
            };
            head.headers.insert(HOST, host);
        }
    }
    let mut parts = Parts::default();
    parts.path_and_query = head.uri.path_and_query().cloned();
    if let Ok(target) = Uri::from_parts(parts) {
        head.uri = target;
    }
}

/// Joins the `cookie` fields of `headers` into one, separated by `"; "`,
/// when there are several.
fn join_cookies(headers: &mut HeaderMap) {
    let cookies = headers.get_all(COOKIE).as_slice();
    if cookies.len() < 2 {
        return;
    }
    let mut joined = BytesMut::new();
    for (i, cookie) in cookies.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(cookie.as_bytes());
    }
    if let Ok(joined) = HeaderValue::from_maybe_shared(joined.freeze()) {
        headers.insert(COOKIE, joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::{Method, Version};

    fn http2_request(target: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut head = RequestHead::default();
        head.method = Method::GET;
        head.version = Version::HTTP_2;
        head.uri = target.parse().expect("a valid target");
        for (name, value) in headers {
            head.headers.append(
                name.parse().expect("a valid name"),
                HeaderValue::from_str(value).expect("a valid value"),
            );
        }
        head
    }

    #[test]
    fn the_authority_becomes_the_host() {
        let mut req = http2_request("http://budgeting:8080/a?b=1", &[]);
        prepare(&mut req);
        assert_eq!(req.uri.to_string(), "/a?b=1");
        assert_eq!(req.headers.get(HOST).expect("host"), "budgeting:8080");
    }

    #[test]
    fn a_host_naming_another_authority_is_left_for_check_head() {
        let mut req = http2_request("http://budgeting/a", &[("host", "admin")]);
        prepare(&mut req);
        assert_eq!(req.uri.to_string(), "http://budgeting/a");
        let mut req = http2_request("http://budgeting/a", &[("host", "Budgeting")]);
        prepare(&mut req);
        assert_eq!(req.uri.to_string(), "/a", "the same authority");
    }

    #[test]
    fn cookie_fields_are_joined() {
        let mut req = http2_request("http://a/", &[("cookie", "a=1"), ("cookie", "b=2")]);
        prepare(&mut req);
        let cookies: Vec<_> = req.headers.get_all(COOKIE).collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }
}
