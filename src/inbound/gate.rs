//! The inbound side's shared parts: who may call, CORS, rate limits,
//! in-flight caps, the GET cache and the app they lead to. A config reload
//! builds a new [`Gate`], reusing each part whose config did not change (so
//! its counters and background work go on), and swaps it in whole; each
//! request works with the gate it started with.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::HttpRequest;
use log::info;

use super::jwks::StopRefreshing;
use super::{Authenticator, Cache, Cors, InFlightCaps, JwksFetcher, RateLimiter, Verifier};
use crate::config::{
    ConfigError, InboundConfig, InboundListener, InboundTarget, JwtKeys, RedisConfig,
};
use crate::logging::summary::Topic;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, RedisStore, Store};

/// What every inbound worker shares, as one config version built it.
pub struct Gate {
    /// Who may call.
    pub authenticator: Arc<Authenticator>,
    /// Which browser origins may call.
    pub cors: Arc<Cors>,
    /// How often each caller may call, when configured.
    pub limiter: Option<Arc<RateLimiter>>,
    /// How many may be in flight, when configured.
    pub caps: Option<Arc<InFlightCaps>>,
    /// The GET response cache, when configured.
    pub cache: Option<Arc<Cache>>,
    /// `host:port` of the app, or of the outbound listener when
    /// `listeners.inbound.routes` sends requests to the route table.
    pub app: String,
    /// Bound on the app's answer head.
    pub timeout: Duration,
    /// The config the parts were built from.
    pub config: InboundConfig,
}

/// The summary topic of `kind`, a store failure the inbound side works
/// around for the app (logged once, then summarised).
pub(super) fn store_failed(kind: &'static str) -> Topic<'static> {
    Topic {
        kind,
        listener: super::LISTENER,
        service: super::APP,
    }
}

/// The store rate limits, revocations and the cache keep their state in:
/// Redis when configured, else in process. Built once: a reload keeps it.
pub fn store(redis: Option<&RedisConfig>, metrics: &Metrics) -> io::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match redis {
        Some(redis) => {
            Arc::new(RedisStore::new(redis, metrics).map_err(|err| io::Error::other(err.0))?)
        }
        None => Arc::new(MemoryStore::new()),
    };
    info!("inbound store: {}", store.kind());
    Ok(store)
}

/// Where this host reaches a listener bound at `bound`: its loopback
/// address when it is bound to every address (`0.0.0.0`, `[::]`).
fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

impl Gate {
    /// The gate for `inbound` in front of `listener`'s target: its app, or
    /// the route table of the outbound listener bound at `outbound`. Each
    /// part whose config is the same as in `previous` is that gate's part.
    pub fn build(
        listener: &InboundListener,
        inbound: &InboundConfig,
        outbound: SocketAddr,
        store: &Arc<dyn Store>,
        metrics: &Metrics,
        previous: Option<&Gate>,
    ) -> Result<Gate, ConfigError> {
        let old = previous.map(|gate| &gate.config);
        let authenticator = match same_part(old, inbound, |c| &c.auth, previous) {
            Some(gate) => Arc::clone(&gate.authenticator),
            None => Arc::new(authenticator(inbound, store, metrics)?),
        };
        let cors = match same_part(old, inbound, |c| &c.cors, previous) {
            Some(gate) => Arc::clone(&gate.cors),
            None => Arc::new(Cors::new(&inbound.cors)),
        };
        let limiter = match same_part(old, inbound, |c| &c.rate_limit, previous) {
            Some(gate) => gate.limiter.clone(),
            None => inbound
                .rate_limit
                .clone()
                .map(|limits| Arc::new(RateLimiter::new(limits, Arc::clone(store), metrics))),
        };
        let caps = match same_part(old, inbound, |c| &c.concurrency, previous) {
            Some(gate) => gate.caps.clone(),
            None => inbound
                .concurrency
                .clone()
                .map(|caps| Arc::new(InFlightCaps::new(caps, metrics))),
        };
        let cache = match same_part(old, inbound, |c| &c.cache, previous) {
            Some(gate) => gate.cache.clone(),
            None => inbound
                .cache
                .clone()
                .map(|cache| Arc::new(Cache::new(cache, Arc::clone(store), metrics))),
        };
        Ok(Gate {
            authenticator,
            cors,
            limiter,
            caps,
            cache,
            app: match &listener.target {
                InboundTarget::App(authority) => authority.clone(),
                InboundTarget::Routes => reachable(outbound).to_string(),
            },
            timeout: listener.timeout,
            config: inbound.clone(),
        })
    }

    /// The `inbound` sections `next` changes, for the reload log line.
    pub fn changed_sections(&self, next: &InboundConfig) -> Vec<&'static str> {
        let old = &self.config;
        [
            ("inbound.auth", old.auth != next.auth),
            ("inbound.cors", old.cors != next.cors),
            ("inbound.rate_limit", old.rate_limit != next.rate_limit),
            ("inbound.concurrency", old.concurrency != next.concurrency),
            ("inbound.cache", old.cache != next.cache),
            (
                "inbound.trusted_proxies",
                old.trusted_proxies != next.trusted_proxies,
            ),
            (
                "inbound.authorization",
                old.authorization != next.authorization,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Whether `req` came from a peer in `inbound.trusted_proxies`, whose
    /// `X-Forwarded-*`, `X-Real-IP` and `Forwarded` headers the app may see.
    pub fn trusts_forwarding(&self, req: &HttpRequest) -> bool {
        let trusted = &self.config.trusted_proxies;
        !trusted.is_empty()
            && req
                .peer_addr()
                .is_some_and(|peer| trusted.contains(&peer.ip()))
    }

    /// Where the caller of `req` is: the peer, or, when the peer is one of
    /// `inbound.trusted_proxies`, the last address in `X-Forwarded-For`
    /// before them.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_ip(req, &self.config.trusted_proxies)
    }

    /// Stops the background work of the parts `next` no longer uses.
    pub fn retire_replaced(&self, next: &Gate) {
        if !Arc::ptr_eq(&self.authenticator, &next.authenticator) {
            self.authenticator.stop_key_refresh();
        }
    }
}

/// `previous`, when its config's part picked by `part` equals `inbound`'s.
fn same_part<'g, T: PartialEq>(
    old: Option<&InboundConfig>,
    inbound: &InboundConfig,
    part: impl Fn(&InboundConfig) -> &T,
    previous: Option<&'g Gate>,
) -> Option<&'g Gate> {
    previous.filter(|_| old.is_some_and(|old| part(old) == part(inbound)))
}

/// The authenticator for `inbound.auth`, with a JWKS fetcher when the keys
/// come from a URL, and the revocation store.
fn authenticator(
    inbound: &InboundConfig,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
) -> Result<Authenticator, ConfigError> {
    let auth = &inbound.auth;
    let problem = |path: &str, message: String| ConfigError {
        path: path.to_string(),
        message,
        position: None,
    };
    let verifier = match &auth.jwt {
        Some(jwt) => Some(Arc::new(
            Verifier::new(jwt.clone()).map_err(|err| problem("inbound.auth.jwt", err))?,
        )),
        None => None,
    };
    let jwks = match (&verifier, &auth.jwt) {
        (Some(verifier), Some(jwt)) => match &jwt.keys {
            JwtKeys::JwksUrl(url) => Some(
                JwksFetcher::new(
                    url.clone(),
                    jwt.jwks_refresh,
                    jwt.jwks_tls.config(),
                    Arc::clone(verifier),
                )
                .start(),
            ),
            _ => None,
        },
        _ => None,
    };
    Authenticator::new(
        auth,
        verifier,
        jwks.clone(),
        Some(Arc::clone(store)),
        metrics.jwt_validations.clone(),
    )
    .map_err(|err| {
        if let Some(jwks) = jwks {
            jwks.do_send(StopRefreshing);
        }
        problem("inbound.auth", err)
    })
}

/// The caller's address: the peer, or the last `X-Forwarded-For` hop not
/// added by a trusted proxy when the peer is one.
pub(super) fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|hop| !trusted.contains(hop))
            .unwrap_or(peer),
    )
}
