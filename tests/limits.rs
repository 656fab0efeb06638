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
                &format!("outrigger_redis_errors_total{{op=\"{op}\",role=\"standalone\"}}"),
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

/// GETs of `path` by user ana, `per_lane` on each of `LANES` connections to
/// every sidecar at once, as fast as they are answered: how many were let
/// through, and the rate each sidecar took (requests a second).
async fn hammer(sidecars: &[outrigger::Sidecar], path: &str, per_lane: usize) -> (usize, f64) {
    const LANES: usize = 8;
    let started = std::time::Instant::now();
    let lanes = sidecars.iter().flat_map(|sidecar| {
        let url = format!("http://{}{path}", sidecar.inbound_addr().expect("inbound"));
        (0..LANES).map(move |_| {
            let url = url.clone();
            async move {
                let client = client();
                let mut admitted = 0;
                for _ in 0..per_lane {
                    let status = client
                        .get(&url)
                        .insert_header(("x-api-key", "k-ana"))
                        .send()
                        .await
                        .expect("an answer")
                        .status()
                        .as_u16();
                    assert!(status == 200 || status == 429, "answered {status}");
                    admitted += usize::from(status == 200);
                }
                admitted
            }
        })
    });
    let admitted = futures_util::future::join_all(lanes).await.iter().sum();
    let rate = (LANES * per_lane) as f64 / started.elapsed().as_secs_f64();
    (admitted, rate)
}

/// Script calls Redis has run (`EVALSHA` and `EVAL`), from `INFO commandstats`.
fn script_calls(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The upper bound of the histogram bucket holding a sidecar's slowest
/// sync of approximate limits (seconds).
fn slowest_sync(metrics: &str) -> f64 {
    let series = "outrigger_rate_limit_sync_duration_seconds";
    let syncs =
        metric(metrics, &format!("{series}_count{{result=\"ok\"}}")).expect("syncs counted");
    assert!(syncs > 0.0, "the sidecar synced");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{series}_bucket{{result=\"ok\",le=\"")))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.parse::<f64>().ok()?, count.parse::<f64>().ok()?))
        })
        .find(|(_, count)| *count >= syncs)
        .map(|(le, _)| le)
        .expect("a bucket holds every sync")
}

/// Hits in every rate-limit window Redis holds.
fn hits_in_redis(redis: &RedisServer) -> u64 {
    redis
        .cli(&["--scan", "--pattern", "outrigger:ratelimit:*"])
        .lines()
        .filter_map(|key| redis.cli(&["ZCARD", key]).parse::<u64>().ok())
        .sum()
}

#[actix_web::test]
async fn an_approximate_limit_stays_within_its_bound_across_sidecars_and_spares_redis() {
    const LIMIT: usize = 100;
    const SIDECARS: usize = 3;
    const PER_LANE: usize = 90; // 3 sidecars x 8 lanes x 90 = 2,160 requests a phase
    let redis = RedisServer::start().await;
    let app = Replica::start().await;
    let limits = "  rate_limit:
    routes:
      - { path: /exact, limit: 100 }
      - { path: /search, limit: 100, mode: approximate }";
    // A timeout no call reaches on a loaded machine: this test is about
    // sharing, not about Redis failing (where each sidecar counts alone).
    let yaml = format!(
        "{}redis: {{ url: \"{}\", timeout: 10s }}",
        config(&app, limits, None),
        redis.url()
    );
    let mut sidecars = Vec::new();
    for _ in 0..SIDECARS {
        sidecars.push(sidecar_from(&yaml, &KEYS).await);
    }

    let before = script_calls(&redis);
    let (exact, _) = hammer(&sidecars, "/exact", PER_LANE).await;
    let exact_calls = script_calls(&redis) - before;
    assert_eq!(exact, LIMIT, "the exact limit is exact across sidecars");

    let before = script_calls(&redis);
    let (approximate, rate) = hammer(&sidecars, "/search", PER_LANE).await;
    eventually("every admitted hit reaches Redis", || async {
        hits_in_redis(&redis) == (LIMIT + approximate) as u64
    })
    .await;
    let approximate_calls = script_calls(&redis) - before;
    assert!(
        approximate_calls * 10 <= exact_calls,
        "{approximate_calls} Redis script calls where the exact limit made {exact_calls}"
    );
    // The bound of docs/guide/inbound.md: limit + 2 (K - 1) B, where a
    // sidecar holds B = min(limit / 100, r S) + 2 r T hits Redis has not
    // counted, T being its slowest sync (here 1 + 2 r T: 1% of 100 is 1).
    let mut slowest: f64 = 0.0;
    for sidecar in &sidecars {
        let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
        slowest = slowest.max(slowest_sync(&metrics));
    }
    let held = 1.0 + 2.0 * rate * slowest;
    let bound = LIMIT as f64 + 2.0 * (SIDECARS - 1) as f64 * held;
    assert!(
        (LIMIT..=bound as usize).contains(&approximate),
        "{approximate} let through at {rate:.0} requests/s a sidecar, syncs within {slowest}s: \
         at least the limit, at most {bound:.0}"
    );

    let before = script_calls(&redis);
    for sidecar in &sidecars {
        let refused = send(sidecar, "GET", "/search", Some("k-ana")).await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert!(refused
            .retry_after
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s))));
    }
    assert_eq!(
        script_calls(&redis),
        before,
        "a user known to be over the limit costs no Redis call"
    );
}

/// Syncs of approximate limits a sidecar counted with `result`.
async fn syncs(sidecar: &outrigger::Sidecar, result: &str) -> f64 {
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    let series = format!("outrigger_rate_limit_sync_duration_seconds_count{{result=\"{result}\"}}");
    metric(&metrics, &series).unwrap_or(0.0)
}

#[actix_web::test]
async fn an_approximate_limit_counts_in_process_while_redis_is_down_and_syncs_again_after() {
    let mut redis = RedisServer::start().await;
    let app = Replica::start().await;
    let limits = "  rate_limit:\n    routes: [{ path: /search, limit: 5, mode: approximate }]";
    let sidecar = sidecar_from(&config(&app, limits, Some(&redis)), &KEYS).await;
    for _ in 0..2 {
        assert_eq!(
            send(&sidecar, "GET", "/search", Some("k-ana")).await.status,
            200
        );
    }
    eventually("the hits reach Redis", || async {
        hits_in_redis(&redis) == 2
    })
    .await;

    redis.kill();
    let statuses = std::cell::RefCell::new(Vec::new());
    eventually(
        "while Redis is down the limit is kept in process",
        || async {
            let answer = send(&sidecar, "GET", "/search", Some("k-ana")).await;
            statuses.borrow_mut().push(answer.status);
            answer.status == 429 && syncs(&sidecar, "error").await > 0.0
        },
    )
    .await;
    let statuses = statuses.into_inner();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "every request is answered: {statuses:?}"
    );
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (5..=3 + 5).contains(&admitted),
        "at most the 3 left of the shared count, then 5 counted in process from zero: {statuses:?}"
    );

    redis.restart().await;
    let failed = syncs(&sidecar, "error").await;
    let synced = syncs(&sidecar, "ok").await;
    eventually("the key syncs with Redis again", || async {
        let status = send(&sidecar, "GET", "/search", Some("k-ana")).await.status;
        status == 200 && syncs(&sidecar, "ok").await > synced && hits_in_redis(&redis) > 0
    })
    .await;
    assert!(syncs(&sidecar, "error").await >= failed);
}
