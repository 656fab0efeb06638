//! The inbound listener: the pod's front door. Callers are authenticated
//! and authorised before the app sees anything; then the request goes to
//! the app on localhost through the same streaming forwarder the outbound
//! side uses, with the caller's identity in `x-outrigger-*` headers.

mod api_keys;
mod auth;
mod cache;
mod concurrency;
mod cors;
mod gate;
mod jwks;
mod jwt;
mod rate_limit;

use std::io;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpRequest, HttpResponse};
use arc_swap::ArcSwap;
use log::{info, warn};

pub use auth::{usable_name, AuthMethod, Authenticator, Identity};
pub use cache::{Cache, Fill, Lookup, X_CACHE};
pub use concurrency::{Full, InFlightCaps, Slot};
pub use cors::Cors;
pub use gate::{store, Gate};
pub use jwks::{FetchNow, JwksFetcher};
pub use jwt::{JwtRejection, TokenClaims, Verifier};
pub use rate_limit::{RateLimiter, Verdict};

use crate::config::{Config, InboundListener};
use crate::error::ProxyError;
use crate::http::client::UpstreamError;
use crate::http::forward::{self, HeaderPlan, RequestBody, SendError, Target};
use crate::http::listener::{self, BodyError, Front, LimitedPayload, Stopping};
use crate::http::request_id::IdText;
use crate::metrics::{Metrics, RequestSeries};
use crate::otlp::Exporter;
use crate::trace::Hop;

/// The `listener` label of this listener's metrics and log lines.
pub const LISTENER: &str = "inbound";
/// The `service` label of inbound metrics.
const APP: &str = "app";

struct Worker {
    client: crate::http::client::Client,
    /// The gate in force; each request loads it once.
    gates: Arc<ArcSwap<Gate>>,
    front: Front,
    /// The series of the requests answered here (service `app`).
    requests: RequestSeries,
}

/// The inbound listener's server on `socket`; it runs once awaited or spawned.
pub fn server(
    config: &Config,
    listener: &InboundListener,
    socket: std::net::TcpListener,
    gates: Arc<ArcSwap<Gate>>,
    metrics: Arc<Metrics>,
    spans: Option<Exporter>,
    stopping: Arc<Stopping>,
) -> io::Result<Server> {
    let connect_timeout = config.defaults.connect_timeout;
    let front = Front::new(
        LISTENER,
        listener.limits,
        Arc::clone(&metrics),
        &config.observability,
        spans,
        stopping,
    );
    let workers = config.workers as usize;
    listener::serve(&front.clone(), socket, workers, move || {
        let worker = Worker {
            client: crate::http::client::Client::new(connect_timeout),
            gates: Arc::clone(&gates),
            front: front.clone(),
            requests: metrics.requests(LISTENER, APP),
        };
        App::new()
            .app_data(web::Data::new(worker))
            .default_service(web::to(handle))
    })
}

async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    worker: web::Data<Worker>,
) -> HttpResponse {
    let arrival = worker.front.arrive(&req);
    let (id, request_id, hop) = (arrival.id(), arrival.request_id(), arrival.hop());
    let gate = worker.gates.load();
    // Every step after this matches, and forwards, the normalised path.
    let checked = listener::check_head(&req, &worker.front.limits)
        .and_then(|()| listener::normal_path(req.path()));
    let mut response = match (checked, gate.cors.preflight(req.method(), req.headers())) {
        (Err(refused), _) => {
            warn!(
                "request {id}: {}: {}",
                refused.status().as_u16(),
                refused.message()
            );
            refused.closing_response(Some(APP), id.as_str())
        }
        (Ok(_), Some(preflight)) => preflight,
        (Ok(path), None) => match gate.authenticator.authenticate(&req, &path).await {
            Err(refusal) => {
                warn!(
                    "request {id}: {}: {}",
                    refusal.status().as_u16(),
                    refusal.message()
                );
                refusal.response(Some(APP), id.as_str())
            }
            Ok(identity) => {
                let caller = Caller {
                    identity: &identity,
                    path: &path,
                    request_id,
                    hop,
                };
                admit(&worker, &gate, &req, payload, &caller).await
            }
        },
    };
    if let Some(origin) = gate.cors.allowed_origin(req.headers()) {
        Cors::decorate(origin.clone(), &mut response);
    }
    arrival.answer(&req, &worker.requests, &mut response);
    response
}

/// Who is calling and how this request is known: what every step after
/// authentication needs.
struct Caller<'a> {
    identity: &'a Identity,
    /// The request's path as [`listener::normal_path`] made it.
    path: &'a str,
    request_id: &'a actix_web::http::header::HeaderValue,
    hop: &'a Hop,
}

impl Caller<'_> {
    fn id(&self) -> IdText<'_> {
        IdText(self.request_id)
    }
}

/// Applies the rate limit, serves from the cache when it can, applies the
/// in-flight caps, then forwards; every answer on a limited route carries
/// the `X-RateLimit-*` headers.
async fn admit(
    worker: &Worker,
    gate: &Gate,
    req: &HttpRequest,
    payload: web::Payload,
    caller: &Caller<'_>,
) -> HttpResponse {
    let (id, identity, path) = (caller.id(), caller.identity, caller.path);
    let verdict = match &gate.limiter {
        Some(limiter) => limiter.check(req, path, identity, id.as_str()).await,
        None => None,
    };
    let mut response = match &verdict {
        Some(verdict) if !verdict.allowed => {
            let message = format!(
                "rate limit of {} per {}s reached ({})",
                verdict.limit,
                verdict.window.as_secs(),
                verdict.scope
            );
            warn!("request {id}: 429: {message}");
            ProxyError::RateLimited(message, verdict.retry_after_secs())
                .response(Some(APP), id.as_str())
        }
        _ => {
            let lookup = match &gate.cache {
                Some(cache) => cache.lookup(req, path, identity, id.as_str()).await,
                None => None,
            };
            let (fill, bypassed) = match lookup {
                Some(Lookup::Hit(hit)) => return finish_limited(hit, verdict),
                Some(Lookup::Miss(fill)) => (Some(fill), false),
                Some(Lookup::Bypass) => (None, true),
                None => (None, false),
            };
            let mut response = match gate.caps.as_ref().map(|caps| caps.enter(path)) {
                Some(Err(full)) => {
                    let message = format!(
                        "too many requests in flight ({full:?} cap of inbound.concurrency)"
                    );
                    warn!("request {id}: 429: {message}");
                    ProxyError::ConcurrencyLimit(message).response(Some(APP), id.as_str())
                }
                Some(Ok(slot)) => {
                    forward_to_app(worker, gate, req, payload, caller, slot, fill).await
                }
                None => forward_to_app(worker, gate, req, payload, caller, (), fill).await,
            };
            if bypassed {
                response.headers_mut().insert(
                    X_CACHE.clone(),
                    actix_web::http::header::HeaderValue::from_static("BYPASS"),
                );
            }
            response
        }
    };
    response = finish_limited(response, verdict);
    response
}

/// Adds the `X-RateLimit-*` headers of `verdict`, when there is one.
fn finish_limited(mut response: HttpResponse, verdict: Option<Verdict>) -> HttpResponse {
    if let Some(verdict) = verdict {
        for (name, value) in verdict.headers() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn forward_to_app<G: forward::StreamGuard>(
    worker: &Worker,
    gate: &Gate,
    req: &HttpRequest,
    payload: web::Payload,
    caller: &Caller<'_>,
    slot: G,
    fill: Option<Fill>,
) -> HttpResponse {
    let id = caller.id();
    let identity_headers = caller.identity.headers();
    let target = Target {
        address: &gate.app,
        path: caller.path,
        headers: HeaderPlan {
            keep_host: true,
            handshake: false,
            identity: Some(&identity_headers),
            strip_authorization: gate.authenticator.strip_authorization,
            trust_forwarding: gate.trusts_forwarding(req),
            trace: Some(caller.hop),
        },
        timeout: gate.timeout,
    };
    let payload = LimitedPayload::new(payload, &worker.front.limits);
    let refuse_body = |error: BodyError| {
        let error = error.refusal(req);
        warn!(
            "request {id}: {}: {}",
            error.status().as_u16(),
            error.message()
        );
        error.closing_response(Some(APP), id.as_str())
    };
    let mut body = match RequestBody::read(req, payload, None).await {
        Ok(body) => body,
        Err(error) => return refuse_body(error),
    };
    match forward::send(&worker.client, target, req, &mut body, caller.request_id).await {
        Ok(response) => {
            if response.status().is_success() && gate.authenticator.is_logout(req, caller.path) {
                revoke_at_logout(&gate.authenticator, caller.identity, id.as_str()).await;
            }
            match (fill, &gate.cache) {
                (Some(fill), Some(cache)) => {
                    cache
                        .complete(fill, response, slot, req.headers(), gate.timeout)
                        .await
                }
                _ => forward::respond(response, slot),
            }
        }

        Err(SendError::BadRequest(message)) => {
            warn!("request {id}: 400: {message}");
            ProxyError::BadRequest(message).closing_response(Some(APP), id.as_str())
        }
        Err(SendError::Body(error)) => {
            warn!("request {id}: the app's request was aborted");
            refuse_body(error)
        }
        Err(SendError::Upstream(kind, detail)) => {
            let app = &gate.app;
            let error = match kind {
                UpstreamError::Timeout => ProxyError::Timeout(format!(
                    "the app at {app} did not answer within {}ms",
                    gate.timeout.as_millis()
                )),
                UpstreamError::Connect => ProxyError::UpstreamConnect(format!(
                    "cannot connect to the app at {app}: {detail}"
                )),
                UpstreamError::Reset => ProxyError::UpstreamReset(format!(
                    "the app at {app} closed the connection: {detail}"
                )),
                UpstreamError::Protocol => ProxyError::UpstreamProtocol(format!(
                    "the app at {app} broke the exchange: {detail}"
                )),
            };
            warn!(
                "request {id}: {}: {}",
                error.status().as_u16(),
                error.message()
            );
            error.response(Some(APP), id.as_str())
        }
    }
}

async fn revoke_at_logout(authenticator: &Authenticator, identity: &Identity, id: &str) {
    let Some((token_id, ttl)) = &identity.revocable else {
        return;
    };
    match authenticator.revoke(token_id, *ttl).await {
        Some(Ok(())) => info!(
            "request {id}: logout: token of {} revoked for {}s",
            identity.user,
            ttl.as_secs()
        ),
        Some(Err(err)) => warn!("request {id}: logout: revoking the token failed: {err}"),
        None => {}
    }
}
