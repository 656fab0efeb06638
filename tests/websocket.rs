//! Protocol upgrades: a WebSocket echo app behind the sidecar, reached
//! through the outbound listener (`ws://<outbound>/<service>/ws`) and
//! through the inbound one, where the handshake is admitted as any request
//! (JWT in `Authorization` or where a browser can carry it, revocation,
//! rate limits, the in-flight caps) before it reaches the app; and what a
//! stop does to the sockets still open.

mod support;

use std::time::{Duration, Instant};

use awc::ws;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use support::client::{client, get_json, get_text};
use support::eventually::eventually;
use support::files::TempDir;
use support::metrics::metric;
use support::process::SidecarProcess;
use support::sidecar::{sidecar, sidecar_from};
use support::websocket::{close, next_close, round_trip, Connection, EchoApp};

#[actix_web::test]
async fn websocket_messages_round_trip_through_the_sidecar() {
    let app = EchoApp::start();
    let sidecar = sidecar(&format!(
        "  - {{ name: chat, endpoints: [\"{}\"] }}",
        app.endpoint()
    ))
    .await;

    let url = format!("ws://{}/chat/ws", sidecar.outbound_addr());
    let (response, mut connection) = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .expect("handshake");
    assert_eq!(response.status().as_u16(), 101);
    let admin = format!("http://{}/services", sidecar.admin_addr());
    let (_, services) = get_json(&admin).await;
    assert_eq!(
        services["services"][0]["replicas"][0]["load"], 1,
        "an open tunnel is load"
    );

    for text in ["hello", "second message", "third"] {
        round_trip(&mut connection, text).await;
    }
    close(&mut connection).await;
    drop(connection);
    eventually("the tunnel closes and stops counting as load", || async {
        get_json(&admin).await.1["services"][0]["replicas"][0]["load"] == 0
    })
    .await;
}

const SECRET: &str = "ws-s3cret";

/// An HS256 token for `user` with the id `jti`, valid for ten minutes.
fn token(user: &str, jti: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let claims = json!({"sub": user, "exp": exp, "roles": ["buyer"], "jti": jti});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signs")
}

/// A sidecar with the inbound listener in front of `app`, JWT required,
/// tokens also taken from `?access_token=` and after the `access_token`
/// subprotocol, and `inbound` (more YAML of the `inbound:` section).
async fn inbound_sidecar(app: &EchoApp, inbound: &str) -> outrigger::Sidecar {
    let yaml = format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{}\" }}
inbound:
  auth:
    jwt: {{ algorithms: [HS256] }}
    websocket_token: {{ query: access_token, protocol: access_token }}
    revocation: true
    strip_authorization: true
{inbound}
services: []",
        app.endpoint()
    );
    sidecar_from(&yaml, &[("JWT_SECRET", SECRET)]).await
}

/// Opens a WebSocket at `url` with `request` (headers, subprotocols) as
/// given; the answer's status and headers, and the socket when it opened.
async fn handshake(
    request: awc::ws::WebsocketsRequest,
) -> (u16, awc::http::header::HeaderMap, Option<Connection>) {
    match request.connect().await {
        Ok((response, connection)) => (
            response.status().as_u16(),
            response.headers().clone(),
            Some(connection),
        ),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            (status.as_u16(), Default::default(), None)
        }
        Err(other) => panic!("no answer to the handshake: {other}"),
    }
}

fn ws(url: &str) -> awc::ws::WebsocketsRequest {
    client().ws(url)
}

#[actix_web::test]
async fn inbound_websockets_open_with_a_jwt_in_the_header_the_query_or_the_subprotocol() {
    let app = EchoApp::start();
    let sidecar = inbound_sidecar(&app, "").await;
    let base = format!("ws://{}", sidecar.inbound_addr().expect("inbound"));

    let header = token("ana", "j-header");
    let bearer = format!("Bearer {header}");
    let request = ws(&format!("{base}/ws/alerts")).header("authorization", bearer.as_str());
    let (status, _, connection) = handshake(request).await;
    assert_eq!(status, 101, "a token in Authorization opens it");
    let mut connection = connection.expect("open");
    round_trip(&mut connection, "from a service").await;
    let seen = app.seen().pop().expect("the app saw the handshake");
    assert_eq!(seen.target, "/ws/alerts");
    assert_eq!(
        seen.headers.get("x-outrigger-user").map(|v| v.as_bytes()),
        Some(&b"ana"[..])
    );
    assert!(
        seen.headers.get("authorization").is_none(),
        "strip_authorization applies"
    );
    close(&mut connection).await;

    let query = token("bea", "j-query");
    let url = format!("{base}/api/v1/ws/notifications?room=7&access_token={query}&since=3");
    let (status, _, connection) = handshake(ws(&url)).await;
    assert_eq!(status, 101, "a token in the query opens it");
    let mut connection = connection.expect("open");
    round_trip(&mut connection, "from a browser").await;
    let seen = app.seen().pop().expect("the app saw the handshake");
    assert_eq!(
        seen.target, "/api/v1/ws/notifications?room=7&since=3",
        "the token is taken out"
    );
    assert_eq!(
        seen.headers.get("x-outrigger-user").map(|v| v.as_bytes()),
        Some(&b"bea"[..])
    );
    close(&mut connection).await;

    let offered = token("cai", "j-protocol");
    let request = ws(&format!("{base}/ws/alerts")).protocols(["access_token", offered.as_str()]);
    let (status, headers, connection) = handshake(request).await;
    assert_eq!(
        status, 101,
        "a token after the access_token subprotocol opens it"
    );
    assert_eq!(
        headers.get("sec-websocket-protocol").map(|v| v.as_bytes()),
        Some(&b"access_token"[..]),
        "the answer names a subprotocol the browser offered, not the token"
    );
    let mut connection = connection.expect("open");
    round_trip(&mut connection, "from another browser").await;
    let seen = app.seen().pop().expect("the app saw the handshake");
    assert!(
        seen.headers.get("sec-websocket-protocol").is_none(),
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.headers.get("x-outrigger-user").map(|v| v.as_bytes()),
        Some(&b"cai"[..])
    );
    close(&mut connection).await;

    let before = app.seen().len();
    let (status, _, connection) = handshake(ws(&format!("{base}/ws/alerts"))).await;
    assert_eq!(
        (status, connection.is_none()),
        (401, true),
        "no token, no socket"
    );
    let url = format!("{base}/ws/alerts?access_token={query}");
    let request = ws(&url).header("authorization", bearer.as_str());
    assert_eq!(handshake(request).await.0, 400, "two credentials");
    let revoke = client()
        .post(format!("http://{}/tokens/revoke", sidecar.admin_addr()))
        .send_json(&json!({"token": query}))
        .await
        .expect("admin answers");
    assert_eq!(revoke.status().as_u16(), 200);
    assert_eq!(handshake(ws(&url)).await.0, 401, "a revoked token");
    assert_eq!(
        app.seen().len(),
        before,
        "no refused handshake reached the app"
    );
}

#[actix_web::test]
async fn an_open_inbound_websocket_holds_its_concurrency_slot_and_handshakes_are_rate_limited() {
    let app = EchoApp::start();
    let limits = "  concurrency: { global: 1, per_route: 1 }
  rate_limit: { window: 1m, default: 3 }";
    let sidecar = inbound_sidecar(&app, limits).await;
    let url = format!(
        "ws://{}/ws?access_token={}",
        sidecar.inbound_addr().expect("inbound"),
        token("ana", "j-limits")
    );
    let metrics = format!("http://{}/metrics", sidecar.admin_addr());
    let in_flight = "outrigger_concurrency_in_flight{scope=\"global\",service=\"app\"}";

    let (status, _, connection) = handshake(ws(&url)).await;
    assert_eq!(status, 101);
    let mut connection = connection.expect("open");
    round_trip(&mut connection, "hold").await;
    assert_eq!(metric(&get_text(&metrics).await, in_flight), Some(1.0));
    assert_eq!(
        handshake(ws(&url)).await.0,
        429,
        "the open socket holds the one slot"
    );
    round_trip(&mut connection, "still open").await;
    close(&mut connection).await;
    drop(connection);
    eventually("the closed socket frees its slot", || async {
        metric(&get_text(&metrics).await, in_flight) == Some(0.0)
    })
    .await;

    let (status, headers, connection) = handshake(ws(&url)).await;
    assert_eq!(status, 101, "the third handshake is within the limit");
    assert_eq!(
        headers.get("x-ratelimit-remaining").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    close(&mut connection.expect("open")).await;
    assert_eq!(handshake(ws(&url)).await.0, 429, "the fourth is over it");
}

/// The real binary with access lines for every request at debug level:
/// a token carried in the URL is in none of its lines. On SIGTERM, open
/// WebSockets at both listeners stay open through `shutdown_grace`, then
/// each gets a close frame saying the sidecar is going away.
#[actix_web::test]
async fn url_tokens_reach_no_log_line_and_a_stop_closes_websockets_with_a_close_frame() {
    let app = EchoApp::start();
    let services = format!("  - {{ name: chat, endpoints: [\"{}\"] }}", app.endpoint());
    let inbound = format!("app: \"http://{}\"", app.endpoint());
    let extra = "lifecycle: { drain_delay: 0s, shutdown_grace: 1500ms }
access_log: true
inbound:
  auth:
    jwt: { algorithms: [HS256] }
    websocket_token: { query: access_token }";
    let dir = TempDir::new();
    let log = dir.path.join("stderr.log");
    let env = [("LOG_LEVEL", "debug"), ("JWT_SECRET", SECRET)];
    let mut sidecar =
        SidecarProcess::start_with_inbound(&services, &inbound, extra, &env, Some(&log)).await;
    let inbound = sidecar.inbound.expect("an inbound listener");
    let good = token("ana", "j-log");
    let bad = format!("{}x", token("ana", "j-bad"));
    let url = |token: &str| format!("ws://{inbound}/ws?access_token={token}");
    assert_eq!(handshake(ws(&url(&bad))).await.0, 401);
    let (status, _, connection) = handshake(ws(&url(&good))).await;
    assert_eq!(status, 101);
    let mut at_inbound = connection.expect("open");
    let (status, _, connection) =
        handshake(ws(&format!("ws://{}/chat/ws", sidecar.outbound))).await;
    assert_eq!(status, 101);
    let mut at_outbound = connection.expect("open");

    let terminated = Instant::now();
    sidecar.terminate();
    round_trip(&mut at_inbound, "during the grace").await;
    round_trip(&mut at_outbound, "during the grace").await;
    for connection in [&mut at_inbound, &mut at_outbound] {
        let reason = next_close(connection, Duration::from_secs(5)).await;
        assert!(
            terminated.elapsed() >= Duration::from_millis(1500),
            "closed only once the grace ran out, not after {:?}",
            terminated.elapsed()
        );
        assert_eq!(reason.map(|r| r.code), Some(ws::CloseCode::Away));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the sidecar did not exit");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }

    let lines = std::fs::read_to_string(&log).expect("the log");
    assert!(
        lines.contains(" 101"),
        "the upgrade's access line is there:\n{lines}"
    );
    assert!(
        lines.contains(" 401"),
        "the refusal's access line is there:\n{lines}"
    );
    for token in [&good, &bad] {
        let signature = token.rsplit('.').next().expect("a signature");
        assert!(
            !lines.contains(signature),
            "a token reached the log:\n{lines}"
        );
    }
}
