//! Resilience: retries hide a bad replica from the app, the retry budget
//! keeps an outage from multiplying load, concurrency limits shed excess,
//! and p2c_ewma steers around a slow replica.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::client::{client, get_text, status_of};
use support::metrics::metric;
use support::replica::{endpoints, Replica};
use support::sidecar::sidecar;

#[actix_web::test]
async fn a_replica_answering_503_is_invisible_to_the_app() {
    let (a, b, bad) = Replica::three().await;
    bad.answer_with(503);
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [{}], retry: {{ base_delay: 1ms, max_delay: 5ms }} }}",
        endpoints(&[&a, &b, &bad])
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    for _ in 0..1000 {
        assert_eq!(status_of(&url).await, Some(200));
    }
    // Closed until 5 failures; then open for the 30 s cooldown, far longer than this test.
    assert!(
        bad.hits() <= 5,
        "the bad replica got {} requests",
        bad.hits()
    );
    assert_eq!(a.hits() + b.hits(), 1000);
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_retries_total{outcome=\"success\",service=\"api\"}"
        ),
        Some(bad.hits() as f64)
    );
}

#[actix_web::test]
async fn a_replica_killed_under_load_costs_no_request() {
    let (a, b, doomed) = Replica::three().await;
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [{}], retry: {{ base_delay: 1ms, max_delay: 5ms }} }}",
        endpoints(&[&a, &b, &doomed])
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    // 200 requests per second for 4 s; the third replica dies after 1 s.
    let mut ticker = actix_rt::time::interval(Duration::from_millis(5));
    let mut requests = Vec::new();
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(4) {
        ticker.tick().await;
        if !killed && started.elapsed() >= Duration::from_secs(1) {
            doomed.stop().await;
            killed = true;
        }
        let url = url.clone();
        requests.push(actix_rt::spawn(async move { status_of(&url).await }));
    }
    let mut failed = 0;
    for request in &mut requests {
        if request.await.ok().flatten() != Some(200) {
            failed += 1;
        }
    }
    assert!(
        requests.len() >= 700,
        "only {} requests were sent",
        requests.len()
    );
    assert_eq!(failed, 0, "{failed} of {} requests failed", requests.len());
    assert!(doomed.hits() > 0, "the replica served before it died");
}

#[actix_web::test]
async fn the_retry_budget_caps_the_load_an_outage_adds() {
    let upstreams = Replica::several(3).await;
    for upstream in &upstreams {
        upstream.answer_with(503);
    }
    let sidecar = sidecar(&format!(
        "  - name: api
    endpoints: [{}]
    circuit_breaker: {{ failure_threshold: 100000 }}
    retry: {{ base_delay: 1ms, max_delay: 2ms, budget_percent: 20, budget_min_per_second: 2 }}",
        endpoints(&upstreams.iter().collect::<Vec<_>>())
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let requests = 300;
    for _ in 0..requests {
        assert_eq!(
            status_of(&url).await,
            Some(503),
            "the last answer is passed on"
        );
    }
    let received: usize = upstreams.iter().map(Replica::hits).sum();
    let ceiling = requests + requests * 20 / 100 + 2 * 10;
    assert!(
        received <= ceiling,
        "upstreams got {received} requests, more than {ceiling}"
    );
    assert!(received > requests, "some retries were allowed");
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    let exhausted = metric(
        &metrics,
        "outrigger_retry_budget_exhausted_total{service=\"api\"}",
    );
    assert!(exhausted.is_some_and(|n| n > 0.0), "{exhausted:?}");
}

#[actix_web::test]
async fn large_or_non_idempotent_bodies_are_not_retried_unless_allowed() {
    let (failing, healthy) = (Replica::start().await, Replica::start().await);
    failing.answer_with(503);
    let both = endpoints(&[&failing, &healthy]);
    let sidecar = sidecar(&format!(
        "  - {{ name: plain, endpoints: [{both}], load_balancer: round_robin }}
  - {{ name: optin, endpoints: [{both}], load_balancer: round_robin, retry: {{ non_idempotent: true }} }}"
    ))
    .await;
    let outbound = sidecar.outbound_addr();
    let one_mib = vec![b'p'; 1 << 20];
    let post = |service: &str, body: Vec<u8>| {
        let url = format!("http://{outbound}/{service}/x");
        async move {
            let response = client().post(url).send_body(body).await.expect("an answer");
            response.status().as_u16()
        }
    };
    // Round robin starts at the failing replica for each service.
    assert_eq!(
        post("plain", one_mib.clone()).await,
        503,
        "POST is not retried by default"
    );
    assert_eq!(
        post("optin", one_mib).await,
        503,
        "1 MiB is past the 64 KiB replay buffer"
    );
    assert_eq!((failing.hits(), healthy.hits()), (2, 0));
    for _ in 0..4 {
        assert_eq!(
            post("optin", b"small".to_vec()).await,
            200,
            "small opted-in POSTs are retried"
        );
    }
    assert!(
        failing.hits() > 2,
        "some small POSTs tried the failing replica first"
    );
}

#[actix_web::test]
async fn a_slow_endpoint_answers_with_the_default_settings_after_one_call() {
    let reports = Replica::start().await;
    reports.delay(Duration::from_millis(1500));
    let sidecar = sidecar(&format!(
        "  - {{ name: reports, endpoints: [{}] }}",
        endpoints(&[&reports])
    ))
    .await;
    let url = format!("http://{}/reports/export", sidecar.outbound_addr());
    assert_eq!(
        status_of(&url).await,
        Some(200),
        "within the default timeout of 3s, however long one try takes"
    );
    assert_eq!(reports.hits(), 1, "reached once: no try was cut short");
}

#[actix_web::test]
async fn retry_after_is_honoured() {
    let (throttled, healthy) = (Replica::start().await, Replica::start().await);
    throttled.answer_with(503);
    throttled.ask_to_retry_after(1);
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [{}], load_balancer: round_robin, timeout: 5s }}",
        endpoints(&[&throttled, &healthy])
    ))
    .await;
    let started = Instant::now();
    assert_eq!(
        status_of(&format!("http://{}/api/x", sidecar.outbound_addr())).await,
        Some(200)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!((throttled.hits(), healthy.hits()), (1, 1));
}

#[actix_web::test]
async fn a_concurrency_limit_sheds_the_excess_with_429() {
    let slow = Replica::start().await;
    slow.delay(Duration::from_millis(600));
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"], concurrency: {{ max_in_flight: 5 }} }}",
        slow.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let requests = (0..20).map(|_| {
        let url = url.clone();
        async move {
            let mut response = client().get(url).send().await.expect("an answer");
            let retry_after = response.headers().get("retry-after").is_some();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (response.status().as_u16(), retry_after, body)
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let shed: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == 429)
        .collect();
    assert_eq!(shed.len(), 15, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|(status, _, _)| *status == 200)
            .count(),
        5
    );
    assert!(shed
        .iter()
        .all(|(_, retry_after, body)| *retry_after && body["service"] == "api"));
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_concurrency_limit_reached_total{scope=\"service\",service=\"api\"}"
        ),
        Some(15.0)
    );
}

#[actix_web::test]
async fn p2c_ewma_sends_a_ten_times_slower_replica_little() {
    let (a, b, slow) = Replica::three().await;
    a.delay(Duration::from_millis(2));
    b.delay(Duration::from_millis(2));
    slow.delay(Duration::from_millis(20));
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [{}], load_balancer: p2c_ewma }}",
        endpoints(&[&a, &b, &slow])
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let callers = (0..8).map(|_| {
        let url = url.clone();
        async move {
            for _ in 0..125 {
                assert_eq!(status_of(&url).await, Some(200));
            }
        }
    });
    futures_util::future::join_all(callers).await;
    let total = a.hits() + b.hits() + slow.hits();
    assert_eq!(total, 1000);
    assert!(
        slow.hits() * 100 < total * 15,
        "the slow replica got {} of {total}",
        slow.hits()
    );
}
