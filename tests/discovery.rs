//! The supervisor follows discovery snapshots: endpoints that are not ready
//! get no traffic, a snapshot that forgets a service keeps its replicas, and
//! what discovery says about each replica shows in `/services`.

mod support;

use outrigger::discovery::{ApplySnapshot, DiscoveredEndpoint, Snapshot};
use support::{get_json, sidecar, status_of, Upstream};

fn endpoint(address: String, ready: bool) -> DiscoveredEndpoint {
    DiscoveredEndpoint {
        ready,
        weight: 2,
        zone: Some("eu-west-1a".to_string()),
        ..DiscoveredEndpoint::new(address)
    }
}

#[actix_web::test]
async fn only_ready_endpoints_get_traffic_and_a_forgotten_service_keeps_its_replicas() {
    let first = Upstream::start().await;
    let second = Upstream::start().await;
    let sidecar = sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        first.endpoint()
    ))
    .await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let apply = |snapshot: Snapshot| sidecar.supervisor().send(ApplySnapshot(snapshot));

    let snapshot = [(
        "api".to_string(),
        vec![
            endpoint(first.endpoint(), true),
            endpoint(second.endpoint(), false),
        ],
    )];
    apply(snapshot.into_iter().collect())
        .await
        .expect("supervisor alive");
    for _ in 0..6 {
        assert_eq!(status_of(&url).await, Some(200));
    }
    assert_eq!(
        (first.hits(), second.hits()),
        (6, 0),
        "not ready: no traffic"
    );
    let (_, services) = get_json(&format!("http://{}/services", sidecar.admin_addr())).await;
    let replicas = &services["services"][0]["replicas"];
    assert_eq!(replicas.as_array().map(Vec::len), Some(1), "{services}");
    assert_eq!(replicas[0]["weight"], 2);
    assert_eq!(replicas[0]["zone"], "eu-west-1a");

    apply(Snapshot::new()).await.expect("supervisor alive");
    for _ in 0..3 {
        assert_eq!(status_of(&url).await, Some(200));
    }
    assert_eq!(
        first.hits(),
        9,
        "a snapshot without the service keeps its replicas"
    );

    let snapshot = [(
        "api".to_string(),
        vec![
            endpoint(first.endpoint(), false),
            endpoint(second.endpoint(), true),
        ],
    )];
    apply(snapshot.into_iter().collect())
        .await
        .expect("supervisor alive");
    for _ in 0..3 {
        assert_eq!(status_of(&url).await, Some(200));
    }
    assert_eq!(
        (first.hits(), second.hits()),
        (9, 3),
        "traffic follows readiness"
    );
}
