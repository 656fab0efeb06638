//! Faults under load. The real binary proxies for three replicas while four
//! clients keep calling; the third replica is killed, or replaced on its port
//! by one that never answers, trickles, resets mid-answer or speaks broken
//! HTTP, and later comes back healthy. Through each fault the sidecar keeps
//! answering, hides the fault behind retries where it can, answers the
//! right status where it cannot, counts what happened, frees every slot it
//! took and returns to its resting memory. Redis and discovery fail under
//! inbound and outbound load too.

mod support;

use std::time::{Duration, Instant};

use support::client::{client, get_text};
use support::eventually::eventually;
use support::faults::{answer_body_start, load, load_while, Fault, FaultServer, Tally, ANSWER};
use support::files::{swap_in, TempDir};
use support::metrics::{metric, metric_sum};
use support::process::SidecarProcess;
use support::raw::{raw_cut_short, raw_exchange, raw_header};
use support::redis::RedisServer;
use support::replica::{endpoints, Replica};
use support::sidecar::{sidecar_from, sidecar_with};

/// Concurrent clients of each load phase.
const CLIENTS: usize = 4;
/// How long each load phase runs at most.
const PHASE: Duration = Duration::from_millis(1500);
/// How many requests each client sends in a phase at most.
const PER_CLIENT: usize = 300;
/// How far above its resting level the sidecar's RSS may end: its arenas
/// keep some pages, but a leak per request or per connection goes past it.
const RSS_SLACK: u64 = 2 * 1024 * 1024;

/// `api` has two healthy replicas and the faulty one; `lone` only the
/// faulty one, with no retries and a breaker that never opens, so each of
/// its answers shows the fault's own status; `healthy` never sees it.
fn services(a: &Replica, b: &Replica, faulty: &str) -> String {
    let a_and_b = endpoints(&[a, b]);
    let a = a.endpoint();
    format!(
        "  - name: api
    endpoints: [{a_and_b}, \"{faulty}\"]
    timeout: 3s
    per_try_timeout: 300ms
    retry: {{ base_delay: 1ms, max_delay: 5ms }}
    circuit_breaker: {{ failure_threshold: 3, cooldown: 200ms, max_cooldown: 400ms }}
    slow_start: 0s
  - name: lone
    endpoints: [\"{faulty}\"]
    per_try_timeout: 300ms
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 1000000 }}
  - name: healthy
    endpoints: [\"{a}\"]"
    )
}

/// What one fault did, for the assertions of its test.
struct FaultReport {
    /// The load on `api` while the fault lasted.
    during: Tally,
    /// The load on `healthy` meanwhile.
    healthy: Tally,
    /// `lone`'s answers meanwhile: status and `x-outrigger` reason, or 0
    /// and `no answer` or `cut`.
    lone: Vec<(u16, String)>,
    /// `/metrics` once the replica was healthy again.
    metrics: String,
}

/// Runs the whole story for one fault (`None`: the replica is killed and
/// nothing listens on its port) and checks what every fault shares.
async fn survive(fault: Option<Fault>) -> FaultReport {
    let (a, b) = (Replica::start().await, Replica::start().await);
    let third = Replica::start().await;
    let faulty_addr = third.endpoint();
    let sidecar = SidecarProcess::start(&services(&a, &b, &faulty_addr)).await;
    let base = format!("http://{}", sidecar.outbound);
    let get = |path: &'static str| {
        let base = base.clone();
        move |client: &awc::Client, _: usize| client.get(format!("{base}{path}"))
    };

    // Warm-up: every replica healthy, every request answered.
    let warm = load(CLIENTS, PHASE, PER_CLIENT, get("/api/x")).await;
    assert_eq!(warm.failed(), 0, "warm-up: {warm:?}");
    let resting = settled_rss(&sidecar).await;

    // The fault: the third replica dies; a faulty server takes its port.
    third.stop().await;
    let faulty = match fault {
        Some(fault) => Some(FaultServer::start_at(&faulty_addr, fault).await),
        None => None,
    };
    let outbound = sidecar.outbound;
    let lone = async move {
        let mut answers = Vec::new();
        for _ in 0..3 {
            // Off this thread, which serves the faulty replica.
            let answer = actix_rt::task::spawn_blocking(move || lone_answer(outbound))
                .await
                .expect("the exchange");
            answers.push(answer);
        }
        answers
    };
    let ((during, lone), healthy) = futures_util::future::join(
        futures_util::future::join(load(CLIENTS, PHASE, PER_CLIENT, get("/api/x")), lone),
        load(1, PHASE, PER_CLIENT, get("/healthy/x")),
    )
    .await;
    assert!(during.sent >= 40, "load during the fault: {during:?}");
    assert!(healthy.sent >= 10, "healthy load: {healthy:?}");
    assert_eq!(healthy.failed(), 0, "the healthy service: {healthy:?}");
    if let Some(mut faulty) = faulty {
        assert!(faulty.requests() > 0, "the faulty replica was called");
        eventually("the sidecar let go of every faulty connection", || async {
            faulty.open_connections() == 0
        })
        .await;
        faulty.stop().await;
    }

    // The replica comes back healthy on its port and gets traffic again.
    let back = Replica::start_at(&faulty_addr).await;
    let url = format!("{base}/api/x");
    eventually("the restored replica serves again", || async {
        support::client::status_of(&url).await == Some(200) && back.hits() >= 3
    })
    .await;
    let after = load(CLIENTS, Duration::from_millis(500), 50, get("/api/x")).await;
    assert_eq!(after.failed(), 0, "after the fault: {after:?}");

    let admin = format!("http://{}/metrics", sidecar.admin);
    eventually("every slot taken during the fault is free", || async {
        let text = get_text(&admin).await;
        metric(
            &text,
            "outrigger_http_requests_in_progress{listener=\"outbound\"}",
        ) == Some(0.0)
            && metric_sum(&text, "outrigger_concurrency_in_flight", &[]) == 0.0
            && metric_sum(&text, "outrigger_replica_load", &[]) == 0.0
    })
    .await;
    let metrics = get_text(&admin).await;
    let ended = settled_rss(&sidecar).await;
    eprintln!(
        "{fault:?}: RSS {} KiB at rest, {} KiB after; during: {during:?}",
        resting >> 10,
        ended >> 10
    );
    assert!(
        ended <= resting + RSS_SLACK,
        "RSS {} KiB after the fault, {} KiB at rest",
        ended >> 10,
        resting >> 10
    );
    FaultReport {
        during,
        healthy,
        lone,
        metrics,
    }
}

/// The sidecar's RSS once it stopped moving (two reads 200 ms apart within 5%).
async fn settled_rss(sidecar: &SidecarProcess) -> u64 {
    let mut last = sidecar.rss();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        let now = sidecar.rss();
        if now.abs_diff(last) * 20 <= last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// `upstream_errors_total{service, kind}` summed over replicas.
fn errors(metrics: &str, service: &str, kind: &str) -> f64 {
    metric_sum(
        metrics,
        "outrigger_upstream_errors_total",
        &[("service", service), ("kind", kind)],
    )
}

fn retried(metrics: &str) -> f64 {
    metric(
        metrics,
        "outrigger_retries_total{outcome=\"success\",service=\"api\"}",
    )
    .unwrap_or(0.0)
}

fn transitions(metrics: &str, from: &str, to: &str) -> f64 {
    metric_sum(
        metrics,
        "outrigger_circuit_breaker_transitions_total",
        &[("from", from), ("to", to)],
    )
}

/// One raw call to `lone`: status and `x-outrigger` reason, or 0 and `no
/// answer` or `cut`. Raw bytes, because a client that ends a body at the
/// close cannot tell a cut answer from a whole one.
fn lone_answer(outbound: std::net::SocketAddr) -> (u16, String) {
    let answer = raw_exchange(
        outbound,
        "GET /lone/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let Some((head, _)) = answer.split_once("\r\n\r\n") else {
        return (0, "no answer".to_string());
    };
    if raw_cut_short(&answer) {
        return (0, "cut".to_string());
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let reason = raw_header(head, "x-outrigger").unwrap_or("");
    (status, reason.to_string())
}

/// Every `lone` answer was `status` with `reason`.
fn assert_lone(outcome: &FaultReport, status: u16, reason: &str) {
    let expected = vec![(status, reason.to_string()); 3];
    assert_eq!(outcome.lone, expected);
}

/// Retries hid the fault from `api`'s callers, and its breaker opened and
/// closed again.
fn assert_hidden_by_retries(outcome: &FaultReport, kind: &str) {
    let metrics = &outcome.metrics;
    assert_eq!(outcome.during.failed(), 0, "{:?}", outcome.during);
    assert!(errors(metrics, "api", kind) >= 3.0, "{metrics}");
    assert!(
        retried(metrics) >= errors(metrics, "api", kind),
        "every failed try was retried elsewhere"
    );
    assert!(transitions(metrics, "closed", "open") >= 1.0);
    assert!(transitions(metrics, "half_open", "closed") >= 1.0);
    assert!(
        outcome.healthy.of(200) >= 10,
        "healthy: {:?}",
        outcome.healthy
    );
}

#[actix_web::test]
async fn a_replica_killed_and_restarted_under_load() {
    let outcome = survive(None).await;
    assert_lone(&outcome, 502, "upstream_connect_failed");
    assert_hidden_by_retries(&outcome, "connect");
    assert_eq!(errors(&outcome.metrics, "lone", "connect"), 3.0);
}

#[actix_web::test]
async fn a_replica_that_accepts_and_never_answers() {
    let outcome = survive(Some(Fault::Silent)).await;
    assert_lone(&outcome, 504, "upstream_timeout");
    assert_hidden_by_retries(&outcome, "timeout");
    assert_eq!(errors(&outcome.metrics, "lone", "timeout"), 3.0);
}

#[actix_web::test]
async fn a_replica_that_answers_byte_by_byte() {
    // About a second for the whole answer: past the 300 ms per-try timeout.
    let outcome = survive(Some(Fault::Trickle(Duration::from_millis(10)))).await;
    assert_lone(&outcome, 504, "upstream_timeout");
    assert_hidden_by_retries(&outcome, "timeout");
}

#[actix_web::test]
async fn a_trickled_answer_within_the_timeout_arrives_whole() {
    let trickle = FaultServer::start(Fault::Trickle(Duration::from_millis(2))).await;
    let sidecar = SidecarProcess::start(&format!(
        "  - {{ name: slow, endpoints: [\"{}\"], per_try_timeout: 5s }}",
        trickle.endpoint()
    ))
    .await;
    let url = format!("http://{}/slow/x", sidecar.outbound);
    let tally = load(2, PHASE, 3, |client, _| client.get(&url)).await;
    assert_eq!((tally.sent, tally.of(200)), (6, 6), "{tally:?}");
    let mut response = client().get(&url).send().await.expect("an answer");
    let body = response.body().await.expect("a body");
    assert_eq!(&body[..], &ANSWER[answer_body_start()..]);
}

#[actix_web::test]
async fn a_replica_that_resets_before_its_answer_head_is_whole() {
    let outcome = survive(Some(Fault::Reset { after: 20 })).await;
    assert_lone(&outcome, 502, "upstream_reset");
    assert_hidden_by_retries(&outcome, "reset");
}

#[actix_web::test]
async fn a_replica_that_resets_in_the_middle_of_its_body() {
    let outcome = survive(Some(Fault::Reset {
        after: answer_body_start() + 10,
    }))
    .await;
    let (during, metrics) = (&outcome.during, &outcome.metrics);
    // The head was passed on before the body broke: there is nothing to
    // retry, and the caller sees its answer cut (or, when the head had not
    // left yet, the connection closed). The breaker counts each cut answer
    // as a failure and opens: at most 7 answers are cut before it opens
    // from closed (3 to reach the threshold, the other clients' calls in
    // flight), and one, the failed probe, before it opens again from
    // half-open. Were cut answers counted as the 200s their heads said,
    // the breaker would never open and a third of all requests would be cut.
    assert!(
        outcome.lone.iter().all(|(status, _)| *status == 0),
        "never a short body taken as whole: {:?}",
        outcome.lone
    );
    let broken = during.cut + during.unanswered;
    assert_eq!(during.failed(), broken, "{during:?}");
    assert!(broken >= 1, "{during:?}");
    let (opened, reopened) = (
        transitions(metrics, "closed", "open"),
        transitions(metrics, "half_open", "open"),
    );
    assert!(opened >= 1.0, "{metrics}");
    assert!(
        broken as f64 <= 7.0 * opened + reopened,
        "{broken} cut answers for {opened} openings and {reopened} reopenings: {during:?}"
    );
    assert!(
        errors(metrics, "api", "protocol") >= broken as f64,
        "{metrics}"
    );
    assert!(transitions(metrics, "half_open", "closed") >= 1.0);
}

#[actix_web::test]
async fn a_replica_with_a_broken_status_line() {
    let outcome = survive(Some(Fault::Raw(b"HTTP/1.1 OK 200\r\n\r\n"))).await;
    assert_lone(&outcome, 502, "upstream_protocol_error");
    assert_hidden_by_retries(&outcome, "protocol");
}

#[actix_web::test]
async fn a_replica_with_conflicting_content_lengths() {
    let outcome = survive(Some(Fault::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 12\r\n\r\nhello, world",
    )))
    .await;
    assert_lone(&outcome, 502, "upstream_protocol_error");
    assert_hidden_by_retries(&outcome, "protocol");
}

/// An inbound listener with API keys, a per-role rate limit and the GET
/// cache, all kept in Redis, in front of `app`.
fn inbound_config(app: &Replica, redis: &RedisServer) -> String {
    format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{}\" }}
redis: {{ url: \"{}\", timeout: 100ms }}
inbound:
  auth:
    api_keys: {{ header: x-api-key }}
  rate_limit:
    window: 1m
    roles: {{ admin: 100000 }}
  cache:
    default_ttl: 60s",
        app.endpoint(),
        redis.url()
    )
}

#[actix_web::test]
async fn redis_paused_killed_and_restarted_under_inbound_load() {
    let mut redis = RedisServer::start().await;
    let app = Replica::start().await;
    let sidecar = sidecar_from(
        &inbound_config(&app, &redis),
        &[("OUTRIGGER_API_KEYS", "ana:k-ana:admin")],
    )
    .await;
    let base = format!("http://{}", sidecar.inbound_addr().expect("inbound"));
    let admin = format!("http://{}/metrics", sidecar.admin_addr());
    let get = |client: &awc::Client, n: usize| {
        client
            .get(format!("{base}/items/{}", n % 4))
            .insert_header(("x-api-key", "k-ana"))
    };
    let cache_hits =
        || async { metric(&get_text(&admin).await, "outrigger_cache_hits_total").unwrap_or(0.0) };
    let redis_errors =
        || async { metric_sum(&get_text(&admin).await, "outrigger_redis_errors_total", &[]) };

    let up = load(CLIENTS, Duration::from_millis(700), PER_CLIENT, get).await;
    assert_eq!(up.failed(), 0, "Redis up: {up:?}");
    assert!(
        cache_hits().await >= 1.0,
        "the cache serves while Redis is up"
    );
    assert_eq!(redis_errors().await, 0.0);

    // Frozen: every Redis call waits for its 100 ms timeout, then the cache
    // is bypassed and the limit counted in process; every request is answered.
    redis.pause();
    let paused = load(CLIENTS, PHASE, PER_CLIENT, get).await;
    redis.resume();
    assert!(paused.sent >= 8, "{paused:?}");
    assert_eq!(paused.failed(), 0, "Redis paused: {paused:?}");
    let after_pause = redis_errors().await;
    assert!(after_pause >= 1.0, "Redis timeouts are counted");

    // Gone: connections refused, answered at once.
    redis.kill();
    let dead = load(CLIENTS, PHASE, PER_CLIENT, get).await;
    assert!(dead.sent >= 20, "{dead:?}");
    assert_eq!(dead.failed(), 0, "Redis dead: {dead:?}");
    assert!(
        redis_errors().await > after_pause,
        "refused calls are counted"
    );

    redis.restart().await;
    let hits = cache_hits().await;
    eventually("the cache serves from the new Redis", || async {
        let answer = get(&client(), 0).send().await;
        answer.is_ok_and(|r| support::client::x_cache(&r).as_deref() == Some("HIT"))
            && cache_hits().await > hits
    })
    .await;
    let back = load(CLIENTS, Duration::from_millis(500), PER_CLIENT, get).await;
    assert_eq!(back.failed(), 0, "Redis back: {back:?}");
    let text = get_text(&admin).await;
    assert_eq!(
        metric_sum(&text, "outrigger_concurrency_in_flight", &[]),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "outrigger_http_requests_in_progress{listener=\"inbound\"}"
        ),
        Some(0.0)
    );
}

#[actix_web::test]
async fn a_discovery_file_turning_invalid_under_load_keeps_the_replicas() {
    let (a, b, c) = Replica::three().await;
    let dir = TempDir::new();
    let path = dir.path.join("endpoints.yaml");
    let listing = |upstreams: &[&Replica]| format!("api: [{}]\n", endpoints(upstreams));
    std::fs::write(&path, listing(&[&a, &b])).expect("write");
    let discovery = format!(
        "discovery: {{ source: file, refresh: 30s, file: {{ path: \"{}\" }} }}",
        path.display()
    );
    let sidecar = sidecar_with(&discovery, "  - name: api").await;
    let admin = format!("http://{}", sidecar.admin_addr());
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let errors = || support::admin::discovery_syncs(&admin, "file", "error");

    let broken = async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        swap_in(&path, "api: [\"no port here\", 42]\n");
        eventually("the broken file is counted", || async {
            errors().await >= 1.0
        })
        .await;
        swap_in(&path, "{ not yaml");
        eventually("the unreadable file is counted", || async {
            errors().await >= 2.0
        })
        .await;
    };
    let during = load_while(CLIENTS, PHASE, PER_CLIENT, |c, _| c.get(&url), broken).await;
    assert!(during.sent >= 40, "{during:?}");
    assert_eq!(during.failed(), 0, "{during:?}");
    support::admin::assert_last_set_kept(&admin, &url, "api", 2).await;
    let kept = (a.hits(), b.hits());
    assert!(
        kept.0 > 0 && kept.1 > 0,
        "both replicas kept serving: {kept:?}"
    );

    swap_in(&path, &listing(&[&a, &b, &c]));
    eventually(
        "a good file is read again and its new replica serves",
        || async { support::client::status_of(&url).await == Some(200) && c.hits() > 0 },
    )
    .await;
    let text = get_text(&format!("{admin}/metrics")).await;
    assert_eq!(
        metric(&text, "outrigger_discovery_replicas{service=\"api\"}"),
        Some(3.0)
    );
}
