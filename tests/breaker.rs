//! Circuit breakers and failures: a failing replica is cut off, probed and
//! readmitted; dead and slow replicas get fast, clear answers.

mod support;

use std::time::{Duration, Instant};

use outrigger::discovery::{ApplySnapshot, DiscoveredEndpoint};
use serde_json::Value;
use support::admin::breaker_state;
use support::client::{client, get_json, get_text, send_ok, status_and_header, status_of};
use support::eventually::eventually;
use support::metrics::metric;
use support::ports::closed_port;
use support::replica::Replica;
use support::sidecar::sidecar;

#[actix_web::test]
async fn a_failing_replica_is_cut_off_probed_and_readmitted() {
    let healthy = Replica::start().await;
    let failing = Replica::start().await;
    failing.answer_with(503);
    let sidecar = sidecar(&format!(
        "  - name: api
    endpoints: [\"{}\", \"{}\"]
    load_balancer: round_robin
    circuit_breaker: {{ failure_threshold: 3, window: 10s, cooldown: 1s, success_threshold: 2 }}",
        healthy.endpoint(),
        failing.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());
    let key = format!("api/{}", failing.endpoint());
    let state_series = format!(
        "outrigger_circuit_breaker_state{{replica=\"{}\",service=\"api\"}}",
        failing.endpoint()
    );

    // Closed: the failing replica gets its share until the threshold.
    while failing.hits() < 3 {
        let status = status_of(&url).await.expect("an answer");
        assert!(status == 200 || status == 503);
    }
    eventually("the breaker opens", || async {
        breaker_state(&admin, &key).await == "open"
    })
    .await;
    assert_eq!(
        metric(&get_text(&format!("{admin}/metrics")).await, &state_series),
        Some(1.0)
    );

    // Open: nothing reaches it; the healthy replica answers everything.
    for _ in 0..20 {
        assert_eq!(status_of(&url).await, Some(200));
    }
    let (_, report) = get_json(&format!("{admin}/circuit-breakers")).await;
    let breaker = &report["circuit_breakers"][&key];
    assert_eq!(
        breaker["state"], "open",
        "still open, so the count below is meaningful"
    );
    assert_eq!(
        failing.hits(),
        3,
        "no request reached the replica while its breaker was open"
    );
    assert_eq!(breaker["total_failures"], 3);
    assert_eq!(breaker["failure_rate"], 1.0);
    assert!(breaker["opened_at"].is_string());

    // Half-open after the cooldown; two probe successes close it.
    failing.answer_with(200);
    eventually("the breaker half-opens", || async {
        breaker_state(&admin, &key).await == "half_open"
    })
    .await;
    assert_eq!(
        metric(&get_text(&format!("{admin}/metrics")).await, &state_series),
        Some(2.0)
    );
    eventually("the breaker closes", || async {
        assert_eq!(status_of(&url).await, Some(200));
        breaker_state(&admin, &key).await == "closed"
    })
    .await;
    assert!(failing.hits() >= 5, "probes reached the replica");
    let metrics = get_text(&format!("{admin}/metrics")).await;
    assert_eq!(metric(&metrics, &state_series), Some(0.0));
    assert_eq!(
        metric(
            &metrics,
            "outrigger_circuit_breaker_transitions_total{from=\"closed\",to=\"open\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "outrigger_circuit_breaker_transitions_total{from=\"half_open\",to=\"closed\"}"
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn with_every_replica_down_the_answer_is_a_fast_503() {
    let sidecar = sidecar(&format!(
        "  - name: api
    endpoints: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]
    max_ejection_percent: 100
    circuit_breaker: {{ failure_threshold: 2, cooldown: 1m }}",
        closed_port(),
        closed_port()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let mut last = None;
    for _ in 0..8 {
        let started = Instant::now();
        let mut response = client().get(&url).send().await.expect("an answer");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
        let status = response.status().as_u16();
        assert!(status == 502 || status == 503, "{status}");
        let reason = response
            .headers()
            .get("x-outrigger")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = response.json().await.expect("json error body");
        assert_eq!(body["service"], "api");
        last = Some((status, reason));
    }
    assert_eq!(last, Some((503, Some("no_healthy_replica".to_string()))));
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    assert!(
        metrics.contains("outrigger_upstream_errors_total{kind=\"connect\""),
        "{metrics}"
    );
    assert!(metrics.contains("outrigger_http_requests_total{listener=\"outbound\",method=\"GET\",service=\"api\",status=\"503\"}"));
}

#[actix_web::test]
async fn a_replica_slower_than_the_timeout_gets_a_504_near_the_timeout() {
    let slow = Replica::start().await;
    slow.delay(Duration::from_secs(3));
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"], timeout: 400ms }}",
        slow.endpoint()
    ))
    .await;
    let started = Instant::now();
    let mut response = client()
        .get(format!("http://{}/api/slow", sidecar.outbound_addr()))
        .send()
        .await
        .expect("an answer");
    let took = started.elapsed();
    assert_eq!(response.status().as_u16(), 504);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1200),
        "took {took:?}"
    );
    assert_eq!(
        response
            .headers()
            .get("x-outrigger")
            .and_then(|v| v.to_str().ok()),
        Some("upstream_timeout")
    );
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("within timeout 400ms")),
        "{body}"
    );
}

#[actix_web::test]
async fn a_removed_replica_finishes_its_calls_and_gets_no_new_ones() {
    let leaving = Replica::start().await;
    let staying = Replica::start().await;
    leaving.delay(Duration::from_millis(700));
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        leaving.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let in_flight = actix_rt::spawn({
        let url = url.clone();
        async move { status_of(&url).await }
    });
    eventually("the slow call reaches the replica", || async {
        leaving.in_flight() == 1
    })
    .await;

    let snapshot = [(
        "api".to_string(),
        vec![DiscoveredEndpoint::new(staying.endpoint())],
    )]
    .into_iter()
    .collect();
    sidecar
        .supervisor()
        .send(ApplySnapshot(snapshot))
        .await
        .expect("supervisor alive");
    for _ in 0..5 {
        assert_eq!(status_of(&url).await, Some(200));
    }
    assert_eq!(staying.hits(), 5, "new calls go to the replica that stayed");
    assert_eq!(
        in_flight.await.expect("task"),
        Some(200),
        "the call in flight finished"
    );
    assert_eq!(leaving.hits(), 1);
    let admin = format!("http://{}", sidecar.admin_addr());
    eventually("the drained replica's series are gone", || async {
        !get_text(&format!("{admin}/metrics"))
            .await
            .contains(&leaving.endpoint())
    })
    .await;
    let (_, services) = get_json(&format!("{admin}/services")).await;
    assert_eq!(
        services["services"][0]["replicas"].as_array().map(Vec::len),
        Some(1)
    );
}

#[actix_web::test]
async fn an_admin_reset_closes_open_breakers() {
    let failing = Replica::start().await;
    failing.answer_with(500);
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"], circuit_breaker: {{ failure_threshold: 1, cooldown: 1m }} }}",
        failing.endpoint()
    ))
    .await;
    let admin = format!("http://{}", sidecar.admin_addr());
    let key = format!("api/{}", failing.endpoint());
    assert_eq!(
        status_of(&format!("http://{}/api/x", sidecar.outbound_addr())).await,
        Some(500)
    );
    eventually("the breaker opens", || async {
        breaker_state(&admin, &key).await == "open"
    })
    .await;

    let unknown = client()
        .post(format!("{admin}/circuit-breakers/reset?service=nope"))
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown.status().as_u16(), 404);
    let mut reset = client()
        .post(format!("{admin}/circuit-breakers/reset?service=api"))
        .send()
        .await
        .expect("answer");
    let body: Value = reset.json().await.expect("json");
    assert_eq!(body["reset"][0], key);
    eventually("the breaker closes", || async {
        breaker_state(&admin, &key).await == "closed"
    })
    .await;
}

/// GETs `url` and returns the status and the `x-outrigger` reason, if any.
async fn answer_of(url: &str) -> (u16, Option<String>) {
    status_and_header(url, "x-outrigger").await
}

/// Sends requests to `url` one after another until `until`, asserting each
/// is refused by the sidecar itself (503 `no_healthy_replica`, no call to
/// a replica); returns how many were sent.
async fn refused_until(url: &str, until: Instant) -> usize {
    let mut sent = 0;
    while Instant::now() < until {
        assert_eq!(
            answer_of(url).await,
            (503, Some("no_healthy_replica".to_string())),
            "while every breaker is open the sidecar answers itself"
        );
        sent += 1;
    }
    sent
}

#[actix_web::test]
async fn an_open_breaker_on_a_one_replica_service_lets_no_call_through_until_its_cooldown_ends() {
    let dead = Replica::start().await;
    dead.answer_with(503);
    // Default max_ejection_percent (50). One try per request, so each
    // request is one call; a 2 s cooldown is spread to 1.8-2.2 s.
    let sidecar = sidecar(&format!(
        "  - name: api
    endpoints: [\"{}\"]
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 3, window: 10s, cooldown: 2s, half_open_max_probes: 2 }}",
        dead.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());
    let key = format!("api/{}", dead.endpoint());

    let first_call = Instant::now();
    while dead.hits() < 3 {
        assert_eq!(answer_of(&url).await, (503, None), "the replica's own 503");
    }
    eventually("the breaker opens", || async {
        breaker_state(&admin, &key).await == "open"
    })
    .await;
    assert_eq!(dead.hits(), 3, "exactly failure_threshold calls reached it");

    // The whole cooldown: every request refused at once, none reaches it.
    let sent = refused_until(&url, first_call + Duration::from_millis(1500)).await;
    assert!(sent >= 10, "only {sent} requests during the cooldown");
    assert_eq!(dead.hits(), 3, "no call during the cooldown");
    let (_, report) = get_json(&format!("{admin}/circuit-breakers")).await;
    assert_eq!(report["circuit_breakers"][&key]["state"], "open");

    // Half-open: exactly half_open_max_probes probes at once. Slow probes,
    // so all six requests arrive while both are in flight.
    dead.delay(Duration::from_millis(500));
    eventually("the breaker half-opens", || async {
        breaker_state(&admin, &key).await == "half_open"
    })
    .await;
    assert_eq!(dead.hits(), 3, "no call before the probes");
    let answers = futures_util::future::join_all((0..6).map(|_| answer_of(&url))).await;
    let probed = answers.iter().filter(|a| **a == (503, None)).count();
    let refused = answers
        .iter()
        .filter(|a| a.1.as_deref() == Some("no_healthy_replica"))
        .count();
    assert_eq!((probed, refused), (2, 4), "{answers:?}");
    assert_eq!(dead.hits(), 5, "the two probes, and nothing else");

    // A failed probe re-opens it: nothing again.
    eventually("the breaker re-opens", || async {
        breaker_state(&admin, &key).await == "open"
    })
    .await;
    let sent = refused_until(&url, Instant::now() + Duration::from_millis(1200)).await;
    assert!(sent >= 5, "only {sent} requests after re-opening");
    assert_eq!(dead.hits(), 5);
}

#[actix_web::test]
async fn with_both_replicas_failing_no_call_reaches_either_until_the_cooldowns_end() {
    let (a, b) = (Replica::start().await, Replica::start().await);
    a.answer_with(500);
    b.answer_with(500);
    let sidecar = sidecar(&format!(
        "  - name: api
    endpoints: [\"{}\", \"{}\"]
    load_balancer: round_robin
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 2, cooldown: 2s }}",
        a.endpoint(),
        b.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());

    let first_call = Instant::now();
    while a.hits() + b.hits() < 4 {
        assert_eq!(answer_of(&url).await, (500, None));
    }
    for replica in [&a, &b] {
        let key = format!("api/{}", replica.endpoint());
        eventually("both breakers open", || async {
            breaker_state(&admin, &key).await == "open"
        })
        .await;
    }
    assert_eq!((a.hits(), b.hits()), (2, 2), "failure_threshold calls each");

    let sent = refused_until(&url, first_call + Duration::from_millis(1500)).await;
    assert!(sent >= 10, "only {sent} requests during the cooldown");
    assert_eq!(
        (a.hits(), b.hits()),
        (2, 2),
        "no forced probe: past the ejection cap with nothing left serving"
    );
}

#[actix_web::test]
async fn past_the_ejection_cap_ejected_replicas_are_probed_back_while_another_serves() {
    let (a, b, serving) = Replica::three().await;
    a.answer_with(500);
    b.answer_with(500);
    let sidecar = sidecar(&format!(
        "  - name: api
    endpoints: [\"{}\", \"{}\", \"{}\"]
    load_balancer: round_robin
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 1, cooldown: 5m, success_threshold: 1 }}",
        a.endpoint(),
        b.endpoint(),
        serving.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());
    let (key_a, key_b) = (
        format!("api/{}", a.endpoint()),
        format!("api/{}", b.endpoint()),
    );
    while breaker_state(&admin, &key_a).await != "open"
        || breaker_state(&admin, &key_b).await != "open"
    {
        let status = status_of(&url).await;
        assert!(status == Some(500) || status == Some(200), "{status:?}");
    }
    // Two of three open for 5 minutes, past the default 50% cap; the third
    // carries everything. One of the two recovers now.
    a.answer_with(200);
    eventually(
        "a forced probe brings it back before its cooldown",
        || async {
            let status = status_of(&url).await;
            assert!(
                status == Some(200) || status == Some(500),
                "200, or a forced probe's to the other: {status:?}"
            );
            breaker_state(&admin, &key_a).await == "closed"
        },
    )
    .await;
    // One of three open is within the cap: the other, recovered too, waits
    // out its cooldown without a forced probe.
    b.answer_with(200);
    let b_calls = b.hits();
    let a_calls = a.hits();
    send_ok(&url, 20).await;
    assert!(a.hits() > a_calls, "the one brought back serves");
    assert_eq!(b.hits(), b_calls, "within the cap, no forced probe");
    assert_eq!(breaker_state(&admin, &key_b).await, "open");
}

#[actix_web::test]
async fn the_breaker_report_shows_its_tuning_its_cooldown_and_the_failures_that_opened_it() {
    let (healthy, failing, dead) = Replica::three().await;
    failing.answer_with(500);
    dead.answer_with(500);
    let sidecar = sidecar(&format!(
        "  - name: api
    endpoints: [\"{}\", \"{}\"]
    load_balancer: round_robin
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ failure_threshold: 2, window: 10s, cooldown: 1m }}
  - name: down
    endpoints: [\"{}\"]
    circuit_breaker: {{ failure_threshold: 1, cooldown: 1m }}",
        healthy.endpoint(),
        failing.endpoint(),
        dead.endpoint()
    ))
    .await;
    let outbound = sidecar.outbound_addr();
    let admin = format!("http://{}", sidecar.admin_addr());
    let key = format!("api/{}", failing.endpoint());
    while failing.hits() < 2 {
        status_of(&format!("http://{outbound}/api/x")).await;
    }
    status_of(&format!("http://{outbound}/down/x")).await;
    eventually("both breakers open", || async {
        breaker_state(&admin, &key).await == "open"
            && breaker_state(&admin, &format!("down/{}", dead.endpoint())).await == "open"
    })
    .await;

    let (_, report) = get_json(&format!("{admin}/circuit-breakers")).await;
    let open = &report["circuit_breakers"][&key];
    assert_eq!(open["failure_count"], 2, "the failures that opened it");
    assert_eq!(open["failure_threshold"], 2);
    assert_eq!(open["window"], "10s");
    assert_eq!(open["cooldown"], "1m");
    assert_eq!(open["current_cooldown"], "1m");
    assert!(open["cooldown_ends_at"].is_string(), "{open}");
    let closed = &report["circuit_breakers"][&format!("api/{}", healthy.endpoint())];
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["failure_count"], 0);
    assert!(closed["cooldown_ends_at"].is_null(), "{closed}");

    let (status, by_service) = get_json(&format!("{admin}/circuit-breakers?by=service")).await;
    assert_eq!(status, 200);
    let api = &by_service["circuit_breakers"]["api"];
    assert_eq!(api["state"], "closed", "the best of its replicas': {api}");
    assert_eq!(
        api["replicas"],
        serde_json::json!({"closed": 1, "half_open": 0, "open": 1})
    );
    assert_eq!(
        (&api["failure_threshold"], &api["window"], &api["cooldown"]),
        (&2.into(), &"10s".into(), &"1m".into())
    );
    assert_eq!(by_service["circuit_breakers"]["down"]["state"], "open");

    let (status, refused) = get_json(&format!("{admin}/circuit-breakers?by=zone")).await;
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("replica or service")),
        "{refused}"
    );
}
