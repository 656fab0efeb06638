//! Outrigger: a per-pod service-mesh sidecar for plain HTTP services.
//!
//! [`Sidecar::start`] is the whole sidecar: the supervisor actor that keeps
//! replica actors in step with discovery, the outbound listener apps call,
//! and the admin listener. `main` and the integration tests both use it.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod forward;
pub mod inbound;
pub mod inject;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod outbound;
pub mod replica;
pub mod service;
pub mod store;
pub mod trace;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use log::info;

use std::future::Future;
use std::time::Duration;

use futures_util::future::Either;
use tokio::sync::Notify;

use crate::config::{Config, InboundConfig, JwtKeys};
use crate::discovery::{source_for, Supervisor};
use crate::inbound::{
    Authenticator, Cache, Cors, InFlightCaps, JwksFetcher, RateLimiter, Verifier,
};
use crate::metrics::Metrics;
use crate::service::ServiceTable;
use crate::store::{MemoryStore, RedisStore, Store};

/// A running sidecar.
pub struct Sidecar {
    outbound_addr: SocketAddr,
    inbound_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    table: Arc<ServiceTable>,
    supervisor: Addr<Supervisor>,
    /// The proxy listeners (outbound, then inbound when configured).
    proxies: Vec<ServerHandle>,
    admin: ServerHandle,
    servers: Vec<actix_rt::task::JoinHandle<io::Result<()>>>,
    /// How long the listeners keep serving after a stop is asked for.
    drain_delay: Duration,
    /// Admin `POST /shutdown` asks for a stop here.
    shutdown: Arc<Notify>,
}

impl Sidecar {
    /// Starts the supervisor and both listeners on the current actix system.
    pub async fn start(config: Config) -> io::Result<Sidecar> {
        let metrics = Arc::new(Metrics::new());
        let table = Arc::new(ServiceTable::new(&config.services, &metrics));
        let supervisor = Supervisor::new(
            Arc::clone(&table),
            source_for(&config),
            config.discovery.refresh,
            Arc::clone(&metrics),
        )
        .start();
        let grace = config.lifecycle.shutdown_grace;
        let shutdown_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let shutdown = Arc::new(Notify::new());
        let spans = config
            .observability
            .tracing
            .otlp_endpoint
            .clone()
            .map(otlp::Exporter::start);
        let (outbound, outbound_addrs) = outbound::server(
            &config,
            Arc::clone(&table),
            Arc::clone(&metrics),
            spans.clone(),
            shutdown_secs,
        )?;
        let first = |addrs: Vec<SocketAddr>| {
            addrs
                .into_iter()
                .next()
                .ok_or_else(|| io::Error::other("bound no address"))
        };
        let mut proxies = vec![outbound.handle()];
        let mut servers = vec![actix_rt::spawn(outbound)];
        let (mut inbound_addr, mut admin_gate) = (None, None);
        if let (Some(listener), Some(inbound)) = (&config.listeners.inbound, &config.inbound) {
            let gate = Arc::new(inbound_gate(&config, inbound, &metrics)?);
            admin_gate = Some(Arc::clone(&gate));
            let (server, addrs) = inbound::server(
                &config,
                listener,
                gate,
                Arc::clone(&metrics),
                shutdown_secs,
                spans,
            )?;
            inbound_addr = Some(first(addrs)?);
            proxies.push(server.handle());
            servers.push(actix_rt::spawn(server));
        }
        let (admin, admin_addrs) = admin::server(
            &config,
            Arc::clone(&table),
            &metrics,
            admin_gate,
            Arc::clone(&shutdown),
        )?;
        let admin_handle = admin.handle();
        servers.push(actix_rt::spawn(admin));
        let sidecar = Sidecar {
            outbound_addr: first(outbound_addrs)?,
            inbound_addr,
            admin_addr: first(admin_addrs)?,
            table,
            supervisor,
            proxies,
            admin: admin_handle,
            servers,
            drain_delay: config.lifecycle.drain_delay,
            shutdown,
        };
        servers_started(&sidecar);
        info!(
            "{} services; {} workers per proxy listener",
            config.services.len(),
            config.workers
        );
        Ok(sidecar)
    }

    /// Where apps send outbound calls.
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    /// Where callers reach the app, when the inbound listener is configured.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
    }

    /// Where probes, metrics and the admin API are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The supervisor, for sources that push snapshots.
    pub fn supervisor(&self) -> &Addr<Supervisor> {
        &self.supervisor
    }

    /// Resolves when admin `POST /shutdown` asks the sidecar to stop.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await;
    }

    /// Stops gracefully: `/ready` turns 503 at once while the listeners keep
    /// serving for `drain_delay`; then they stop accepting and in-flight
    /// requests get up to `shutdown_grace` to finish. When `hurry` resolves
    /// first (a second signal), the listeners stop at once.
    pub async fn stop(self, hurry: impl Future<Output = ()>) {
        self.table.begin_shutdown();
        info!(
            "stopping: /ready answers 503; serving {}ms more before closing the listeners",
            self.drain_delay.as_millis()
        );
        let proxies = &self.proxies;
        let graceful = async {
            actix_rt::time::sleep(self.drain_delay).await;
            info!("closing the listeners; finishing in-flight requests");
            for proxy in proxies {
                proxy.stop(true).await;
            }
        };
        let (graceful, hurry) = (std::pin::pin!(graceful), std::pin::pin!(hurry));
        if let Either::Right(_) = futures_util::future::select(graceful, hurry).await {
            log::warn!("stopping now: in-flight requests are cut");
            for proxy in proxies {
                proxy.stop(false).await;
            }
        }
        self.admin.stop(true).await;
        for server in self.servers {
            let _ = server.await;
        }
        info!("shut down");
    }
}

fn servers_started(sidecar: &Sidecar) {
    let inbound = sidecar
        .inbound_addr
        .map_or_else(|| "off".to_string(), |addr| addr.to_string());
    info!(
        "outrigger listening: outbound {}, inbound {inbound}, admin {}",
        sidecar.outbound_addr, sidecar.admin_addr
    );
}

/// The inbound side's authenticator and CORS policy, with the revocation
/// store (Redis when configured) and a JWKS fetcher when keys come from a URL.
fn inbound_gate(
    config: &Config,
    inbound: &InboundConfig,
    metrics: &Metrics,
) -> io::Result<inbound::Gate> {
    let auth = &inbound.auth;
    let store: Arc<dyn Store> = match &config.redis {
        Some(redis) => Arc::new(
            RedisStore::new(
                redis,
                metrics.redis_errors.clone(),
                metrics.redis_pool_connections.clone(),
            )
            .map_err(|err| io::Error::other(err.0))?,
        ),
        None => Arc::new(MemoryStore::new()),
    };
    info!("inbound store: {}", store.kind());
    let verifier = match &auth.jwt {
        Some(jwt) => Some(Arc::new(
            Verifier::new(jwt.clone()).map_err(io::Error::other)?,
        )),
        None => None,
    };
    let jwks = match (&verifier, auth.jwt.as_ref().map(|jwt| &jwt.keys)) {
        (Some(verifier), Some(JwtKeys::JwksUrl(url))) => {
            let refresh = auth
                .jwt
                .as_ref()
                .map_or(Duration::from_secs(600), |jwt| jwt.jwks_refresh);
            Some(JwksFetcher::new(url.clone(), refresh, Arc::clone(verifier)).start())
        }
        _ => None,
    };
    let authenticator = Authenticator::new(
        auth,
        verifier,
        jwks,
        Some(Arc::clone(&store)),
        metrics.jwt_validations.clone(),
    )
    .map_err(io::Error::other)?;
    Ok(inbound::Gate {
        authenticator: Arc::new(authenticator),
        cors: Arc::new(Cors::new(&inbound.cors)),
        limiter: inbound.rate_limit.clone().map(|limits| {
            RateLimiter::new(limits, Arc::clone(&store), metrics.rate_limited.clone())
        }),
        caps: inbound
            .concurrency
            .clone()
            .map(|caps| Arc::new(InFlightCaps::new(caps, metrics))),
        cache: inbound
            .cache
            .clone()
            .map(|cache| Arc::new(Cache::new(cache, Arc::clone(&store), metrics))),
    })
}
