//! The ready-made configs in `sidecar-config/examples/`: each passes
//! `outrigger check` without the runtime secrets, and each shows its headline behaviour when run with
//! its listeners on ephemeral ports and its endpoints on test upstreams
//! (or, for the registry example, a test registry listing them).

mod support;

use std::process::Command;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::client::{client, get_json, status_of, x_cache};
use support::eventually::eventually;
use support::grpc::{grpc_call, CallArgs, GrpcReplica};
use support::ports::closed_port;
use support::registry::Registry;
use support::replica::{header_seen, Replica};
use support::sidecar::sidecar_from;
use support::tls::{Certificates, Pair};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sidecar-config/examples");
const SECRET: &str = "examples-secret";
const ENV: [(&str, &str); 1] = [("JWT_SECRET", SECRET)];

/// An example's text with its documented ports swapped for test ones: the
/// listeners on 127.0.0.1:0 (outbound, inbound and admin), the app and the first endpoint on `app`, the
/// second endpoint on `second`. A file without listeners gets them first.
fn runnable(name: &str, app: &Replica, second: Option<&Replica>) -> String {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/{name}")).expect("the example");
    let mut text = text
        .replace("127.0.0.1:15001", "127.0.0.1:0")
        .replace("0.0.0.0:15001", "127.0.0.1:0")
        .replace("0.0.0.0:15006", "127.0.0.1:0")
        .replace("0.0.0.0:15090", "127.0.0.1:0")
        .replace("127.0.0.1:8080", &app.endpoint())
        .replace("127.0.0.1:18081", &app.endpoint());
    if let Some(second) = second {
        text = text.replace("127.0.0.1:18082", &second.endpoint());
    }
    if !text.contains("listeners:") {
        text = format!(
            "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}\n{text}"
        );
    }
    text
}

fn token(claims: serde_json::Value) -> String {
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    format!("Bearer {}", token.expect("signs"))
}

/// Sends a GET, with an `Authorization` value when given; status and `X-Cache`.
async fn get(url: &str, authorization: Option<&str>) -> (u16, Option<String>) {
    let mut request = client().get(url);
    if let Some(value) = authorization {
        request = request.insert_header(("authorization", value));
    }
    let response = request.send().await.expect("an answer");
    (response.status().as_u16(), x_cache(&response))
}

/// Every `.yaml` under `dir`, at any depth.
fn yaml_files(dir: &std::path::Path, into: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a shipped config folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            yaml_files(&path, into);
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            into.push(path);
        }
    }
}

/// What CI does: `check` each shipped config on a machine without the
/// runtime secrets (an empty environment). A missing secret is a warning
/// naming its key path, never a failure.
#[test]
fn every_shipped_config_passes_check_without_the_secrets() {
    let mut files = Vec::new();
    yaml_files(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sidecar-config")),
        &mut files,
    );
    assert!(files.len() >= 5, "only {files:?}");
    for path in files {
        let output = Command::new(env!("CARGO_BIN_EXE_outrigger"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .env_clear()
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{}: {stderr}", path.display());
        assert!(
            !stderr.contains("problem(s)"),
            "{}: {stderr}",
            path.display()
        );
    }
}

#[actix_web::test]
async fn minimal_routes_to_its_replicas() {
    let (first, second) = (Replica::start().await, Replica::start().await);
    let sidecar = sidecar_from(&runnable("minimal.yaml", &first, Some(&second)), &[]).await;
    let url = format!("http://{}/budgeting/x", sidecar.outbound_addr());
    assert_eq!(get(&url, None).await.0, 200);
    assert_eq!(first.hits() + second.hits(), 1);
}

#[actix_web::test]
async fn grpc_calls_are_retried_past_an_unavailable_replica() {
    let down = GrpcReplica::start_with("down", &["--status", "UNAVAILABLE"]);
    let up = GrpcReplica::start("up");
    let text = std::fs::read_to_string(format!("{EXAMPLES}/grpc.yaml"))
        .expect("the example")
        .replace("127.0.0.1:18081", &down.address())
        .replace("127.0.0.1:18082", &up.address());
    let text = format!(
        "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}\n{text}"
    );
    let sidecar = sidecar_from(&text, &[]).await;
    let outbound = sidecar.outbound_addr().to_string();
    for _ in 0..4 {
        let outcome = grpc_call(
            &outbound,
            "Unary",
            CallArgs::new().authority("payments").payload("paid"),
        )
        .await;
        assert_eq!(outcome.code, "OK", "{outcome:?}");
        assert_eq!(
            outcome.initial.get("x-replica").map(String::as_str),
            Some("up")
        );
    }
}

#[actix_web::test]
async fn api_gateway_checks_tokens_and_caches_gets() {
    let app = Replica::start().await;
    let sidecar = sidecar_from(&runnable("api-gateway.yaml", &app, None), &ENV).await;
    let base = format!("http://{}", sidecar.inbound_addr().expect("inbound"));
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |exp: u64| json!({"sub": "ana", "iss": "mimascota.auth", "aud": "mimascota.front", "exp": exp});
    let valid = token(claims(now + 600));
    let me = format!("{base}/api/v1/auth/me");
    assert_eq!(
        get(&me, Some(&valid)).await,
        (200, Some("MISS".to_string()))
    );
    assert_eq!(get(&me, Some(&valid)).await, (200, Some("HIT".to_string())));
    let expired = token(claims(now - 120));
    assert_eq!(get(&me, Some(&expired)).await.0, 401, "past the 30s leeway");
    assert_eq!(get(&me, None).await.0, 401);
}

#[actix_web::test]
async fn per_user_limits_refuse_the_sixth_login_in_a_minute() {
    let app = Replica::start().await;
    let sidecar = sidecar_from(&runnable("per-user-limits.yaml", &app, None), &ENV).await;
    let login = format!(
        "http://{}/api/v1/auth/login",
        sidecar.inbound_addr().expect("inbound")
    );
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&login, None).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
}

#[actix_web::test]
async fn dual_port_gateway_guards_both_sides() {
    let (app, good, bad) = Replica::three().await;
    bad.answer_with(500);
    let registry = Registry::start().await;
    registry.register("catalog-good", "catalog", &good);
    registry.register("catalog-bad", "catalog", &bad);
    registry.register("orders-1", "orders", &good);
    let text = runnable("dual-port-gateway.yaml", &app, None)
        .replace("http://service-discovery:9000", &registry.url);
    let sidecar = sidecar_from(&text, &ENV).await;
    let admin = format!("http://{}", sidecar.admin_addr());

    // Internal side: no token needed; replicas come from the registry.
    let call = format!("http://{}/catalog/items", sidecar.outbound_addr());
    let breaker = format!("catalog/{}", bad.endpoint());
    let breaker_state = || async {
        let (_, breakers) = get_json(&format!("{admin}/circuit-breakers")).await;
        breakers["circuit_breakers"][&breaker]["state"].clone()
    };
    eventually("the bad replica has failed twice", || async {
        status_of(&call).await.expect("an answer");
        bad.hits() == 2
    })
    .await;
    assert_eq!(breaker_state().await, "closed", "2 failures in 10.5 s");
    eventually("the bad replica has failed a third time", || async {
        status_of(&call).await.expect("an answer");
        bad.hits() == 3
    })
    .await;
    // Outcomes reach the replica's actor in per-worker batches, up to ~1 ms late.
    eventually("the 3rd failure opens it", || async {
        breaker_state().await == "open"
    })
    .await;
    eventually("the registry is told to deregister it", || async {
        registry.deregistered() == vec!["catalog-bad".to_string()]
    })
    .await;
    for _ in 0..5 {
        assert_eq!(status_of(&call).await, Some(200));
    }
    assert_eq!(bad.hits(), 3, "an open breaker sends nothing for 30 s");

    // External side: a real HS256 token, cached GETs, revoked on logout.
    let base = format!("http://{}", sidecar.inbound_addr().expect("inbound"));
    let now = jsonwebtoken::get_current_timestamp();
    let valid = token(json!({"sub": "ana", "jti": "t-1", "exp": now + 600}));
    let profile = format!("{base}/profile");
    assert_eq!(get(&profile, None).await.0, 401, "no token");
    assert_eq!(
        get(&profile, Some(&valid)).await,
        (200, Some("MISS".to_string()))
    );
    assert_eq!(
        get(&profile, Some(&valid)).await,
        (200, Some("HIT".to_string()))
    );
    let logout = client()
        .post(format!("{base}/auth/logout"))
        .insert_header(("authorization", valid.as_str()))
        .send()
        .await
        .expect("an answer");
    assert_eq!(logout.status().as_u16(), 200);
    assert_eq!(
        get(&profile, Some(&valid)).await.0,
        401,
        "revoked on logout"
    );
}

/// Sends a GET, with an `Authorization` value when given: status, `X-Cache`
/// and the replica's echo (`Null` when we answered).
async fn fetch(url: &str, authorization: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
    let mut request = client().get(url);
    if let Some(value) = authorization {
        request = request.insert_header(("authorization", value));
    }
    let mut response = request.send().await.expect("an answer");
    let cache = x_cache(&response);
    let echo = response.json().await.unwrap_or_default();
    (response.status().as_u16(), cache, echo)
}

#[actix_web::test]
async fn gateway_routes_external_callers_after_auth_and_internal_ones_without() {
    let [auth, catalog, canary, budgeting] = [
        Replica::start().await,
        Replica::start().await,
        Replica::start().await,
        Replica::start().await,
    ];
    let text = runnable("gateway.yaml", &auth, Some(&catalog))
        .replace("127.0.0.1:18083", &canary.endpoint())
        .replace("127.0.0.1:18084", &budgeting.endpoint());
    let sidecar = sidecar_from(&text, &ENV).await;
    let path = |echo: &serde_json::Value| echo["path"].as_str().unwrap_or("?").to_string();

    // External port: a token first, then the routes; the service sees the caller.
    let external = format!("http://{}", sidecar.inbound_addr().expect("inbound"));
    let now = jsonwebtoken::get_current_timestamp();
    let ana = token(json!({"sub": "ana", "exp": now + 600}));
    let me = format!("{external}/api/v1/auth/me");
    assert_eq!(fetch(&me, None).await.0, 401);
    let (status, cache, echo) = fetch(&me, Some(&ana)).await;
    assert_eq!(
        (status, cache, path(&echo)),
        (200, Some("BYPASS".into()), "/auth/me".into())
    );
    assert_eq!(
        header_seen(&echo, "x-outrigger-user").as_deref(),
        Some("ana")
    );
    let plans = format!("{external}/api/v1/budgeting/plans?year=2025");
    let (status, cache, echo) = fetch(&plans, Some(&ana)).await;
    assert_eq!(
        (status, cache, path(&echo)),
        (200, Some("MISS".into()), "/plans".into())
    );
    assert_eq!(fetch(&plans, Some(&ana)).await.1.as_deref(), Some("HIT"));
    assert_eq!(budgeting.hits(), 1, "the second came from the cache");
    let internal_from_outside = format!("{external}/internal/budgeting/plans");
    assert_eq!(fetch(&internal_from_outside, Some(&ana)).await.0, 403);
    let unknown = fetch(&format!("{external}/api/v1/billing/x"), Some(&ana)).await;
    assert_eq!(unknown.0, 404, "{:?}", unknown.2);

    // Internal port: no token; /internal/<service>/ and the first segment.
    let internal = format!("http://{}", sidecar.outbound_addr());
    for (url, replica, seen) in [
        (
            format!("{internal}/internal/catalog-canary/items"),
            &canary,
            "/items",
        ),
        (
            format!("{internal}/internal/budgeting/plans"),
            &budgeting,
            "/plans",
        ),
        (format!("{internal}/budgeting/plans"), &budgeting, "/plans"),
    ] {
        let hits = replica.hits();
        let (status, _, echo) = fetch(&url, None).await;
        assert_eq!((status, path(&echo)), (200, seen.to_string()), "{url}");
        assert_eq!(replica.hits(), hits + 1, "{url}");
    }

    // The canary gets 1 request in 10 of /api/v1/catalog/: 1,000 on the internal port.
    let (stable, canaries) = (catalog.hits(), canary.hits());
    let items = format!("{internal}/api/v1/catalog/items");
    let callers = (0..8).map(|_| {
        let items = items.clone();
        async move {
            for _ in 0..125 {
                assert_eq!(status_of(&items).await, Some(200));
            }
        }
    });
    futures_util::future::join_all(callers).await;
    let (stable, canaries) = (catalog.hits() - stable, canary.hits() - canaries);
    assert_eq!(stable + canaries, 1000);
    // 10% +- 5 points: 1000 draws of a 10% share stray past that about once in 10^7 runs.
    assert!(
        (50..=150).contains(&canaries),
        "canary got {canaries} of 1000"
    );
}

#[actix_web::test]
async fn mesh_calls_the_catalog_over_mutual_tls_and_tells_it_who_called() {
    let certificates = Certificates::new();
    let frontend =
        certificates.server("frontend", "URI:spiffe://cluster.local/ns/shop/sa/frontend");
    let catalog = certificates.server("catalog", "URI:spiffe://cluster.local/ns/shop/sa/catalog");
    let app = Replica::start().await;
    let port = closed_port();
    let path = |file: &std::path::Path| file.to_str().expect("a UTF-8 scratch path").to_string();
    // The example twice: as the frontend pod, and as the catalog pod it
    // calls, whose inbound listener takes the mesh port.
    let pod = |identity: &Pair| {
        runnable("mesh.yaml", &app, None)
            .replace("/var/run/outrigger/identity/tls.crt", &path(&identity.cert))
            .replace("/var/run/outrigger/identity/tls.key", &path(&identity.key))
            .replace(
                "/var/run/outrigger/identity/ca.crt",
                &path(&certificates.ca()),
            )
            .replace("inbound_port: 15006", &format!("inbound_port: {port}"))
    };
    let catalog_pod = pod(&catalog).replace(
        "\n    bind: \"127.0.0.1:0\"",
        &format!("\n    bind: \"127.0.0.1:{port}\""),
    );
    let _catalog = sidecar_from(&catalog_pod, &[]).await;
    let frontend = sidecar_from(&pod(&frontend), &[]).await;
    let base = format!("http://{}/catalog", frontend.outbound_addr());
    let (status, echo) = get_json(&format!("{base}/items")).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(
        header_seen(&echo, "x-outrigger-peer-identity").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/frontend")
    );
    assert_eq!(
        header_seen(&echo, "x-outrigger-auth").as_deref(),
        Some("mesh")
    );
    let (status, _) = get_json(&format!("{base}/admin/users")).await;
    assert_eq!(status, 403, "only the ops console may call /admin/");
}
