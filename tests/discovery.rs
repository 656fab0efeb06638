//! The supervisor follows discovery snapshots: endpoints that are not ready
//! get no traffic, a snapshot that forgets a service keeps its replicas,
//! what discovery says about each replica shows in `/services`, and a
//! replica joining a serving set starts slowly.

mod support;

use outrigger::discovery::{ApplySnapshot, DiscoveredEndpoint, Snapshot};
use support::admin::first_service_replicas;
use support::client::send_ok;
use support::replica::Replica;
use support::sidecar::sidecar;

/// A snapshot of service `api` with each `(address, ready)`, in zone
/// `eu-west-1a` with weight 2.
fn api(endpoints: [(String, bool); 2]) -> Snapshot {
    let endpoints = endpoints
        .into_iter()
        .map(|(address, ready)| DiscoveredEndpoint {
            ready,
            weight: 2,
            zone: Some("eu-west-1a".to_string()),
            ..DiscoveredEndpoint::new(address)
        })
        .collect();
    [("api".to_string(), endpoints)].into_iter().collect()
}

#[actix_web::test]
async fn only_ready_endpoints_get_traffic_and_a_forgotten_service_keeps_its_replicas() {
    let first = Replica::start().await;
    let second = Replica::start().await;
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        first.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let apply = |snapshot: Snapshot| sidecar.supervisor().send(ApplySnapshot(snapshot));

    apply(api([(first.endpoint(), true), (second.endpoint(), false)]))
        .await
        .expect("supervisor alive");
    send_ok(&url, 6).await;
    assert_eq!(
        (first.hits(), second.hits()),
        (6, 0),
        "not ready: no traffic"
    );
    let replicas = first_service_replicas(&format!("http://{}", sidecar.admin_addr())).await;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert_eq!(replicas[0]["weight"], 2);
    assert_eq!(replicas[0]["zone"], "eu-west-1a");

    apply(Snapshot::new()).await.expect("supervisor alive");
    send_ok(&url, 3).await;
    assert_eq!(
        first.hits(),
        9,
        "a snapshot without the service keeps its replicas"
    );

    apply(api([(first.endpoint(), false), (second.endpoint(), true)]))
        .await
        .expect("supervisor alive");
    send_ok(&url, 3).await;
    assert_eq!(
        (first.hits(), second.hits()),
        (9, 3),
        "traffic follows readiness"
    );
}

/// Requests sent right after a replica joins.
const AFTER_JOINING: usize = 200;

/// Of [`AFTER_JOINING`] requests to `api` sent right after a second
/// replica joins the one serving it, how many the newcomer got.
async fn hits_on_a_joining_replica(slow_start: &str) -> usize {
    let (serving, joining) = (Replica::start().await, Replica::start().await);
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"], slow_start: {slow_start} }}",
        serving.endpoint()
    ))
    .await;
    let both = [serving.endpoint(), joining.endpoint()]
        .into_iter()
        .map(DiscoveredEndpoint::new)
        .collect();
    sidecar
        .supervisor()
        .send(ApplySnapshot(
            [("api".to_string(), both)].into_iter().collect(),
        ))
        .await
        .expect("supervisor alive");
    send_ok(
        &format!("http://{}/api/x", sidecar.outbound_addr()),
        AFTER_JOINING,
    )
    .await;
    joining.hits()
}

#[actix_web::test]
async fn a_replica_joining_a_serving_set_starts_with_a_small_share() {
    // Its share ramps from 10% over 10 s, so it gets about 5% of the
    // requests of the first second (10 of 200); were they spread over 5 s
    // it would still expect only 13%. They take well under a second.
    let ramping = hits_on_a_joining_replica("10s").await;
    assert!(
        ramping < AFTER_JOINING * 20 / 100,
        "the ramping replica got {ramping} of {AFTER_JOINING} requests"
    );
    let even = hits_on_a_joining_replica("0s").await;
    assert!(
        (AFTER_JOINING * 30 / 100..AFTER_JOINING * 70 / 100).contains(&even),
        "without slow start the newcomer got {even} of {AFTER_JOINING} requests"
    );
}
