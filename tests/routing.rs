//! Routing and load balancing: requests reach the right service, spread
//! over its replicas, and keep their method, path, query and headers.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::client::{client, get_json};
use support::raw::{raw_exchange, raw_json};
use support::replica::Replica;
use support::sidecar::sidecar;

fn three(upstreams: &[Replica]) -> String {
    let list: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.endpoint()))
        .collect();
    list.join(", ")
}

#[actix_web::test]
async fn sequential_requests_spread_fairly_over_three_replicas() {
    let upstreams = Replica::several(3).await;
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [{}] }}",
        three(&upstreams)
    ))
    .await;
    let url = format!("http://{}/api/work", sidecar.outbound_addr());
    for _ in 0..300 {
        assert_eq!(support::client::status_of(&url).await, Some(200));
    }
    let hits: Vec<usize> = upstreams.iter().map(Replica::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 300);
    assert!(
        hits.iter().all(|&h| (60..=140).contains(&h)),
        "unfair spread: {hits:?}"
    );
}

#[actix_web::test]
async fn least_load_sends_a_slow_replica_less() {
    let upstreams = Replica::several(3).await;
    upstreams[2].delay(Duration::from_millis(100));
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [{}] }}",
        three(&upstreams)
    ))
    .await;
    let url = format!("http://{}/api/work", sidecar.outbound_addr());
    let callers = (0..8).map(|_| {
        let url = url.clone();
        async move {
            for _ in 0..25 {
                assert_eq!(support::client::status_of(&url).await, Some(200));
            }
        }
    });
    futures_util::future::join_all(callers).await;
    let hits: Vec<usize> = upstreams.iter().map(Replica::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 200);
    assert!(
        hits[2] * 3 < hits[0] && hits[2] * 3 < hits[1],
        "the slow replica got too much: {hits:?}"
    );
}

#[actix_web::test]
async fn an_unknown_service_gets_404_with_a_json_error() {
    let upstream = Replica::start().await;
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    ))
    .await;
    let mut response = client()
        .get(format!("http://{}/nope/x", sidecar.outbound_addr()))
        .insert_header(("x-request-id", "req-404"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response
            .headers()
            .get("x-outrigger")
            .and_then(|v| v.to_str().ok()),
        Some("unknown_service")
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["request_id"], "req-404");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(upstream.hits(), 0);
}

#[actix_web::test]
async fn method_path_query_and_headers_arrive_intact_without_hop_by_hop_headers() {
    let upstream = Replica::start().await;
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    ))
    .await;
    let answer = raw_exchange(
        sidecar.outbound_addr(),
        "PATCH /api/a/b%20c?x=1&y=two&x=3 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\
         X-Multi: first\r\n\
         X-Multi: second\r\n\
         Connection: close, x-private\r\n\
         X-Private: secret\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Proxy-Authorization: Basic eDp5\r\n\
         X-Request-Id: req-echo\r\n\
         Content-Length: 5\r\n\
         \r\n\
         hello",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let echo = raw_json(&answer);
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(echo["path"], "/a/b%20c");
    assert_eq!(echo["query"], "x=1&y=two&x=3");
    assert_eq!(echo["body_bytes"], 5);
    let headers = echo["headers"].as_array().expect("headers");
    let values = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(values("x-multi"), vec!["first", "second"]);
    assert_eq!(values("x-request-id"), vec!["req-echo"]);
    assert_eq!(values("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(values("x-forwarded-proto"), vec!["http"]);
    assert_eq!(values("content-length"), vec!["5"]);
    for hop in ["x-private", "keep-alive", "te", "proxy-authorization"] {
        assert!(values(hop).is_empty(), "{hop} reached the replica");
    }
}

#[actix_web::test]
async fn host_headers_and_proxy_requests_name_the_service() {
    let upstream = Replica::start().await;
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    ))
    .await;
    let outbound = sidecar.outbound_addr();
    let (status, echo) = {
        let mut response = client()
            .get(format!("http://{outbound}/v1/items"))
            .insert_header(("host", "api.default.svc.cluster.local"))
            .send()
            .await
            .expect("an answer");
        (
            response.status().as_u16(),
            response.json::<Value>().await.expect("json"),
        )
    };
    assert_eq!(status, 200);
    assert_eq!(
        echo["path"], "/v1/items",
        "a Host route keeps the whole path"
    );

    // An absolute-form request, as an app with HTTP_PROXY=http://127.0.0.1:15001 sends it.
    let answer = raw_exchange(
        outbound,
        "GET http://api/v1/proxy?q=1 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(raw_json(&answer)["path"], "/v1/proxy");
    assert_eq!(upstream.hits(), 2);
    let (_, services) = get_json(&format!("http://{}/services", sidecar.admin_addr())).await;
    assert_eq!(
        services["services"][0]["replicas"][0]["address"],
        upstream.endpoint()
    );
}

#[actix_web::test]
async fn a_redirect_from_a_replica_goes_back_to_the_app_unfollowed() {
    let upstream = Replica::start().await;
    upstream.answer_with(302);
    upstream.answer_header("location", "/elsewhere");
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    ))
    .await;
    // A client that does not follow redirects either, to see what the sidecar sent.
    let app = awc::Client::builder().disable_redirects().finish();
    let response = app
        .get(format!("http://{}/api/old", sidecar.outbound_addr()))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 302);
    let location = response.headers().get("location").map(|v| v.as_bytes());
    assert_eq!(location, Some(&b"/elsewhere"[..]));
    assert_eq!(upstream.hits(), 1, "the sidecar did not follow it");
}

/// Three services, each one replica, and `routes` as the route table.
async fn routed(routes: &str) -> (outrigger::Sidecar, [Replica; 3]) {
    let replicas = [
        Replica::start().await,
        Replica::start().await,
        Replica::start().await,
    ];
    let sidecar = support::sidecar::sidecar_with(
        &format!("routes:\n{routes}"),
        &format!(
            "  - {{ name: auth, endpoints: [\"{}\"] }}
  - {{ name: catalog, endpoints: [\"{}\"] }}
  - {{ name: catalog-canary, endpoints: [\"{}\"] }}",
            replicas[0].endpoint(),
            replicas[1].endpoint(),
            replicas[2].endpoint()
        ),
    )
    .await;
    (sidecar, replicas)
}

/// The path a replica saw for `request`, and which replica (by hits) saw it.
async fn path_seen(request: awc::ClientRequest, replicas: &[Replica; 3]) -> (String, usize) {
    let before: Vec<usize> = replicas.iter().map(Replica::hits).collect();
    let mut response = request.send().await.expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    let echo: Value = response.json().await.expect("json");
    let which = replicas
        .iter()
        .zip(before)
        .position(|(replica, hits)| replica.hits() > hits)
        .expect("a replica was called");
    (echo["path"].as_str().unwrap_or("?").to_string(), which)
}

#[actix_web::test]
async fn routes_send_by_prefix_and_by_service_segment_with_the_prefix_rewritten() {
    let (sidecar, replicas) = routed(
        "  - { match: { path_prefix: /api/v1/auth/ }, service: auth, rewrite_prefix: / }
  - { match: { path_prefix: \"/internal/{service}/\" }, service: \"{service}\", rewrite_prefix: /v2/ }
  - { match: { path: /catalog/health }, service: catalog }",
    )
    .await;
    let base = format!("http://{}", sidecar.outbound_addr());
    let get = |path: &str| client().get(format!("{base}{path}"));
    assert_eq!(
        path_seen(get("/api/v1/auth/me?full=1"), &replicas).await,
        ("/me".to_string(), 0)
    );
    assert_eq!(
        path_seen(get("/internal/catalog-canary/items/7"), &replicas).await,
        ("/v2/items/7".to_string(), 2)
    );
    assert_eq!(
        path_seen(get("/internal/auth"), &replicas).await,
        ("/v2".to_string(), 0)
    );
    assert_eq!(
        path_seen(get("/catalog/health"), &replicas).await,
        ("/catalog/health".to_string(), 1),
        "a routed request keeps its path: strip_prefix does not apply"
    );
    assert_eq!(
        path_seen(get("/catalog/items"), &replicas).await,
        ("/items".to_string(), 1),
        "no route matches: the first segment still names the service"
    );
    let response = get("/internal/billing/x").send().await.expect("an answer");
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.headers().get("x-outrigger").map(|v| v.as_bytes()),
        Some(&b"unknown_service"[..])
    );
}

#[actix_web::test]
async fn methods_and_headers_pick_among_routes_of_one_prefix() {
    let (sidecar, replicas) = routed(
        "  - { match: { path_prefix: /shop, methods: [POST, PUT] }, service: auth }
  - { match: { path_prefix: /shop, headers: { X-Canary: \"always\" } }, service: catalog-canary }
  - { match: { path_prefix: /shop }, service: catalog }",
    )
    .await;
    let url = format!("http://{}/shop/cart", sidecar.outbound_addr());
    assert_eq!(path_seen(client().post(&url), &replicas).await.1, 0);
    assert_eq!(path_seen(client().put(&url), &replicas).await.1, 0);
    let canary = client().get(&url).insert_header(("x-canary", "always"));
    assert_eq!(path_seen(canary, &replicas).await.1, 2);
    let other = client().get(&url).insert_header(("x-canary", "never"));
    assert_eq!(path_seen(other, &replicas).await.1, 1);
    assert_eq!(path_seen(client().get(&url), &replicas).await.1, 1);
}

#[actix_web::test]
async fn a_weighted_split_sends_each_backend_its_share_of_1000_requests() {
    let (sidecar, replicas) = routed(
        "  - match: { path_prefix: /shop }
    backends: [{ service: catalog, weight: 90 }, { service: catalog-canary, weight: 10 }]",
    )
    .await;
    let url = format!("http://{}/shop/items", sidecar.outbound_addr());
    let callers = (0..8).map(|_| {
        let url = url.clone();
        async move {
            for _ in 0..125 {
                assert_eq!(support::client::status_of(&url).await, Some(200));
            }
        }
    });
    futures_util::future::join_all(callers).await;
    let (stable, canary) = (replicas[1].hits(), replicas[2].hits());
    assert_eq!((replicas[0].hits(), stable + canary), (0, 1000));
    // 10% +- 5 points: 1000 draws of a 10% share stray past that about once in 10^7 runs.
    assert!((50..=150).contains(&canary), "canary got {canary} of 1000");
}
