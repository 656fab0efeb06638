//! The inbound GET cache: per user, only what the app lets be kept, with
//! coalesced misses, TTLs, and a bypass (never a failure) while Redis is
//! down or paused, costing a request no more than `redis.timeout`.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::client::{client, get_text, x_cache};
use support::eventually::eventually;
use support::faults::{answer_body_start, Fault, FaultServer};
use support::files::TempDir;
use support::keys::hs256_bearer;
use support::metrics::metric;
use support::process::SidecarProcess;
use support::raw::raw_header;
use support::redis::RedisServer;
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from, JWT_OR_API_KEY};

/// The sidecar's `redis.timeout`.
const REDIS_TIMEOUT: Duration = Duration::from_millis(200);

fn config(app: &Replica, redis: Option<&RedisServer>) -> String {
    let redis = redis.map_or_else(String::new, |r| {
        format!(
            "redis: {{ url: \"{}\", timeout: {}ms }}",
            r.url(),
            REDIS_TIMEOUT.as_millis()
        )
    });
    format!(
        "{}
inbound:
  auth:
    jwt: {{ algorithms: [HS256] }}
  cache:
    default_ttl: 60s
    routes: [{{ path: /short, ttl: 1s }}]
    bypass: [/auth]
{redis}",
        listeners_with_inbound(app.endpoint())
    )
}

const ENV: [(&str, &str); 1] = [("JWT_SECRET", "cache-secret")];

fn bearer(user: &str) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 600});
    hs256_bearer(b"cache-secret", &claims)
}

/// Sends a request as `user`; returns status and `X-Cache`.
async fn send(
    sidecar: &outrigger::Sidecar,
    method: &str,
    path: &str,
    user: &str,
) -> (u16, Option<String>) {
    let addr = sidecar.inbound_addr().expect("inbound");
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
    let response = client()
        .request(method, format!("http://{addr}{path}"))
        .insert_header(("authorization", bearer(user)))
        .send()
        .await
        .expect("an answer");
    (response.status().as_u16(), x_cache(&response))
}

fn cache(state: &str) -> (u16, Option<String>) {
    (200, Some(state.to_string()))
}

#[actix_web::test]
async fn an_api_key_and_a_token_of_the_same_name_do_not_share_answers() {
    let app = Replica::start().await;
    let yaml = format!(
        "{}
inbound:
{JWT_OR_API_KEY}
  cache: {{ default_ttl: 60s }}",
        listeners_with_inbound(app.endpoint())
    );
    let env = [ENV[0], ("OUTRIGGER_API_KEYS", "ana:k-ana")];
    let sidecar = sidecar_from(&yaml, &env).await;
    assert_eq!(send(&sidecar, "GET", "/items", "ana").await, cache("MISS"));
    let addr = sidecar.inbound_addr().expect("inbound");
    let response = client()
        .get(format!("http://{addr}/items"))
        .insert_header(("x-api-key", "k-ana"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        (response.status().as_u16(), x_cache(&response)),
        cache("MISS"),
        "the API key named ana is not the token whose subject is ana"
    );
    assert_eq!(app.hits(), 2);
}

#[actix_web::test]
async fn gets_are_cached_per_user_and_only_when_allowed() {
    let app = Replica::start().await;
    let sidecar = sidecar_from(&config(&app, None), &ENV).await;
    assert_eq!(
        send(&sidecar, "GET", "/items?b=2&a=1", "ana").await,
        cache("MISS")
    );
    assert_eq!(
        send(&sidecar, "GET", "/items?a=1&b=2", "ana").await,
        cache("HIT"),
        "query order does not matter"
    );
    assert_eq!(app.hits(), 1);
    assert_eq!(
        send(&sidecar, "GET", "/items?a=1&b=2", "bob").await,
        cache("MISS"),
        "another user"
    );
    assert_eq!(
        send(&sidecar, "GET", "/items?a=1&b=2", "ana\u{0}").await,
        (401, None),
        "a subject with a control character is refused"
    );
    for tricky in ["ana:*", "*", &"x".repeat(10 * 1024)] {
        assert_eq!(
            send(&sidecar, "GET", "/items?a=1&b=2", tricky).await,
            cache("MISS"),
            "no collision with ana"
        );
    }
    assert_eq!(
        send(&sidecar, "HEAD", "/items?a=1&b=2", "ana").await,
        cache("HIT"),
        "HEAD from the GET entry"
    );

    let before = app.hits();
    for _ in 0..2 {
        assert_eq!(
            send(&sidecar, "POST", "/items", "ana").await,
            (200, None),
            "POST is never cached"
        );
    }
    assert_eq!(
        send(&sidecar, "GET", "/auth/me", "ana").await,
        cache("BYPASS")
    );
    assert_eq!(
        send(&sidecar, "GET", "/auth/me", "ana").await,
        cache("BYPASS")
    );
    assert_eq!(app.hits(), before + 4);

    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert_eq!(metric(&metrics, "outrigger_cache_hits_total"), Some(2.0));
    assert_eq!(send(&sidecar, "GET", "/short", "ana").await, cache("MISS"));
    assert_eq!(send(&sidecar, "GET", "/short", "ana").await, cache("HIT"));
    eventually("the 1 s entry expires", || async {
        send(&sidecar, "GET", "/short", "ana").await == cache("MISS")
    })
    .await;

    app.answer_header("cache-control", "no-store");
    assert_eq!(
        send(&sidecar, "GET", "/private", "ana").await,
        cache("MISS")
    );
    assert_eq!(
        send(&sidecar, "GET", "/private", "ana").await,
        cache("MISS"),
        "no-store is never kept"
    );
}

#[actix_web::test]
async fn concurrent_misses_for_one_key_reach_the_app_once() {
    let app = Replica::start().await;
    app.delay(Duration::from_millis(300));
    let sidecar = sidecar_from(&config(&app, None), &ENV).await;
    let requests = (0..20).map(|_| send(&sidecar, "GET", "/popular", "ana"));
    let answers = futures_util::future::join_all(requests).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(app.hits(), 1, "the misses were coalesced");
    assert_eq!(
        answers
            .iter()
            .filter(|(_, cache)| cache.as_deref() == Some("MISS"))
            .count(),
        1
    );
}

/// A sidecar caching in a fresh Redis, with ana's `GET /items` stored.
async fn cached_through_redis() -> (RedisServer, Replica, outrigger::Sidecar) {
    let redis = RedisServer::start().await;
    let app = Replica::start().await;
    let sidecar = sidecar_from(&config(&app, Some(&redis)), &ENV).await;
    assert_eq!(send(&sidecar, "GET", "/items", "ana").await, cache("MISS"));
    assert_eq!(send(&sidecar, "GET", "/items", "ana").await, cache("HIT"));
    (redis, app, sidecar)
}

#[actix_web::test]
async fn a_dead_redis_means_bypass_and_the_cache_comes_back_with_it() {
    let (mut redis, _app, sidecar) = cached_through_redis().await;

    redis.kill();
    for _ in 0..3 {
        assert_eq!(
            send(&sidecar, "GET", "/items", "ana").await,
            cache("BYPASS"),
            "answered, uncached"
        );
    }
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert!(metric(&metrics, "outrigger_cache_errors_total").is_some_and(|n| n >= 3.0));
    assert!(metric(
        &metrics,
        "outrigger_redis_errors_total{op=\"cache_get\",role=\"standalone\"}"
    )
    .is_some_and(|n| n >= 1.0));

    redis.restart().await;
    eventually("the cache works again", || async {
        send(&sidecar, "GET", "/items", "ana").await == cache("HIT")
    })
    .await;
}

#[actix_web::test]
async fn a_paused_redis_delays_a_request_by_its_timeout_at_most_and_the_cache_resumes() {
    let (redis, _app, sidecar) = cached_through_redis().await;

    // Its connections stay open but nothing answers on them.
    redis.pause();
    for _ in 0..4 {
        let started = Instant::now();
        assert_eq!(
            send(&sidecar, "GET", "/items", "ana").await,
            cache("BYPASS"),
            "answered, uncached"
        );
        let took = started.elapsed();
        assert!(
            took < REDIS_TIMEOUT * 5,
            "a paused Redis held the request for {took:?} (redis.timeout {REDIS_TIMEOUT:?})"
        );
    }

    redis.resume();
    eventually("the cache works again", || async {
        send(&sidecar, "GET", "/items", "ana").await == cache("HIT")
    })
    .await;
}

#[actix_web::test]
async fn a_fill_whose_body_stalls_is_answered_504_within_the_app_timeout() {
    let app = FaultServer::start(Fault::Stall {
        after: answer_body_start() + 4,
    })
    .await;
    let yaml = format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{}\", timeout: 1s }}
inbound: {{ cache: {{}} }}",
        app.endpoint()
    );
    let sidecar = sidecar_from(&yaml, &[]).await;
    let addr = sidecar.inbound_addr().expect("inbound");
    let started = Instant::now();
    let mut response = client()
        .get(format!("http://{addr}/stalls"))
        .insert_header(("x-request-id", "fill-1"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 504);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let reason = response.headers().get("x-outrigger").map(|v| v.as_bytes());
    assert_eq!(reason, Some(&b"upstream_timeout"[..]));
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        body["request_id"], "fill-1",
        "answered like any refusal, with the request's id: {body}"
    );
}

/// The sidecar binary caching for `app` with `cache` (the YAML flow
/// mapping of `inbound.cache`) and `client_write_timeout` on the inbound
/// listener; no authentication, so every caller is anonymous. Its log goes
/// to `log`.
async fn caching_process(
    app: &Replica,
    cache: &str,
    client_write_timeout: &str,
    log: &std::path::Path,
) -> SidecarProcess {
    SidecarProcess::start_with_inbound(
        "  []",
        &format!(
            "app: \"http://{}\", client_write_timeout: {client_write_timeout}",
            app.endpoint()
        ),
        &format!("inbound: {{ cache: {cache} }}"),
        &[("LOG_LEVEL", "warn")],
        Some(log),
    )
    .await
}

/// The RSS the abuse must stay under.
const RSS_BOUND: u64 = 64 << 20;

#[actix_web::test]
async fn distinct_anonymous_gets_stay_within_the_cache_byte_bound() {
    const ANSWER: usize = 256 * 1024;
    const GETS: usize = 1_000;
    let app = Replica::start().await;
    let dir = TempDir::new();
    let log = dir.path.join("sidecar.log");
    // The default cache: its byte bound is what is being checked.
    let sidecar = caching_process(&app, "{}", "30s", &log).await;
    let base = format!(
        "http://{}/download/{ANSWER}",
        sidecar.inbound.expect("inbound")
    );
    let clients = 8;
    let requests = (0..clients).map(|client_no| {
        let base = base.clone();
        async move {
            let client = client();
            for n in (client_no..GETS).step_by(clients) {
                let mut response = client
                    .get(format!("{base}?n={n}"))
                    .send()
                    .await
                    .expect("an answer");
                assert_eq!(response.status().as_u16(), 200);
                assert_eq!(x_cache(&response).as_deref(), Some("MISS"));
                let body = response.body().limit(ANSWER).await.expect("a body");
                assert_eq!(body.len(), ANSWER);
            }
        }
    });
    futures_util::future::join_all(requests).await;
    assert_eq!(app.hits(), GETS);
    let peak = sidecar.peak_rss();
    assert!(
        peak <= RSS_BOUND,
        "{GETS} cached answers of {ANSWER} bytes took the sidecar to {} MiB",
        peak >> 20
    );
    // A full cache still takes a new answer, making room from its old ones.
    // (Which of the flood's answers came last depends on how the clients
    // were scheduled, so the check fills a fresh one.)
    let fresh = format!("{base}?n={GETS}");
    let first = client().get(&fresh).send().await.expect("an answer");
    assert_eq!(x_cache(&first).as_deref(), Some("MISS"));
    let mut last = client().get(&fresh).send().await.expect("an answer");
    assert_eq!(x_cache(&last).as_deref(), Some("HIT"));
    assert_eq!(app.hits(), GETS + 1);
    assert_eq!(
        last.body().limit(ANSWER).await.expect("a body").len(),
        ANSWER
    );
    // The one warning a start may give is about this machine's open-files limit.
    let logged = std::fs::read_to_string(&log).expect("the log");
    let warnings: Vec<&str> = logged
        .lines()
        .filter(|line| line.contains("WARN") && !line.contains("files may be open"))
        .collect();
    assert!(warnings.is_empty(), "making room logged {warnings:#?}");
}

/// A client that sends one GET of `path` to `addr` and reads nothing; its
/// receive buffer is as small as the kernel allows, so the answer waits
/// in the sidecar rather than in this process's socket.
async fn slow_reader(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// A cached answer twice as large as the kernel lets one socket's send
/// buffer grow (`net.ipv4.tcp_wmem`'s maximum, 4 MiB by default): a reader
/// that takes nothing leaves the rest waiting in the sidecar, as readers of
/// a smaller answer do on a busier host.
fn answer_past_the_send_buffer() -> usize {
    let most = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    2 * most
}

#[actix_web::test]
async fn slow_readers_of_a_cached_answer_share_it_and_are_cut_when_they_take_nothing() {
    // 50 readers of an answer of twice the kernel's send buffer each leave
    // more than 4 MiB in the sidecar: the 500 readers of 1 MiB,
    // scaled to what this host's sockets do not absorb.
    const READERS: usize = 50;
    let size = answer_past_the_send_buffer();
    let path = format!("/download/{size}");
    let app = Replica::start().await;
    let dir = TempDir::new();
    let log = dir.path.join("sidecar.log");
    let cache = format!("{{ max_entry_bytes: {size}, max_bytes: {} }}", 2 * size);
    let sidecar = caching_process(&app, &cache, "1s", &log).await;
    let addr = sidecar.inbound.expect("inbound");
    let url = format!("http://{addr}{path}");
    for state in ["MISS", "HIT"] {
        let mut response = client().get(&url).send().await.expect("an answer");
        assert_eq!(x_cache(&response).as_deref(), Some(state));
        assert_eq!(
            response.body().limit(size).await.expect("a body").len(),
            size
        );
    }
    let files_before = sidecar.open_files();

    let readers =
        futures_util::future::join_all((0..READERS).map(|_| slow_reader(addr, &path))).await;
    let admin = format!("http://{}/metrics", sidecar.admin);
    eventually(
        "every slow reader is being answered from the cache",
        || async {
            let metrics = get_text(&admin).await;
            metric(&metrics, "outrigger_cache_hits_total").unwrap_or(0.0) >= (READERS + 1) as f64
        },
    )
    .await;
    let peak = sidecar.peak_rss();
    assert!(
        peak <= RSS_BOUND,
        "{READERS} slow readers of a cached {} MiB answer took the sidecar to {} MiB",
        size >> 20,
        peak >> 20
    );

    // A reader that keeps taking bytes, each pause shorter than the
    // timeout, is served to the end however long the whole answer takes.
    let progressing = actix_rt::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut chunk = vec![0u8; 512 * 1024];
        while !whole_answer(&answer) {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "cut after {} bytes", answer.len());
            answer.extend_from_slice(&chunk[..n]);
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    });

    // The readers that take nothing are cut after client_write_timeout.
    eventually("the stalled readers are cut", || async {
        sidecar.open_files() < files_before + READERS / 10
    })
    .await;
    drop(readers);
    let took = progressing.await.expect("the progressing reader");
    assert!(
        took > Duration::from_secs(1),
        "the progressing reader took {took:?}: no longer than the timeout, so it proved nothing"
    );
    let logged = std::fs::read_to_string(&log).expect("the log");
    assert!(logged.contains("client_write_timeout"), "{logged}");
}

/// Whether `answer` holds a whole answer head and the body it declares.
fn whole_answer(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    raw_header(head, "content-length")
        .and_then(|length| length.parse::<usize>().ok())
        .is_some_and(|length| body.len() >= length)
}
