//! Turning a caller's request headers into the replica's, as every proxied
//! request does (hop-by-hop headers and those named in `Connection` dropped,
//! `X-Forwarded-*`, `x-request-id` and `traceparent` set), against a naive
//! copy that clones every header into a map of strings, removes the
//! hop-by-hop ones and builds the outgoing map from what is left.

mod support;

use std::collections::HashMap;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::test::TestRequest;
use actix_web::HttpRequest;
use outrigger::http::forward::{copy_request_headers, HeaderPlan};
use outrigger::trace::Tracer;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// What the naive copy forwards: every header but the hop-by-hop ones,
/// those named in `Connection`, `Host` and `Content-Length`.
fn naive_copy(req: &HttpRequest) -> HeaderMap {
    let mut all: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in req.headers().iter() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        all.entry(name.as_str().to_string())
            .or_default()
            .push(value);
    }
    let named: Vec<String> = all
        .get("connection")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    all.retain(|name, _| {
        !HOP_BY_HOP.contains(&name.as_str())
            && !named.contains(name)
            && name != "host"
            && name != "content-length"
    });
    let mut out = HeaderMap::new();
    for (name, values) in all {
        for value in values {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                out.append(name, value);
            }
        }
    }
    out
}

/// A browser-like request with a keep-alive `Connection`, a cookie and a
/// header the caller marked hop-by-hop.
fn request() -> HttpRequest {
    TestRequest::get()
        .uri("/api/v1/items?page=2")
        .insert_header(("host", "127.0.0.1:15001"))
        .insert_header((
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101",
        ))
        .insert_header(("accept", "application/json, text/plain, */*"))
        .insert_header(("accept-encoding", "gzip, deflate, br"))
        .insert_header(("accept-language", "en-GB,en;q=0.5"))
        .insert_header(("cookie", "session=4f1b2c3d4e5f; theme=dark"))
        .insert_header(("connection", "keep-alive, x-hop"))
        .insert_header(("keep-alive", "timeout=5"))
        .insert_header(("x-hop", "1"))
        .insert_header((
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .peer_addr("10.1.2.3:40000".parse().expect("address"))
        .to_http_request()
}

fn main() {
    let bench = support::Bench::from_args();
    let req = request();
    let hop = Tracer { sample_rate: 0.0 }.hop(req.headers());
    let plan = HeaderPlan {
        trace: Some(&hop),
        ..HeaderPlan::default()
    };
    let id = HeaderValue::from_static("0b7e6c1e-8f4a-4c43-9d6f-1d2a3b4c5d6e");
    let ours = || {
        let mut out = HeaderMap::new();
        copy_request_headers(&req, &mut out, &plan, &id);
        out
    };
    let forwarded = ours();
    let naive = naive_copy(&req);
    for (name, value) in naive.iter() {
        if *name != "traceparent" {
            assert_eq!(forwarded.get(name), Some(value), "{name} forwarded as is");
        }
    }
    for added in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
        "traceparent",
    ] {
        assert!(forwarded.contains_key(added), "{added} set");
    }
    let dropped = ["connection", "keep-alive", "x-hop", "host"];
    assert!(dropped.iter().all(|name| !forwarded.contains_key(*name)));
    assert_eq!(
        forwarded.len(),
        naive.len() + 3,
        "the caller's, plus the sidecar's"
    );
    bench.compare("request headers, 10 in (browser-like)", ours, || {
        naive_copy(&req)
    });
}
