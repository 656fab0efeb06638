//! The `registry` source against a real HTTP registry written for the test:
//! replicas follow its listing (in our shape and the seed's), every forwarded
//! request is counted back with `increment`, a tripped breaker deregisters
//! its replica, and a registry that goes down leaves the last set in place.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use outrigger::Sidecar;
use serde_json::{json, Value};
use support::{
    assert_last_set_kept, config_with, discovery_syncs, eventually, first_service_replicas,
    send_ok, sidecar_with, status_of, Upstream,
};

/// A service registry speaking the seed gateway's protocol.
struct Registry {
    url: String,
    state: Arc<RegistryState>,
    handle: ServerHandle,
}

#[derive(Default)]
struct RegistryState {
    /// `(id, service, address, healthy)` of each registered replica.
    replicas: Mutex<Vec<(String, String, String, bool)>>,
    /// Answer `/services` in the seed's shape instead of ours.
    seed_shape: AtomicBool,
    increments: Mutex<HashMap<String, u64>>,
    deregistered: Mutex<Vec<String>>,
}

impl Registry {
    async fn start() -> Registry {
        let state = Arc::new(RegistryState::default());
        let shared = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/services", web::get().to(list))
                .route("/increment", web::put().to(increment))
                .route("/deregister", web::delete().to(deregister))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the registry");
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Registry { url, state, handle }
    }

    fn register(&self, id: &str, service: &str, upstream: &Upstream) {
        let entry = (
            id.to_string(),
            service.to_string(),
            upstream.endpoint(),
            true,
        );
        self.state.replicas.lock().expect("lock").push(entry);
    }

    fn remove(&self, id: &str) {
        self.state
            .replicas
            .lock()
            .expect("lock")
            .retain(|r| r.0 != id);
    }

    fn increments(&self, id: &str) -> u64 {
        let increments = self.state.increments.lock().expect("lock");
        increments.get(id).copied().unwrap_or(0)
    }

    fn deregistered(&self) -> Vec<String> {
        self.state.deregistered.lock().expect("lock").clone()
    }
}

async fn list(state: web::Data<RegistryState>) -> HttpResponse {
    let replicas = state.replicas.lock().expect("lock").clone();
    let increments = state.increments.lock().expect("lock").clone();
    let count = |id: &str| increments.get(id).copied().unwrap_or(0);
    if state.seed_shape.load(Ordering::SeqCst) {
        let mut services = serde_json::Map::new();
        for (id, service, address, healthy) in replicas {
            let entry = json!({"URL": format!("http://{address}"), "RequestCount": count(&id), "Healthy": healthy});
            let by_id = services.entry(service).or_insert_with(|| json!({}));
            by_id[id] = entry;
        }
        HttpResponse::Ok().json(Value::Object(services))
    } else {
        let services: Vec<Value> = replicas
            .into_iter()
            .map(|(id, service, address, healthy)| {
                let (host, port) = address.rsplit_once(':').expect("host:port");
                json!({"id": id, "name": service, "host": host, "port": port.parse::<u16>().expect("port"),
                       "request_count": count(&id), "healthy": healthy})
            })
            .collect();
        HttpResponse::Ok().json(json!({ "services": services }))
    }
}

type IdQuery = web::Query<HashMap<String, String>>;

async fn increment(state: web::Data<RegistryState>, query: IdQuery) -> HttpResponse {
    with_id(&query, |id| {
        let mut increments = state.increments.lock().expect("lock");
        *increments.entry(id.to_string()).or_default() += 1;
    })
}

async fn deregister(state: web::Data<RegistryState>, query: IdQuery) -> HttpResponse {
    with_id(&query, |id| {
        state.replicas.lock().expect("lock").retain(|r| r.0 != id);
        state
            .deregistered
            .lock()
            .expect("lock")
            .push(id.to_string());
    })
}

/// Runs `record` with the `service_id` of the query: 200, or 400 without one.
fn with_id(query: &IdQuery, record: impl FnOnce(&str)) -> HttpResponse {
    match query.get("service_id") {
        Some(id) => {
            record(id);
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        None => HttpResponse::BadRequest().finish(),
    }
}

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
    let first = Upstream::start().await;
    let second = Upstream::start().await;
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
    registry.state.seed_shape.store(true, Ordering::SeqCst);
    registry.register("api-2", "api", &second);
    eventually("the new replica gets traffic", || async {
        assert_eq!(status_of(&url).await, Some(200));
        second.hits() > 0
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

#[actix_web::test]
async fn a_tripped_breaker_deregisters_its_replica() {
    let good = Upstream::start().await;
    let bad = Upstream::start().await;
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
    let upstream = Upstream::start().await;
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

    registry.handle.stop(true).await;
    eventually("failed reads are counted", || async {
        discovery_syncs(&admin, "registry", "error").await >= 2.0
    })
    .await;
    assert_last_set_kept(&admin, &url, "api", 1).await;
}
