//! Inbound rate limits and in-flight caps: sliding windows per route and
//! role, exact across sidecars sharing Redis, falling back to in-process
//! counting while Redis is down and sharing again once it is back.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::client::{client, get_json, get_text};
use support::eventually::eventually;
use support::metrics::metric;
use support::redis::RedisServer;
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from};

fn config(app: &Replica, limits: &str, redis: Option<&RedisServer>) -> String {
    let redis = redis.map_or_else(String::new, |r| {
        format!("redis: {{ url: \"{}\", timeout: 200ms }}", r.url())
    });
    format!(
        "{}
inbound:
  auth:
    api_keys: {{ header: x-api-key }}
    exempt: [/auth/login, /public]
{limits}
{redis}",
        listeners_with_inbound(app.endpoint())
    )
}

const KEYS: [(&str, &str); 1] = [("OUTRIGGER_API_KEYS", "ana:k-ana:admin, bob:k-bob:viewer")];

struct Answer {
    status: u16,
    remaining: Option<u32>,
    retry_after: Option<String>,
    body: Value,
}

async fn send(sidecar: &outrigger::Sidecar, method: &str, path: &str, key: Option<&str>) -> Answer {
    let addr = sidecar.inbound_addr().expect("inbound");
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client().request(method, format!("http://{addr}{path}"));
    if let Some(key) = key {
        request = request.insert_header(("x-api-key", key));
    }
    let mut response = request.send().await.expect("an answer");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let remaining = header("x-ratelimit-remaining").and_then(|v| v.parse().ok());
    let retry_after = header("retry-after");
    Answer {
        status: response.status().as_u16(),
        remaining,
        retry_after,
        body: response.json().await.unwrap_or(Value::Null),
    }
}

const REPORTS_LIMIT: &str = "  rate_limit:
    window: 1m
    routes: [{ path: /reports, limit: 5 }, { path: /roomy, limit: 1000 }]";

#[actix_web::test]
async fn a_route_limit_counts_down_then_refuses_with_retry_after() {
    let app = Replica::start().await;
    let sidecar = sidecar_from(&config(&app, REPORTS_LIMIT, None), &KEYS).await;
    for expected in (0..5).rev() {
        let answer = send(&sidecar, "POST", "/reports", Some("k-ana")).await;
        assert_eq!((answer.status, answer.remaining), (200, Some(expected)));
    }
    let refused = send(&sidecar, "POST", "/reports", Some("k-ana")).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused
        .retry_after
        .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s))));
    assert_eq!(
        refused.body["error"],
        "rate limit of 5 per 60s reached (route)"
    );
    assert_eq!(app.hits(), 5);
    let (_, usage) = get_json(&format!(
        "http://{}/rate-limit/users/ana",
        sidecar.admin_addr()
    ))
    .await;
    assert_eq!(usage["endpoints"]["/reports"], 6, "{usage}");
    assert_eq!(usage["total"], 6);
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert_eq!(
        metric(&metrics, "outrigger_rate_limited_total{scope=\"route\"}"),
        Some(1.0)
    );
}

#[actix_web::test]
async fn roles_set_per_user_limits_and_anonymous_callers_count_by_address() {
    let app = Replica::start().await;
    let limits = "  rate_limit: { window: 1m, roles: { admin: 3, viewer: 1, anonymous: 2 } }";
    let sidecar = sidecar_from(&config(&app, limits, None), &KEYS).await;
    let statuses = |key: Option<&'static str>, path: &'static str, n: usize| {
        let sidecar = &sidecar;
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                statuses.push(send(sidecar, "GET", path, key).await.status);
            }
            statuses
        }
    };
    assert_eq!(
        statuses(Some("k-ana"), "/orders", 4).await,
        vec![200, 200, 200, 429]
    );
    assert_eq!(
        statuses(Some("k-bob"), "/orders", 2).await,
        vec![200, 429],
        "each user has their own window"
    );
    assert_eq!(statuses(None, "/public", 3).await, vec![200, 200, 429]);
    let admin = sidecar.admin_addr();
    let (_, usage) = get_json(&format!("http://{admin}/rate-limit/users/ana")).await;
    assert_eq!(
        usage["endpoints"],
        json!({"/orders": 4}),
        "the endpoint, not the role limit it counts against: {usage}"
    );
}

#[actix_web::test]
async fn sidecars_sharing_redis_share_the_limit_and_survive_its_outage() {
    let mut redis = RedisServer::start().await;
    let app = Replica::start().await;
    let one = sidecar_from(&config(&app, REPORTS_LIMIT, Some(&redis)), &KEYS).await;
    let two = sidecar_from(&config(&app, REPORTS_LIMIT, Some(&redis)), &KEYS).await;
    let mut allowed = 0;
    for attempt in 0..8 {
        let sidecar = if attempt % 2 == 0 { &one } else { &two };
        if send(sidecar, "POST", "/reports", Some("k-ana"))
            .await
            .status
            == 200
        {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 5,
        "the two sidecars together allow exactly the limit"
    );

    redis.kill();
    for _ in 0..6 {
        let answer = send(&one, "POST", "/reports", Some("k-bob")).await;
        assert!(
            answer.status == 200 || answer.status == 429,
            "every request is answered: {}",
            answer.body
        );
    }
    let metrics = get_text(&format!("http://{}/metrics", one.admin_addr())).await;
    let errors: f64 = ["rate_limit", "usage"]
        .iter()
        .filter_map(|op| {
            metric(
                &metrics,
                &format!("outrigger_redis_errors_total{{op=\"{op}\"}}"),
            )
        })
        .sum();
    assert!(errors > 0.0, "Redis errors are counted");
    assert_eq!(
        send(&one, "POST", "/reports", Some("k-bob")).await.status,
        429,
        "while Redis is down the limit is kept in process"
    );

    redis.restart().await;
    eventually("limits are shared through Redis again", || async {
        let first = send(&one, "GET", "/roomy", Some("k-ana")).await;
        let second = send(&two, "GET", "/roomy", Some("k-ana")).await;
        matches!((first.remaining, second.remaining), (Some(a), Some(b)) if b + 1 == a)
    })
    .await;
}

#[actix_web::test]
async fn in_flight_caps_refuse_the_excess_per_route() {
    let app = Replica::start().await;
    app.delay(Duration::from_millis(500));
    let caps = "  concurrency: { global: 100, per_route: 2 }";
    let sidecar = sidecar_from(&config(&app, caps, None), &KEYS).await;
    let requests = (0..5).map(|_| send(&sidecar, "GET", "/slow", Some("k-ana")));
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        send(&sidecar, "GET", "/other", Some("k-ana")).await.status,
        200
    );
}

#[actix_web::test]
async fn without_redis_the_limit_denies_or_allows_as_configured() {
    let mut redis = RedisServer::start().await;
    let app = Replica::start().await;
    let limits = |on_error: &str| {
        format!("  rate_limit:\n    routes: [{{ path: /reports, limit: 5 }}]\n    on_redis_error: {on_error}")
    };
    let deny = sidecar_from(&config(&app, &limits("deny"), Some(&redis)), &KEYS).await;
    let allow = sidecar_from(&config(&app, &limits("allow"), Some(&redis)), &KEYS).await;
    redis.kill();
    let refused = send(&deny, "GET", "/reports", Some("k-ana")).await;
    assert_eq!(
        refused.status, 429,
        "on_redis_error: deny: {}",
        refused.body
    );
    for _ in 0..7 {
        let answer = send(&allow, "GET", "/reports", Some("k-ana")).await;
        assert_eq!(
            (answer.status, answer.remaining),
            (200, None),
            "on_redis_error: allow: no limit at all"
        );
    }
}
