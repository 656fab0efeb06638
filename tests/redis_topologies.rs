//! The shared store on the Redis topologies production runs: a cluster of
//! three masters (the cache, per-user limits and revocations behave as on
//! one Redis, with users spread over the masters) and a master behind a
//! sentinel (found through it, and followed through a failover without a
//! failed request).

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::client::{client, get_text, x_cache};
use support::eventually::eventually;
use support::metrics::metric;
use support::redis::{RedisCluster, RedisSentinel, MASTER_NAME};
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from};

const ENV: [(&str, &str); 1] = [("JWT_SECRET", "topology-secret")];

/// A sidecar's config: JWTs with revocation (let through while Redis
/// cannot say, so a failover fails no request), 5 reports a minute per
/// user, 1,000 roomy calls, 5 searches counted approximately, a GET
/// cache, and `redis`.
fn config(app: &Replica, redis: &str) -> String {
    format!(
        "{}
inbound:
  auth:
    jwt: {{ algorithms: [HS256] }}
    revocation: true
    logout: /auth/logout
    revocation_on_error: allow
  rate_limit:
    window: 1m
    routes:
      - {{ path: /reports, limit: 5 }}
      - {{ path: /roomy, limit: 1000 }}
      - {{ path: /search, limit: 5, mode: approximate }}
  cache:
    default_ttl: 60s
    bypass: [/auth, /roomy, /reports, /search]
{redis}",
        listeners_with_inbound(app.endpoint())
    )
}

fn bearer(user: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"sub": user, "exp": now + 600, "jti": format!("{user}-{now}")});
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"topology-secret"),
    );
    format!("Bearer {}", token.expect("signs"))
}

/// What the inbound listener answered: status, `x-cache`, `x-ratelimit-remaining`.
struct Answer {
    status: u16,
    cache: Option<String>,
    remaining: Option<u32>,
}

async fn send(sidecar: &outrigger::Sidecar, method: &str, path: &str, token: &str) -> Answer {
    let addr = sidecar.inbound_addr().expect("inbound");
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
    let response = client()
        .request(method, format!("http://{addr}{path}"))
        .insert_header(("authorization", token))
        .send()
        .await
        .expect("an answer");
    Answer {
        status: response.status().as_u16(),
        cache: x_cache(&response),
        remaining: response
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    }
}

#[actix_web::test]
async fn a_cluster_keeps_the_cache_limits_and_revocations_with_users_spread_over_masters() {
    let mut cluster = RedisCluster::start(3).await;
    let app = Replica::start().await;
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let redis = format!(
        "redis: {{ mode: cluster, urls: [{}], timeout: 200ms }}",
        urls.join(", ")
    );
    let sidecars = [
        sidecar_from(&config(&app, &redis), &ENV).await,
        sidecar_from(&config(&app, &redis), &ENV).await,
        sidecar_from(&config(&app, &redis), &ENV).await,
    ];
    let ana = bearer("ana");

    let first = send(&sidecars[0], "GET", "/items", &ana).await;
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("MISS")));
    eventually("another sidecar hits ana's cached /items", || async {
        send(&sidecars[1], "GET", "/items", &ana)
            .await
            .cache
            .as_deref()
            == Some("HIT")
    })
    .await;

    let mut allowed = 0;
    for attempt in 0..9 {
        match send(&sidecars[attempt % 3], "POST", "/reports", &ana)
            .await
            .status
        {
            200 => allowed += 1,
            429 => {}
            other => panic!("report {attempt} answered {other}"),
        }
    }
    assert_eq!(
        allowed, 5,
        "three sidecars together allow exactly the limit"
    );
    let metrics = get_text(&format!("http://{}/metrics", sidecars[0].admin_addr())).await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_redis_command_duration_seconds_count{op=\"rate_limit\"}"
        ),
        Some(3.0),
        "each of this sidecar's three counted reports is timed"
    );

    // An approximate limit's syncs run on the cluster too: the window and
    // the usage record they update share the user's slot.
    for attempt in 0..9 {
        let status = send(&sidecars[attempt % 3], "GET", "/search", &ana)
            .await
            .status;
        assert!(
            status == 200 || status == 429,
            "search {attempt} answered {status}"
        );
    }
    eventually(
        "every sidecar syncs its searches with the cluster",
        || async {
            let mut synced = true;
            for sidecar in &sidecars {
                let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
                let syncs = |result: &str| {
                    let series = format!(
                        "outrigger_rate_limit_sync_duration_seconds_count{{result=\"{result}\"}}"
                    );
                    metric(&metrics, &series).unwrap_or(0.0)
                };
                synced &= syncs("ok") > 0.0 && syncs("error") == 0.0;
            }
            synced
        },
    )
    .await;

    // Ten more users, each with a cached page and a rate-limit window.
    for user in 0..10 {
        let token = bearer(&format!("user-{user}"));
        let sidecar = &sidecars[user % 3];
        assert_eq!(send(sidecar, "GET", "/items", &token).await.status, 200);
        assert_eq!(send(sidecar, "POST", "/reports", &token).await.status, 200);
    }
    let sizes: Vec<u64> = cluster.masters.iter().map(|m| m.dbsize()).collect();
    assert!(
        sizes.iter().filter(|&&size| size > 0).count() >= 2,
        "users' keys spread over the masters: {sizes:?}"
    );

    assert_eq!(
        send(&sidecars[2], "POST", "/auth/logout", &ana)
            .await
            .status,
        200
    );
    for sidecar in &sidecars {
        assert_eq!(
            send(sidecar, "GET", "/orders", &ana).await.status,
            401,
            "every sidecar sees the revocation"
        );
    }

    // A master dies (no replica takes its slots): every user is still
    // answered, uncached or counted in process where Redis cannot say.
    cluster.masters[0].kill();
    for user in 0..10 {
        let token = bearer(&format!("user-{user}"));
        let sidecar = &sidecars[user % 3];
        let page = send(sidecar, "GET", "/items", &token).await;
        assert_eq!(page.status, 200, "user-{user}'s page");
        assert!(
            matches!(page.cache.as_deref(), Some("HIT" | "BYPASS")),
            "{:?}",
            page.cache
        );
        assert_eq!(send(sidecar, "POST", "/reports", &token).await.status, 200);
    }
}

/// Whether two sidecars count in one window: the second sees one fewer left.
async fn limits_shared(one: &outrigger::Sidecar, two: &outrigger::Sidecar, token: &str) -> bool {
    let first = send(one, "GET", "/roomy", token).await;
    let second = send(two, "GET", "/roomy", token).await;
    for answer in [&first, &second] {
        assert_eq!(answer.status, 200, "no request fails, failover or not");
    }
    matches!((first.remaining, second.remaining), (Some(a), Some(b)) if b + 1 == a)
}

#[actix_web::test]
async fn the_master_is_found_through_the_sentinel_and_followed_through_a_failover() {
    let mut group = RedisSentinel::start().await;
    let app = Replica::start().await;
    let redis = format!(
        "redis: {{ mode: sentinel, sentinel: {{ master_name: {MASTER_NAME}, urls: [\"{}\"] }}, timeout: 200ms }}",
        group.url()
    );
    let one = sidecar_from(&config(&app, &redis), &ENV).await;
    let two = sidecar_from(&config(&app, &redis), &ENV).await;
    let ana = bearer("ana");
    assert!(
        limits_shared(&one, &two, &ana).await,
        "the sidecars share the master the sentinel names"
    );
    assert!(group.master.dbsize() > 0, "the windows live on the master");

    // SIGKILL: the master's connections break at once, and the sentinel
    // promotes the replica once the master has been silent for 500 ms.
    group.master.kill();
    eventually(
        "limits are shared again, on the promoted replica",
        || async { limits_shared(&one, &two, &ana).await },
    )
    .await;
    assert_eq!(
        group.master_port(),
        Some(group.replica.port),
        "the sentinel promoted the replica"
    );
}
