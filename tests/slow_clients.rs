//! Clients that upload slowly: the replica is timed, not the client. A
//! slow but progressing upload is forwarded as it arrives and answered,
//! whatever `per_try_timeout` says; one that stalls gets 408 after
//! `client_body_timeout`; neither is ever charged to a replica's breaker,
//! so a flood of them cannot take healthy replicas out.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::client::{get_json, Load};
use support::eventually::eventually;
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from};

/// Slow-body connections held at once. The figure is 1,000; so
/// many fit the test's time and the machine's share of CPU.
const SLOW_CLIENTS: usize = 1000;
/// Body bytes each slow client sends, one every [`SLOW_PACE`].
const SLOW_BODY: usize = 8;
const SLOW_PACE: Duration = Duration::from_millis(250);

/// One client that sends a `Content-Length` body a byte at a time, every
/// `pace`, and then reads the answer; the status, or what went wrong.
async fn slow_upload(addr: SocketAddr, bytes: usize, pace: Duration) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: {bytes}\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("head: {e}"))?;
    for _ in 0..bytes {
        tokio::time::sleep(pace).await;
        stream
            .write_all(b"x")
            .await
            .map_err(|e| format!("body: {e}"))?;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("answer: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an answer: {text:?}"))
}

#[actix_rt::test]
async fn a_slow_body_flood_takes_no_replica_out_and_others_are_served() {
    let replicas = Replica::several(3).await;
    let endpoints = support::replica::endpoints(&replicas.iter().collect::<Vec<_>>());
    // Each upload takes 2 s, four times the per-try timeout: the replica is
    // timed from the end of the body, so none of them is a replica's fault.
    // They are in flight to a replica all along, so the concurrency limit
    // counts them: it is raised above the flood.
    let yaml = format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\", max_connections: 20000 }}
  admin: {{ bind: \"127.0.0.1:0\" }}
services:
  - {{ name: api, endpoints: [{endpoints}], timeout: 1s, per_try_timeout: 500ms, concurrency: {{ max_in_flight: 5000 }} }}
"
    );
    let sidecar = sidecar_from(&yaml, &[]).await;
    let addr = sidecar.outbound_addr();
    let started = Instant::now();
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| actix_rt::spawn(slow_upload(addr, SLOW_BODY, SLOW_PACE)))
        .collect();
    let normal = Load::start(&format!("http://{addr}/api/a"), 4);
    let mut slow_answers = Vec::new();
    for task in slow {
        slow_answers.push(task.await.expect("slow client"));
    }
    let normal_answers = normal.stop().await;
    let took = started.elapsed();

    let served = normal_answers.iter().filter(|a| **a == Ok(200)).count();
    let rate = served as f64 / normal_answers.len() as f64;
    let failed: Vec<_> = normal_answers.iter().filter(|a| **a != Ok(200)).collect();
    assert!(
        rate >= 0.999 && normal_answers.len() > 100,
        "the normal client was served {served} of {} ({:.2}%): {:?}",
        normal_answers.len(),
        rate * 100.0,
        &failed[..failed.len().min(5)]
    );
    let slow_failed: Vec<_> = slow_answers.iter().filter(|a| **a != Ok(200)).collect();
    assert!(
        slow_failed.is_empty(),
        "{} of {SLOW_CLIENTS} progressing uploads were not answered 200: {:?}",
        slow_failed.len(),
        &slow_failed[..slow_failed.len().min(5)]
    );
    let admin = format!("http://{}", sidecar.admin_addr());
    let (_, breakers) = get_json(&format!("{admin}/circuit-breakers")).await;
    for replica in &replicas {
        let breaker = &breakers["circuit_breakers"][&format!("api/{}", replica.endpoint())];
        assert_eq!(breaker["state"], "closed", "{breakers}");
        assert_eq!(breaker["total_failures"], 0, "{breakers}");
    }
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// What came back for an upload that sent `sent` and then nothing.
struct Stalled {
    status: Option<u16>,
    reason: Option<String>,
    /// From the last body byte to the connection's close.
    cut_after: Duration,
}

async fn stalled_upload(addr: SocketAddr, head: &str, sent: &[u8]) -> Stalled {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(sent).await.expect("body");
    let stalled = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let cut_after = stalled.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let reason = text
        .lines()
        .find_map(|line| line.strip_prefix("x-outrigger: "))
        .map(str::to_string);
    Stalled {
        status: text.get(9..12).and_then(|code| code.parse().ok()),
        reason,
        cut_after,
    }
}

#[actix_rt::test]
async fn a_stalled_upload_gets_408_after_client_body_timeout_on_both_listeners() {
    let upstream = Replica::start().await;
    let yaml = format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\", client_body_timeout: 500ms }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{app}\", client_body_timeout: 500ms }}
inbound:
  auth: {{ exempt: [/api] }}
services:
  - {{ name: api, endpoints: [\"{app}\"], timeout: 30s, per_try_timeout: 30s }}
",
        app = upstream.endpoint()
    );
    let sidecar = sidecar_from(&yaml, &[]).await;
    let inbound = sidecar.inbound_addr().expect("inbound");
    let sized = "PUT /api/upload HTTP/1.1\r\nHost: api\r\nContent-Length: 100\r\n\r\n";
    let chunked = "POST /api/upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n";
    for addr in [sidecar.outbound_addr(), inbound] {
        for (head, sent) in [
            (sized, &b"0123456789"[..]),
            (chunked, b"a\r\n0123456789\r\n"),
        ] {
            let stalled = stalled_upload(addr, head, sent).await;
            assert_eq!(stalled.status, Some(408), "{addr} {head}");
            assert_eq!(stalled.reason.as_deref(), Some("client_body_timeout"));
            assert!(
                stalled.cut_after >= Duration::from_millis(450)
                    && stalled.cut_after < Duration::from_secs(3),
                "{addr} {head}: cut {:?} after the last byte",
                stalled.cut_after
            );
        }
    }
    let admin = format!("http://{}", sidecar.admin_addr());
    let (_, breakers) = get_json(&format!("{admin}/circuit-breakers")).await;
    let breaker = &breakers["circuit_breakers"][&format!("api/{}", upstream.endpoint())];
    assert_eq!(breaker["total_failures"], 0, "{breakers}");
    let metrics = support::client::get_text(&format!("{admin}/metrics")).await;
    assert_eq!(
        support::metrics::metric_sum(
            &metrics,
            "outrigger_http_requests_total",
            &[("status", "408")]
        ),
        4.0,
        "each stalled upload counted as a 408"
    );
}

/// A replica that records the bytes it receives on its one connection and
/// answers 200 once a body of `body` bytes is complete.
async fn recording_replica(body: usize) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&received);
    actix_rt::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buffer = [0u8; 4096];
        loop {
            let Ok(n) = stream.read(&mut buffer).await else {
                return;
            };
            if n == 0 {
                return;
            }
            let done = {
                let mut seen = seen.lock().expect("lock");
                seen.extend_from_slice(&buffer[..n]);
                body_received(&seen) >= body
            };
            if done {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                return;
            }
        }
    });
    (addr, received)
}

/// Body bytes after the head in `bytes`.
fn body_received(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |end| bytes.len() - end - 4)
}

#[actix_rt::test]
async fn a_small_body_reaches_the_replica_before_the_rest_is_sent() {
    for listener in ["outbound", "inbound"] {
        let (replica, received) = recording_replica(20).await;
        let yaml = format!(
            "{}
inbound:
  auth: {{ exempt: [/api] }}
services:
  - {{ name: api, endpoints: [\"{replica}\"], retry: {{ attempts: 1 }} }}
",
            listeners_with_inbound(replica)
        );
        let sidecar = sidecar_from(&yaml, &[]).await;
        let addr = match listener {
            "outbound" => sidecar.outbound_addr(),
            _ => sidecar.inbound_addr().expect("inbound"),
        };
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /api/upload HTTP/1.1\r\nHost: api\r\nContent-Length: 20\r\nConnection: close\r\n\r\n0123456789")
            .await
            .expect("first half");
        eventually(
            &format!("{listener}: the first 10 bytes reached the replica"),
            || async { body_received(&received.lock().expect("lock")) == 10 },
        )
        .await;
        stream.write_all(b"abcdefghij").await.expect("second half");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{listener}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(received
            .lock()
            .expect("lock")
            .ends_with(b"0123456789abcdefghij"));
    }
}
