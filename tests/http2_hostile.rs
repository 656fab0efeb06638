//! Hostile HTTP/2 clients on the outbound listener, each bounded, counted,
//! and leaving other clients served: a rapid reset flood (CVE-2023-44487),
//! a CONTINUATION flood (CVE-2024-27316), a header list past the limit the
//! listener advertises, a client that grants no window for its answer, and
//! a client that answers no PING under an open gRPC stream. With the real
//! binary, all of them at once leave its memory bounded.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use outrigger::Sidecar;
use support::client::get_text;
use support::eventually::eventually;
use support::files::TempDir;
use support::grpc::GrpcReplica;
use support::h2c::{h2c, h2load};
use support::metrics::metric_sum;
use support::process::SidecarProcess;
use support::replica::Replica;
use support::sidecar::{sidecar_from, sidecar_with_outbound};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The service the outbound listener routes to `replica`, over HTTP/1.1.
fn budgeting(replica: &Replica) -> String {
    format!(
        "  - {{ name: budgeting, protocol: http1, endpoints: [\"{}\"] }}",
        replica.endpoint()
    )
}

/// A sidecar in this process whose outbound listener (with `limits` added
/// to its settings) routes `budgeting` to `replica`.
async fn sidecar(replica: &Replica, limits: &str) -> Sidecar {
    sidecar_with_outbound(limits, &budgeting(replica)).await
}

/// An HTTP/2 frame: its 9-byte header (length, type, flags, stream) and
/// `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The connection preface and an empty SETTINGS frame.
fn preface() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes
}

/// Reads what comes on `io` until the sidecar closes it, for at most
/// `within`; the bytes read, or `None` if it was still open.
async fn read_until_closed(io: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = io.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    closed.ok().map(|()| received)
}

/// Opens `streams` streams on one connection to `addr`, resetting each as
/// soon as its HEADERS are out (the rapid reset attack), until the sidecar
/// closes the connection; how many were opened.
async fn rapid_reset(addr: SocketAddr, streams: usize) -> usize {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    let connection = actix_rt::spawn(connection);
    let mut opened = 0;
    for _ in 0..streams {
        let Ok(ready) = client.ready().await else {
            break; // the sidecar closed the connection
        };
        client = ready;
        let request = http::Request::get("http://budgeting/items")
            .body(())
            .expect("a request");
        let Ok((_answer, mut stream)) = client.send_request(request, true) else {
            break;
        };
        // The HEADERS go out before the reset (a stream reset while its
        // HEADERS wait is never sent at all).
        actix_rt::task::yield_now().await;
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    connection.abort();
    opened
}

/// Opens a request head on a new connection to `addr` and never ends it,
/// sending CONTINUATION frames one after another (the CONTINUATION
/// flood); whether the sidecar closed the connection within 5 s.
async fn continuation_flood(addr: SocketAddr) -> bool {
    let mut flood = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut bytes = preface();
    // HEADERS without END_HEADERS: GET http /, then a literal field in each
    // CONTINUATION, none of them ending the head.
    bytes.extend(frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84]));
    for _ in 0..1000 {
        bytes.extend(frame(0x9, 0, 1, b"\x40\x01a\x01b"));
    }
    // The sidecar may close before it has read them all.
    let _ = flood.write_all(&bytes).await;
    read_until_closed(&mut flood, Duration::from_secs(5))
        .await
        .is_some()
}

/// A request to `addr` with a header of `kib` KiB: past the header list
/// the listener advertises (twice `max_header_bytes`), the HTTP/2 server
/// refuses it before any handler sees it. Its answer's status and
/// `x-outrigger` reason.
async fn oversized_head(addr: SocketAddr, kib: usize) -> (u16, Option<String>) {
    // From a file: one argument of 128 KiB or more is too long for exec.
    let scratch = TempDir::new();
    let header = scratch.path.join("header");
    let line = format!("x-big: {}\n", "b".repeat(kib * 1024));
    std::fs::write(&header, line).expect("write the header");
    let from_file = format!("@{}", header.display());
    let answer = h2c(
        &format!("http://{addr}/budgeting/items"),
        &["-H", &from_file],
    )
    .await;
    let reason = answer.header("x-outrigger").map(str::to_string);
    (answer.status(), reason)
}

/// A 1 MiB download from `addr` on a new connection whose client grants
/// its answer no window (SETTINGS_INITIAL_WINDOW_SIZE 0, no
/// WINDOW_UPDATE): the answer's body, stalled, and its connection's task.
async fn stalled_download(addr: SocketAddr) -> (h2::RecvStream, actix_rt::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("an h2 handshake");
    let connection = actix_rt::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::get(format!("http://{addr}/budgeting/download/1048576"))
        .body(())
        .expect("a request");
    let (answer, _) = client.send_request(request, true).expect("sent");
    let answer = answer.await.expect("the answer head");
    assert_eq!(answer.status(), 200);
    (answer.into_body(), connection)
}

/// Asserts that a new client of the outbound listener at `addr` is served.
async fn another_client_is_served(addr: SocketAddr) {
    let url = format!("http://{addr}/budgeting/items");
    assert_eq!(
        h2c(&url, &[]).await.status(),
        200,
        "another client is served"
    );
}

/// The sum of the outbound listener's `name` series with `labels` more.
async fn outbound_count(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = get_text(&format!("http://{admin}/metrics")).await;
    let mut all = vec![("listener", "outbound")];
    all.extend_from_slice(labels);
    metric_sum(&text, name, &all)
}

/// Waits until the outbound listener at `admin` has counted `count`
/// connections closed for an HTTP/2 flood.
async fn floods_counted(admin: SocketAddr, count: f64) {
    let flood = [("reason", "http2_flood")];
    eventually("the flood is counted", || async {
        outbound_count(admin, "outrigger_http_heads_refused_total", &flood).await == count
    })
    .await;
}

/// Streams the outbound listener at `admin` reset with `reason`.
async fn resets(admin: SocketAddr, reason: &str) -> f64 {
    let labels = [("reason", reason)];
    outbound_count(admin, "outrigger_http2_streams_reset_total", &labels).await
}

/// Heads the HTTP/2 server of the outbound listener at `admin` refused
/// itself, past its header list limit.
async fn header_lists_refused(admin: SocketAddr) -> f64 {
    let labels = [("reason", "http2_header_list")];
    outbound_count(admin, "outrigger_http_heads_refused_total", &labels).await
}

/// However many streams a rapid reset flood opens on one connection, no
/// more than `http2_max_concurrent_streams` reach the replica, the sidecar
/// serves other clients meanwhile, and the connection is closed as a flood
/// (counted) once its resets outrun what is taken in.
#[actix_web::test]
async fn a_rapid_reset_flood_starts_no_more_than_the_stream_limit() {
    let replica = Replica::start().await;
    // Each started call waits here, longer than the flood lasts, holding
    // its place among the streams.
    replica.delay(Duration::from_secs(2));
    let sidecar = sidecar(&replica, ", http2_max_concurrent_streams: 8").await;
    let addr = sidecar.outbound_addr();
    let opened = rapid_reset(addr, 2000).await;
    assert!(opened > 8, "the flood got past the limit: {opened} streams");
    another_client_is_served(addr).await;
    // The other client's call is answered after the flood's calls started.
    let started = replica.hits() - 1;
    assert!(
        started <= 8,
        "{started} calls started by {opened} reset streams"
    );
    floods_counted(sidecar.admin_addr(), 1.0).await;
}

/// A CONTINUATION flood's connection is closed, counted as a flood, and
/// another client is served; the flood's head reaches no replica.
#[actix_web::test]
async fn a_continuation_flood_closes_its_connection_and_is_counted() {
    let replica = Replica::start().await;
    let sidecar = sidecar(&replica, "").await;
    let addr = sidecar.outbound_addr();
    assert!(
        continuation_flood(addr).await,
        "the flooding connection stayed open"
    );
    another_client_is_served(addr).await;
    // Counted once the connection is gone (after its lingering close).
    floods_counted(sidecar.admin_addr(), 1.0).await;
    assert_eq!(replica.hits(), 1, "the flood's head reached no replica");
}

/// A head over `max_header_bytes` gets the handlers' 431 with its reason;
/// one past the header list the listener advertises is refused by the
/// HTTP/2 server before any handler (a bare 431), and counted as a refused
/// head.
#[actix_web::test]
async fn a_header_list_past_the_advertised_limit_is_refused_and_counted() {
    let replica = Replica::start().await;
    let sidecar = sidecar(&replica, ", max_header_bytes: 8192").await;
    let addr = sidecar.outbound_addr();
    let big = format!("x-big: {}", "b".repeat(10 * 1024));
    let answer = h2c(&format!("http://{addr}/budgeting/items"), &["-H", &big]).await;
    assert_eq!(answer.status(), 431, "{answer:?}");
    assert_eq!(answer.header("x-outrigger"), Some("headers_too_large"));
    assert_eq!(header_lists_refused(sidecar.admin_addr()).await, 0.0);
    assert_eq!(oversized_head(addr, 40).await, (431, None));
    eventually("the refused head is counted", || async {
        header_lists_refused(sidecar.admin_addr()).await == 1.0
    })
    .await;
    assert_eq!(replica.hits(), 0, "neither head reached the replica");
}

/// A client that takes an answer's head but grants no window for its body
/// has its stream reset (counted as `cancel`) once `client_write_timeout`
/// passes with nothing sent, and another client is served meanwhile.
#[actix_web::test]
async fn a_stream_whose_client_grants_no_window_is_reset_after_the_write_timeout() {
    let replica = Replica::start().await;
    let sidecar = sidecar(&replica, ", client_write_timeout: 1s").await;
    let addr = sidecar.outbound_addr();
    let (mut body, connection) = stalled_download(addr).await;
    let asked = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), body.data()).await;
    let reset = read.expect("the stream ends within 5 s");
    let reason = reset
        .and_then(|data| data.err())
        .and_then(|err| err.reason());
    assert_eq!(reason, Some(h2::Reason::CANCEL), "reset, not served");
    assert!(asked.elapsed() >= Duration::from_millis(900));
    another_client_is_served(addr).await;
    assert_eq!(resets(sidecar.admin_addr(), "cancel").await, 1.0);
    connection.abort();
}

/// A client whose host vanished under a long gRPC stream sends nothing,
/// not even TCP's close, and no body limit times a gRPC stream: the
/// sidecar PINGs a connection with open streams every
/// `client_body_timeout`, and one that leaves a PING unanswered until the
/// next is closed.
#[actix_web::test]
async fn a_dead_client_on_an_open_grpc_stream_is_found_by_ping() {
    let replica = GrpcReplica::start("echo-1");
    let sidecar = sidecar_from(
        &format!(
            "listeners:
  outbound: {{ bind: \"127.0.0.1:0\", client_body_timeout: 500ms }}
  admin: {{ bind: \"127.0.0.1:0\" }}
services:
  - {{ name: echo, endpoints: [\"{}\"] }}",
            replica.address()
        ),
        &[],
    )
    .await;
    let mut dead = tokio::net::TcpStream::connect(sidecar.outbound_addr())
        .await
        .expect("connect");
    let mut bytes = preface();
    // HEADERS (END_HEADERS, the body never ended): POST http
    // /outrigger.test.Echo/Bidi to echo, a gRPC call.
    let mut head = vec![0x83, 0x86, 0x44, 25];
    head.extend(b"/outrigger.test.Echo/Bidi");
    head.extend([0x41, 4]);
    head.extend(b"echo");
    head.extend([0x5f, 16]);
    head.extend(b"application/grpc");
    head.extend([0x40, 2]);
    head.extend(b"te");
    head.push(8);
    head.extend(b"trailers");
    bytes.extend(frame(0x1, 0x4, 1, &head));
    // One message, `m`, which the replica echoes.
    bytes.extend(frame(0x0, 0, 1, &[0, 0, 0, 0, 1, b'm']));
    dead.write_all(&bytes).await.expect("write");
    // From here the client answers nothing: it only reads what comes.
    let received = read_until_closed(&mut dead, Duration::from_secs(6)).await;
    let closed = received.is_some();
    let received = received.unwrap_or_default();
    let mut kinds = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        kinds.push(rest[3]);
        rest = &rest[(9 + length).min(rest.len())..];
    }
    assert!(
        closed,
        "a client that answers no PING still holds its stream after 6 s"
    );
    assert!(
        kinds.contains(&0x1) && kinds.contains(&0x0),
        "the answer's head and echo came: {kinds:?}"
    );
    assert!(kinds.contains(&0x6), "it was sent a PING: {kinds:?}");
}

/// The real binary under every attack at once (20 stalled downloads held
/// open, a rapid reset flood, three CONTINUATION floods, ten heads past
/// the header list limit): its memory grows by a few MiB at most, another
/// client is served, and each attack is counted.
#[actix_web::test]
async fn every_attack_at_once_leaves_the_sidecar_s_memory_bounded() {
    let replica = Replica::start().await;
    let limits = ", max_header_bytes: 8192";
    let sidecar = SidecarProcess::start_with_outbound(&budgeting(&replica), limits).await;
    let (addr, admin) = (sidecar.outbound, sidecar.admin);
    let url = format!("http://{addr}/budgeting/items");
    // Warm up the workers and their pools, so what grows is the attacks'.
    let report = h2load(&url, 400, 4, 10, None).await;
    assert_eq!(report.status_2xx, 400, "{report:?}");
    let before = sidecar.rss();
    let mut stalls = Vec::new();
    for _ in 0..20 {
        stalls.push(stalled_download(addr).await);
    }
    let opened = rapid_reset(addr, 2000).await;
    assert!(opened > 0);
    for _ in 0..3 {
        assert!(continuation_flood(addr).await, "a flood stayed open");
    }
    for _ in 0..10 {
        assert_eq!(oversized_head(addr, 40).await, (431, None));
    }
    another_client_is_served(addr).await;
    let grown = sidecar.peak_rss().saturating_sub(before);
    assert!(
        grown < 8 * 1024 * 1024,
        "the sidecar's memory grew by {grown} bytes under the attacks"
    );
    eventually("every attack is counted", || async {
        let floods = [("reason", "http2_flood")];
        outbound_count(admin, "outrigger_http_heads_refused_total", &floods).await >= 3.0
            && header_lists_refused(admin).await == 10.0
    })
    .await;
    for (_, connection) in stalls {
        connection.abort();
    }
}
