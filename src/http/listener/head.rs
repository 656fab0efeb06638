//! The strict checks every request head passes before it is routed, on top
//! of what the HTTP parser already refuses (see SECURITY.md, "HTTP parsing"):
//! the head's size, header values that are not UTF-8, header names that
//! spell a framing header with other separators, header names with `_` that
//! a CGI-style app reads as a header the sidecar sets, a `Content-Length` over
//! the body limit (but for a gRPC call over HTTP/2, whose limit is per
//! message), a `GET` or `HEAD` that declares a body, and an
//! absolute-form target whose authority is not the `Host`; and, on an
//! HTTP/2 connection, a stream past the connection's
//! `http2_max_concurrent_streams`. One pass over the parsed headers;
//! nothing is allocated unless the target is in absolute form.

use actix_web::http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use actix_web::http::uri::{Authority, Uri};
use actix_web::http::Method;
use actix_web::HttpRequest;

use super::body::BodyLimit;
use super::connection::connection_data;
use super::http2::Streams;
use crate::config::ListenerLimits;
use crate::error::ProxyError;

/// `": "` between name and value and the line's CRLF.
const HEADER_LINE_OVERHEAD: usize = 4;
/// `" HTTP/1.1\r\n"` after the target, and the space before it.
const REQUEST_LINE_OVERHEAD: usize = 12;

/// Refuses a request head that breaks `limits` or could be read two ways:
/// 431 when the request line and headers exceed `max_header_bytes`, 413
/// when `Content-Length` exceeds `max_body_bytes` where `body_limit` says
/// it bounds the whole body (a gRPC call over HTTP/2 is held to it message
/// by message as it streams), 400 for a header value
/// that is not valid UTF-8, for a framing-header lookalike
/// (`Transfer_Encoding`), for an underscore spelling of a header the sidecar
/// sets or rules on (`x_outrigger_user`, `x_forwarded_for`), for a `GET` or `HEAD` that declares a body
/// (`Transfer-Encoding`, or a `Content-Length` other than 0: such a body has
/// no meaning, and servers disagree on whether to read it) and for an
/// absolute-form target
/// (`GET http://a/ HTTP/1.1`) whose authority differs from `Host`; 429 for
/// a request on an HTTP/2 connection that already has
/// `http2_max_concurrent_streams` others waiting for their answer (so a
/// client that resets its streams as fast as it opens them, the rapid reset
/// attack, starts no more work than that at once).
pub fn check_head(
    req: &HttpRequest,
    limits: &ListenerLimits,
    body_limit: BodyLimit,
) -> Result<(), ProxyError> {
    if let Some(streams) = connection_data::<Streams>(req) {
        let waiting = streams.waiting();
        if waiting > limits.http2_max_concurrent_streams {
            return Err(ProxyError::ConcurrencyLimit(format!(
                "this HTTP/2 connection has {} other streams waiting for their answer, the most http2_max_concurrent_streams allows",
                waiting - 1
            )));
        }
    }
    let uri = req.uri();
    let mut size = req.method().as_str().len() + target_len(uri) + REQUEST_LINE_OVERHEAD;
    let (mut not_utf8, mut lookalike, mut alias) = (None, None, None);
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + HEADER_LINE_OVERHEAD;
        let bytes = value.as_bytes();
        if not_utf8.is_none() && !bytes.is_ascii() && std::str::from_utf8(bytes).is_err() {
            not_utf8 = Some(name);
        }
        if lookalike.is_none() && is_framing_lookalike(name.as_str()) {
            lookalike = Some(name);
        }
        if alias.is_none() && aliases_sidecar_header(name.as_str()) {
            alias = Some(name);
        }
    }
    if size > limits.max_header_bytes as usize {
        return Err(ProxyError::HeadersTooLarge(format!(
            "the request line and headers take about {size} bytes, over max_header_bytes {}",
            limits.max_header_bytes
        )));
    }
    if let Some(name) = not_utf8 {
        return Err(ProxyError::BadRequest(format!(
            "the value of header {name} is not valid UTF-8"
        )));
    }
    if let Some(name) = lookalike {
        return Err(ProxyError::BadRequest(format!(
            "header {name} has the letters of Content-Length or Transfer-Encoding; servers that fold '_' or repeated '-' would frame the body by it"
        )));
    }
    if let Some(name) = alias {
        return Err(ProxyError::BadRequest(format!(
            "header {name} reads as a header the sidecar sets or rules on where '_' is taken for '-' (CGI and WSGI apps read both as HTTP_{})",
            name.as_str().replace('-', "_").to_ascii_uppercase()
        )));
    }
    let length = content_length(req);
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        if let Some(framing) = declared_body(req, length) {
            return Err(ProxyError::BadRequest(format!(
                "a {} request has no body, but this one declares one with {framing}",
                req.method()
            )));
        }
    }
    if let (Some(limit), Some(length)) = (limits.max_body_bytes, length) {
        if length > limit && body_limit == BodyLimit::Whole {
            return Err(ProxyError::BodyTooLarge(format!(
                "the request body of {length} bytes (Content-Length) is over max_body_bytes {limit}"
            )));
        }
    }
    if let Some(authority) = uri.authority() {
        let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
        if !host.is_some_and(|host| same_authority(uri, authority, host)) {
            return Err(ProxyError::BadRequest(format!(
                "the request target names {authority} but the Host header is {}",
                host.unwrap_or("missing or unreadable")
            )));
        }
    }
    Ok(())
}

/// Whether `name` (lowercase, as parsed) spells `content-length` or
/// `transfer-encoding` with other separators (`transfer_encoding`,
/// `content--length`) without being it.
fn is_framing_lookalike(name: &str) -> bool {
    const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];
    let letters = |text: &'static str| text.bytes().filter(u8::is_ascii_alphanumeric);
    FRAMING.iter().any(|framing| {
        name != *framing
            && name.len() >= framing.len()
            && name
                .bytes()
                .filter(u8::is_ascii_alphanumeric)
                .eq(letters(framing))
    })
}

/// Whether `name` (lowercase, as parsed) has a `_` and, read with `-` for
/// `_` as CGI and WSGI servers do, is a header the sidecar sets or rules on:
/// `x-outrigger-*` (the caller's identity), `x-forwarded-*`, `x-real-ip`,
/// `x-request-id`. The app would see it beside, or instead of, the
/// sidecar's own.
fn aliases_sidecar_header(name: &str) -> bool {
    const PREFIXES: [&str; 2] = ["x-outrigger-", "x-forwarded-"];
    const NAMES: [&str; 2] = ["x-real-ip", "x-request-id"];
    let reads_as = |name: &[u8], owned: &str| {
        name.iter()
            .zip(owned.bytes())
            .all(|(&byte, owned)| byte == owned || (byte == b'_' && owned == b'-'))
    };
    let bytes = name.as_bytes();
    bytes.contains(&b'_')
        && (PREFIXES
            .iter()
            .any(|prefix| bytes.len() > prefix.len() && reads_as(bytes, prefix))
            || NAMES
                .iter()
                .any(|owned| bytes.len() == owned.len() && reads_as(bytes, owned)))
}

/// The header by which `req` declares a body, if it does: any
/// `Transfer-Encoding`, or a `Content-Length` (`length`, as parsed) other
/// than 0.
fn declared_body(req: &HttpRequest, length: Option<u64>) -> Option<&'static str> {
    if req.headers().contains_key(TRANSFER_ENCODING) {
        Some("Transfer-Encoding")
    } else if length.is_some_and(|length| length > 0) {
        Some("Content-Length")
    } else {
        None
    }
}

/// The length of the request target as it was on the request line.
fn target_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `host` (a Host header) names the same host and port as the
/// target's `authority`, the scheme's default port standing in for none.
fn same_authority(uri: &Uri, authority: &Authority, host: &str) -> bool {
    let Ok(host) = host.parse::<Authority>() else {
        return false;
    };
    let default_port = match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    };
    !host.as_str().contains('@')
        && host.host().eq_ignore_ascii_case(authority.host())
        && host.port_u16().unwrap_or(default_port) == authority.port_u16().unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use actix_web::test::TestRequest;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_header_bytes: 2048,
            max_body_bytes: Some(100),
            ..ListenerLimits::default()
        }
    }

    fn status(req: TestRequest) -> u16 {
        match check_head(&req.to_http_request(), &limits(), BodyLimit::Whole) {
            Ok(()) => 200,
            Err(error) => error.status().as_u16(),
        }
    }

    #[test]
    fn an_ordinary_request_passes() {
        let req = TestRequest::post()
            .uri("/api/v1/items?page=2")
            .insert_header(("host", "budgeting"))
            .insert_header(("x-name", "Zoë"))
            .insert_header(("content-length", "100"));
        assert_eq!(status(req), 200);
    }

    #[test]
    fn a_get_or_head_that_declares_a_body_is_400() {
        for method in [Method::GET, Method::HEAD] {
            let with = |name: &'static str, value: &'static str| {
                TestRequest::default()
                    .method(method.clone())
                    .insert_header((name, value))
            };
            assert_eq!(status(with("transfer-encoding", "chunked")), 400);
            assert_eq!(status(with("content-length", "5")), 400);
            assert_eq!(
                status(with("content-length", "0")),
                200,
                "{method} with an empty body"
            );
        }
        let delete = TestRequest::delete().insert_header(("content-length", "5"));
        assert_eq!(status(delete), 200, "other methods may carry a body");
    }

    #[test]
    fn a_head_over_max_header_bytes_is_431() {
        let just_under = "a".repeat(2048 - 200);
        assert_eq!(
            status(TestRequest::get().insert_header(("x-big", just_under.as_str()))),
            200
        );
        let over = "a".repeat(2048);
        assert_eq!(
            status(TestRequest::get().insert_header(("x-big", over.as_str()))),
            431
        );
        let many = (0..100).fold(TestRequest::get(), |req, i| {
            req.append_header(("x-many", format!("value-{i:04}-padding")))
        });
        assert_eq!(status(many), 431, "many small headers add up");
        let long_target = format!("/{}", "p".repeat(2048));
        assert_eq!(status(TestRequest::get().uri(&long_target)), 431);
    }

    #[test]
    fn a_content_length_over_max_body_bytes_is_413() {
        let req = TestRequest::post().insert_header(("content-length", "101"));
        assert_eq!(status(req), 413);
        let unlimited = ListenerLimits::default();
        let req = TestRequest::post()
            .insert_header(("content-length", "99999999999"))
            .to_http_request();
        assert_eq!(check_head(&req, &unlimited, BodyLimit::Whole), Ok(()));
    }

    #[test]
    fn a_content_length_is_not_held_to_a_limit_that_bounds_each_message() {
        let req = TestRequest::post()
            .insert_header(("content-length", "101"))
            .to_http_request();
        assert_eq!(check_head(&req, &limits(), BodyLimit::EachMessage), Ok(()));
        let refused = check_head(&req, &limits(), BodyLimit::Whole);
        assert_eq!(refused.map_err(|error| error.status().as_u16()), Err(413));
    }

    #[test]
    fn header_values_that_are_not_utf8_are_400() {
        let bad = HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a valid value");
        assert_eq!(
            status(TestRequest::get().insert_header(("x-name", bad))),
            400
        );
        let overlong = HeaderValue::from_bytes(b"\xc0\xaf").expect("value");
        assert_eq!(
            status(TestRequest::get().insert_header(("x-path", overlong))),
            400
        );
    }

    #[test]
    fn framing_header_lookalikes_are_400() {
        for name in [
            "transfer_encoding",
            "transfer---encoding",
            "content_length",
            "-content-length",
        ] {
            assert_eq!(
                status(TestRequest::get().insert_header((name, "chunked"))),
                400,
                "{name}"
            );
        }
        for name in [
            "content-length-x",
            "x-content-length",
            "transfer-encodings",
            "content-type",
        ] {
            assert!(!is_framing_lookalike(name), "{name}");
        }
    }

    #[test]
    fn underscore_spellings_of_the_sidecars_headers_are_400() {
        for name in [
            "x_outrigger_user",
            "x-outrigger_roles",
            "x_forwarded_for",
            "x_forwarded_proto",
            "x_real_ip",
            "x_request_id",
        ] {
            assert_eq!(
                status(TestRequest::get().insert_header((name, "admin"))),
                400,
                "{name}"
            );
        }
        for name in ["x_custom", "x-outrigger-user", "x_outrigger", "x_real_ip_x"] {
            assert_eq!(
                status(TestRequest::get().insert_header((name, "1"))),
                200,
                "{name}"
            );
        }
    }

    #[test]
    fn an_absolute_target_must_name_the_host() {
        let absolute = |target: &str, host: Option<&str>| {
            let req = TestRequest::get().uri(target);
            status(match host {
                Some(host) => req.insert_header(("host", host)),
                None => req,
            })
        };
        assert_eq!(absolute("http://budgeting/a", Some("budgeting")), 200);
        assert_eq!(absolute("http://Budgeting:80/a", Some("budgeting")), 200);
        assert_eq!(
            absolute("http://budgeting:8080/a", Some("budgeting:8080")),
            200
        );
        assert_eq!(absolute("http://budgeting/a", Some("admin")), 400);
        assert_eq!(absolute("http://budgeting/a", Some("budgeting:8080")), 400);
        assert_eq!(absolute("http://budgeting/a", Some("x@budgeting")), 400);
        assert_eq!(absolute("http://budgeting/a", None), 400);
    }
}
