//! Hostile clients: request heads that could be read two ways are refused
//! with 400 and the connection closed, and never reach the upstream; heads
//! and bodies over the listener's limits get 431 and 413; clients that send
//! their head slowly are cut off while others are served; thousands of idle
//! connections are held without running out of descriptors; paths a
//! normalising server would read as another path are refused on both
//! listeners.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::apps::Nginx;
use support::client::get_json;
use support::eventually::eventually;
use support::process::SidecarProcess;
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from};

/// A sidecar whose outbound listener routes `/api/...` and whose inbound
/// listener forwards to the same upstream; `limits` is YAML added to both
/// listeners' sections.
async fn sidecar_before(upstream: &Replica, limits: &str) -> outrigger::Sidecar {
    let yaml = format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" {limits} }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{app}\" {limits} }}
inbound:
  auth: {{ exempt: [/api] }}
services:
  - {{ name: api, endpoints: [\"{app}\"], retry: {{ attempts: 1 }} }}
",
        app = upstream.endpoint()
    );
    sidecar_from(&yaml, &[]).await
}

/// What came back on one connection for raw request bytes.
struct Exchange {
    /// The status of the first answer, when one came.
    status: Option<u16>,
    /// The whole answer as text.
    text: String,
    /// The sidecar closed the connection (EOF or reset) within the wait.
    closed: bool,
}

impl Exchange {
    fn json(&self) -> Value {
        let body = self
            .text
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body);
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        let head = self
            .text
            .split_once("\r\n\r\n")
            .map_or("", |(head, _)| head);
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` (no `Connection: close`: closing is the sidecar's job)
/// and reads until the sidecar closes or `wait` passes.
fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Exchange {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request).expect("write");
    read_answer(&mut stream, wait)
}

fn read_answer(stream: &mut TcpStream, wait: Duration) -> Exchange {
    let deadline = Instant::now() + wait;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(_) => break true,
        }
    };
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Exchange {
        status,
        text,
        closed,
    }
}

/// Request heads a front proxy and a server could frame differently, or
/// that carry bytes an app could read two ways; each must be refused.
const SMUGGLING: &[(&str, &[u8])] = &[
    (
        "Content-Length and Transfer-Encoding",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    ),
    (
        "Transfer-Encoding before Content-Length",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
    ),
    (
        "two differing Content-Length",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "two equal Content-Length",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "a Content-Length list",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nContent-Length: 5, 5\r\n\r\nhello",
    ),
    (
        "a signed Content-Length",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "Transfer-Encoding: xchunked",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding: gzip, chunked",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding: identity",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: identity\r\n\r\nhello",
    ),
    (
        "two Transfer-Encoding",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer_Encoding, which underscore-folding servers read as Transfer-Encoding",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Content--Length",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nContent--Length: 5\r\n\r\nhello",
    ),
    (
        "a space before the colon",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        b"POST /api/a HTTP/1.0\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "an obs-fold continuation line",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-Folded: a\r\n b\r\n\r\n",
    ),
    (
        "Transfer-Encoding folded onto the next line",
        b"POST /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "bare LF line endings",
        b"GET /api/a HTTP/1.1\nHost: api\n\n",
    ),
    (
        "one bare LF among CRLFs",
        b"GET /api/a HTTP/1.1\r\nHost: api\nX-Smuggled: 1\r\n\r\n",
    ),
    (
        "a bare LF ending the head",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\n\n",
    ),
    (
        "a bare CR inside a value",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-A: a\rX-B: b\r\n\r\n",
    ),
    (
        "a NUL in a header value",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-A: a\x00b\r\n\r\n",
    ),
    (
        "a control character in a header value",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-A: a\x01b\r\n\r\n",
    ),
    (
        "DEL in a header value",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-A: a\x7fb\r\n\r\n",
    ),
    (
        "invalid UTF-8 in a header value",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-Name: caf\xe9\r\n\r\n",
    ),
    (
        "an absolute-form target naming another host",
        b"GET http://api/api/a HTTP/1.1\r\nHost: admin.internal\r\n\r\n",
    ),
    (
        "an absolute-form target without a Host",
        b"GET http://api/api/a HTTP/1.1\r\n\r\n",
    ),
    (
        "two Host headers",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nHost: admin.internal\r\n\r\n",
    ),
    ("HTTP/1.1 without a Host", b"GET /api/a HTTP/1.1\r\n\r\n"),
    (
        "a GET with a chunked body",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "a HEAD with a Content-Length body",
        b"HEAD /api/a HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "a space in a header name",
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nX Smuggled: 1\r\n\r\n",
    ),
];

/// Sends every smuggling vector to `addr`: each gets 400 and a closed
/// connection; returns the vectors that did not.
fn refused_everywhere(addr: SocketAddr, listener: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, request) in SMUGGLING {
        let answer = exchange(addr, request, Duration::from_secs(3));
        if answer.status != Some(400) || !answer.closed {
            failures.push(format!(
                "{listener}: {name}: status {:?}, closed {}: {:?}",
                answer.status,
                answer.closed,
                answer.text.lines().next()
            ));
        }
    }
    failures
}

#[actix_rt::test]
async fn smuggling_vectors_are_refused_and_never_reach_the_upstream() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, "").await;
    let inbound = sidecar.inbound_addr().expect("inbound");
    let mut failures = refused_everywhere(sidecar.outbound_addr(), "outbound");
    failures.extend(refused_everywhere(inbound, "inbound"));
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    assert_eq!(upstream.hits(), 0, "no vector reached the upstream");
    assert_eq!(
        upstream.connections(),
        0,
        "the upstream was not even connected to"
    );
    // The same path, well formed, goes through on both listeners.
    let ok = exchange(
        sidecar.outbound_addr(),
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(ok.status, Some(200), "{}", ok.text);
    let ok = exchange(
        inbound,
        b"GET /api/a HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(ok.status, Some(200), "{}", ok.text);
    assert_eq!(upstream.hits(), 2);
}

#[actix_rt::test]
async fn our_own_refusals_are_json_with_a_reason() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, "").await;
    for (request, reason) in [
        (
            &b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-Name: caf\xe9\r\n\r\n"[..],
            "bad_request",
        ),
        (
            b"GET http://api/api/a HTTP/1.1\r\nHost: admin.internal\r\n\r\n",
            "bad_request",
        ),
    ] {
        let answer = exchange(sidecar.outbound_addr(), request, Duration::from_secs(3));
        assert_eq!(answer.status, Some(400), "{}", answer.text);
        assert_eq!(answer.header("x-outrigger"), Some(reason));
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(
            answer.json()["error"].as_str().is_some(),
            "a JSON error: {}",
            answer.text
        );
    }
    assert_eq!(upstream.hits(), 0);
}

/// Paths with dot-segments, spelled plainly or escaped, and the other
/// spellings nginx resolves to `/admin/secret`.
const DOT_SEGMENT_BYPASSES: &[&str] = &[
    "/public/../admin/secret",
    "/public/%2e%2e/admin/secret",
    "/public/%2E%2E/admin/secret",
    "/public/..%2fadmin/secret",
    "/public//../admin/secret",
    "/health/../admin/secret",
];

#[actix_rt::test]
async fn dot_segments_cannot_reach_a_protected_path_through_an_exempt_one() {
    let nginx = Nginx::start(
        r#"location /public/ { return 200 "public: $request_uri"; }
    location /admin/ { return 200 "admin secret"; }
    location / { return 404; }"#,
    )
    .await;
    let yaml = format!(
        "{}
inbound:
  auth:
    exempt: [/public, /health]
    api_keys: {{ header: x-api-key }}
",
        listeners_with_inbound(nginx.endpoint())
    );
    let sidecar = sidecar_from(&yaml, &[("OUTRIGGER_API_KEYS", "ops:k3y")]).await;
    let inbound = sidecar.inbound_addr().expect("inbound");
    let get = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        exchange(inbound, request.as_bytes(), Duration::from_secs(5))
    };
    assert_eq!(get("/admin/secret").status, Some(401), "the protected path");
    for path in DOT_SEGMENT_BYPASSES {
        let answer = get(path);
        assert_eq!(answer.status, Some(400), "{path}: {}", answer.text);
        assert_eq!(answer.header("x-outrigger"), Some("bad_request"), "{path}");
        assert!(!answer.text.contains("admin secret"), "{path} was served");
    }
    // Escaped unreserved characters are the same path: matched and
    // forwarded decoded.
    let answer = get("/p%75blic/a%2Db");
    assert_eq!(answer.status, Some(200), "{}", answer.text);
    assert!(
        answer.text.ends_with("public: /public/a-b"),
        "{}",
        answer.text
    );
}

#[actix_rt::test]
async fn the_outbound_listener_routes_by_the_path_it_forwards() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, "").await;
    for path in [
        "/api/../other/x",
        "/api/%2e%2e/other/x",
        "/api/..%2Fother/x",
    ] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let answer = exchange(
            sidecar.outbound_addr(),
            request.as_bytes(),
            Duration::from_secs(5),
        );
        assert_eq!(answer.status, Some(400), "{path}: {}", answer.text);
    }
    assert_eq!(upstream.hits(), 0, "an ambiguous path reached the replica");
}

#[actix_rt::test]
async fn heads_over_the_limit_get_431_and_never_reach_the_upstream() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, ", max_header_bytes: 8192").await;
    let head_with =
        |header: &str| format!("GET /api/a HTTP/1.1\r\nHost: api\r\n{header}\r\n\r\n").into_bytes();
    for addr in [
        sidecar.outbound_addr(),
        sidecar.inbound_addr().expect("inbound"),
    ] {
        // Under our limit: served.
        let fits = head_with(&format!("X-Big: {}\r\nConnection: close", "a".repeat(7000)));
        assert_eq!(
            exchange(addr, &fits, Duration::from_secs(5)).status,
            Some(200)
        );
        // Over ours, under the parser's 128 KiB: our JSON 431.
        let over = exchange(
            addr,
            &head_with(&format!("X-Big: {}", "a".repeat(9000))),
            Duration::from_secs(5),
        );
        assert_eq!(over.status, Some(431), "{}", over.text);
        assert_eq!(over.header("x-outrigger"), Some("headers_too_large"));
        assert!(over.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_header_bytes 8192")));
        assert!(over.closed);
        // Over the parser's head buffer: its own 431, connection closed.
        let huge = exchange(
            addr,
            &head_with(&format!("X-Big: {}", "a".repeat(140 * 1024))),
            Duration::from_secs(5),
        );
        assert_eq!(huge.status, Some(431), "{}", huge.text);
        assert!(huge.closed);
        // More than the parser's 96 header slots: 431, connection closed.
        let many: String = (0..100).map(|i| format!("X-H{i}: {i}\r\n")).collect();
        let many = exchange(addr, &head_with(many.trim_end()), Duration::from_secs(5));
        assert_eq!(many.status, Some(431), "{}", many.text);
        assert!(many.closed);
    }
    assert_eq!(upstream.hits(), 2, "only the two heads that fit");
}

#[actix_rt::test]
async fn bodies_over_the_limit_get_413_without_blaming_the_replica() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, ", max_body_bytes: 1000").await;
    for addr in [
        sidecar.outbound_addr(),
        sidecar.inbound_addr().expect("inbound"),
    ] {
        // A Content-Length over the limit: 413 before anything is forwarded.
        let announced = exchange(
            addr,
            b"POST /api/upload HTTP/1.1\r\nHost: api\r\nContent-Length: 1001\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_eq!(announced.status, Some(413), "{}", announced.text);
        assert_eq!(announced.header("x-outrigger"), Some("body_too_large"));
        assert!(announced.closed);
    }
    assert_eq!(upstream.connections(), 0, "nothing was forwarded");
    for addr in [
        sidecar.outbound_addr(),
        sidecar.inbound_addr().expect("inbound"),
    ] {
        // At the limit: forwarded whole.
        let mut fits = b"POST /api/upload HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n".to_vec();
        fits.extend_from_slice(&[b'x'; 1000]);
        let fits = exchange(addr, &fits, Duration::from_secs(5));
        assert_eq!(fits.status, Some(200), "{}", fits.text);
        assert_eq!(fits.json()["body_bytes"], 1000);
    }
    assert_eq!(upstream.hits(), 2);
    for addr in [
        sidecar.outbound_addr(),
        sidecar.inbound_addr().expect("inbound"),
    ] {
        // A chunked body that crosses the limit: cut, 413.
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(
                b"POST /api/upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .expect("head");
        let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
        for _ in 0..3 {
            if stream.write_all(chunk.as_bytes()).is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let cut = read_answer(&mut stream, Duration::from_secs(5));
        assert_eq!(cut.status, Some(413), "{}", cut.text);
        assert_eq!(cut.header("x-outrigger"), Some("body_too_large"));
        assert!(cut.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_body_bytes 1000")));
        assert!(cut.closed);
    }
    let admin = format!("http://{}", sidecar.admin_addr());
    let (_, breakers) = get_json(&format!("{admin}/circuit-breakers")).await;
    let replica = format!("api/{}", upstream.endpoint());
    assert_eq!(
        breakers["circuit_breakers"][&replica]["total_failures"], 0,
        "a client's oversized body is not the replica's failure: {breakers}"
    );
}

/// One client sending its head a byte at a time, every `pace`, until the
/// sidecar closes the connection; returns how long it was kept.
async fn dribble(addr: SocketAddr, pace: Duration, give_up: Duration) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-Slow: ")
        .await
        .ok()?;
    let mut buffer = [0u8; 1024];
    while started.elapsed() < give_up {
        match tokio::time::timeout(pace, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {} // the sidecar's 408, before it closes
            Err(_) => {
                if stream.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[actix_rt::test]
async fn slow_header_senders_are_cut_off_while_others_are_served() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, ", client_header_timeout: 1s").await;
    let addr = sidecar.outbound_addr();
    let slow: Vec<_> = (0..200)
        .map(|_| {
            actix_rt::spawn(dribble(
                addr,
                Duration::from_millis(200),
                Duration::from_secs(10),
            ))
        })
        .collect();
    // While they dribble, an ordinary client is served at once.
    let started = Instant::now();
    let url = format!("http://{addr}/api/a");
    assert_eq!(support::client::status_of(&url).await, Some(200));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "served in {took:?}");
    let mut kept = Vec::new();
    for task in slow {
        kept.push(task.await.expect("task").expect("closed by the sidecar"));
    }
    let longest = kept.iter().max().copied().unwrap_or_default();
    let shortest = kept.iter().min().copied().unwrap_or_default();
    assert!(
        shortest >= Duration::from_millis(900),
        "cut at the header timeout, not before: {shortest:?}"
    );
    assert!(longest < Duration::from_secs(5), "all cut by {longest:?}");
    assert_eq!(upstream.hits(), 1, "no slow head was forwarded");
}

/// Connects `count` clients that send nothing, 100 at a time.
async fn idle_clients(addr: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut idle = Vec::with_capacity(count);
    while idle.len() < count {
        let batch = (count - idle.len()).min(100);
        let connects = (0..batch).map(|_| tokio::net::TcpStream::connect(addr));
        for stream in futures_util::future::join_all(connects).await {
            idle.push(stream.expect("connect an idle client"));
        }
    }
    idle
}

/// Sends a request on `stream`; the status of its answer within `wait`.
async fn served_on(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /api/a HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .ok()?;
    let mut buffer = [0u8; 1024];
    let n = tokio::time::timeout(wait, stream.read(&mut buffer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
    text.get(9..12)?.parse().ok()
}

#[actix_rt::test]
async fn two_thousand_idle_connections_are_held_and_a_new_client_is_served() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, ", client_header_timeout: 1m").await;
    let addr = sidecar.outbound_addr();
    let mut idle = idle_clients(addr, 2000).await;
    let url = format!("http://{addr}/api/a");
    assert_eq!(support::client::status_of(&url).await, Some(200));
    // The idle ones were held open, not dropped: the first, middle and
    // last are served when they finally ask.
    for index in [0, 1000, 1999] {
        assert_eq!(
            served_on(&mut idle[index], Duration::from_secs(5)).await,
            Some(200),
            "idle #{index}"
        );
    }
    assert_eq!(upstream.hits(), 4);
}

/// The real binary, so that its descriptors and the test's own are
/// counted apart: each side holds 10,000.
#[actix_rt::test]
async fn ten_thousand_idle_connections_are_held_by_the_binary() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the test's open-files limit");
    let upstream = Replica::start().await;
    let sidecar = SidecarProcess::start(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    ))
    .await;
    let started = Instant::now();
    let mut idle = idle_clients(sidecar.outbound, 10_000).await;
    let connecting = started.elapsed();
    assert!(
        connecting < Duration::from_secs(8),
        "connecting took {connecting:?}, near client_header_timeout (10 s)"
    );
    // Its own descriptors (listeners, pollers, log) are about 30 more; the
    // admin check's connection may or may not still be open.
    eventually("the sidecar holds the idle connections", || async {
        sidecar.open_files() >= 10_000
    })
    .await;
    let url = format!("http://{}/api/a", sidecar.outbound);
    assert_eq!(support::client::status_of(&url).await, Some(200));
    // Served on one of them too (the newest: `client_header_timeout`
    // closes idle ones 10 s after they connected).
    assert_eq!(
        served_on(&mut idle[9_999], Duration::from_secs(5)).await,
        Some(200)
    );
    assert_eq!(upstream.hits(), 2);
}

#[actix_rt::test]
async fn past_max_connections_new_clients_wait_until_a_slot_frees() {
    let upstream = Replica::start().await;
    let sidecar =
        sidecar_before(&upstream, ", max_connections: 5, client_header_timeout: 1m").await;
    let addr = sidecar.outbound_addr();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let idle = idle_clients(addr, 5 * workers + 5).await;
    let mut waiting = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(
        served_on(&mut waiting, Duration::from_secs(1)).await,
        None,
        "every worker holds max_connections"
    );
    drop(idle);
    let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(
        served_on(&mut next, Duration::from_secs(5)).await,
        Some(200),
        "served once slots freed"
    );
}

#[actix_rt::test]
async fn a_slow_later_head_on_a_kept_alive_connection_is_cut_off_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, ", client_header_timeout: 1s, keep_alive: 30s").await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.outbound_addr())
        .await
        .expect("connect");
    assert_eq!(
        served_on(&mut stream, Duration::from_secs(5)).await,
        Some(200)
    );
    // The parser times only a connection's first head; the next one is ours.
    let started = Instant::now();
    stream
        .write_all(b"GET /api/a HTTP/1.1\r\nHost: api\r\nX-Slow: ")
        .await
        .expect("write");
    let mut buffer = [0u8; 1024];
    let closed = loop {
        if started.elapsed() > Duration::from_secs(10) {
            break None;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => {
                if stream.write_all(b"a").await.is_err() {
                    break Some(started.elapsed());
                }
            }
        }
    };
    let closed = closed.expect("closed by the sidecar");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "cut at the header timeout: {closed:?}"
    );
    assert_eq!(upstream.hits(), 1, "the slow head was not forwarded");
}

/// Chunk-size lines the chunked grammar does not allow: each is refused
/// with 400 before anything reaches the replica.
const BAD_CHUNK_SIZES: &[(&str, &[u8])] = &[
    ("a bare LF", b"5\nhello\r\n0\r\n\r\n"),
    ("a negative size", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("a size with a non-hex digit", b"5g\r\nhello\r\n0\r\n\r\n"),
    (
        "a size past 64 bits",
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
    ),
];

#[actix_rt::test]
async fn malformed_chunk_sizes_get_400_and_never_reach_the_replica() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, "").await;
    let inbound = sidecar.inbound_addr().expect("inbound");
    let mut failures = Vec::new();
    for addr in [sidecar.outbound_addr(), inbound] {
        for (name, body) in BAD_CHUNK_SIZES {
            let mut request =
                b"POST /api/upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            request.extend_from_slice(body);
            let answer = exchange(addr, &request, Duration::from_secs(3));
            if answer.status != Some(400)
                || answer.header("x-outrigger") != Some("bad_request")
                || !answer.closed
            {
                failures.push(format!(
                    "{addr}: {name}: status {:?}, closed {}: {:?}",
                    answer.status, answer.closed, answer.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    assert_eq!(upstream.connections(), 0, "nothing reached the replica");
}

#[actix_rt::test]
async fn a_chunk_size_over_the_body_limit_gets_413_before_forwarding() {
    let upstream = Replica::start().await;
    let unlimited = sidecar_before(&upstream, "").await;
    let limited = sidecar_before(&upstream, ", max_body_bytes: 1000").await;
    let cases: [(SocketAddr, &[u8]); 4] = [
        // 16 EiB: more than any body limit, and more than a body can be.
        (unlimited.outbound_addr(), b"FFFFFFFFFFFFFFFF\r\nhello"),
        (
            unlimited.inbound_addr().expect("inbound"),
            b"FFFFFFFFFFFFFFFF\r\nhello",
        ),
        // One byte over max_body_bytes in a single chunk.
        (limited.outbound_addr(), b"3e9\r\nhello"),
        (limited.inbound_addr().expect("inbound"), b"3e9\r\nhello"),
    ];
    for (addr, body) in cases {
        let mut request =
            b"POST /api/upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        request.extend_from_slice(body);
        let answer = exchange(addr, &request, Duration::from_secs(3));
        assert_eq!(answer.status, Some(413), "{addr}: {}", answer.text);
        assert_eq!(answer.header("x-outrigger"), Some("body_too_large"));
        assert!(answer.closed);
    }
    assert_eq!(upstream.connections(), 0, "nothing reached the replica");
}

#[actix_rt::test]
async fn after_a_refusal_on_a_pipelined_connection_the_answers_before_it_are_read_whole() {
    let upstream = Replica::start().await;
    let sidecar = sidecar_before(&upstream, "").await;
    for addr in [
        sidecar.outbound_addr(),
        sidecar.inbound_addr().expect("inbound"),
    ] {
        let mut stream = TcpStream::connect(addr).expect("connect");
        // An ordinary request, one refused (a chunk-size the grammar does
        // not allow), and bytes after it the sidecar never reads.
        let mut requests = b"GET /api/first HTTP/1.1\r\nHost: api\r\n\r\n\
POST /api/second HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n"
            .to_vec();
        requests.extend_from_slice(&[b'z'; 256 * 1024]);
        // The sidecar may close before it takes the tail: what matters is what it sends.
        let _ = stream.write_all(&requests);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        let end = loop {
            match stream.read(&mut buffer) {
                Ok(0) => break Ok(()),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(err) => break Err(err),
            }
        };
        let text = String::from_utf8_lossy(&answer);
        assert!(
            end.is_ok(),
            "{addr}: the connection ended in {end:?}, not a clean close, after {text:?}"
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{addr}: {text}");
        assert!(text.contains("first"), "{addr}: {text}");
        assert!(text.contains("HTTP/1.1 400"), "{addr}: {text}");
    }
}
