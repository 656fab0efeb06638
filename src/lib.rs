//! Outrigger: a per-pod service-mesh sidecar for plain HTTP services.
//!
//! [`Sidecar::start`] is the whole sidecar: the supervisor actor that keeps
//! replica actors in step with discovery, the outbound listener apps call,
//! the inbound and admin listeners, and (started from a file) the reloader
//! that applies config changes live. `main` and the integration tests both use it.
#![forbid(unsafe_code)]

// The layers, bottom to top: each imports only from the layers before it.
// Within a layer modules are listed alphabetically and may use each other:
// replica <- service <- balance and discovery; reload <- admin.

// Pure building blocks: std and rand only (tests/layers.rs checks it).
pub(crate) mod core;

// Shared by every layer: config, errors and their answers, observability.
pub mod config;
pub(crate) mod error;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod otlp;
pub mod tls;
pub mod trace;
pub(crate) mod watch;

// HTTP both listeners share: serving, the replica client, forwarding
// (nothing under it imports from the layers above; tests/layers.rs).
pub mod http;

// The stateful parts: replicas, balancing, services, stores, discovery.
pub mod balance;
pub mod discovery;
pub mod replica;
pub mod routes;
pub mod service;
pub(crate) mod store;

// The two proxy listeners.
pub mod inbound;
pub mod outbound;

// The assembly: reload and admin here, the sidecar itself below.
pub(crate) mod admin;
pub mod reload;

// Operator tooling apart from the proxy: the command line, inject, demo.
pub mod tools;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use arc_swap::ArcSwap;
use futures_util::future::Either;
use log::info;
use tokio::sync::Notify;

use crate::config::Config;
use crate::discovery::{source_for, Supervisor};
use crate::http::listener::{self, Front, Stopping};
use crate::inbound::Gate;
use crate::metrics::Metrics;
use crate::reload::{ConfigFile, InboundSide, Reload, ReloadReport, Reloader, Trigger};
use crate::service::{LiveServices, ServiceTable};

/// A running sidecar.
pub struct Sidecar {
    outbound_addr: SocketAddr,
    inbound_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    table: Arc<LiveServices>,
    supervisor: Addr<Supervisor>,
    reloader: Option<Addr<Reloader>>,
    /// The proxy listeners by name (outbound, then inbound when configured).
    proxies: Vec<(&'static str, ServerHandle)>,
    admin: ServerHandle,
    servers: Vec<actix_rt::task::JoinHandle<io::Result<()>>>,
    /// How long the listeners keep serving after a stop is asked for.
    drain_delay: Duration,
    /// How far the stop has got, as the proxy listeners see it.
    stopping: Arc<Stopping>,
    metrics: Arc<Metrics>,
    /// Admin `POST /shutdown` asks for a stop here.
    shutdown: Arc<Notify>,
}

impl Sidecar {
    /// Starts the supervisor and the listeners on the current actix system,
    /// with `config` for good (no reload).
    pub async fn start(config: Config) -> io::Result<Sidecar> {
        Sidecar::launch(config, None).await
    }

    /// Like [`Sidecar::start`], with `config` read from `file`: the file is
    /// watched (unless `reload.watch` is off) and reloaded on SIGHUP
    /// ([`Sidecar::reload`]) and admin `POST /reload`.
    pub async fn start_from(config: Config, file: ConfigFile) -> io::Result<Sidecar> {
        Sidecar::launch(config, Some(file)).await
    }

    async fn launch(config: Config, file: Option<ConfigFile>) -> io::Result<Sidecar> {
        // Before any TLS client (the replica client's, the Kubernetes
        // source's) is built: one crypto provider for the whole process.
        crate::tls::provider();
        // Every port is bound, and every fallible part built, before an
        // actor starts: an actor started but never polled panics when the
        // runtime that failed to start is dropped, burying the real error.
        let outbound_socket = listener::listen("outbound", config.listeners.outbound.bind)?;
        let inbound_listener = config
            .listeners
            .inbound
            .as_ref()
            .zip(config.inbound.as_ref());
        let inbound_socket = inbound_listener
            .map(|(listener, _)| listener::listen("inbound", listener.bind))
            .transpose()?;
        let admin_socket = listener::listen("admin", config.listeners.admin)?;
        let (outbound_addr, admin_addr) =
            (outbound_socket.local_addr()?, admin_socket.local_addr()?);
        listener::raise_open_files_limit(client_connections(&config));
        logging::summary::start(config.observability.log_summary_interval);
        let metrics = Arc::new(Metrics::new());
        if let Some(identity) = config.mesh.loaded_identity() {
            crate::tls::rotation::watch(Arc::clone(identity) as _, Arc::clone(&metrics));
        }
        let edge = inbound_listener
            .and_then(|(listener, _)| listener.tls.termination.as_ref()?.edge_certificate());
        if let Some(certificate) = edge {
            crate::tls::rotation::watch(Arc::clone(certificate) as _, Arc::clone(&metrics));
        }
        let table = Arc::new(LiveServices::new(ServiceTable::new(
            &config.services,
            &config.routes,
            &metrics,
        )));
        let stopping = Arc::new(Stopping::new(config.lifecycle.shutdown_grace));
        let shutdown = Arc::new(Notify::new());
        let tracing = &config.observability.tracing;
        let spans = tracing
            .otlp_endpoint
            .clone()
            .map(|endpoint| otlp::Exporter::start(endpoint, tracing.otlp_tls.config().cloned()));
        // What each listener's workers share to receive requests and record answers.
        let front = |listener, limits| {
            let metrics = Arc::clone(&metrics);
            let stopping = Arc::clone(&stopping);
            Front::new(
                listener,
                limits,
                metrics,
                &config.observability,
                spans.clone(),
                stopping,
            )
        };
        let outbound_front = front(outbound::LISTENER, config.listeners.outbound.limits);
        let outbound =
            outbound::server(&config, outbound_front, outbound_socket, Arc::clone(&table))?;
        let mut proxies = vec![(outbound::LISTENER, outbound.handle())];
        let mut servers = vec![actix_rt::spawn(outbound)];
        let (mut inbound_addr, mut inbound_side) = (None, None);
        if let (Some((listener, inbound)), Some(socket)) = (inbound_listener, inbound_socket) {
            let store = inbound::store(config.redis.as_ref(), &metrics)?;
            let gate = Gate::build(listener, inbound, outbound_addr, &store, &metrics, None)
                .map_err(|err| io::Error::other(err.to_string()))?;
            let gates = Arc::new(ArcSwap::from_pointee(gate));
            inbound_addr = Some(socket.local_addr()?);
            let inbound_front = front(inbound::LISTENER, listener.limits);
            let server = inbound::server(&config, inbound_front, socket, Arc::clone(&gates))?;
            proxies.push((inbound::LISTENER, server.handle()));
            servers.push(actix_rt::spawn(server));
            inbound_side = Some(InboundSide {
                gates,
                store,
                outbound: outbound_addr,
            });
        }
        let supervisor = Supervisor::new(
            Arc::clone(&table),
            source_for(&config),
            config.discovery.refresh,
            Arc::clone(&metrics),
        )
        .start();
        let admin_gates = inbound_side.as_ref().map(|side| Arc::clone(&side.gates));
        let running = Arc::new(ArcSwap::from_pointee(config.clone()));
        let reloader = file.map(|file| {
            Reloader::new(
                file,
                Arc::clone(&running),
                Arc::clone(&table),
                supervisor.clone(),
                inbound_side,
                Arc::clone(&metrics),
            )
            .start()
        });
        let admin = admin::server(
            admin_socket,
            admin::Shared {
                table: Arc::clone(&table),
                config: running,
                gates: admin_gates,
                reloader: reloader.clone(),
                shutdown: Arc::clone(&shutdown),
            },
            &metrics,
        )?;
        let admin_handle = admin.handle();
        servers.push(actix_rt::spawn(admin));
        let sidecar = Sidecar {
            outbound_addr,
            inbound_addr,
            admin_addr,
            table,
            supervisor,
            reloader,
            proxies,
            admin: admin_handle,
            servers,
            drain_delay: config.lifecycle.drain_delay,
            stopping,
            metrics,
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

    /// Reloads the config file as on SIGHUP; `None` when the sidecar was
    /// not started from a file.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadReport> {
        self.reloader.as_ref()?.send(Reload(trigger)).await.ok()
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
    /// serving for `drain_delay`, each answer closing its connection so
    /// keep-alive clients reconnect elsewhere; then they stop accepting and
    /// in-flight requests get up to `shutdown_grace` to finish, and those
    /// still unanswered then are cut (logged and counted). When `hurry`
    /// resolves first (a second signal), the listeners stop at once.
    pub async fn stop(self, hurry: impl Future<Output = ()>) {
        self.table.begin_shutdown();
        self.stopping.drain();
        info!(
            "stopping: /ready answers 503 and answers close their connections; serving {}ms more before closing the listeners",
            self.drain_delay.as_millis()
        );
        let proxies = &self.proxies;
        let stop_all = |graceful: bool| {
            futures_util::future::join_all(
                proxies.iter().map(move |(_, proxy)| proxy.stop(graceful)),
            )
        };
        let graceful = async {
            actix_rt::time::sleep(self.drain_delay).await;
            info!("closing the listeners; finishing in-flight requests");
            self.stopping.close();
            stop_all(true).await;
        };
        let (graceful, hurry) = (std::pin::pin!(graceful), std::pin::pin!(hurry));
        if let Either::Right(_) = futures_util::future::select(graceful, hurry).await {
            log::warn!("stopping now: in-flight requests are cut");
            self.stopping.hurry();
            stop_all(false).await;
        }
        self.requests_dropped().await;
        self.admin.stop(true).await;
        for server in self.servers {
            let _ = server.await;
        }
        // What the summaries have counted but not yet said.
        logging::summary::report();
        let cut: u64 = self
            .proxies
            .iter()
            .map(|(name, _)| self.metrics.requests_cut.with_label_values(&[name]).get())
            .sum();
        if cut > 0 {
            log::warn!(
                "shut down; {cut} requests were cut unanswered (outrigger_requests_cut_total)"
            );
        } else {
            info!("shut down");
        }
    }

    /// Waits, at most [`SETTLE_BOUND`], until no request is in progress at
    /// the proxy listeners: a worker drops the requests it cuts on its own
    /// thread after its listener reports stopped, and their log lines must
    /// be written before the process exits.
    async fn requests_dropped(&self) {
        let deadline = std::time::Instant::now() + SETTLE_BOUND;
        let in_progress = || {
            self.proxies.iter().any(|(name, _)| {
                self.metrics
                    .http_requests_in_progress
                    .with_label_values(&[name])
                    .get()
                    > 0
            })
        };
        while in_progress() && std::time::Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How long a stop waits for the workers to drop the requests they cut.
const SETTLE_BOUND: Duration = Duration::from_secs(1);

/// How many client connections the proxy listeners may hold at once:
/// `max_connections` per worker, `workers` workers each.
fn client_connections(config: &Config) -> u64 {
    let workers = u64::from(config.workers);
    let outbound = u64::from(config.listeners.outbound.limits.max_connections);
    let inbound = config
        .listeners
        .inbound
        .as_ref()
        .map_or(0, |inbound| u64::from(inbound.limits.max_connections));
    workers * (outbound + inbound)
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
