//! The admin listener: probes, metrics and the operator API. It runs on its
//! own worker thread, so a scrape or a breaker report never slows the proxy.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_prom::PrometheusMetricsBuilder;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use actix::Addr;
use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::{format_duration, Config};
use crate::inbound::Gate;
use crate::logging::{self, rfc3339};
use crate::metrics::Metrics;
use crate::reload::{Reload, ReloadResult, Reloader, Trigger};
use crate::replica::{BreakerReport, BreakerState, Endpoint};
use crate::service::LiveServices;

/// What the admin API reads and acts on.
pub struct Shared {
    /// The service table in force.
    pub table: Arc<LiveServices>,
    /// The config in force (a reload replaces it).
    pub config: Arc<ArcSwap<Config>>,
    /// The inbound gate in force, when the inbound listener runs.
    pub gates: Option<Arc<ArcSwap<Gate>>>,
    /// The config reloader, when the sidecar runs from a file.
    pub reloader: Option<Addr<Reloader>>,
    /// `POST /shutdown` asks for a stop here.
    pub shutdown: Arc<Notify>,
}

struct AdminState {
    shared: Shared,
    started: Instant,
}

impl std::ops::Deref for AdminState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// The admin listener's server on `socket`; it runs once awaited or spawned.
pub fn server(
    socket: std::net::TcpListener,
    shared: Shared,
    metrics: &Metrics,
) -> io::Result<Server> {
    let prometheus = PrometheusMetricsBuilder::new("outrigger_admin")
        .registry(metrics.registry.clone())
        .endpoint("/metrics")
        .mask_unmatched_patterns("UNKNOWN")
        .build()
        .map_err(|err| io::Error::other(format!("cannot set up /metrics: {err}")))?;
    let state = web::Data::new(AdminState {
        shared,
        started: Instant::now(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .wrap(prometheus.clone())
            .app_data(state.clone())
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .listen(socket)?;
    Ok(server.run())
}

/// Every admin route; the endpoints that change state pass [`refuse_change`].
fn routes(app: &mut web::ServiceConfig) {
    app.route("/", web::get().to(index))
        .route("/live", web::get().to(live))
        .route("/ready", web::get().to(ready))
        .route("/identity", web::get().to(identity))
        .route("/services", web::get().to(services))
        .route("/circuit-breakers", web::get().to(circuit_breakers))
        .route("/circuit-breakers/reset", web::post().to(reset_breakers))
        .route("/config", web::get().to(show_config))
        .route("/tokens/revoke", web::post().to(revoke_token))
        .route("/rate-limit/users/{id}", web::get().to(rate_limit_usage))
        .route("/shutdown", web::post().to(request_shutdown))
        .route("/reload", web::post().to(reload))
        .route("/log-level", web::get().to(log_level))
        .route("/log-level", web::put().to(set_log_level));
}

/// The 403 for a request to an endpoint that changes state (`what`), unless
/// it comes from this host or carries `Authorization: Bearer <token>`
/// matching `OUTRIGGER_ADMIN_TOKEN` (compared in constant time). The admin port is reachable from the cluster for
/// scrapes and probes: nothing there may stop, reset or revoke.
fn refuse_change(req: &HttpRequest, state: &AdminState, what: &str) -> Option<HttpResponse> {
    let config = state.config.load();
    let token = config.listeners.admin_token.as_deref();
    let authorization = req.headers().get(header::AUTHORIZATION);
    if allowed(req.peer_addr(), authorization, token) {
        return None;
    }
    let peer = req
        .peer_addr()
        .map_or_else(|| "an unknown peer".to_string(), |p| p.ip().to_string());
    log::warn!("admin: refused to {what} for {peer}: not from localhost and no valid admin token");
    let how = if token.is_some() {
        "from localhost or with the admin token (Authorization: Bearer ...)"
    } else {
        "from localhost (set OUTRIGGER_ADMIN_TOKEN to allow remote callers with a token)"
    };
    Some(HttpResponse::Forbidden().json(json!({ "error": format!("{what}: only {how}") })))
}

/// Whether a caller at `peer` with `authorization` may change state.
fn allowed(
    peer: Option<SocketAddr>,
    authorization: Option<&header::HeaderValue>,
    token: Option<&str>,
) -> bool {
    if peer.is_some_and(|peer| peer.ip().is_loopback()) {
        return true;
    }
    let (Some(token), Some(authorization)) = (token, authorization) else {
        return false;
    };
    let presented = authorization
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .unwrap_or_default();
    // Digests first, so the comparison does not reveal the token's length.
    let presented: [u8; 32] = Sha256::digest(presented).into();
    let expected: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    bool::from(presented.ct_eq(&expected))
}

async fn index(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "service": "outrigger",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "links": ["/live", "/ready", "/metrics", "/services", "/circuit-breakers", "/config", "/identity", "/log-level"],
        "endpoints": {
            "GET /live": "the process is up",
            "GET /ready": "200 once every service has had a discovery sync (503 while the mesh identity is expired)",
            "GET /identity": "the mesh identity in use: spiffe_id, serial, not_after",
            "GET /metrics": "Prometheus metrics",
            "GET /services": "services and their replicas with load, latency and breaker state",
            "GET /circuit-breakers": "every replica's breaker figures; ?by=service for each service's",
            "POST /circuit-breakers/reset": "close every breaker, or one service's with ?service=",
            "GET /config": "the running configuration (secrets redacted)",
            "POST /reload": "re-read and apply the config file, answering what changed or why it was rejected",
            "GET /rate-limit/users/{id}": "a user's rate-limited attempts per endpoint in the window",
            "POST /tokens/revoke": "revoke a token: {\"token\": ...} or {\"jti\": ..., \"ttl_seconds\": ...}",
            "GET /log-level": "the log filters in force",
            "PUT /log-level": "set the log filters (body: info, or outrigger=debug,actix_server=warn)",
            "POST /shutdown": "stop as on SIGTERM",
            "note": "POST and PUT endpoints answer only callers on this host, or with Authorization: Bearer <OUTRIGGER_ADMIN_TOKEN>",
        }
    }))
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

async fn ready(state: web::Data<AdminState>) -> HttpResponse {
    let config = state.config.load();
    let expired = config
        .mesh
        .loaded_identity()
        .map(|identity| identity.chain().not_after())
        .filter(|not_after| *not_after <= SystemTime::now());
    if let Some(not_after) = expired {
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready",
            "identity_expired": rfc3339(not_after),
        }));
    }
    let table = state.table.load();
    let pending: Vec<&str> = table
        .iter()
        .filter(|s| !s.synced())
        .map(|s| &*s.name)
        .collect();
    if state.table.ready() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not_ready", "waiting_for": pending}))
    }
}

/// The mesh identity in use (`mesh.identity`): its SPIFFE ID, the serial
/// of its certificate (lowercase hex) and when it expires; 404 when there
/// is none.
async fn identity(state: web::Data<AdminState>) -> HttpResponse {
    match state
        .config
        .load()
        .mesh
        .loaded_identity()
        .map(|identity| identity.chain())
    {
        Some(chain) => HttpResponse::Ok().json(json!({
            "spiffe_id": chain.spiffe_id(),
            "serial": chain.serial(),
            "not_after": rfc3339(chain.not_after()),
        })),
        None => HttpResponse::NotFound().json(json!({"error": "no mesh.identity is configured"})),
    }
}

async fn services(state: web::Data<AdminState>) -> HttpResponse {
    let table = state.table.load();
    let services: Vec<Value> = table
        .iter()
        .map(|service| {
            let settings = service.settings();
            let replicas: Vec<Value> = service
                .replicas()
                .iter()
                .map(|e| {
                    let placement = service.placement(&e.address);
                    json!({
                        "address": &*e.address,
                        "weight": placement.as_ref().map(|p| p.weight),
                        "zone": placement.and_then(|p| p.zone),
                        "load": e.status.in_flight(),
                        "ewma_ms": e.status.ewma_micros() / 1000.0,
                        "healthy": e.status.admits(),
                        "breaker": e.status.state().as_str(),
                    })
                })
                .collect();
            json!({
                "name": &*service.name,
                "strip_prefix": settings.strip_prefix,
                "load_balancer": settings.policy.load_balancer,
                "synced": service.synced(),
                "replicas": replicas,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "services": services }))
}

#[derive(Deserialize)]
struct BreakersQuery {
    by: Option<String>,
}

/// Every replica's breaker figures, or with `?by=service` each service's.
async fn circuit_breakers(
    state: web::Data<AdminState>,
    query: web::Query<BreakersQuery>,
) -> HttpResponse {
    match query.by.as_deref() {
        None | Some("replica") => breakers_by_replica(&state).await,
        Some("service") => breakers_by_service(&state),
        Some(other) => HttpResponse::BadRequest().json(json!({
            "error": format!("by must be replica or service, got {other:?}")
        })),
    }
}

async fn breakers_by_replica(state: &AdminState) -> HttpResponse {
    let mut breakers = serde_json::Map::new();
    let table = arc_swap::Guard::into_inner(state.table.load());
    for service in table.iter() {
        let replicas = service.replicas().clone();
        for endpoint in replicas.iter() {
            if let Some(report) = endpoint.inspect().await {
                breakers.insert(replica_key(endpoint), breaker_json(&report));
            }
        }
    }
    HttpResponse::Ok().json(json!({ "circuit_breakers": breakers }))
}

/// Each service's breakers as one: its state is the best of its replicas'
/// (closed, then half-open, then open; `null` with no replica), read from
/// what the replicas publish, with how many are in each state and the
/// service's configured thresholds.
fn breakers_by_service(state: &AdminState) -> HttpResponse {
    let mut services = serde_json::Map::new();
    for service in state.table.load().iter() {
        let (mut closed, mut half_open, mut open) = (0usize, 0usize, 0usize);
        for endpoint in service.replicas().iter() {
            match endpoint.status.state() {
                BreakerState::Closed => closed += 1,
                BreakerState::HalfOpen => half_open += 1,
                BreakerState::Open => open += 1,
            }
        }
        let best = [
            (closed, BreakerState::Closed),
            (half_open, BreakerState::HalfOpen),
            (open, BreakerState::Open),
        ]
        .into_iter()
        .find(|(count, _)| *count > 0)
        .map(|(_, state)| state.as_str());
        let breaker = &service.settings().policy.circuit_breaker;
        services.insert(
            service.name.to_string(),
            json!({
                "state": best,
                "replicas": {"closed": closed, "half_open": half_open, "open": open},
                "failure_threshold": breaker.failure_threshold,
                "window": format_duration(breaker.window),
                "cooldown": format_duration(breaker.cooldown),
            }),
        );
    }
    HttpResponse::Ok().json(json!({ "circuit_breakers": services }))
}

#[derive(Deserialize)]
struct ResetQuery {
    service: Option<String>,
}

async fn reset_breakers(
    req: HttpRequest,
    state: web::Data<AdminState>,
    query: web::Query<ResetQuery>,
) -> HttpResponse {
    if let Some(refusal) = refuse_change(&req, &state, "resetting circuit breakers") {
        return refusal;
    }
    let table = state.table.load();
    if let Some(name) = &query.service {
        if table.get(name).is_none() {
            return HttpResponse::NotFound()
                .json(json!({"error": format!("no service named {name}")}));
        }
    }
    let mut reset = Vec::new();
    for service in table.iter() {
        if query
            .service
            .as_deref()
            .is_some_and(|name| name != &*service.name)
        {
            continue;
        }
        for endpoint in service.replicas().iter() {
            endpoint.reset_breaker();
            reset.push(replica_key(endpoint));
        }
    }
    log::info!("admin: circuit breakers reset: {}", reset.join(", "));
    HttpResponse::Ok().json(json!({ "reset": reset }))
}

#[derive(Deserialize)]
struct RevokeRequest {
    token: Option<String>,
    jti: Option<String>,
    ttl_seconds: Option<u64>,
}

async fn revoke_token(
    req: HttpRequest,
    state: web::Data<AdminState>,
    body: web::Json<RevokeRequest>,
) -> HttpResponse {
    if let Some(refusal) = refuse_change(&req, &state, "revoking tokens") {
        return refusal;
    }
    let gate = state.gates.as_ref().map(|gates| gates.load_full());
    let Some(authenticator) = gate.as_ref().map(|gate| &gate.authenticator) else {
        return HttpResponse::NotFound()
            .json(json!({"error": "the inbound listener is not configured"}));
    };
    let target = match (&body.token, &body.jti, body.ttl_seconds) {
        (Some(token), None, None) => authenticator.revocable(token),
        (None, Some(jti), Some(ttl)) => Ok((jti.clone(), std::time::Duration::from_secs(ttl))),
        _ => Err("send {\"token\": ...} or {\"jti\": ..., \"ttl_seconds\": ...}".to_string()),
    };
    let (id, ttl) = match target {
        Ok(target) => target,
        Err(message) => return HttpResponse::BadRequest().json(json!({ "error": message })),
    };
    match authenticator.revoke(&id, ttl).await {
        Some(Ok(())) => {
            log::info!("admin: a token was revoked for {}s", ttl.as_secs());
            HttpResponse::Ok().json(json!({"revoked": true, "ttl_seconds": ttl.as_secs()}))
        }
        Some(Err(err)) => HttpResponse::ServiceUnavailable().json(json!({ "error": err })),
        None => HttpResponse::Conflict()
            .json(json!({"error": "revocation is off (inbound.auth.revocation)"})),
    }
}

async fn rate_limit_usage(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    let gate = state.gates.as_ref().map(|gates| gates.load_full());
    let Some(limiter) = gate.as_ref().and_then(|gate| gate.limiter.as_ref()) else {
        return HttpResponse::NotFound()
            .json(json!({"error": "inbound.rate_limit is not configured"}));
    };
    match limiter.usage(&id).await {
        Ok(usage) => {
            let total: u64 = usage.iter().map(|(_, count)| count).sum();
            let endpoints: serde_json::Map<String, Value> = usage
                .into_iter()
                .map(|(endpoint, count)| (endpoint, json!(count)))
                .collect();
            HttpResponse::Ok()
                .json(json!({"user": id.as_str(), "endpoints": endpoints, "total": total}))
        }
        Err(err) => HttpResponse::ServiceUnavailable().json(json!({ "error": err })),
    }
}

async fn log_level() -> HttpResponse {
    match logging::filters() {
        Some(filters) => HttpResponse::Ok().json(json!({ "filters": filters })),
        None => HttpResponse::NotFound().json(json!({"error": "logging is not managed here"})),
    }
}

/// Replaces the log filters.
async fn set_log_level(
    req: HttpRequest,
    state: web::Data<AdminState>,
    body: String,
) -> HttpResponse {
    if let Some(refusal) = refuse_change(&req, &state, "changing the log level") {
        return refusal;
    }
    let filters = body.trim();
    match logging::set_filters(filters) {
        Ok(()) => {
            log::warn!("admin: log filters set to {filters}");
            HttpResponse::Ok().json(json!({ "filters": filters }))
        }
        Err(message) => HttpResponse::BadRequest().json(json!({ "error": message })),
    }
}

/// Asks the sidecar to stop as on SIGTERM (a Job's app, done with its work).
async fn request_shutdown(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(refusal) = refuse_change(&req, &state, "shutting down") {
        return refusal;
    }
    log::warn!("admin: shutdown requested");
    state.shutdown.notify_one();
    HttpResponse::Accepted().json(json!({"stopping": true}))
}

async fn show_config(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(&**state.config.load())
}

/// Reloads the config file as on SIGHUP and answers what it did: 200 when
/// the new config is in force (`restart_needed` lists keys that are not),
/// 422 with every error by key path when it was rejected. Only callers on
/// this host may.
async fn reload(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(refusal) = refuse_change(&req, &state, "reloading the config") {
        return refusal;
    }
    let Some(reloader) = &state.reloader else {
        return HttpResponse::Conflict()
            .json(json!({"error": "this sidecar was not started from a config file"}));
    };
    match reloader.send(Reload(Trigger::Admin)).await {
        Ok(report) if report.result == ReloadResult::Invalid => {
            HttpResponse::UnprocessableEntity().json(report)
        }
        Ok(report) => HttpResponse::Ok().json(report),
        Err(err) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": format!("the reloader is gone: {err}")})),
    }
}

fn replica_key(endpoint: &Endpoint) -> String {
    endpoint.to_string()
}

fn breaker_json(report: &BreakerReport) -> Value {
    let stats = &report.stats;
    let failure_rate = if stats.total_calls == 0 {
        0.0
    } else {
        stats.total_failures as f64 / stats.total_calls as f64
    };
    json!({
        "state": report.state.as_str(),
        "failure_count": report.failure_count,
        "success_count": report.success_count,
        "total_calls": stats.total_calls,
        "total_failures": stats.total_failures,
        "total_successes": stats.total_successes,
        "failure_rate": failure_rate,
        "total_rejections": report.total_rejections,
        "opened_at": stats.opened_at.map(rfc3339),
        "last_failure_time": stats.last_failure_time.map(rfc3339),
        "last_success_time": stats.last_success_time.map(rfc3339),
        "failure_threshold": report.failure_threshold,
        "window": format_duration(report.window),
        "cooldown": format_duration(report.cooldown),
        "current_cooldown": format_duration(report.current_cooldown),
        "cooldown_ends_at": report.cooldown_ends_at.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceTable;
    use actix_web::test::{self, TestRequest};

    async fn answer(token: Option<&str>, req: TestRequest) -> (u16, Value) {
        let env = |name: &str| {
            (name == "OUTRIGGER_ADMIN_TOKEN")
                .then(|| token.map(str::to_string))
                .flatten()
        };
        let config = Config::from_yaml("", &env).expect("valid");
        let metrics = Metrics::new();
        let table = ServiceTable::new(&config.services, &config.routes, &metrics);
        let state = web::Data::new(AdminState {
            shared: Shared {
                table: Arc::new(LiveServices::new(table)),
                config: Arc::new(ArcSwap::from_pointee(config)),
                gates: None,
                reloader: None,
                shutdown: Arc::new(Notify::new()),
            },
            started: Instant::now(),
        });
        let app = test::init_service(App::new().app_data(state).configure(routes)).await;
        let response = test::call_service(&app, req.to_request()).await;
        let status = response.status().as_u16();
        let body = test::read_body(response).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    const CHANGES: [(&str, &str); 5] = [
        ("POST", "/circuit-breakers/reset"),
        ("POST", "/tokens/revoke"),
        ("POST", "/shutdown"),
        ("POST", "/reload"),
        ("PUT", "/log-level"),
    ];

    fn request(method: &str, path: &str, peer: &str) -> TestRequest {
        let req = match method {
            "PUT" => TestRequest::put(),
            _ => TestRequest::post(),
        };
        req.uri(path)
            .peer_addr(peer.parse().expect("peer"))
            .insert_header(("content-type", "application/json"))
            .set_payload("{}")
    }

    #[actix_rt::test]
    async fn every_endpoint_that_changes_state_refuses_callers_off_this_host() {
        for (method, path) in CHANGES {
            let (status, body) = answer(None, request(method, path, "10.1.2.3:40000")).await;
            assert_eq!(status, 403, "{method} {path}: {body}");
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("only from localhost")),
                "{body}"
            );
            let (status, _) = answer(None, request(method, path, "127.0.0.1:40000")).await;
            assert_ne!(status, 403, "{method} {path} from localhost");
        }
        let (status, _) = answer(
            None,
            TestRequest::get()
                .uri("/circuit-breakers")
                .peer_addr("10.1.2.3:4".parse().expect("peer")),
        )
        .await;
        assert_eq!(status, 200, "reading stays open to the cluster");
    }

    #[actix_rt::test]
    async fn the_admin_token_lets_a_remote_caller_change_state() {
        let remote = |authorization: Option<&str>| {
            let req = request("POST", "/circuit-breakers/reset", "10.1.2.3:40000");
            match authorization {
                Some(value) => req.insert_header(("authorization", value)),
                None => req,
            }
        };
        let token = Some("s3cret-admin");
        assert_eq!(
            answer(token, remote(Some("Bearer s3cret-admin"))).await.0,
            200
        );
        for wrong in [
            None,
            Some("Bearer s3cret"),
            Some("Bearer s3cret-admin2"),
            Some("s3cret-admin"),
            Some("Basic s3cret-admin"),
        ] {
            assert_eq!(answer(token, remote(wrong)).await.0, 403, "{wrong:?}");
        }
        assert_eq!(
            answer(None, remote(Some("Bearer "))).await.0,
            403,
            "no token configured: an empty bearer is no key"
        );
    }
}
