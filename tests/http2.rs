//! HTTP/2 with prior knowledge (h2c, what gRPC clients use for `http://`
//! targets) on both proxy listeners, beside HTTP/1.1 on the same port:
//! curl and h2load as the clients, requests forwarded to HTTP/1.1 replicas
//! and apps with every feature of an HTTP/1.1 request (routing by
//! `:authority` as by `Host`, JWT, rate limits, the GET cache, head and body
//! limits, metrics), the per-connection stream limit, and the protocol
//! detection's wait counted against a slow HTTP/1.1 client's first head
//! (hostile HTTP/2 clients are in `http2_hostile.rs`). Replicas called over HTTP/2
//! (`services[].protocol`): an HTTP/2-only replica reached by HTTP/2 and
//! HTTP/1.1 callers, streams sharing a connection per worker up to the
//! replica's stream limit, a request body and its answer streaming at once,
//! a GOAWAY that drains a connection, a replica
//! killed mid-stream, and the breaker of a dead one.

mod support;

use actix_web::web::Bytes;
use outrigger::Sidecar;
use serde_json::json;
use support::client::get_text;
use support::eventually::eventually;
use support::files::TempDir;
use support::h2_replica::H2Replica;
use support::h2c::{curl, curl_exit, h2c, h2load};
use support::keys::hs256_bearer;
use support::metrics::{metric, metric_sum};
use support::replica::{header_seen, Replica};
use support::sidecar::{listeners_with_inbound, sidecar_from};

/// The outbound listener in front of `replica`, which speaks only
/// HTTP/1.1 (`protocol: http1`: HTTP/2 callers' requests too go out over
/// HTTP/1.1).
fn outbound_config(replica: &Replica, limits: &str) -> String {
    format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\"{limits} }}
  admin: {{ bind: \"127.0.0.1:0\" }}
services:
  - {{ name: budgeting, protocol: http1, endpoints: [\"{}\"] }}",
        replica.endpoint()
    )
}

#[actix_web::test]
async fn the_outbound_listener_takes_http2_and_http1_on_one_port() {
    let replica = Replica::start().await;
    let sidecar = sidecar_from(
        &outbound_config(&replica, ", max_body_bytes: 4096, max_header_bytes: 8192"),
        &[],
    )
    .await;
    let base = format!("http://{}", sidecar.outbound_addr());

    let answer = h2c(
        &format!("{base}/budgeting/items?page=2"),
        &[
            "-H",
            "cookie: a=1",
            "-H",
            "cookie: b=2",
            "-H",
            "te: trailers",
        ],
    )
    .await;
    assert_eq!(answer.status_line, "HTTP/2 200", "{answer:?}");
    assert!(answer.header("x-request-id").is_some());
    let echo = answer.json();
    assert_eq!(echo["path"], "/items");
    assert_eq!(echo["query"], "page=2");
    assert_eq!(
        header_seen(&echo, "host").as_deref(),
        Some(replica.endpoint().as_str()),
        "routed by path: the replica's address is its Host"
    );
    assert_eq!(header_seen(&echo, "cookie").as_deref(), Some("a=1; b=2"));
    assert_eq!(header_seen(&echo, "te"), None, "te is hop-by-hop");
    assert!(header_seen(&echo, "x-request-id").is_some());
    assert!(header_seen(&echo, "traceparent").is_some());

    // :authority routes as Host does, and is passed on as the Host.
    let connect_to = format!("budgeting:80:{}", sidecar.outbound_addr());
    let answer = h2c("http://budgeting/items", &["--connect-to", &connect_to]).await;
    assert_eq!(answer.status_line, "HTTP/2 200", "{answer:?}");
    let echo = answer.json();
    assert_eq!(echo["path"], "/items");
    assert_eq!(header_seen(&echo, "host").as_deref(), Some("budgeting"));
    let answer = h2c(
        "http://nowhere/items",
        &["--connect-to", &connect_to.replace("budgeting", "nowhere")],
    )
    .await;
    assert_eq!(answer.status(), 404);
    assert_eq!(answer.header("x-outrigger"), Some("unknown_service"));

    // A body with a length, and one streamed without (curl reading stdin).
    let answer = h2c(
        &format!("{base}/budgeting/upload"),
        &["--data-binary", &"x".repeat(3000)],
    )
    .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.json()["body_bytes"], 3000);
    let streamed = curl(
        &[
            "--http2-prior-knowledge",
            "-T",
            "-",
            "-X",
            "POST",
            &format!("{base}/budgeting/upload"),
        ],
        Some(vec![b'y'; 2500]),
    )
    .await;
    assert_eq!(streamed.status(), 200, "{streamed:?}");
    assert_eq!(streamed.json()["body_bytes"], 2500);
    // A head over max_header_bytes is refused per stream.
    let big = format!("x-big: {}", "b".repeat(10 * 1024));
    let answer = h2c(&format!("{base}/budgeting/items"), &["-H", &big]).await;
    assert_eq!(answer.status(), 431, "{answer:?}");
    assert_eq!(answer.header("x-outrigger"), Some("headers_too_large"));

    // Over max_body_bytes: refused from its content-length, before a byte
    // of it is read or forwarded.
    let scratch = TempDir::new();
    let large = scratch.path.join("large");
    std::fs::write(&large, vec![b'z'; 10_000]).expect("write the body");
    let url = format!("{base}/budgeting/upload");
    let report = h2load(&url, 1, 1, 1, Some(&large)).await;
    assert_eq!(report.status_4xx, 1, "413: {report:?}");

    // An HTTP/1.1 client on the same port is served as before.
    let answer = curl(&["--http1.1", &format!("{base}/budgeting/items")], None).await;
    assert!(answer.status_line.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(replica.hits(), 5, "the refused body reached no replica");
}

/// Whether the socket of this process whose peer is `peer` sends each
/// write at once (TCP_NODELAY), if there is one: the in-process sidecar's
/// side of a client's connection.
fn sends_at_once(peer: std::net::SocketAddr) -> Option<bool> {
    use std::os::fd::BorrowedFd;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: only read from while borrowed; a descriptor closed or
        // reused meanwhile makes the calls fail or read another socket,
        // whose peer then does not match.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        if socket.peer_addr().ok().and_then(|addr| addr.as_socket()) == Some(peer) {
            return socket.tcp_nodelay().ok();
        }
    }
    None
}

/// The listener turns Nagle's algorithm off on each accepted socket:
/// otherwise an HTTP/2 answer waits while the one before it on the
/// connection waits for its ACK.
#[actix_web::test]
async fn accepted_sockets_send_each_write_at_once() {
    let replica = Replica::start().await;
    let sidecar = sidecar_from(&outbound_config(&replica, ""), &[]).await;
    for http2 in [false, true] {
        let mut client = tokio::net::TcpStream::connect(sidecar.outbound_addr())
            .await
            .expect("connect");
        // The preface and an empty SETTINGS, or a whole HTTP/1.1 request.
        let first: &[u8] = if http2 {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"
        } else {
            b"GET /budgeting/items HTTP/1.1\r\nHost: budgeting\r\n\r\n"
        };
        tokio::io::AsyncWriteExt::write_all(&mut client, first)
            .await
            .expect("write");
        // Its first bytes back (SETTINGS, or the answer) come once the
        // listener has taken the connection in, past where it sets the
        // option: the socket exists from the kernel's accept, before that.
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read_exact(&mut client, &mut byte);
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("served within 5 s")
            .expect("read");
        let mine = client.local_addr().expect("an address");
        assert_eq!(sends_at_once(mine), Some(true), "http2: {http2}");
    }
}

#[actix_web::test]
async fn h2load_streams_many_requests_over_few_connections() {
    let replica = Replica::start().await;
    let sidecar = sidecar_from(&outbound_config(&replica, ""), &[]).await;
    let url = format!("http://{}/budgeting/items", sidecar.outbound_addr());
    // 80 at once, within the service's concurrency.max_in_flight (100).
    let report = h2load(&url, 2000, 4, 20, None).await;
    assert_eq!(report.succeeded, 2000, "{report:?}");
    assert_eq!(report.status_2xx, 2000, "{report:?}");
    assert_eq!(replica.hits(), 2000);
    // Counted in the same series as HTTP/1.1 requests: no protocol label.
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    let labels = [
        ("listener", "outbound"),
        ("service", "budgeting"),
        ("status", "200"),
    ];
    assert_eq!(
        metric_sum(&metrics, "outrigger_http_requests_total", &labels),
        2000.0
    );
}

#[actix_web::test]
async fn streams_past_the_connection_limit_are_refused_at_once() {
    let replica = Replica::start().await;
    replica.delay(std::time::Duration::from_millis(500));
    let limits = ", http2_max_concurrent_streams: 4";
    let sidecar = sidecar_from(&outbound_config(&replica, limits), &[]).await;
    let url = format!("http://{}/budgeting/items", sidecar.outbound_addr());
    // 20 streams at once on one connection, sent before the client has
    // read the SETTINGS that allow 4: those past 4 are refused
    // (REFUSED_STREAM, which a client may retry), and 4 reach the replica.
    let report = h2load(&url, 20, 1, 20, None).await;
    assert_eq!((report.status_2xx, report.failed), (4, 16), "{report:?}");
    assert_eq!(replica.hits(), 4);
    // Another connection is served meanwhile, and so is an HTTP/1.1 client.
    let answer = h2c(&url, &[]).await;
    assert_eq!(answer.status(), 200);
    let answer = curl(&["--http1.1", &url], None).await;
    assert_eq!(answer.status(), 200);
}

fn bearer(user: &str) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 600});
    format!("authorization: {}", hs256_bearer(b"h2-secret", &claims))
}

#[actix_web::test]
async fn the_inbound_listener_takes_http2_with_auth_limits_and_the_cache() {
    let app = Replica::start().await;
    let yaml = format!(
        "{}
inbound:
  auth:
    jwt: {{ algorithms: [HS256] }}
  cache: {{ default_ttl: 60s }}
  rate_limit: {{ window: 1m, default: 3 }}",
        listeners_with_inbound(app.endpoint())
    );
    let sidecar = sidecar_from(&yaml, &[("JWT_SECRET", "h2-secret")]).await;
    let url = format!("http://{}/items", sidecar.inbound_addr().expect("inbound"));

    let refused = h2c(&url, &[]).await;
    assert_eq!(refused.status_line, "HTTP/2 401", "{refused:?}");
    assert_eq!(app.hits(), 0);

    let token = bearer("ana");
    let first = h2c(&url, &["-H", &token]).await;
    assert_eq!(first.status_line, "HTTP/2 200", "{first:?}");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let echo = first.json();
    assert_eq!(
        header_seen(&echo, "x-outrigger-user").as_deref(),
        Some("ana")
    );
    let again = h2c(&url, &["-H", &token]).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.header("x-cache"), Some("HIT"), "{again:?}");
    assert_eq!(app.hits(), 1);

    let http1 = curl(&["--http1.1", "-H", &token, &url], None).await;
    assert!(http1.status_line.starts_with("HTTP/1.1 200"), "{http1:?}");
    assert_eq!(http1.header("x-cache"), Some("HIT"), "one cache for both");
    let limited = h2c(&url, &["-H", &token]).await;
    assert_eq!(
        limited.status(),
        429,
        "one rate limit for both: {limited:?}"
    );
    assert_eq!(limited.header("x-outrigger"), Some("rate_limited"));
}

/// The listener waits for a client's first bytes to tell its protocol; that
/// wait counts against `client_header_timeout` for an HTTP/1.1 client's
/// first head, which is cut as long after connecting as before HTTP/2 was
/// taken (not the timeout again after its first byte).
#[actix_web::test]
async fn the_wait_for_the_first_bytes_counts_against_the_first_head() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let replica = Replica::start().await;
    let limits = ", client_header_timeout: 1s";
    let sidecar = sidecar_from(&outbound_config(&replica, limits), &[]).await;
    let connected = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(sidecar.outbound_addr())
        .await
        .expect("connect");
    // The client is slow on purpose: this is what is timed.
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    slow.write_all(b"GET /budgeting/items HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("the start of a head");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    let cut = connected.elapsed();
    assert!(read.is_ok(), "the connection was closed");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(1300)).contains(&cut),
        "cut {cut:?} after connecting, client_header_timeout 1s"
    );
    assert_eq!(replica.hits(), 0);
}

/// A sidecar with `workers` outbound workers and one service per
/// `(name, protocol, replica)`.
async fn sidecar_for(workers: u32, services: &[(&str, &str, &H2Replica)]) -> Sidecar {
    let services: String = services
        .iter()
        .map(|(name, protocol, replica)| {
            format!(
                "\n  - {{ name: {name}, protocol: {protocol}, endpoints: [\"{}\"] }}",
                replica.endpoint()
            )
        })
        .collect();
    sidecar_from(
        &format!(
            "workers: {workers}
listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
services:{services}"
        ),
        &[],
    )
    .await
}

#[actix_web::test]
async fn an_http2_only_replica_is_called_over_http2_as_the_protocol_says() {
    let replica = H2Replica::start(None);
    let sidecar = sidecar_for(1, &[("same", "auto", &replica), ("h2", "http2", &replica)]).await;
    let base = format!("http://{}", sidecar.outbound_addr());

    // auto: an HTTP/2 caller's request goes out over HTTP/2.
    let answer = h2c(&format!("{base}/same/items?page=2"), &["-H", "x-kept: yes"]).await;
    assert_eq!(answer.status_line, "HTTP/2 200", "{answer:?}");
    let echo = answer.json();
    assert_eq!(echo["path"], "/items");
    assert_eq!(echo["authority"], replica.endpoint());
    assert_eq!(header_seen(&echo, "x-kept").as_deref(), Some("yes"));
    assert!(header_seen(&echo, "x-request-id").is_some());
    let upload = format!("{base}/same/upload");
    let answer = h2c(&upload, &["--data-binary", &"x".repeat(100_000)]).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.json()["body_bytes"], 100_000);

    // http2: an HTTP/1.1 caller's request too, its body streamed.
    let answer = curl(&["--http1.1", &format!("{base}/h2/items")], None).await;
    assert!(answer.status_line.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(answer.json()["path"], "/items");
    let streamed = curl(
        &[
            "--http1.1",
            "-H",
            "expect:",
            "-T",
            "-",
            "-X",
            "POST",
            &format!("{base}/h2/upload"),
        ],
        Some(vec![b'y'; 300_000]),
    )
    .await;
    assert_eq!(streamed.status(), 200, "{streamed:?}");
    assert_eq!(streamed.json()["body_bytes"], 300_000);

    // auto: an HTTP/1.1 caller's request goes out over HTTP/1.1, which this
    // replica does not speak.
    let answer = curl(&["--http1.1", &format!("{base}/same/items")], None).await;
    assert_eq!(answer.status(), 502, "{answer:?}");
    assert_eq!(replica.requests(), 4);
}

#[actix_web::test]
async fn http2_streams_share_a_connection_per_worker_until_the_replica_s_stream_limit() {
    let unlimited = H2Replica::start(None);
    let limited = H2Replica::start(Some(5));
    let sidecar = sidecar_for(
        2,
        &[("wide", "http2", &unlimited), ("narrow", "http2", &limited)],
    )
    .await;
    let base = format!("http://{}", sidecar.outbound_addr());

    // 80 streams at once over 4 client connections, spread over 2 workers.
    let report = h2load(&format!("{base}/wide/slow"), 400, 4, 20, None).await;
    assert_eq!(report.status_2xx, 400, "{report:?}");
    assert!(
        (1..=2).contains(&unlimited.connections()),
        "{} connections for 2 workers",
        unlimited.connections()
    );
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    let labels = [("service", "wide"), ("replica", &*unlimited.endpoint())];
    let counted = metric_sum(&metrics, "outrigger_upstream_connections", &labels);
    assert_eq!(counted, unlimited.connections() as f64, "{metrics}");

    // 20 streams at once from one client (one worker): 5 to a connection.
    let report = h2load(&format!("{base}/narrow/slow"), 100, 1, 20, None).await;
    assert_eq!(report.status_2xx, 100, "{report:?}");
    let connections = limited.connections();
    assert!((2..=4).contains(&connections), "{connections} connections");
}

#[actix_web::test]
async fn a_replica_killed_mid_stream_ends_only_the_streams_on_it() {
    let mut dying = H2Replica::start(None);
    let living = H2Replica::start(None);
    let sidecar = sidecar_for(
        1,
        &[("dying", "http2", &dying), ("living", "http2", &living)],
    )
    .await;
    let base = format!("http://{}", sidecar.outbound_addr());
    let call = |service: &str| {
        let url = format!("{base}/{service}/hold");
        actix_rt::spawn(async move { curl_exit(&["--http2-prior-knowledge", &url]).await })
    };
    let (cut, finished) = (call("dying"), call("living"));
    eventually("both answers have started", || async {
        dying.held() == 1 && living.held() == 1
    })
    .await;
    dying.kill();
    let (code, printed) = cut.await.expect("joins");
    assert_eq!(
        code,
        Some(92),
        "the answer was cut (stream reset): {printed:?}"
    );
    assert!(!printed.contains("last"), "{printed:?}");
    living.release();
    let (code, printed) = finished.await.expect("joins");
    assert_eq!((code, printed.as_str()), (Some(0), "first\nlast\n"));
    // The connection to the living replica carries the next call.
    let answer = h2c(&format!("{base}/living/items"), &[]).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(living.connections(), 1);
}

/// What a wait that ran out says: `what` did not come while the caller
/// held back the rest of its body.
/// A sidecar whose `echo` service is `replica`, called over HTTP/2, and
/// an HTTP/2 client on its outbound listener.
async fn echo_over_http2(replica: &H2Replica) -> (Sidecar, h2::client::SendRequest<Bytes>) {
    let sidecar = sidecar_for(1, &[("echo", "http2", replica)]).await;
    let tcp = tokio::net::TcpStream::connect(sidecar.outbound_addr())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    actix_rt::spawn(connection);
    let client = client.ready().await.expect("ready");
    (sidecar, client)
}

/// The answer head `answer` brings, within 5 s.
async fn head_of(
    answer: h2::client::ResponseFuture,
    what: &'static str,
) -> http::Response<h2::RecvStream> {
    actix_rt::time::timeout(std::time::Duration::from_secs(5), answer)
        .await
        .unwrap_or_else(not_in_time(what))
        .expect("an answer")
}

fn not_in_time<T>(what: &'static str) -> impl FnOnce(tokio::time::error::Elapsed) -> T {
    move |_| panic!("{what} did not come within 5s: the body and answer did not stream at once")
}

#[actix_web::test]
async fn a_request_body_and_its_answer_stream_at_once_through_an_http2_replica() {
    let replica = H2Replica::start(None);
    let (sidecar, mut client) = echo_over_http2(&replica).await;
    let addr = sidecar.outbound_addr();
    let request = http::Request::post(format!("http://{addr}/echo/echo"))
        .body(())
        .expect("a request");
    let (answer, mut sending) = client.send_request(request, false).expect("a stream");
    let five_seconds = std::time::Duration::from_secs(5);
    sending
        .send_data(Bytes::from_static(b"ping 1"), false)
        .expect("send");
    let answer = head_of(answer, "the answer head").await;
    assert_eq!(answer.status(), 200);
    let mut received = answer.into_body();
    let first = actix_rt::time::timeout(five_seconds, received.data())
        .await
        .unwrap_or_else(not_in_time("the first echo"));
    assert_eq!(
        first.and_then(Result::ok),
        Some(Bytes::from_static(b"ping 1"))
    );
    // Only now, with the first piece echoed, does the caller send the rest.
    sending
        .send_data(Bytes::from_static(b"ping 2"), true)
        .expect("send");
    let mut rest = Vec::new();
    while let Some(chunk) = actix_rt::time::timeout(five_seconds, received.data())
        .await
        .unwrap_or_else(not_in_time("the rest"))
    {
        rest.extend_from_slice(&chunk.expect("a chunk"));
    }
    assert_eq!(rest, b"ping 2");
}

#[actix_web::test]
async fn trailers_pass_after_an_empty_body_both_ways() {
    let replica = H2Replica::start(None);
    let (sidecar, mut client) = echo_over_http2(&replica).await;
    let addr = sidecar.outbound_addr();
    let five_seconds = std::time::Duration::from_secs(5);

    // A request whose head is followed by its trailers, with no data.
    let request = http::Request::post(format!("http://{addr}/echo/report"))
        .body(())
        .expect("a request");
    let (answer, mut sending) = client.send_request(request, false).expect("a stream");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
    sending.send_trailers(trailers).expect("trailers sent");
    let answer = head_of(answer, "the answer").await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let mut echo = Vec::new();
    while let Some(chunk) = body.data().await {
        echo.extend_from_slice(&chunk.expect("a chunk"));
    }
    let echo: serde_json::Value = serde_json::from_slice(&echo).expect("JSON");
    assert_eq!(echo["trailers"], json!([["x-checksum", "abc"]]), "{echo}");
    assert_eq!(echo["body_bytes"], 0);

    // An answer with `content-length: 0` whose trailers follow its head.
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::get(format!("http://{addr}/echo/empty-with-trailers"))
        .body(())
        .expect("a request");
    let (answer, _) = client.send_request(request, true).expect("a stream");
    let answer = head_of(answer, "the answer").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-length"], "0");
    let mut body = answer.into_body();
    assert!(body.data().await.is_none(), "no data");
    let trailers = actix_rt::time::timeout(five_seconds, body.trailers())
        .await
        .unwrap_or_else(not_in_time("the trailers"))
        .expect("the stream ends well")
        .expect("trailers");
    assert_eq!(trailers["x-done"], "yes");
}

#[actix_web::test]
async fn a_caller_that_resets_its_stream_mid_body_is_not_held_against_the_replica() {
    let replica = H2Replica::start(None);
    let (sidecar, mut client) = echo_over_http2(&replica).await;
    let addr = sidecar.outbound_addr();
    let five_seconds = std::time::Duration::from_secs(5);
    let request = http::Request::post(format!("http://{addr}/echo/echo"))
        .body(())
        .expect("a request");
    let (answer, mut sending) = client.send_request(request, false).expect("a stream");
    sending
        .send_data(Bytes::from_static(b"ping 1"), false)
        .expect("send");
    let answer = head_of(answer, "the answer head").await;
    let mut received = answer.into_body();
    let first = actix_rt::time::timeout(five_seconds, received.data())
        .await
        .unwrap_or_else(not_in_time("the first echo"));
    assert!(first.is_some_and(|chunk| chunk.is_ok()));
    // The caller gives up on its call half way, as a gRPC client cancelling
    // a stream does.
    sending.send_reset(h2::Reason::CANCEL);
    // A call after it: once the breaker has counted its success, it has
    // counted whatever the first call was.
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::get(format!("http://{addr}/echo/after"))
        .body(())
        .expect("a request");
    let (answer, _) = client.send_request(request, true).expect("a stream");
    let answer = head_of(answer, "the second answer").await;
    assert_eq!(answer.status(), 200);
    let metrics = format!("http://{}/metrics", sidecar.admin_addr());
    let breaker = |kind: &'static str| {
        let metrics = metrics.clone();
        async move {
            let text = get_text(&metrics).await;
            metric_sum(
                &text,
                &format!("outrigger_circuit_breaker_{kind}_total"),
                &[("service", "echo")],
            )
        }
    };
    eventually("the breaker counted the second call", || async {
        breaker("successes").await >= 1.0
    })
    .await;
    assert_eq!(
        breaker("failures").await,
        0.0,
        "the caller's reset was counted against the replica"
    );
}

#[actix_web::test]
async fn a_goaway_drains_its_connection_and_new_requests_take_a_new_one() {
    let replica = H2Replica::start(None);
    let sidecar = sidecar_for(1, &[("api", "http2", &replica)]).await;
    let base = format!("http://{}", sidecar.outbound_addr());
    let url = format!("{base}/api/hold");
    let held = actix_rt::spawn(async move { curl_exit(&["--http2-prior-knowledge", &url]).await });
    eventually("the held answer has started", || async {
        replica.held() == 1
    })
    .await;
    replica.go_away();
    let next = format!("{base}/api/items");
    eventually("a new request is answered after the GOAWAY", || async {
        h2c(&next, &[]).await.status() == 200 && replica.connections() == 2
    })
    .await;
    replica.release();
    let (code, printed) = held.await.expect("joins");
    assert_eq!(
        (code, printed.as_str()),
        (Some(0), "first\nlast\n"),
        "the stream the GOAWAY allowed finished"
    );
}

#[actix_web::test]
async fn the_breaker_opens_on_a_dead_http2_replica() {
    let mut replica = H2Replica::start(None);
    let sidecar = sidecar_from(
        &format!(
            "workers: 1
listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
services:
  - name: api
    protocol: http2
    endpoints: [\"{}\"]
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 2, cooldown: 1m }}",
            replica.endpoint()
        ),
        &[],
    )
    .await;
    let url = format!("http://{}/api/items", sidecar.outbound_addr());
    let answer = curl(&["--http1.1", &url], None).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    replica.kill();
    let mut reasons = Vec::new();
    for _ in 0..4 {
        let answer = curl(&["--http1.1", &url], None).await;
        reasons.push((
            answer.status(),
            answer.header("x-outrigger").map(str::to_string),
        ));
    }
    assert_eq!(
        reasons.last(),
        Some(&(503, Some("no_healthy_replica".to_string()))),
        "{reasons:?}"
    );
    assert!(
        reasons[0].0 == 502,
        "the first call after the death fails as a connection failure: {reasons:?}"
    );
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    let transitions = "outrigger_circuit_breaker_transitions_total{from=\"closed\",to=\"open\"}";
    assert_eq!(metric(&metrics, transitions), Some(1.0), "{metrics}");
}
