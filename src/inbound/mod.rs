//! The inbound listener: the pod's front door. Callers are authenticated
//! and authorised before the app sees anything; then the request goes to
//! the app on localhost through the same streaming forwarder the outbound
//! side uses, with the caller's identity in `x-outrigger-*` headers.
//!
//! Each request takes these steps, in this order; a step that answers ends
//! the walk there, and steps 10 and 11 go on every answer:
//!
//! 1. check head: the head is within the listener's limits and the path
//!    normalises (the later steps match, and forward, the normalised path);
//! 2. CORS preflight: answered here;
//! 3. authenticate: the caller's mesh identity may call the path
//!    (`inbound.authorization`), the caller is known and may call the path
//!    (a WebSocket handshake may carry its token where
//!    `inbound.auth.websocket_token` says; it is taken out here);
//! 4. rate limit: a caller over its limit gets 429;
//! 5. cache lookup: a stored answer is served (never for an upgrade);
//! 6. concurrency: past an in-flight cap, 429;
//! 7. forward: the body is read and the request sent to the app; a
//!    WebSocket handshake (any upgrade) instead opens a tunnel to the app,
//!    which holds its step-6 slot while open, and ends the walk;
//! 8. revoke on logout: a successful logout revokes the caller's token;
//! 9. cache fill: the app's answer streams back, stored on the way when
//!    step 5 missed;
//! 10. rate-limit headers: `X-RateLimit-*` on a limited route (and
//!     `X-Cache: BYPASS` when step 5 bypassed the cache);
//! 11. CORS decoration: an allowed origin is named on the answer.

mod api_keys;
mod auth;
mod cache;
mod concurrency;
mod cors;
mod gate;
mod jwks;
mod jwt;
mod rate_limit;
mod websocket;

use std::borrow::Cow;
use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::http::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse};
use arc_swap::ArcSwap;
use log::{info, warn};

pub use auth::{AuthMethod, Authenticator, Identity};
pub use cache::{Cache, Fill, Lookup, X_CACHE};
pub use concurrency::{Full, InFlightCaps, Slot};
pub use cors::Cors;
pub use gate::{store, Gate};
pub use jwks::{FetchNow, JwksFetcher};
pub use jwt::{JwtRejection, TokenClaims, Verifier};
pub use rate_limit::{RateLimiter, Verdict};
pub use websocket::Carried;

use crate::config::{Config, ReplicaProtocol};
use crate::error::ProxyError;
use crate::http::client::{CallError, Peer, UpstreamResponse};
use crate::http::forward::{self, HeaderPlan, RequestBody, Target};
use crate::http::grpc;
use crate::http::listener::{self, Arrival, Front, PeerIdentity};
use crate::http::request_id::IdText;
use crate::http::tunnel;
use crate::metrics::RequestSeries;

/// The `listener` label of this listener's metrics and log lines.
pub const LISTENER: &str = "inbound";
/// The `service` label of inbound metrics.
const APP: &str = "app";

struct Worker {
    client: crate::http::client::Client,
    /// Bound on connecting to the app for a tunnel (the client has its own).
    connect_timeout: Duration,
    /// The gate in force; each request loads it once.
    gates: Arc<ArcSwap<Gate>>,
    front: Front,
    /// The series of the requests answered here (service `app`).
    requests: RequestSeries,
}

/// The inbound listener's server on `socket`, receiving with `front` and
/// checking callers with the gate in `gates`; it runs once awaited or spawned.
pub fn server(
    config: &Config,
    front: Front,
    socket: std::net::TcpListener,
    gates: Arc<ArcSwap<Gate>>,
) -> io::Result<Server> {
    let connect_timeout = config.defaults.connect_timeout;
    let tls = config
        .listeners
        .inbound
        .as_ref()
        .and_then(|inbound| inbound.tls.termination.clone());
    listener::serve(&front.clone(), socket, config.workers, tls, move || {
        let worker = Worker {
            client: crate::http::client::Client::new(connect_timeout),
            connect_timeout,
            gates: Arc::clone(&gates),
            requests: front.metrics().requests(LISTENER, APP),
            front: front.clone(),
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
    let gate = worker.gates.load();
    let mut request = Request {
        worker: &worker,
        gate: &gate,
        req: &req,
        arrival: &arrival,
        verdict: None,
        bypassed: false,
    };
    let mut response = match request.take_steps(payload).await {
        ControlFlow::Break(early) => early,
        ControlFlow::Continue(forwarded) => forwarded,
    };
    request.finish(&mut response);
    arrival.answer(&req, &worker.requests, &mut response);
    response
}

/// What a step gives the next one, or `Break` with the request's answer.
type Step<T> = ControlFlow<HttpResponse, T>;

/// One inbound request on its way through the steps of the module doc.
struct Request<'a> {
    worker: &'a Worker,
    /// The gate in force when the request arrived, kept to its answer.
    gate: &'a Gate,
    req: &'a HttpRequest,
    arrival: &'a Arrival<'a>,
    /// Step 4's verdict, on a limited route: its headers go on the answer.
    verdict: Option<Verdict>,
    /// Step 5 bypassed the cache: the answer says so in `X-Cache`.
    bypassed: bool,
}

impl<'a> Request<'a> {
    /// Steps 1 to 9, in order; a step that answers ends the walk.
    async fn take_steps(&mut self, payload: web::Payload) -> Step<HttpResponse> {
        let path = self.check_head()?;
        self.preflight()?;
        let upgrade = forward::upgrade_requested(self.req.headers()).is_some();
        let (identity, carried) = self.authenticate(&path, upgrade).await?;
        self.rate_limit(&path, &identity).await?;
        if upgrade {
            let slot = self.enter_caps(&path)?;
            // Boxed: the rare upgrade's state would otherwise widen every request's future.
            let tunnel = Box::pin(self.tunnel(payload, &path, &identity, carried, slot));
            return ControlFlow::Continue(tunnel.await);
        }
        let fill = self.look_up_cache(&path, &identity).await?;
        let slot = self.enter_caps(&path)?;
        let forwarded = self.forward(payload, &path, &identity).await?;
        self.revoke_on_logout(&forwarded, &path, &identity).await;
        ControlFlow::Continue(self.fill_cache(fill, forwarded, slot).await)
    }

    /// Steps 10 and 11, on every answer: the `X-Cache: BYPASS` mark and
    /// the `X-RateLimit-*` headers when steps 4 and 5 called for them, then
    /// the allowed origin.
    fn finish(self, response: &mut HttpResponse) {
        if self.bypassed {
            response
                .headers_mut()
                .insert(X_CACHE.clone(), HeaderValue::from_static("BYPASS"));
        }
        if let Some(verdict) = self.verdict {
            for (name, value) in verdict.headers() {
                response.headers_mut().insert(name, value);
            }
        }
        if let Some(origin) = self.gate.cors.allowed_origin(self.req.headers()) {
            Cors::decorate(origin.clone(), response);
        }
    }

    /// Step 1: the head is within the listener's limits and the path normalises;
    /// every step after this matches, and forwards, the normalised path.
    fn check_head(&self) -> Step<Cow<'a, str>> {
        let req = self.req;
        let checked = self
            .arrival
            .check_head(req)
            .and_then(|()| listener::normal_path(req.path()));
        match checked {
            Ok(path) => ControlFlow::Continue(path),
            Err(refused) => ControlFlow::Break(self.refuse(&refused)),
        }
    }

    /// Step 2: a CORS preflight is answered here.
    fn preflight(&self) -> Step<()> {
        match self
            .gate
            .cors
            .preflight(self.req.method(), self.req.headers())
        {
            Some(Ok(preflight)) => ControlFlow::Break(preflight),
            Some(Err(refused)) => ControlFlow::Break(self.refuse(&refused)),
            None => ControlFlow::Continue(()),
        }
    }

    /// Step 3: the caller's mesh identity (over mutual TLS) may call
    /// `path`, and the caller is known and may call it. An `upgrade`
    /// handshake may carry its token where `inbound.auth.websocket_token`
    /// says: then the handshake without it comes back for step 7.
    async fn authenticate(
        &self,
        path: &str,
        upgrade: bool,
    ) -> Step<(Identity, Option<Carried<'a>>)> {
        let peer = listener::connection_data::<PeerIdentity>(self.req);
        if let Err(refusal) =
            auth::authorize_peer(&self.gate.config.authorization, peer.as_ref(), path)
        {
            return ControlFlow::Break(self.refuse(&refusal));
        }
        let authenticator = &self.gate.authenticator;
        let carried = if upgrade {
            match authenticator.carried(self.req) {
                Ok(carried) => carried,
                Err(refusal) => return ControlFlow::Break(self.refuse(&refusal)),
            }
        } else {
            None
        };
        let token = carried.as_ref().map(|carried| &*carried.token);
        match authenticator.authenticate(self.req, path, token).await {
            Ok(mut identity) => {
                identity.client_ip = self.gate.client_ip(self.req);
                identity.peer = peer;
                ControlFlow::Continue((identity, carried))
            }
            Err(refusal) => ControlFlow::Break(self.refuse(&refusal)),
        }
    }

    /// Step 4: a caller over its rate limit gets 429.
    async fn rate_limit(&mut self, path: &str, identity: &Identity) -> Step<()> {
        if let Some(limiter) = &self.gate.limiter {
            let id = self.id();
            self.verdict = limiter.check(self.req, path, identity, id.as_str()).await;
        }
        match &self.verdict {
            Some(verdict) if !verdict.allowed => {
                let message = format!(
                    "rate limit of {} per {}s reached ({})",
                    verdict.limit,
                    verdict.window.as_secs(),
                    verdict.scope
                );
                let refused = ProxyError::RateLimited(message, verdict.retry_after_secs());
                ControlFlow::Break(self.refuse(&refused))
            }
            _ => ControlFlow::Continue(()),
        }
    }

    /// Step 5: a stored answer is served; a miss gives what step 9 fills.
    async fn look_up_cache(&mut self, path: &str, identity: &Identity) -> Step<Option<Fill>> {
        let Some(cache) = &self.gate.cache else {
            return ControlFlow::Continue(None);
        };
        match cache
            .lookup(self.req, path, identity, self.id().as_str())
            .await
        {
            Some(Lookup::Hit(hit)) => ControlFlow::Break(hit),
            Some(Lookup::Miss(fill)) => ControlFlow::Continue(Some(fill)),
            Some(Lookup::Bypass) => {
                self.bypassed = true;
                ControlFlow::Continue(None)
            }
            None => ControlFlow::Continue(None),
        }
    }

    /// Step 6: past an in-flight cap, 429; the slot lives until the answer's body ends.
    fn enter_caps(&self, path: &str) -> Step<Option<Slot>> {
        let Some(caps) = &self.gate.caps else {
            return ControlFlow::Continue(None);
        };
        match caps.enter(path) {
            Ok(slot) => ControlFlow::Continue(Some(slot)),
            Err(full) => {
                let message =
                    format!("too many requests in flight ({full:?} cap of inbound.concurrency)");
                ControlFlow::Break(self.refuse(&ProxyError::ConcurrencyLimit(message)))
            }
        }
    }

    /// Step 7: the body is read and the request sent to the app, with the
    /// caller's identity; the app's answer head comes back.
    async fn forward(
        &self,
        payload: web::Payload,
        path: &str,
        identity: &Identity,
    ) -> Step<UpstreamResponse> {
        let (gate, req) = (self.gate, self.req);
        let identity_headers = identity.headers();
        let payload = self.arrival.body(req, payload);
        let mut body = match RequestBody::read(req, payload, None).await {
            Ok(body) => body,
            Err(error) => return ControlFlow::Break(self.refuse(&error.refusal(req))),
        };
        let bound = self.bound();
        let target = Target {
            address: &gate.app,
            origination: None,
            connections: None,
            path,
            headers: HeaderPlan {
                grpc_timeout: bound.told.as_ref(),
                ..self.plan(&identity_headers)
            },
            timeout: bound.wait,
            // The app is called over HTTP/1.1 whatever the caller spoke,
            // but a gRPC call, which only HTTP/2 carries.
            protocol: if self.arrival.grpc() {
                ReplicaProtocol::Http2
            } else {
                ReplicaProtocol::Http1
            },
        };
        let request_id = self.arrival.request_id();
        match forward::send(&self.worker.client, target, req, &mut body, request_id).await {
            Ok(forwarded) => ControlFlow::Continue(forwarded),
            Err(error) => ControlFlow::Break(self.app_failed(error, bound.key)),
        }
    }

    /// Step 7 for an upgrade (a WebSocket): the handshake goes to the app
    /// less the token it `carried`, and on 101 the bytes are relayed both
    /// ways, `slot` held while the tunnel is open. When the token came in
    /// `Sec-WebSocket-Protocol` and the app chooses no subprotocol, the
    /// answer names the one that announced it, as the browser requires.
    async fn tunnel(
        &self,
        payload: web::Payload,
        path: &str,
        identity: &Identity,
        carried: Option<Carried<'_>>,
        slot: Option<Slot>,
    ) -> HttpResponse {
        let (gate, req) = (self.gate, self.req);
        let identity_headers = identity.headers();
        let tunnel = tunnel::Tunnel {
            address: &gate.app,
            origination: None,
            path,
            query: carried
                .as_ref()
                .map_or(req.uri().query(), |carried| carried.query.as_deref()),
            subprotocols: carried
                .as_ref()
                .and_then(|carried| carried.subprotocols.as_deref()),
            headers: self.plan(&identity_headers),
            connect_timeout: self.worker.connect_timeout,
            answer_timeout: gate.timeout,
        };
        let handshake = match tunnel::open(tunnel, req, self.arrival.request_id()).await {
            Ok(handshake) => handshake,
            Err(error) => return self.app_failed(error, ("timeout", self.gate.timeout)),
        };
        let mut response = handshake.into_response(payload, slot, self.worker.front.stopping());
        let chose_none = response.status() == StatusCode::SWITCHING_PROTOCOLS
            && !response.headers().contains_key(SEC_WEBSOCKET_PROTOCOL);
        if let Some(announced) = carried.and_then(|carried| carried.announced) {
            if chose_none {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, announced);
            }
        }
        response
    }

    /// How the caller's headers become the app's: `Host` kept, the
    /// caller's `identity_headers` set, `Authorization` stripped when
    /// configured, forwarding headers trusted only from trusted proxies.
    fn plan<'h>(&'h self, identity_headers: &'h HeaderMap) -> HeaderPlan<'h> {
        HeaderPlan {
            keep_host: true,
            handshake: false,
            identity: Some(identity_headers),
            strip_authorization: self.gate.authenticator.strip_authorization,
            trust_forwarding: self.gate.trusts_forwarding(self.req),
            trace: Some(self.arrival.hop()),
            grpc_timeout: None,
        }
    }

    /// How long a call to the app made now waits for its answer head:
    /// `listeners.inbound.timeout`, or what is left of a gRPC caller's
    /// `grpc-timeout` when that ends first; the app is then told what is
    /// left of the caller's deadline in its own `grpc-timeout`.
    fn bound(&self) -> AppBound {
        let timeout = self.gate.timeout;
        let by_timeout = AppBound {
            wait: timeout,
            key: ("timeout", timeout),
            told: None,
        };
        if !self.arrival.grpc() {
            return by_timeout;
        }
        let Some((at, given)) = grpc::caller_deadline(self.req.headers(), self.arrival.arrived())
        else {
            return by_timeout;
        };
        let left = at.saturating_duration_since(Instant::now());
        let told = Some(grpc::timeout_value(left));
        if left < timeout {
            AppBound {
                wait: left,
                key: ("grpc-timeout", given),
                told,
            }
        } else {
            AppBound { told, ..by_timeout }
        }
    }

    /// The answer when the call to the app, bounded by `bound` (the key
    /// and its value), failed.
    fn app_failed(&self, error: CallError, bound: (&'static str, Duration)) -> HttpResponse {
        let app = format_args!("the app at {}", self.gate.app);
        let peer = Peer { name: &app, bound };
        self.refuse(&error.refusal(self.req, peer))
    }

    /// Step 8: a successful logout revokes the caller's token.
    async fn revoke_on_logout(
        &self,
        forwarded: &UpstreamResponse,
        path: &str,
        identity: &Identity,
    ) {
        let authenticator = &self.gate.authenticator;
        if !forwarded.status().is_success() || !authenticator.is_logout(self.req, path) {
            return;
        }
        let Some((token_id, ttl)) = &identity.revocable else {
            return;
        };
        let id = self.id();
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

    /// Step 9: the app's answer streams back, stored on the way when step
    /// 5 missed (an answer that breaks off while it is read to be stored is
    /// refused).
    async fn fill_cache(
        &self,
        fill: Option<Fill>,
        forwarded: UpstreamResponse,
        slot: Option<Slot>,
    ) -> HttpResponse {
        let (Some(fill), Some(cache)) = (fill, &self.gate.cache) else {
            return forward::respond(forwarded, slot);
        };
        let headers = self.req.headers();
        match cache
            .complete(fill, forwarded, slot, headers, self.gate.timeout)
            .await
        {
            Ok(answer) => answer,
            Err(refused) => self.refuse(&refused),
        }
    }

    /// The request's id as log lines and error bodies show it.
    fn id(&self) -> IdText<'a> {
        self.arrival.id()
    }

    /// Our answer instead of the app's (see [`Arrival::refuse`]).
    fn refuse(&self, refused: &ProxyError) -> HttpResponse {
        self.arrival.refuse(refused, Some(APP))
    }
}

/// How long a call to the app waits, the key that says so, and the
/// `grpc-timeout` it is told.
struct AppBound {
    wait: Duration,
    key: (&'static str, Duration),
    told: Option<HeaderValue>,
}
