//! Calls to HTTPS replicas (issue 26, item 1): the app calls plain HTTP
//! through the outbound listener and the sidecar opens TLS to nginx
//! replicas with certificates from a test CA, verifies them, pools the
//! connections, and treats a failed handshake as a connect failure; a
//! service called over HTTP/2 offers `h2` by ALPN (issue 27, item 2).

mod support;

use serde_json::Value;
use support::admin::breaker_state;
use support::apps::Nginx;
use support::client::{client, get_text, post_json, reason};
use support::eventually::eventually;
use support::files::{swap_in, TempDir};
use support::metrics::metric;
use support::raw::raw_exchange;
use support::registry::Registry;
use support::sidecar::{sidecar_from, sidecar_from_file};
use support::tls::Certificates;
use support::websocket::{close, round_trip, EchoApp};

/// What each replica answers: its connection's serial number, whether the
/// TLS session was resumed, and the name the client asked for (SNI).
const ECHO_CONNECTION: &str =
    "location / { return 200 \"$connection $ssl_session_reused $ssl_server_name\"; }";

/// A sidecar with one outbound worker (so sequential calls share a pool)
/// and the `services:` YAML given.
async fn sidecar_for(services: &str) -> outrigger::Sidecar {
    sidecar_from(
        &format!(
            "workers: 1
listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}
services:
{services}"
        ),
        &[],
    )
    .await
}

/// The status, `x-outrigger` reason and body of a GET to `url`.
async fn call(url: &str) -> (u16, String, String) {
    let mut response = client().get(url).send().await.expect("an answer");
    let reason = reason(&response);
    let body = response.body().await.expect("a body");
    (
        response.status().as_u16(),
        reason,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[actix_web::test]
async fn calls_reach_an_https_replica_over_one_verified_pooled_connection() {
    let certificates = Certificates::new();
    let server = certificates.server("replica", "DNS:replica.test,IP:127.0.0.1");
    let replica = Nginx::start_tls(&server.cert, &server.key, ECHO_CONNECTION).await;
    let ca = certificates.ca();
    let sidecar = sidecar_for(&format!(
        "  - name: payments
    endpoints: [\"https://127.0.0.1:{port}\"]
    tls: {{ ca_file: \"{ca}\" }}
  - name: named
    endpoints: [\"127.0.0.1:{port}\"]
    tls: {{ ca_file: \"{ca}\", server_name: replica.test }}",
        port = replica.port,
        ca = ca.display()
    ))
    .await;
    let outbound = sidecar.outbound_addr();

    // The endpoint's IP is the name checked (IP SAN), and no SNI is sent for it.
    let mut connections = Vec::new();
    for _ in 0..100 {
        let (status, _, body) = call(&format!("http://{outbound}/payments/pay")).await;
        assert_eq!(status, 200, "{body}");
        connections.push(body);
    }
    connections.dedup();
    assert_eq!(
        connections.len(),
        1,
        "100 sequential calls rode one TLS connection: {connections:?}"
    );
    assert!(connections[0].ends_with(" . "), "{}", connections[0]);
    let admin = format!("http://{}", sidecar.admin_addr());
    let series = format!(
        "outrigger_upstream_connections{{replica=\"127.0.0.1:{}\",service=\"payments\",state=\"idle\"}}",
        replica.port
    );
    eventually("the one connection is back in the pool", || async {
        metric(&get_text(&format!("{admin}/metrics")).await, &series) == Some(1.0)
    })
    .await;

    // server_name is sent as SNI and verified against the DNS SAN.
    let (status, _, body) = call(&format!("http://{outbound}/named/x")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(" replica.test"), "{body}");
}

#[actix_web::test]
async fn a_replica_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let certificates = Certificates::new();
    let server = certificates.server("replica", "IP:127.0.0.1");
    let client_pair = certificates.server("caller", "DNS:caller.test");
    let ca = certificates.ca();
    let replica = Nginx::start_tls(
        &server.cert,
        &server.key,
        &format!(
            "ssl_verify_client on;
    ssl_client_certificate {};
    location / {{ return 200 \"$ssl_client_s_dn\"; }}",
            ca.display()
        ),
    )
    .await;
    let sidecar = sidecar_for(&format!(
        "  - name: ledger
    endpoints: [\"127.0.0.1:{}\"]
    tls: {{ ca_file: \"{ca}\", client_cert_file: \"{}\", client_key_file: \"{}\" }}",
        replica.port,
        client_pair.cert.display(),
        client_pair.key.display(),
        ca = ca.display()
    ))
    .await;
    let (status, _, body) = call(&format!("http://{}/ledger/x", sidecar.outbound_addr())).await;
    assert_eq!((status, body.as_str()), (200, "CN=caller"));
}

#[actix_web::test]
async fn a_certificate_for_another_name_or_from_an_unknown_ca_trips_the_breaker() {
    let certificates = Certificates::new();
    let elsewhere = certificates.server("elsewhere", "DNS:elsewhere.test");
    let stranger = certificates.untrusted("stranger", "DNS:replica.test,IP:127.0.0.1");
    let wrong_name = Nginx::start_tls(&elsewhere.cert, &elsewhere.key, ECHO_CONNECTION).await;
    let unknown_ca = Nginx::start_tls(&stranger.cert, &stranger.key, ECHO_CONNECTION).await;
    let ca = certificates.ca();
    let sidecar = sidecar_for(&format!(
        "  - name: wrong-name
    endpoints: [\"https://127.0.0.1:{}\"]
    tls: {{ ca_file: \"{ca}\" }}
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 3, window: 10s, cooldown: 30s }}
  - name: unknown-ca
    endpoints: [\"https://127.0.0.1:{}\"]
    tls: {{ ca_file: \"{ca}\" }}
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 3, window: 10s, cooldown: 30s }}",
        wrong_name.port,
        unknown_ca.port,
        ca = ca.display()
    ))
    .await;
    let outbound = sidecar.outbound_addr();
    let admin = format!("http://{}", sidecar.admin_addr());

    for (service, port, why) in [
        ("wrong-name", wrong_name.port, "not valid for name"),
        ("unknown-ca", unknown_ca.port, "UnknownIssuer"),
    ] {
        let url = format!("http://{outbound}/{service}/x");
        for _ in 0..3 {
            let (status, reason, body) = call(&url).await;
            assert_eq!((status, reason.as_str()), (502, "upstream_tls"), "{body}");
            let body: Value = serde_json::from_str(&body).expect("a JSON error");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(why), "{service}: {error}");
        }
        let key = format!("{service}/127.0.0.1:{port}");
        eventually("the breaker opens after failure_threshold", || async {
            breaker_state(&admin, &key).await == "open"
        })
        .await;
        let (status, reason, _) = call(&url).await;
        assert_eq!((status, reason.as_str()), (503, "no_healthy_replica"));
        let metrics = get_text(&format!("{admin}/metrics")).await;
        let series = format!(
            "outrigger_upstream_errors_total{{kind=\"tls\",replica=\"127.0.0.1:{port}\",service=\"{service}\"}}"
        );
        assert_eq!(metric(&metrics, &series), Some(3.0), "{service}");
    }
}

#[actix_web::test]
async fn a_failed_handshake_is_retried_on_another_replica() {
    let certificates = Certificates::new();
    let good = certificates.server("good", "IP:127.0.0.1");
    let bad = certificates.untrusted("bad", "IP:127.0.0.1");
    let trusted = Nginx::start_tls(&good.cert, &good.key, ECHO_CONNECTION).await;
    let untrusted = Nginx::start_tls(&bad.cert, &bad.key, ECHO_CONNECTION).await;
    let sidecar = sidecar_for(&format!(
        "  - name: api
    endpoints: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]
    tls: {{ ca_file: \"{}\" }}
    load_balancer: round_robin
    retry: {{ attempts: 2, base_delay: 1ms, budget_min_per_second: 100 }}
    circuit_breaker: {{ failure_threshold: 1000 }}",
        untrusted.port,
        trusted.port,
        certificates.ca().display()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    for _ in 0..10 {
        let (status, _, body) = call(&url).await;
        assert_eq!(status, 200, "{body}");
    }
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    let series = format!(
        "outrigger_upstream_errors_total{{kind=\"tls\",replica=\"127.0.0.1:{}\",service=\"api\"}}",
        untrusted.port
    );
    assert!(
        metric(&metrics, &series).is_some_and(|n| n >= 4.0),
        "the untrusted replica was tried and failed: {:?}",
        metric(&metrics, &series)
    );
}

#[test]
fn check_names_a_missing_or_unfitting_certificate_file_by_its_key() {
    let certificates = Certificates::new();
    let client = certificates.server("client", "DNS:client.test");
    let other = certificates.server("other", "DNS:other.test");
    let dir = TempDir::new();
    let file = dir.path.join("tls.yaml");
    std::fs::write(
        &file,
        format!(
            "services:
  - name: ledger
    endpoints: [\"10.0.0.1:8443\"]
    tls: {{ ca_file: /nonexistent/ca.pem }}
  - name: pay
    endpoints: [\"https://10.0.0.2:8443\"]
    tls: {{ ca_file: \"{}\", client_cert_file: \"{}\", client_key_file: \"{}\" }}
",
            certificates.ca().display(),
            client.cert.display(),
            other.key.display()
        ),
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("services[0].tls.ca_file: cannot read /nonexistent/ca.pem"),
        "{stderr}"
    );
    assert!(
        stderr.contains("services[1].tls.client_key_file: does not fit the certificate"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn a_reload_that_changes_the_ca_file_is_used_by_the_next_call() {
    let certificates = Certificates::new();
    let server = certificates.server("replica", "IP:127.0.0.1");
    let replica = Nginx::start_tls(&server.cert, &server.key, ECHO_CONNECTION).await;
    let dir = TempDir::new();
    let path = dir.path.join("sidecar.yaml");
    let config = |ca: &std::path::Path| {
        format!(
            "workers: 1
reload: {{ watch: false }}
listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}
services:
  - name: api
    endpoints: [\"127.0.0.1:{}\"]
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 1000 }}
    tls: {{ ca_file: \"{}\" }}
",
            replica.port,
            ca.display()
        )
    };
    std::fs::write(&path, config(&certificates.untrusted_ca())).expect("write");
    let sidecar = sidecar_from_file(&path).await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let (status, reason, _) = call(&url).await;
    assert_eq!((status, reason.as_str()), (502, "upstream_tls"));

    swap_in(&path, &config(&certificates.ca()));
    let (status, report) = post_json(&format!("http://{}/reload", sidecar.admin_addr())).await;
    assert_eq!(status, 200, "{report}");
    let (status, _, body) = call(&url).await;
    assert_eq!(status, 200, "{body}");
}

/// Whether `(status, reason, body)` is a TLS failure against the system's
/// roots, which do not hold the test CA: proof that TLS was spoken and the
/// certificate verified, where plain text would have got nginx's 400.
fn verified_against_the_system_roots(answer: &(u16, String, String)) -> bool {
    let (status, reason, body) = answer;
    (*status, reason.as_str()) == (502, "upstream_tls") && body.contains("UnknownIssuer")
}

#[actix_web::test]
async fn https_endpoints_from_the_file_and_the_registry_are_called_over_tls() {
    let certificates = Certificates::new();
    let server = certificates.server("replica", "IP:127.0.0.1");
    let replica = Nginx::start_tls(&server.cert, &server.key, ECHO_CONNECTION).await;
    let https = format!("https://127.0.0.1:{}", replica.port);
    let dir = TempDir::new();
    let endpoints = dir.path.join("endpoints.yaml");
    std::fs::write(
        &endpoints,
        format!(
            "api: [\"{https}\"]\nplain: [\"{}\"]\nledger: [{{ address: \"{https}\" }}]\n",
            replica.endpoint()
        ),
    )
    .expect("write the endpoints file");
    let from_file = sidecar_from(
        &format!(
            "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}
discovery: {{ source: file, file: {{ path: \"{}\" }} }}
defaults: {{ retry: {{ attempts: 1 }} }}
services:
  - name: api
  - name: plain
  - name: ledger
    tls: {{ ca_file: \"{}\" }}",
            endpoints.display(),
            certificates.ca().display()
        ),
        &[],
    )
    .await;
    let outbound = from_file.outbound_addr();
    let api = call(&format!("http://{outbound}/api/x")).await;
    assert!(verified_against_the_system_roots(&api), "{api:?}");
    let plain = call(&format!("http://{outbound}/plain/x")).await;
    assert_eq!(
        plain.0, 400,
        "nginx refuses plain text on its TLS port: {plain:?}"
    );
    let ledger = call(&format!("http://{outbound}/ledger/x")).await;
    assert_eq!(ledger.0, 200, "the service's tls block is used: {ledger:?}");

    let registry = Registry::start().await;
    registry.register_url("api-1", "api", &https);
    let from_registry = sidecar_from(
        &format!(
            "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}
discovery: {{ source: registry, refresh: 200ms, registry: {{ url: \"{}\" }} }}
defaults: {{ retry: {{ attempts: 1 }} }}
services:
  - name: api",
            registry.url
        ),
        &[],
    )
    .await;
    let url = format!("http://{}/api/x", from_registry.outbound_addr());
    eventually(
        "the registry's https replica is called over TLS",
        || async { verified_against_the_system_roots(&call(&url).await) },
    )
    .await;
}

#[actix_web::test]
async fn a_websocket_to_an_https_replica_is_tunnelled_over_verified_tls() {
    let certificates = Certificates::new();
    let server = certificates.server("replica", "IP:127.0.0.1");
    let app = EchoApp::start();
    // nginx ends TLS and passes the upgrade on to the echo app.
    let replica = Nginx::start_tls(
        &server.cert,
        &server.key,
        &format!(
            "location / {{ proxy_pass http://{}; proxy_http_version 1.1; \
             proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; }}",
            app.endpoint()
        ),
    )
    .await;
    let sidecar = sidecar_for(&format!(
        "  - name: chat
    endpoints: [\"https://127.0.0.1:{port}\"]
    tls: {{ ca_file: \"{}\" }}
  - name: stranger
    endpoints: [\"https://127.0.0.1:{port}\"]
    tls: {{ ca_file: \"{}\" }}",
        certificates.ca().display(),
        certificates.untrusted_ca().display(),
        port = replica.port,
    ))
    .await;
    let outbound = sidecar.outbound_addr();

    let (response, mut connection) = client()
        .ws(format!("ws://{outbound}/chat/ws"))
        .connect()
        .await
        .expect("the handshake through TLS");
    assert_eq!(response.status().as_u16(), 101);
    for text in ["over", "tls"] {
        round_trip(&mut connection, text).await;
    }
    close(&mut connection).await;
    assert_eq!(app.seen().len(), 1, "the app saw the handshake");

    // A certificate that does not verify: refused, never sent in plain text.
    let upgrade = "GET /stranger/ws HTTP/1.1\r\nHost: stranger\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let answer = actix_web::rt::task::spawn_blocking(move || raw_exchange(outbound, upgrade))
        .await
        .expect("the exchange");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.contains("upstream_tls") && answer.contains("UnknownIssuer"),
        "{answer}"
    );
}

#[actix_web::test]
async fn a_service_called_over_http2_offers_h2_by_alpn_and_multiplexes_its_calls() {
    let certificates = Certificates::new();
    let server = certificates.server("replica", "IP:127.0.0.1");
    let protocol = "location / { return 200 \"$server_protocol $connection\"; }";
    let both = Nginx::start_tls_http2(&server.cert, &server.key, protocol).await;
    let http1_only = Nginx::start_tls(&server.cert, &server.key, protocol).await;
    let ca = certificates.ca();
    let sidecar = sidecar_for(&format!(
        "  - name: grpc
    protocol: http2
    endpoints: [\"127.0.0.1:{both}\"]
    tls: {{ ca_file: \"{ca}\" }}
  - name: rest
    protocol: http1
    endpoints: [\"127.0.0.1:{both}\"]
    tls: {{ ca_file: \"{ca}\" }}
  - name: old
    protocol: http2
    endpoints: [\"127.0.0.1:{http1_only}\"]
    tls: {{ ca_file: \"{ca}\" }}",
        both = both.port,
        http1_only = http1_only.port,
        ca = ca.display()
    ))
    .await;
    let outbound = sidecar.outbound_addr();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (status, _, body) = call(&format!("http://{outbound}/grpc/x")).await;
        assert_eq!(status, 200, "{body}");
        seen.push(body);
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "one HTTP/2 connection: {seen:?}");
    assert!(seen[0].starts_with("HTTP/2.0 "), "{seen:?}");
    // HTTP/1 connections offer no ALPN, so nginx speaks HTTP/1.1 on them.
    let (status, _, body) = call(&format!("http://{outbound}/rest/x")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/1.1 "), "{body}");
    // A replica that does not choose h2 is refused, not sent HTTP/2 blind.
    let (status, reason, body) = call(&format!("http://{outbound}/old/x")).await;
    assert_eq!((status, reason.as_str()), (502, "upstream_tls"), "{body}");
    // (nginx ends the handshake with an alert: it has no protocol in common)
    assert!(body.contains("NoApplicationProtocol"), "{body}");
}
