//! The request path's HTTP/1 client against real replicas: keep-alive
//! connections are pooled and reused; a pooled connection the replica
//! closed as the request went out is replaced without the caller seeing
//! it (when sending twice is harmless); informational answers are passed
//! over; a body that runs until an HTTP/1.0 replica closes arrives whole,
//! while one cut short of its length is a cut; and a caller's
//! `Expect: 100-continue` is met by the sidecar, not forwarded. A replica
//! named by host name is resolved when connecting.

mod support;

use outrigger::Sidecar;
use support::client::{client, get_text};
use support::eventually::eventually;
use support::faults::{answer_body_start, Fault, FaultServer, ANSWER};
use support::metrics::metric_sum;
use support::raw::{raw_cut_short, raw_exchange};
use support::replica::{header_seen, Replica};
use support::sidecar::sidecar_with;

/// One worker, so every call of a test meets the same pool.
const ONE_WORKER: &str = "workers: 1";

/// A one-worker sidecar whose service `api` is on `endpoint`, with retries
/// off so that only the client itself can hide a failure; and the URL of a
/// call to it.
async fn calling_api(endpoint: &str) -> (Sidecar, String) {
    let service =
        format!("  - {{ name: api, endpoints: [\"{endpoint}\"], retry: {{ attempts: 1 }} }}");
    let sidecar = sidecar_with(ONE_WORKER, &service).await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    (sidecar, url)
}

fn upstream_errors(metrics: &str) -> f64 {
    metric_sum(
        metrics,
        "outrigger_upstream_errors_total",
        &[("service", "api")],
    )
}

#[actix_web::test]
async fn calls_in_sequence_reuse_one_pooled_connection() {
    let upstream = Replica::start().await;
    let (_sidecar, url) = calling_api(&upstream.endpoint()).await;
    let client = client();
    for _ in 0..20 {
        let response = client.get(&url).send().await.expect("an answer");
        assert_eq!(response.status(), 200);
    }
    let mut upload = client
        .post(&url)
        .send_body("a body")
        .await
        .expect("an answer");
    assert_eq!(upload.status(), 200);
    let echo: serde_json::Value = upload.json().await.expect("the echo");
    assert_eq!(echo["body_bytes"], 6);
    assert_eq!(upstream.hits(), 21);
    assert_eq!(upstream.connections(), 1, "one connection for every call");
}

#[actix_web::test]
async fn a_pooled_connection_closed_by_the_replica_is_replaced_unseen() {
    let replica = FaultServer::start(Fault::OneAnswerPerConnection).await;
    let (sidecar, url) = calling_api(&replica.endpoint()).await;
    let client = client();
    for call in 0..5 {
        let mut response = client.get(&url).send().await.expect("an answer");
        assert_eq!(
            response.status(),
            200,
            "call {call}: {:?}",
            response.body().await
        );
        let body = response.body().await.expect("a whole body");
        assert_eq!(&body[..], &ANSWER[answer_body_start()..]);
    }
    // Each call after the first met the pooled connection closing, and was
    // sent again on a new one: 2 requests read per connection but the first.
    assert_eq!(replica.requests(), 9);
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert_eq!(upstream_errors(&metrics), 0.0, "{metrics}");
    // A POST is not sent twice: the replica may have acted on the first.
    let response = client
        .post(&url)
        .send_body("once")
        .await
        .expect("an answer");
    assert_eq!(response.status(), 502);
    assert_eq!(
        response
            .headers()
            .get("x-outrigger")
            .and_then(|v| v.to_str().ok()),
        Some("upstream_reset")
    );
}

/// The status and whole body the app gets through the sidecar from a
/// replica that answers with `raw` and closes.
async fn relayed(raw: &'static [u8]) -> (u16, Vec<u8>) {
    let replica = FaultServer::start(Fault::Raw(raw)).await;
    let (_sidecar, url) = calling_api(&replica.endpoint()).await;
    let mut response = client().get(&url).send().await.expect("an answer");
    let body = response.body().await.expect("a whole body");
    (response.status().as_u16(), body.to_vec())
}

#[actix_web::test]
async fn informational_answers_before_the_final_one_are_passed_over() {
    let answer = relayed(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    );
    assert_eq!(answer.await, (200, b"ok".to_vec()));
}

#[actix_web::test]
async fn an_http_1_0_body_without_a_length_runs_to_the_close() {
    let answer =
        relayed(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the replica closes");
    assert_eq!(answer.await, (200, b"until the replica closes".to_vec()));
}

#[actix_web::test]
async fn a_body_closed_short_of_its_length_is_a_cut() {
    let replica = FaultServer::start(Fault::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b",
    ))
    .await;
    let (sidecar, _) = calling_api(&replica.endpoint()).await;
    // The caller sees the answer cut (its head declares 100 bytes, fewer
    // arrive before the close), or, when the cut came before the head left,
    // its connection closed: never 10 of 100 bytes framed as a whole body.
    // Raw bytes, because a client that ends a body at the close could not
    // tell the two apart; off this thread, which serves the replica.
    let outbound = sidecar.outbound_addr();
    let answer = actix_rt::task::spawn_blocking(move || {
        raw_exchange(
            outbound,
            "GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .expect("the exchange");
    if answer.contains("\r\n\r\n") {
        assert!(
            raw_cut_short(&answer),
            "10 of 100 bytes framed as a whole body: {answer:?}"
        );
    }
    let metrics = format!("http://{}/metrics", sidecar.admin_addr());
    eventually(
        "the cut is counted as the replica's protocol error",
        || async {
            let metrics = get_text(&metrics).await;
            metric_sum(
                &metrics,
                "outrigger_upstream_errors_total",
                &[("service", "api"), ("kind", "protocol")],
            ) == 1.0
        },
    )
    .await;
}

#[actix_web::test]
async fn an_expectation_of_100_continue_is_met_by_the_sidecar() {
    let upstream = Replica::start().await;
    let (sidecar, _) = calling_api(&upstream.endpoint()).await;
    let answer = raw_exchange(
        sidecar.outbound_addr(),
        "POST /api/upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let last = answer
        .rfind("HTTP/1.1 ")
        .map_or("", |start| &answer[start..]);
    assert!(last.starts_with("HTTP/1.1 200"), "{answer}");
    let echo = support::raw::raw_json(last);
    assert_eq!(echo["body_bytes"], 5, "{answer}");
    assert_eq!(header_seen(&echo, "expect"), None, "{answer}");
}

#[actix_web::test]
async fn a_replica_named_by_host_name_is_resolved_and_called() {
    let upstream = Replica::start().await;
    let named = format!("localhost:{}", upstream.addr.port());
    let (_sidecar, url) = calling_api(&named).await;
    let mut response = client().get(&url).send().await.expect("an answer");
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.expect("the echo");
    assert_eq!(header_seen(&echo, "host").as_deref(), Some(named.as_str()));
}
