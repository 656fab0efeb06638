//! gRPC semantics through the sidecar, with real grpcio peers
//! (`support::grpc`): a replica's trailers-only `grpc-status` is the call's
//! outcome for retries and the breaker, the sidecar's own answers to gRPC
//! callers are trailers-only with the contract's codes on both listeners,
//! the caller's `grpc-timeout` bounds the call and reaches the replica as
//! what is left of it, `grpc_responses_total` counts every answer by
//! code, from the trailers when the head carries none, and streams pass
//! the inbound listener as they pass the outbound one.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::admin::breaker_state;
use support::client::get_text;
use support::eventually::eventually;
use support::grpc::{grpc_call, CallArgs, GrpcReplica};
use support::h2c::curl;
use support::keys::hs256_bearer;
use support::metrics::metric;
use support::sidecar::{listeners_with_inbound, sidecar_from};

const LISTENERS: &str = "listeners:
  outbound: { bind: \"127.0.0.1:0\" }
  admin: { bind: \"127.0.0.1:0\" }";

fn grpc_responses(listener: &str, service: &str, code: &str) -> String {
    format!("outrigger_grpc_responses_total{{code=\"{code}\",listener=\"{listener}\",service=\"{service}\"}}")
}

#[actix_web::test]
async fn unavailable_is_retried_on_another_replica_and_opens_its_breaker() {
    let unavailable = GrpcReplica::start_with("down", &["--status", "UNAVAILABLE"]);
    let healthy = [GrpcReplica::start("echo-1"), GrpcReplica::start("echo-2")];
    let sidecar = sidecar_from(
        &format!(
            "{LISTENERS}
services:
  - name: echo
    endpoints: [\"{}\", \"{}\", \"{}\"]
    load_balancer: round_robin
    circuit_breaker: {{ failure_threshold: 2 }}
    retry: {{ base_delay: 300ms, max_delay: 300ms, jitter: 0 }}",
            unavailable.address(),
            healthy[0].address(),
            healthy[1].address()
        ),
        &[],
    )
    .await;
    let outbound = sidecar.outbound_addr().to_string();
    let admin = format!("http://{}", sidecar.admin_addr());

    let mut deadlines = Vec::new();
    for _ in 0..6 {
        let outcome = grpc_call(
            &outbound,
            "Unary",
            CallArgs::new()
                .authority("echo")
                .payload("hello")
                .timeout(Duration::from_secs(5)),
        )
        .await;
        assert_eq!(
            outcome.code, "OK",
            "retried on another replica: {outcome:?}"
        );
        assert_eq!(outcome.messages, ["hello"]);
        assert_ne!(outcome.header("x-replica"), Some("down"));
        assert_eq!(outcome.trailer("x-trailer"), Some("done"));
        let seen: u64 = outcome.trailing["x-deadline-ms"]
            .parse()
            .expect("a deadline");
        deadlines.push(seen);
    }
    // A call retried after `down` reached its second replica 300 ms (the
    // backoff) into its 5 s: the replica's grpc-timeout was recomputed.
    let least = deadlines.iter().min().copied().unwrap_or(0);
    assert!(
        least < 4750,
        "no replica saw a recomputed budget: {deadlines:?}"
    );
    assert!(deadlines.iter().all(|ms| *ms <= 5000), "{deadlines:?}");

    let key = format!("echo/{}", unavailable.address());
    eventually("the UNAVAILABLE replica's breaker opens", || async {
        breaker_state(&admin, &key).await == "open"
    })
    .await;
    for healthy in &healthy {
        let key = format!("echo/{}", healthy.address());
        assert_eq!(breaker_state(&admin, &key).await, "closed");
    }
    let metrics = get_text(&format!("{admin}/metrics")).await;
    assert_eq!(
        metric(&metrics, &grpc_responses("outbound", "echo", "OK")),
        Some(6.0),
        "each counted when its trailers passed: {metrics}"
    );
    assert_eq!(
        metric(&metrics, &grpc_responses("outbound", "echo", "UNAVAILABLE")),
        None
    );
}

#[actix_web::test]
async fn a_body_past_the_replay_buffer_is_tried_once() {
    let unavailable = GrpcReplica::start_with("down", &["--status", "UNAVAILABLE"]);
    let healthy = GrpcReplica::start("echo-1");
    let sidecar = sidecar_from(
        &format!(
            "{LISTENERS}
services:
  - name: echo
    endpoints: [\"{}\", \"{}\"]
    load_balancer: round_robin
    retry: {{ replay_buffer_bytes: 64 }}",
            unavailable.address(),
            healthy.address()
        ),
        &[],
    )
    .await;
    let outbound = sidecar.outbound_addr().to_string();
    let call = |payload: &str| {
        grpc_call(
            &outbound,
            "Unary",
            CallArgs::new().authority("echo").payload(payload),
        )
    };
    // In turn, two of four calls go to `down` first.
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(call(&"x".repeat(100)).await.code);
    }
    let unavailable_count = codes.iter().filter(|code| *code == "UNAVAILABLE").count();
    assert_eq!(unavailable_count, 2, "100 bytes do not fit 64: {codes:?}");
    for _ in 0..4 {
        assert_eq!(
            call("small").await.code,
            "OK",
            "5 bytes fit and are sent again"
        );
    }
}

#[actix_web::test]
async fn a_grpc_status_in_the_trailers_is_the_outcome() {
    let replica = GrpcReplica::start("late");
    let sidecar = sidecar_from(
        &format!(
            "{LISTENERS}
services:
  - name: echo
    endpoints: [\"{}\"]
    circuit_breaker: {{ failure_threshold: 2, grpc_failures: [internal] }}",
            replica.address()
        ),
        &[],
    )
    .await;
    let outbound = sidecar.outbound_addr().to_string();
    let admin = format!("http://{}", sidecar.admin_addr());
    let key = format!("echo/{}", replica.address());
    let fail_late = |code: &'static str| {
        grpc_call(
            &outbound,
            "FailLate",
            CallArgs::new().authority("echo").payload(code),
        )
    };
    // UNAVAILABLE is not among this service's grpc_failures.
    for _ in 0..3 {
        let outcome = fail_late("UNAVAILABLE").await;
        assert_eq!(outcome.code, "UNAVAILABLE", "{outcome:?}");
        assert_eq!(outcome.header("x-replica"), Some("late"));
    }
    assert_eq!(breaker_state(&admin, &key).await, "closed");
    for _ in 0..2 {
        assert_eq!(fail_late("INTERNAL").await.code, "INTERNAL");
    }
    eventually("two INTERNALs in trailers open the breaker", || async {
        breaker_state(&admin, &key).await == "open"
    })
    .await;
    let metrics = get_text(&format!("{admin}/metrics")).await;
    assert_eq!(
        metric(&metrics, &grpc_responses("outbound", "echo", "UNAVAILABLE")),
        Some(3.0)
    );
    assert_eq!(
        metric(&metrics, &grpc_responses("outbound", "echo", "INTERNAL")),
        Some(2.0)
    );
}

#[actix_web::test]
async fn the_sidecars_own_answers_are_trailers_only_with_the_contracts_codes() {
    // Nothing listens on these: every try fails to connect.
    let dead: Vec<String> = (0..3)
        .map(|_| {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
            socket.local_addr().expect("an address").to_string()
        })
        .collect();
    let sidecar = sidecar_from(
        &format!(
            "{LISTENERS}
services:
  - name: gone
    endpoints: [\"{}\", \"{}\", \"{}\"]
    retry: {{ base_delay: 5ms, max_delay: 10ms }}",
            dead[0], dead[1], dead[2]
        ),
        &[],
    )
    .await;
    let outbound = sidecar.outbound_addr().to_string();

    let started = Instant::now();
    let down = grpc_call(
        &outbound,
        "Unary",
        CallArgs::new().authority("gone").payload("x"),
    )
    .await;
    assert_eq!(down.code, "UNAVAILABLE", "{down:?}");
    assert_eq!(down.reason(), Some("upstream_connect_failed"), "{down:?}");
    assert!(down.details.contains("cannot connect"), "{down:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(down.elapsed < Duration::from_millis(500), "{down:?}");

    let unknown = grpc_call(
        &outbound,
        "Unary",
        CallArgs::new().authority("nowhere").payload("x"),
    )
    .await;
    assert_eq!(unknown.code, "UNIMPLEMENTED", "{unknown:?}");
    assert_eq!(unknown.reason(), Some("unknown_service"), "{unknown:?}");

    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert_eq!(
        metric(&metrics, &grpc_responses("outbound", "gone", "UNAVAILABLE")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &grpc_responses("outbound", "unknown", "UNIMPLEMENTED")
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[actix_web::test]
async fn the_smaller_of_timeout_and_the_callers_deadline_bounds_the_call() {
    // Its answer head comes 2 s after each call arrives.
    let slow = GrpcReplica::start_with("slow", &["--slow-ms", "2000"]);
    let sidecar = sidecar_from(
        &format!(
            "{LISTENERS}
services:
  - name: echo
    endpoints: [\"{}\"]
    timeout: 300ms",
            slow.address()
        ),
        &[],
    )
    .await;
    let outbound = sidecar.outbound_addr().to_string();
    assert_cut_at_300ms(&format!("http://{outbound}"), "echo").await;

    // A caller's 200 ms, shorter than timeout: DEADLINE_EXCEEDED at about
    // 200 ms, and the replica was told less than 200 ms.
    let started = Instant::now();
    let cut = grpc_call(
        &outbound,
        "Unary",
        CallArgs::new()
            .authority("echo")
            .payload("x")
            .timeout(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(cut.code, "DEADLINE_EXCEEDED", "{cut:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let told = grpc_call(
        &outbound,
        "Fail",
        CallArgs::new()
            .authority("echo")
            .payload("ABORTED")
            .timeout(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(told.code, "ABORTED", "{told:?}");
    let seen: u64 = told.trailing["x-deadline-ms"].parse().expect("a deadline");
    assert!(seen < 200, "the replica saw what was left: {told:?}");
}

/// A unary call to `Echo/Unary` at `base` for `host`, with a
/// `grpc-timeout` of 2 s from a caller that enforces no deadline of its own
/// (curl), to a replica whose answer head is 2 s away behind a sidecar
/// whose timeout is 300 ms: the sidecar ends it at 300 ms with
/// DEADLINE_EXCEEDED (the replica, told 2 s, would answer later).
async fn assert_cut_at_300ms(base: &str, host: &str) {
    // One message, "hi".
    let call = vec![0, 0, 0, 0, 2, b'h', b'i'];
    let url = format!("{base}/outrigger.test.Echo/Unary");
    let host = format!("host: {host}");
    let started = Instant::now();
    let answer = curl(
        &[
            "--http2-prior-knowledge",
            "-H",
            &host,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            "grpc-timeout: 2S",
            "--data-binary",
            "@-",
            &url,
        ],
        Some(call),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.header("grpc-status"), Some("4"), "{answer:?}");
    assert_eq!(answer.header("x-outrigger"), Some("upstream_timeout"));
    assert!(
        answer
            .header("grpc-message")
            .is_some_and(|m| m.contains("timeout 300ms")),
        "{answer:?}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[actix_web::test]
async fn the_smaller_of_timeout_and_the_callers_deadline_bounds_the_call_to_the_app() {
    let app = GrpcReplica::start_with("app", &["--slow-ms", "2000"]);
    let yaml = listeners_with_inbound(app.address())
        .replace("app: \"http://", "timeout: 300ms, app: \"http://");
    let sidecar = sidecar_from(&yaml, &[]).await;
    let inbound = sidecar.inbound_addr().expect("inbound");
    assert_cut_at_300ms(&format!("http://{inbound}"), "app").await;
    let outcome = grpc_call(
        &inbound.to_string(),
        "Unary",
        CallArgs::new()
            .payload("x")
            .timeout(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(outcome.code, "DEADLINE_EXCEEDED", "{outcome:?}");
}

fn bearer(user: &str) -> String {
    let claims = json!({"sub": user, "roles": ["reader"], "exp": jsonwebtoken::get_current_timestamp() + 600});
    hs256_bearer(b"grpc-secret", &claims)
}

#[actix_web::test]
async fn inbound_refusals_are_grpc_answers_and_calls_and_streams_pass_with_the_identity() {
    let app = GrpcReplica::start("app");
    let yaml = format!(
        "{}
inbound:
  auth:
    jwt: {{ algorithms: [HS256] }}
  rate_limit: {{ window: 1m, default: 2 }}",
        listeners_with_inbound(app.address())
    );
    let sidecar = sidecar_from(&yaml, &[("JWT_SECRET", "grpc-secret")]).await;
    let inbound = sidecar.inbound_addr().expect("inbound").to_string();
    let call = |args: CallArgs| grpc_call(&inbound, "Unary", args.payload("x"));

    let anonymous = call(CallArgs::new()).await;
    assert_eq!(anonymous.code, "UNAUTHENTICATED", "{anonymous:?}");
    assert_eq!(anonymous.reason(), Some("unauthorized"), "{anonymous:?}");

    let token = bearer("ana");
    for _ in 0..2 {
        let passed = call(CallArgs::new().metadata("authorization", &token)).await;
        assert_eq!(passed.code, "OK", "reached the app: {passed:?}");
        assert_eq!(passed.messages, ["x"]);
        assert_eq!(passed.header("x-replica"), Some("app"));
        assert_eq!(
            passed
                .initial
                .get("echo-x-outrigger-user")
                .map(String::as_str),
            Some("ana"),
            "{passed:?}"
        );
        assert_eq!(
            passed
                .initial
                .get("echo-x-outrigger-auth")
                .map(String::as_str),
            Some("jwt")
        );
    }
    let limited = call(CallArgs::new().metadata("authorization", &token)).await;
    assert_eq!(limited.code, "RESOURCE_EXHAUSTED", "{limited:?}");
    assert_eq!(limited.reason(), Some("rate_limited"), "{limited:?}");

    // Streams pass the inbound listener as they pass the outbound one.
    let bo = bearer("bo");
    let with_token = || CallArgs::new().metadata("authorization", &bo);
    let bidi = grpc_call(&inbound, "Bidi", with_token().messages(100, 0)).await;
    assert_eq!(bidi.code, "OK", "{bidi:?}");
    let expected: Vec<String> = (0..100).map(|i| format!("m-{i}")).collect();
    assert_eq!(bidi.messages, expected);
    assert_eq!(bidi.trailer("x-trailer"), Some("done"));
    let server_stream = grpc_call(&inbound, "ServerStream", with_token().payload("1000")).await;
    assert_eq!(server_stream.code, "OK", "{server_stream:?}");
    assert_eq!(server_stream.message_count, 1000);
    assert_eq!(server_stream.trailer("x-trailer"), Some("done"));

    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    for (code, count) in [
        ("UNAUTHENTICATED", 1.0),
        ("OK", 4.0),
        ("RESOURCE_EXHAUSTED", 1.0),
    ] {
        assert_eq!(
            metric(&metrics, &grpc_responses("inbound", "app", code)),
            Some(count),
            "{code}"
        );
    }
}
