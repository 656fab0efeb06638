//! Real gRPC through the sidecar: a grpcio client calling a grpcio server
//! through the outbound listener in plain-text HTTP/2 (issue 27, items 1, 2
//! and 4). Every kind of call passes with its messages, its custom
//! metadata both ways and the trailers that carry its status (unary, a
//! server stream of 1,000 messages, a bidi echo of 100); a 10 MiB client
//! stream passes with the sidecar's memory bounded (flow control, nothing
//! buffered whole); and when the sidecar is told to stop, its HTTP/2
//! connections are told to go away (GOAWAY) as the drain begins: an idle
//! one closes at once, and a bidi stream open then finishes, after which
//! the sidecar exits rather than at the end of its shutdown grace. A
//! replica SIGKILLed under 50 bidi streams and a unary load ends only the
//! streams on it (UNAVAILABLE), and the unary callers see no failure
//! (retried); a gRPC stream is not cut by the body limits of an upload; a
//! replica's trailers-only answer (an error) keeps its code and metadata.

mod support;

use std::time::{Duration, Instant};

use outrigger::Sidecar;
use support::grpc::{grpc_call, CallArgs, GrpcCall, GrpcReplica};
use support::metrics::metric_sum;
use support::process::SidecarProcess;
use support::sidecar::sidecar_with_outbound;

/// The `services:` list routing `echo` to `replica`.
fn echo_service(replica: &GrpcReplica) -> String {
    format!(
        "  - {{ name: echo, endpoints: [\"{}\"] }}",
        replica.address()
    )
}

/// A sidecar in this process whose outbound listener (with `limits`
/// added to its settings) routes `echo` to `replica`.
async fn echo_sidecar(replica: &GrpcReplica, limits: &str) -> Sidecar {
    sidecar_with_outbound(limits, &echo_service(replica)).await
}

#[actix_web::test]
async fn unary_server_streaming_and_bidi_calls_pass_with_their_metadata_and_trailers() {
    let replica = GrpcReplica::start("echo-1");
    let sidecar = echo_sidecar(&replica, "").await;
    let target = sidecar.outbound_addr().to_string();
    let echo = || CallArgs::new().authority("echo");
    // All three at once, over three connections.
    let unary = GrpcCall::start(
        &target,
        "Unary",
        &echo().payload("hello").metadata("x-user", "ana"),
    );
    let server_stream = GrpcCall::start(&target, "ServerStream", &echo().payload("1000"));
    let bidi = GrpcCall::start(&target, "Bidi", &echo().messages(100, 0));

    let unary = unary.outcome().await;
    assert_eq!(unary.code, "OK", "{unary:?}");
    assert_eq!(unary.messages, ["hello"]);
    assert_eq!(unary.header("x-replica"), Some("echo-1"), "{unary:?}");
    assert_eq!(unary.header("echo-x-user"), Some("ana"), "{unary:?}");
    // The connection's data reaches an HTTP/2 request's handler too.
    assert_eq!(unary.header("echo-x-forwarded-for"), Some("127.0.0.1"));
    assert!(
        unary.initial.contains_key("date"),
        "dated as HTTP/1 answers are"
    );
    assert_eq!(unary.trailer("x-trailer"), Some("done"), "{unary:?}");
    assert_eq!(unary.trailer("x-deadline-ms"), Some("none"));

    let server_stream = server_stream.outcome().await;
    assert_eq!(server_stream.code, "OK", "{server_stream:?}");
    assert_eq!(server_stream.message_count, 1000);
    assert_eq!(
        server_stream.messages.first().map(String::as_str),
        Some("msg-0")
    );
    assert_eq!(
        server_stream.messages.last().map(String::as_str),
        Some("msg-999")
    );
    assert_eq!(server_stream.trailer("x-trailer"), Some("done"));

    let bidi = bidi.outcome().await;
    assert_eq!(bidi.code, "OK", "{bidi:?}");
    let expected: Vec<String> = (0..100).map(|i| format!("m-{i}")).collect();
    assert_eq!(bidi.messages, expected);
    assert_eq!(bidi.trailer("x-trailer"), Some("done"));
}

#[actix_web::test]
async fn a_10_mib_client_stream_passes_with_the_sidecars_memory_bounded() {
    let replica = GrpcReplica::start("echo-1");
    let sidecar = SidecarProcess::start(&echo_service(&replica)).await;
    let before = sidecar.rss();
    // 160 messages of 64 KiB: 10 MiB.
    let outcome = grpc_call(
        &sidecar.outbound.to_string(),
        "ClientStream",
        CallArgs::new().authority("echo").messages(160, 64 * 1024),
    )
    .await;
    assert_eq!(outcome.code, "OK", "{outcome:?}");
    assert_eq!(outcome.messages, ["messages=160 bytes=10485760"]);
    assert_eq!(outcome.trailer("x-trailer"), Some("done"));
    let grown = sidecar.peak_rss().saturating_sub(before);
    assert!(
        grown < 6 * 1024 * 1024,
        "the sidecar's memory grew by {grown} bytes for a 10 MiB stream"
    );
}

#[actix_web::test]
async fn a_bidi_stream_open_across_sigterm_finishes_and_its_connection_goes_away() {
    let replica = GrpcReplica::start("echo-1");
    let extra = "lifecycle: { drain_delay: 3s, shutdown_grace: 20s }";
    let mut sidecar = SidecarProcess::start_with(
        &echo_service(&replica),
        extra,
        &[("LOG_LEVEL", "warn")],
        None,
    )
    .await;
    // 30 messages 100 ms apart: about 3 s.
    let call = GrpcCall::start(
        &sidecar.outbound.to_string(),
        "Bidi",
        &CallArgs::new()
            .authority("echo")
            .messages(30, 0)
            .interval(Duration::from_millis(100)),
    );
    let metrics = format!("http://{}/metrics", sidecar.admin);
    // Its answer head is counted as it goes out, while its messages flow.
    support::eventually::eventually("the bidi call is under way", || async {
        let text = support::client::get_text(&metrics).await;
        support::metrics::metric_sum(
            &text,
            "outrigger_http_requests_total",
            &[("listener", "outbound"), ("service", "echo")],
        ) >= 1.0
    })
    .await;
    // Another client's idle HTTP/2 connection.
    let tcp = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .expect("connect");
    let (_idle_client, idle) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    let idle = actix_rt::spawn(idle);
    let stopped = Instant::now();
    sidecar.terminate();
    // The drain tells it to go away (long before the listeners close, after
    // the 3 s drain_delay), and it closes with no stream on it.
    let gone = tokio::time::timeout(Duration::from_secs(2), idle).await;
    assert!(
        gone.is_ok(),
        "an idle HTTP/2 connection was not told to go away as the drain began"
    );
    let outcome = call.outcome().await;
    assert_eq!(outcome.code, "OK", "{outcome:?}");
    assert_eq!(outcome.message_count, 30);
    assert_eq!(outcome.trailer("x-trailer"), Some("done"));
    // The client's connection was told to go away: with no stream left on
    // it, it closes, and the sidecar exits long before the 20 s grace.
    let deadline = Instant::now() + Duration::from_secs(8);
    let exited = loop {
        if let Some(status) = sidecar.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar still runs {:?} after SIGTERM, its stream over",
            stopped.elapsed()
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exited.code(), Some(0));
}

#[actix_web::test]
async fn a_grpc_stream_is_not_cut_by_the_body_limits_a_plain_http2_body_is() {
    let replica = GrpcReplica::start("echo-1");
    let sidecar = echo_sidecar(&replica, ", client_body_timeout: 1s, max_body_bytes: 4096").await;
    let target = sidecar.outbound_addr().to_string();
    let echo = || CallArgs::new().authority("echo");
    // Pauses of 1.5 s, past client_body_timeout, and 6,000 bytes in all,
    // past max_body_bytes: each message is within it.
    let bidi = GrpcCall::start(
        &target,
        "Bidi",
        &echo()
            .messages(3, 2000)
            .interval(Duration::from_millis(1500)),
    );
    // One message over max_body_bytes.
    let too_large = GrpcCall::start(&target, "ClientStream", &echo().messages(1, 5000));
    // One over it after the replica's answer head and two echoes went out.
    let too_large_late = GrpcCall::start(
        &target,
        "Bidi",
        &echo().messages(3, 0).last_message(5000).lockstep(),
    );

    // A plain HTTP/2 request body that pauses is still given up: 408.
    let tcp = tokio::net::TcpStream::connect(sidecar.outbound_addr())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    actix_rt::spawn(connection);
    let request = http::Request::post("http://echo/upload")
        .header("content-type", "text/plain")
        .body(())
        .expect("a request");
    let mut client = client.ready().await.expect("ready");
    let (answer, _sending) = client.send_request(request, false).expect("a stream");
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("answered within 5 s")
        .expect("an answer");
    assert_eq!(answer.status(), 408);

    let too_large = too_large.outcome().await;
    assert_eq!(too_large.code, "RESOURCE_EXHAUSTED", "{too_large:?}");
    assert_eq!(too_large.reason(), Some("body_too_large"), "{too_large:?}");
    // Told in the trailers, RESOURCE_EXHAUSTED still: not UNAVAILABLE,
    // which would invite the caller to send it again.
    let late = too_large_late.outcome().await;
    assert_eq!(late.code, "RESOURCE_EXHAUSTED", "{late:?}");
    assert_eq!(late.header("x-replica"), Some("echo-1"), "{late:?}");
    assert_eq!(late.message_count, 2, "{late:?}");
    let metrics =
        support::client::get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "outrigger_grpc_responses_total",
            &[("service", "echo"), ("code", "RESOURCE_EXHAUSTED")],
        ),
        2.0,
        "both calls over max_body_bytes are counted as told"
    );
    let bidi = bidi.outcome().await;
    assert_eq!(bidi.code, "OK", "{bidi:?}");
    assert_eq!((bidi.message_count, bidi.bytes), (3, 6000));
    assert_eq!(bidi.trailer("x-trailer"), Some("done"));
}

/// `outrigger_http_requests_total` of the outbound `service` on the
/// sidecar whose metrics are at `metrics`: its answer heads so far.
async fn heads(metrics: &str, service: &str) -> f64 {
    let text = support::client::get_text(metrics).await;
    metric_sum(
        &text,
        "outrigger_http_requests_total",
        &[("listener", "outbound"), ("service", service)],
    )
}

#[actix_web::test]
async fn a_replica_killed_under_streams_and_unary_load_ends_only_its_own_streams() {
    let mut replicas = [
        GrpcReplica::start("echo-0"),
        GrpcReplica::start("echo-1"),
        GrpcReplica::start("echo-2"),
    ];
    let endpoints = replicas
        .iter()
        .map(|replica| format!("\"{}\"", replica.address()))
        .collect::<Vec<_>>()
        .join(", ");
    // The same replicas under two names, so the streams and the unary
    // calls are counted apart.
    let services = format!(
        "  - {{ name: streams, endpoints: [{endpoints}] }}\n  - {{ name: unary, endpoints: [{endpoints}] }}"
    );
    let sidecar = SidecarProcess::start(&services).await;
    let target = sidecar.outbound.to_string();
    let metrics = format!("http://{}/metrics", sidecar.admin);
    // 50 bidi streams at once over one connection, each 20 messages 250 ms
    // apart: open for about 5 s, time enough on a loaded machine for all
    // of them to open before the kill.
    let streams = GrpcCall::start(
        &target,
        "Bidi",
        &CallArgs::new()
            .authority("streams")
            .messages(20, 0)
            .interval(Duration::from_millis(250))
            .repeat(50, 50),
    );
    support::eventually::eventually("the 50 streams are open", || async {
        heads(&metrics, "streams").await >= 50.0
    })
    .await;
    let unary = GrpcCall::start(
        &target,
        "Unary",
        &CallArgs::new()
            .authority("unary")
            .payload("hi")
            .repeat(300, 4),
    );
    support::eventually::eventually("the unary load is under way", || async {
        heads(&metrics, "unary").await >= 20.0
    })
    .await;
    replicas[1].process().kill_and_reap();

    let streams = streams.summary().await;
    let unary = unary.summary().await;
    assert_eq!(
        unary.count("OK"),
        300,
        "unary callers saw failures: {unary:?}"
    );
    let ended = |replica: &str| streams.by_replica.get(replica).cloned().unwrap_or_default();
    // Cut after their heads went out, they end with UNAVAILABLE in their
    // trailers (a reset stream would read INTERNAL).
    let killed = ended("echo-1");
    assert!(
        killed.get("UNAVAILABLE").copied().unwrap_or(0) > 0 && killed.len() == 1,
        "the killed replica's streams must all end UNAVAILABLE: {streams:?}"
    );
    for survivor in ["echo-0", "echo-2"] {
        let finished = ended(survivor);
        assert!(
            finished.get("OK").copied().unwrap_or(0) > 0
                && finished.values().sum::<u64>() == finished["OK"],
            "the streams on {survivor} must all finish OK: {streams:?}"
        );
    }
    let all: u64 = streams
        .by_replica
        .values()
        .flat_map(|codes| codes.values())
        .sum();
    assert_eq!(all, 50, "every stream reached a replica: {streams:?}");
    // Each stream is counted by the code it ended with, the cut ones too.
    let ok = ["echo-0", "echo-2"]
        .map(|survivor| ended(survivor)["OK"])
        .iter()
        .sum::<u64>();
    let counted = |text: &str, code: &str| {
        let labels = [
            ("listener", "outbound"),
            ("service", "streams"),
            ("code", code),
        ];
        metric_sum(text, "outrigger_grpc_responses_total", &labels)
    };
    let expected = [("UNAVAILABLE", killed["UNAVAILABLE"]), ("OK", ok)];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = support::client::get_text(&metrics).await;
        let all_counted = expected
            .iter()
            .all(|(code, count)| counted(&text, code) == *count as f64);
        if all_counted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the streams' ends ({expected:?}) are not counted so: {}",
            text.lines()
                .filter(|line| line.starts_with("outrigger_grpc_responses_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn a_grpc_answer_without_a_body_passes_through_with_its_code_and_metadata() {
    let replica = GrpcReplica::start("echo-1");
    let sidecar = echo_sidecar(&replica, "").await;
    let outcome = grpc_call(
        &sidecar.outbound_addr().to_string(),
        "Fail",
        CallArgs::new()
            .authority("echo")
            .payload("RESOURCE_EXHAUSTED"),
    )
    .await;
    assert_eq!(outcome.code, "RESOURCE_EXHAUSTED", "{outcome:?}");
    assert_eq!(outcome.details, "asked to fail");
    assert_eq!(outcome.trailer("x-replica"), Some("echo-1"), "{outcome:?}");
}
