//! The `registry` source against a real HTTP registry written for the test:
//! replicas follow its listing (in our shape and the seed's), every forwarded
//! request is counted back with `increment`, a tripped breaker deregisters
//! its replica, and a registry that goes down leaves the last set in place.
//! A replica the registry no longer lists gets no further increments.

mod support;

use std::time::Duration;

use outrigger::Sidecar;
use support::admin::{assert_last_set_kept, discovery_syncs, first_service_replicas};
use support::client::{send_ok, status_of};
use support::eventually::eventually;
use support::registry::Registry;
use support::replica::Replica;
use support::sidecar::{config_with, sidecar_with};

fn discovery(registry: &Registry) -> String {
    format!(
        "discovery: {{ source: registry, refresh: 200ms, registry: {{ url: \"{}\" }} }}",
        registry.url
    )
}

async fn replica_count(admin: &str) -> usize {
    first_service_replicas(admin).await.len()
}

#[actix_web::test]
async fn replicas_follow_the_registry_and_each_request_is_counted_back() {
    let first = Replica::start().await;
    let second = Replica::start().await;
    let registry = Registry::start().await;
    registry.register("api-1", "api", &first);
    let sidecar = sidecar_with(&discovery(&registry), "  - name: api").await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());

    send_ok(&url, 10).await;
    assert_eq!(first.hits(), 10);
    eventually("the registry counts each request", || async {
        registry.increments("api-1") == 10
    })
    .await;

    // The seed's shape, with a second replica.
    registry.answer_in_seed_shape();
    registry.register("api-2", "api", &second);
    eventually("the new replica gets traffic", || async {
        assert_eq!(status_of(&url).await, Some(200));
        second.hits() > 0
    })
    .await;
    eventually("api-1's requests are counted before it leaves", || async {
        registry.increments("api-1") == first.hits() as u64
    })
    .await;
    registry.remove("api-1");
    eventually("the removed replica leaves", || async {
        replica_count(&admin).await == 1
    })
    .await;
    let first_hits = first.hits();
    send_ok(&url, 5).await;
    assert_eq!(
        first.hits(),
        first_hits,
        "no new request to the removed replica"
    );
    eventually("the counts match what each replica received", || async {
        registry.increments("api-1") == first.hits() as u64
            && registry.increments("api-2") == second.hits() as u64
    })
    .await;
}

/// Increments that could not be sent while the registry refused them are
/// dropped with their replica when the registry deregisters it: none reach
/// the registry afterwards, and none land on the replica when it registers
/// again under the same id.
#[actix_web::test]
async fn a_deregistered_replica_gets_no_further_increments() {
    let first = Replica::start().await;
    let second = Replica::start().await;
    let registry = Registry::start().await;
    registry.register("api-1", "api", &first);
    registry.register("api-2", "api", &second);
    registry.refuse_increments(true);
    let sidecar = sidecar_with(
        &discovery(&registry),
        "  - { name: api, load_balancer: round_robin }",
    )
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());
    eventually("both replicas are known", || async {
        replica_count(&admin).await == 2
    })
    .await;
    send_ok(&url, 10).await;
    let stale = first.hits();
    assert!(stale > 0, "api-1 served some requests");

    registry.remove("api-1");
    eventually("the sidecar reads that api-1 is gone", || async {
        replica_count(&admin).await == 1
    })
    .await;
    registry.refuse_increments(false);
    send_ok(&url, 5).await;
    eventually("api-2's requests are counted", || async {
        registry.increments("api-2") == second.hits() as u64
    })
    .await;
    assert_eq!(
        registry.unknown_increments("api-1"),
        0,
        "increments for a replica the registry no longer lists"
    );

    registry.register("api-1", "api", &first);
    eventually("api-1 is back and gets traffic", || async {
        assert_eq!(status_of(&url).await, Some(200));
        first.hits() > stale
    })
    .await;
    eventually("only api-1's new requests are counted", || async {
        registry.increments("api-1") == (first.hits() - stale) as u64
    })
    .await;
    assert_eq!(registry.unknown_increments("api-1"), 0);
}

/// A registry that answers 404 for a replica it still listed at the last
/// read has forgotten it: the increments are dropped after that one call,
/// not retried every flush.
#[actix_web::test]
async fn a_404_for_an_increment_is_not_retried() {
    let upstream = Replica::start().await;
    let registry = Registry::start().await;
    registry.register("api-1", "api", &upstream);
    // Read once: the sidecar keeps listing api-1 after the registry drops it.
    let discovery = format!(
        "discovery: {{ source: registry, refresh: 1h, registry: {{ url: \"{}\" }} }}",
        registry.url
    );
    let sidecar = sidecar_with(&discovery, "  - name: api").await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    registry.remove("api-1");
    send_ok(&url, 5).await;
    eventually("the registry is asked once and answers 404", || async {
        registry.unknown_increments("api-1") == 1
    })
    .await;
    // About time passing: increments are flushed once a second, so the
    // next three flushes would each have retried.
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(registry.unknown_increments("api-1"), 1, "a 404 was retried");
}

#[actix_web::test]
async fn a_tripped_breaker_deregisters_its_replica() {
    let good = Replica::start().await;
    let bad = Replica::start().await;
    bad.answer_with(500);
    let registry = Registry::start().await;
    registry.register("api-good", "api", &good);
    registry.register("api-bad", "api", &bad);
    let sidecar = sidecar_with(
        &discovery(&registry),
        "  - { name: api, load_balancer: round_robin, circuit_breaker: { failure_threshold: 2, cooldown: 1m } }",
    )
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    eventually("both replicas are known", || async {
        replica_count(&format!("http://{}", sidecar.admin_addr())).await == 2
    })
    .await;
    while bad.hits() < 2 {
        status_of(&url).await.expect("an answer");
    }
    eventually("the registry is told to deregister it", || async {
        registry.deregistered() == vec!["api-bad".to_string()]
    })
    .await;
    eventually("the replica leaves the set", || async {
        replica_count(&format!("http://{}", sidecar.admin_addr())).await == 1
    })
    .await;
}

#[actix_web::test]
async fn ready_waits_for_the_registry_and_an_outage_keeps_the_last_set() {
    let upstream = Replica::start().await;
    let registry = Registry::start().await;
    let sidecar = Sidecar::start(config_with(&discovery(&registry), "  - name: api"))
        .await
        .expect("sidecar starts");
    let admin = format!("http://{}", sidecar.admin_addr());
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    eventually("the registry has been read", || async {
        discovery_syncs(&admin, "registry", "ok").await > 0.0
    })
    .await;
    assert_eq!(
        status_of(&format!("{admin}/ready")).await,
        Some(503),
        "the registry does not list api yet"
    );
    registry.register("api-1", "api", &upstream);
    eventually("the sidecar is ready", || async {
        status_of(&format!("{admin}/ready")).await == Some(200)
    })
    .await;

    registry.stop().await;
    eventually("failed reads are counted", || async {
        discovery_syncs(&admin, "registry", "error").await >= 2.0
    })
    .await;
    assert_last_set_kept(&admin, &url, "api", 1).await;
}
