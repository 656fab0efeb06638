//! A service registry for tests, speaking the registry protocol the
//! `registry` discovery source reads: `GET /services`, `PUT /increment`,
//! `DELETE /deregister`, each recorded so tests can see what was asked.
//! Like a real registry, it answers 404 to a call naming a replica it does
//! not list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

use super::replica::Replica;

/// A service registry speaking the seed gateway's protocol.
pub struct Registry {
    /// Its base URL, for `discovery.registry.url`.
    pub url: String,
    state: Arc<RegistryState>,
    handle: ServerHandle,
}

#[derive(Default)]
struct RegistryState {
    /// `(id, service, address, healthy)` of each registered replica.
    replicas: Mutex<Vec<(String, String, String, bool)>>,
    /// Answer `/services` in the seed's shape instead of ours.
    seed_shape: AtomicBool,
    /// Answer 503 to every `PUT /increment` (an outage of that call only).
    refuse_increments: AtomicBool,
    increments: Mutex<HashMap<String, u64>>,
    /// `PUT /increment` calls naming a replica not listed, answered 404.
    unknown_increments: Mutex<HashMap<String, u64>>,
    deregistered: Mutex<Vec<String>>,
}

impl Registry {
    /// Starts it on a free loopback port, with no replica registered.
    pub async fn start() -> Registry {
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

    /// Lists `replica` as replica `id` of `service`, healthy.
    pub fn register(&self, id: &str, service: &str, replica: &Replica) {
        self.register_url(id, service, &replica.endpoint());
    }

    /// Lists replica `id` of `service` at `address`, `host:port` or a URL
    /// such as `https://host:port`, healthy.
    pub fn register_url(&self, id: &str, service: &str, address: &str) {
        let entry = (
            id.to_string(),
            service.to_string(),
            address.to_string(),
            true,
        );
        self.state.replicas.lock().expect("lock").push(entry);
    }

    /// Deregisters replica `id`: stops listing it and answers 404 to calls naming it.
    pub fn remove(&self, id: &str) {
        self.state
            .replicas
            .lock()
            .expect("lock")
            .retain(|r| r.0 != id);
    }

    /// How many `PUT /increment` calls named replica `id` while it was listed.
    pub fn increments(&self, id: &str) -> u64 {
        let increments = self.state.increments.lock().expect("lock");
        increments.get(id).copied().unwrap_or(0)
    }

    /// How many `PUT /increment` calls named `id` while it was not listed.
    pub fn unknown_increments(&self, id: &str) -> u64 {
        let unknown = self.state.unknown_increments.lock().expect("lock");
        unknown.get(id).copied().unwrap_or(0)
    }

    /// Answer every `PUT /increment` with 503 (`true`), or as usual again.
    pub fn refuse_increments(&self, refuse: bool) {
        self.state.refuse_increments.store(refuse, Ordering::SeqCst);
    }

    /// The replica ids `DELETE /deregister` named, in order.
    pub fn deregistered(&self) -> Vec<String> {
        self.state.deregistered.lock().expect("lock").clone()
    }

    /// Stops answering (an outage).
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }

    /// Answer `/services` in the seed's shape (keyed by service, then id).
    pub fn answer_in_seed_shape(&self) {
        self.state.seed_shape.store(true, Ordering::SeqCst);
    }
}

async fn list(state: web::Data<RegistryState>) -> HttpResponse {
    let replicas = state.replicas.lock().expect("lock").clone();
    let increments = state.increments.lock().expect("lock").clone();
    let count = |id: &str| increments.get(id).copied().unwrap_or(0);
    if state.seed_shape.load(Ordering::SeqCst) {
        let mut services = serde_json::Map::new();
        for (id, service, address, healthy) in replicas {
            let url = if address.contains("://") {
                address
            } else {
                format!("http://{address}")
            };
            let entry = json!({"URL": url, "RequestCount": count(&id), "Healthy": healthy});
            let by_id = services.entry(service).or_insert_with(|| json!({}));
            by_id[id] = entry;
        }
        HttpResponse::Ok().json(Value::Object(services))
    } else {
        let services: Vec<Value> = replicas
            .into_iter()
            .map(|(id, service, address, healthy)| {
                if address.contains("://") {
                    return json!({"id": id, "name": service, "url": address,
                                  "request_count": count(&id), "healthy": healthy});
                }
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
    if state.refuse_increments.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    with_listed_id(&state, &query, |id| {
        let mut increments = state.increments.lock().expect("lock");
        *increments.entry(id.to_string()).or_default() += 1;
    })
    .unwrap_or_else(|id| {
        let mut unknown = state.unknown_increments.lock().expect("lock");
        *unknown.entry(id).or_default() += 1;
        HttpResponse::NotFound().finish()
    })
}

async fn deregister(state: web::Data<RegistryState>, query: IdQuery) -> HttpResponse {
    with_listed_id(&state, &query, |id| {
        state.replicas.lock().expect("lock").retain(|r| r.0 != id);
        state
            .deregistered
            .lock()
            .expect("lock")
            .push(id.to_string());
    })
    .unwrap_or_else(|_| HttpResponse::NotFound().finish())
}

/// Runs `record` with the `service_id` of the query when that replica is
/// listed: 200, or 400 without an id; `Err(id)` when it is not listed.
fn with_listed_id(
    state: &RegistryState,
    query: &IdQuery,
    record: impl FnOnce(&str),
) -> Result<HttpResponse, String> {
    let Some(id) = query.get("service_id") else {
        return Ok(HttpResponse::BadRequest().finish());
    };
    let listed = state
        .replicas
        .lock()
        .expect("lock")
        .iter()
        .any(|r| &r.0 == id);
    if !listed {
        return Err(id.clone());
    }
    record(id);
    Ok(HttpResponse::Ok().json(json!({"ok": true})))
}
