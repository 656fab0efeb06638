//! The shared store on the Redis topologies production runs: a cluster of
//! three masters (the cache, per-user limits and revocations behave as on
//! one Redis, with users spread over the masters) and a master behind a
//! sentinel (found through it, and followed through a failover without a
//! failed request); and Redis over TLS with a password.

mod support;

use serde_json::json;
use support::client::{client, get_text, x_cache};
use support::eventually::eventually;
use support::keys::hs256_bearer;
use support::metrics::{metric, metric_sum};
use support::redis::{RedisCluster, RedisSentinel, RedisServer, Secured, SlowDoor, MASTER_NAME};
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from};
use support::tls::Certificates;

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
    hs256_bearer(b"topology-secret", &claims)
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

#[actix_web::test]
async fn moving_a_masters_slots_under_traffic_fails_no_request() {
    let cluster = RedisCluster::start(3).await;
    let app = Replica::start().await;
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    // Roomy: the client's slot-map refresh after a MOVED can take a debug
    // build past 200 ms, which is not what this test is about.
    let redis = format!(
        "redis: {{ mode: cluster, urls: [{}], timeout: 1s }}",
        urls.join(", ")
    );
    let one = sidecar_from(&config(&app, &redis), &ENV).await;
    let two = sidecar_from(&config(&app, &redis), &ENV).await;
    let traffic = Traffic::start(&[&one, &two]);
    eventually("the traffic's pages are cached", || async {
        cache_shared(&one, &two, "before").await
    })
    .await;
    // 3,000 of the first master's 5,461 slots, and the rest if none of the
    // traffic's keys there was in those: each stays out with a chance near
    // 0.45, and a run found only 7 keys there, all out (0.45^7, 0.4%).
    let keys = cluster.masters[0].dbsize();
    cluster.move_slots(0, 1, 3000).await;
    if cluster.masters[0].dbsize() == keys {
        cluster.move_slots(0, 1, 5461 - 3000).await;
    }
    let left = cluster.masters[0].dbsize();
    assert!(
        left < keys,
        "keys moved off the first master: {keys} -> {left}"
    );
    let mut tries = 0;
    eventually("limits and pages are shared after the move", || {
        tries += 1;
        let (one, two, ana) = (&one, &two, bearer("ana"));
        async move {
            limits_shared(one, two, &ana).await
                && cache_shared(one, two, &format!("moved-{tries}")).await
        }
    })
    .await;
    let (sent, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    // Not one Redis call failed: every operation followed ASK and MOVED.
    for sidecar in [&one, &two] {
        let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
        for op in [
            "is_revoked",
            "rate_limit",
            "usage",
            "cache_get",
            "cache_set",
        ] {
            let series = format!("outrigger_redis_errors_total{{op=\"{op}\",role=\"master\"}}");
            assert_eq!(metric(&metrics, &series), Some(0.0), "{series}");
        }
        assert!(pooled(&metrics, "master") >= 1.0, "{metrics}");
    }
    eprintln!("{sent} requests while slots moved ({keys} -> {left} keys on the first master)");
}

/// The pool's connections to nodes of `role`, idle or in use.
fn pooled(metrics: &str, role: &str) -> f64 {
    metric_sum(
        metrics,
        "outrigger_redis_pool_connections",
        &[("role", role)],
    )
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

/// Clients sending limited and cached GETs through `sidecars` as 16 users
/// until stopped; every answer that is not a 200 is kept as a failure.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<actix_rt::task::JoinHandle<(u32, Vec<String>)>>,
}

impl Traffic {
    fn start(sidecars: &[&outrigger::Sidecar]) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addrs: Vec<_> = sidecars
            .iter()
            .map(|s| s.inbound_addr().expect("inbound"))
            .collect();
        let tasks = (0..16)
            .map(|user| {
                let (stop, addr) = (stop.clone(), addrs[user % addrs.len()]);
                actix_rt::spawn(async move {
                    let (client, token) = (client(), bearer(&format!("load-{user}")));
                    let (mut sent, mut failures) = (0, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        for path in ["/items", "/roomy"] {
                            let answer = client
                                .get(format!("http://{addr}{path}"))
                                .insert_header(("authorization", token.as_str()))
                                .send()
                                .await;
                            sent += 1;
                            match answer.map(|a| a.status().as_u16()) {
                                Ok(200) => {}
                                other => failures.push(format!("{path}: {other:?}")),
                            }
                        }
                    }
                    (sent, failures)
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    /// Stops the clients: how many requests they sent, and the failures.
    async fn stop(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut sent, mut failures) = (0, Vec::new());
        for task in self.tasks {
            let (count, failed) = task.await.expect("a client task");
            sent += count;
            failures.extend(failed);
        }
        (sent, failures)
    }
}

/// Whether a page one sidecar caches is a HIT on the other: the cache is
/// shared again. Each try is a new user's page.
async fn cache_shared(one: &outrigger::Sidecar, two: &outrigger::Sidecar, user: &str) -> bool {
    let token = bearer(user);
    send(one, "GET", "/items", &token).await;
    send(two, "GET", "/items", &token).await.cache.as_deref() == Some("HIT")
}

#[actix_web::test]
async fn a_master_killed_under_traffic_fails_no_request_and_the_sentinel_names_the_next() {
    // TLS everywhere; the master and its replica ask for the password, the
    // sentinel asks for none.
    let certificates = Certificates::new();
    let pair = certificates.server("redis", "IP:127.0.0.1");
    let ca = certificates.ca();
    let mut group = RedisSentinel::start_secured(&Secured {
        pair: &pair,
        ca: &ca,
        password: PASSWORD,
    })
    .await;
    let app = Replica::start().await;
    // A new connection asks the sentinel, checks the master's role on a
    // connection of its own and opens one: three TLS handshakes, which a
    // debug build on a busy machine takes 200 ms for.
    let redis = format!(
        "redis: {{ mode: sentinel, sentinel: {{ master_name: {MASTER_NAME}, urls: [\"{}\"] }}, ca_file: \"{}\", password_env: REDIS_PASSWORD, timeout: 1s }}",
        group.url(),
        ca.display()
    );
    let env = [ENV[0], ("REDIS_PASSWORD", PASSWORD)];
    let one = sidecar_from(&config(&app, &redis), &env).await;
    let two = sidecar_from(&config(&app, &redis), &env).await;
    let ana = bearer("ana");
    assert!(
        limits_shared(&one, &two, &ana).await,
        "the sidecars share the master the sentinel names"
    );
    assert!(group.master.dbsize() > 0, "the windows live on the master");

    let traffic = Traffic::start(&[&one, &two]);
    let started = std::time::Instant::now();
    eventually("the traffic's pages are cached", || async {
        cache_shared(&one, &two, "before").await
    })
    .await;
    // SIGKILL: the master's connections break at once, and the sentinel
    // promotes the replica once the master has been silent for 500 ms.
    group.master.kill();
    eventually("the sentinel promotes the replica", || async {
        group.master_port() == Some(group.replica.port)
    })
    .await;
    // Within 10 s (eventually's deadline) of the promotion.
    let mut tries = 0;
    eventually(
        "limits and pages are shared again, on the promoted replica",
        || {
            tries += 1;
            let (one, two, ana) = (&one, &two, &ana);
            async move {
                limits_shared(one, two, ana).await
                    && cache_shared(one, two, &format!("after-{tries}")).await
            }
        },
    )
    .await;
    let (sent, failures) = traffic.stop().await;
    let rate = f64::from(sent) / started.elapsed().as_secs_f64();
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(
        rate > 100.0,
        "the traffic ran at {rate:.0} requests a second"
    );
    for sidecar in [&one, &two] {
        let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
        assert_eq!(
            metric(&metrics, "outrigger_redis_failovers_total"),
            Some(1.0),
            "each sidecar followed the failover once"
        );
    }
    eprintln!("{sent} requests at {rate:.0}/s, none failed");
}

#[actix_web::test]
async fn a_failover_that_keeps_the_old_master_running_is_followed_too() {
    let group = RedisSentinel::start().await;
    let app = Replica::start().await;
    let redis = format!(
        "redis: {{ mode: sentinel, sentinel: {{ master_name: {MASTER_NAME}, urls: [\"{}\"] }}, timeout: 200ms }}",
        group.url()
    );
    let one = sidecar_from(&config(&app, &redis), &ENV).await;
    let two = sidecar_from(&config(&app, &redis), &ENV).await;
    let ana = bearer("ana");
    eventually(
        "the sidecars share the master the sentinel names",
        || async { limits_shared(&one, &two, &ana).await },
    )
    .await;
    // SENTINEL FAILOVER: the replica is promoted. The old master keeps
    // running, and the sidecars' connections to it; the sentinel demotes
    // it to a replica of the new one once it has seen it claim to be
    // master for a while (up to 20 s), which the test does at once, as the
    // sentinel would.
    // Refused (NOGOODSLAVE) until the sentinel has seen the replica's link
    // to the master up, which it learns from the master's INFO.
    eventually("the sentinel starts the failover", || async {
        group.cli(&["SENTINEL", "FAILOVER", MASTER_NAME]) == "OK"
    })
    .await;
    eventually("the sentinel names the replica", || async {
        group.master_port() == Some(group.replica.port)
    })
    .await;
    let new_master = group.replica.port.to_string();
    assert_eq!(
        group.master.cli(&["REPLICAOF", "127.0.0.1", &new_master]),
        "OK"
    );
    eventually("limits are shared again, on the new master", || async {
        limits_shared(&one, &two, &ana).await
    })
    .await;
    for sidecar in [&one, &two] {
        let url = format!("http://{}/metrics", sidecar.admin_addr());
        // Counted when the sidecar's next connection is made, which may
        // come after the call that found the limits shared.
        eventually("each sidecar moved to the new master once", || async {
            let metrics = get_text(&url).await;
            metric(&metrics, "outrigger_redis_failovers_total") == Some(1.0)
        })
        .await;
        let metrics = get_text(&url).await;
        // The master the sentinels name is the role its calls and
        // connections are counted under.
        assert!(
            metric(
                &metrics,
                "outrigger_redis_errors_total{op=\"rate_limit\",role=\"master\"}"
            )
            .is_some(),
            "{metrics}"
        );
        assert!(pooled(&metrics, "master") >= 1.0, "{metrics}");
    }
}

#[actix_web::test]
async fn connections_slower_to_make_than_the_timeout_are_made_and_used() {
    // Every new connection takes 300 ms (a far handshake), every call may
    // take 100 ms: the calls that find no connection give up, but the one
    // they started is made in the background and pooled for the next.
    let server = RedisServer::start().await;
    let door = SlowDoor::start(&server, std::time::Duration::from_millis(300)).await;
    let app = Replica::start().await;
    let redis = format!("redis: {{ url: \"{}\", timeout: 100ms }}", door.url());
    let sidecar = sidecar_from(&config(&app, &redis), &ENV).await;
    let ana = bearer("ana");
    let first = send(&sidecar, "GET", "/items", &ana).await;
    assert_eq!(first.status, 200, "answered while Redis is out of reach");
    eventually("ana's page is cached in Redis and hit", || async {
        send(&sidecar, "GET", "/items", &ana).await.cache.as_deref() == Some("HIT")
    })
    .await;
    let keys = server.cli(&["-n", "1", "DBSIZE"]);
    assert_ne!(keys, "0", "the page and the window live in database 1");
}

#[actix_web::test]
async fn the_first_connection_is_made_at_start_so_the_first_request_uses_redis() {
    // Every new connection takes 300 ms, every call may take 100 ms: were
    // the first connection made by the first request, that request would
    // bypass Redis.
    let server = RedisServer::start().await;
    let door = SlowDoor::start(&server, std::time::Duration::from_millis(300)).await;
    let app = Replica::start().await;
    let redis = format!("redis: {{ url: \"{}\", timeout: 100ms }}", door.url());
    let sidecar = sidecar_from(&config(&app, &redis), &ENV).await;
    eventually(
        "the sidecar connects to Redis before any request",
        || async { server.cli(&["CLIENT", "LIST"]).contains(" db=1 ") },
    )
    .await;
    let ana = bearer("ana");
    let first = send(&sidecar, "GET", "/items", &ana).await;
    assert_eq!(first.cache.as_deref(), Some("MISS"), "{:?}", first.cache);
    let second = send(&sidecar, "GET", "/items", &ana).await;
    assert_eq!(second.cache.as_deref(), Some("HIT"), "{:?}", second.cache);
}

/// The test Redis's password.
const PASSWORD: &str = "s3cret-for-redis";

#[actix_web::test]
async fn redis_over_tls_with_a_password_is_shared_and_a_wrong_ca_is_an_outage() {
    let certificates = Certificates::new();
    let pair = certificates.server("redis", "IP:127.0.0.1");
    let ca = certificates.ca();
    let server = RedisServer::start_secured(&Secured {
        pair: &pair,
        ca: &ca,
        password: PASSWORD,
    })
    .await;
    let app = Replica::start().await;
    let redis = |url: &str, ca: &std::path::Path, password: &str| {
        format!(
            "redis: {{ url: \"{url}\", ca_file: \"{}\", {password} timeout: 200ms }}",
            ca.display()
        )
    };
    let env = [ENV[0], ("REDIS_PASSWORD", PASSWORD)];
    // The password in the URL for one, from the environment for the other.
    let in_url = format!("rediss://:{PASSWORD}@127.0.0.1:{}/0", server.port);
    let one = sidecar_from(&config(&app, &redis(&in_url, &ca, "")), &env).await;
    let from_env = redis(&server.tls_url(), &ca, "password_env: REDIS_PASSWORD,");
    let two = sidecar_from(&config(&app, &from_env), &env).await;
    let ana = bearer("ana");
    assert!(
        limits_shared(&one, &two, &ana).await,
        "both sidecars count in the one Redis"
    );
    let first = send(&one, "GET", "/items", &ana).await;
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("MISS")));
    eventually("the other sidecar hits ana's cached /items", || async {
        send(&two, "GET", "/items", &ana).await.cache.as_deref() == Some("HIT")
    })
    .await;
    assert!(server.dbsize() > 0, "the windows and the page live in it");
    for sidecar in [&one, &two] {
        let shown = get_text(&format!("http://{}/config", sidecar.admin_addr())).await;
        assert!(
            shown.contains("\"ca_file\"") && !shown.contains(PASSWORD),
            "the password is never shown: {shown}"
        );
    }

    // A CA that did not sign the server's certificate: Redis is out, as
    // when it is down: pages uncached, limits counted in process.
    let wrong = redis(
        &server.tls_url(),
        &certificates.untrusted_ca(),
        "password_env: REDIS_PASSWORD,",
    );
    let three = sidecar_from(&config(&app, &wrong), &env).await;
    for _ in 0..3 {
        let page = send(&three, "GET", "/items", &ana).await;
        assert_eq!((page.status, page.cache.as_deref()), (200, Some("BYPASS")));
        assert_eq!(send(&three, "POST", "/reports", &ana).await.status, 200);
    }
    let metrics = get_text(&format!("http://{}/metrics", three.admin_addr())).await;
    assert!(
        metric(
            &metrics,
            "outrigger_redis_errors_total{op=\"cache_get\",role=\"standalone\"}"
        ) >= Some(1.0),
        "the refused handshakes count as Redis errors"
    );
    let metrics = get_text(&format!("http://{}/metrics", one.admin_addr())).await;
    assert!(pooled(&metrics, "standalone") >= 1.0, "{metrics}");
}

#[actix_web::test]
async fn a_cluster_over_tls_with_a_password_is_shared_over_its_masters() {
    let certificates = Certificates::new();
    let pair = certificates.server("redis", "IP:127.0.0.1");
    let ca = certificates.ca();
    let cluster = RedisCluster::start_secured(
        3,
        &Secured {
            pair: &pair,
            ca: &ca,
            password: PASSWORD,
        },
    )
    .await;
    let app = Replica::start().await;
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    // A new cluster connection makes a TLS handshake with each master.
    let redis = format!(
        "redis: {{ mode: cluster, urls: [{}], ca_file: \"{}\", password_env: REDIS_PASSWORD, timeout: 1s }}",
        urls.join(", "),
        ca.display()
    );
    let env = [ENV[0], ("REDIS_PASSWORD", PASSWORD)];
    let one = sidecar_from(&config(&app, &redis), &env).await;
    let two = sidecar_from(&config(&app, &redis), &env).await;
    for user in 0..10 {
        let token = bearer(&format!("user-{user}"));
        assert!(limits_shared(&one, &two, &token).await, "user-{user}");
        let first = send(&one, "GET", "/items", &token).await;
        assert_eq!((first.status, first.cache.as_deref()), (200, Some("MISS")));
        eventually("the other sidecar hits the page", || async {
            send(&two, "GET", "/items", &token).await.cache.as_deref() == Some("HIT")
        })
        .await;
    }
    let sizes: Vec<u64> = cluster.masters.iter().map(|m| m.dbsize()).collect();
    assert!(
        sizes.iter().filter(|&&size| size > 0).count() >= 2,
        "users' keys spread over the masters: {sizes:?}"
    );
}
