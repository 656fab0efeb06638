//! Outrigger: a per-pod service-mesh sidecar for plain HTTP services.
//!
//! [`Sidecar::start`] is the whole sidecar: the supervisor actor that keeps
//! replica actors in step with discovery, the outbound listener apps call,
//! and the admin listener. `main` and the integration tests both use it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod outbound;
pub mod replica;
pub mod service;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use log::info;

use crate::config::Config;
use crate::discovery::{source_for, Supervisor};
use crate::metrics::Metrics;
use crate::service::ServiceTable;

/// Extra seconds beyond the longest service timeout that shutdown waits for
/// in-flight requests.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// A running sidecar.
pub struct Sidecar {
    outbound_addr: SocketAddr,
    admin_addr: SocketAddr,
    table: Arc<ServiceTable>,
    supervisor: Addr<Supervisor>,
    outbound: ServerHandle,
    admin: ServerHandle,
    servers: Vec<actix_rt::task::JoinHandle<io::Result<()>>>,
}

impl Sidecar {
    /// Starts the supervisor and both listeners on the current actix system.
    pub async fn start(config: Config) -> io::Result<Sidecar> {
        let metrics = Arc::new(Metrics::new());
        let table = Arc::new(ServiceTable::new(&config.services));
        let supervisor = Supervisor::new(
            Arc::clone(&table),
            source_for(&config),
            config.discovery.refresh,
            Arc::clone(&metrics),
        )
        .start();
        let longest = config
            .services
            .iter()
            .map(|s| s.policy.timeout)
            .max()
            .unwrap_or_default();
        let shutdown_secs = longest.as_secs() + SHUTDOWN_GRACE_SECS;
        let (outbound, outbound_addrs) = outbound::server(
            &config,
            Arc::clone(&table),
            Arc::clone(&metrics),
            shutdown_secs,
        )?;
        let (admin, admin_addrs) = admin::server(&config, Arc::clone(&table), &metrics)?;
        let first = |addrs: Vec<SocketAddr>| {
            addrs
                .into_iter()
                .next()
                .ok_or_else(|| io::Error::other("bound no address"))
        };
        let sidecar = Sidecar {
            outbound_addr: first(outbound_addrs)?,
            admin_addr: first(admin_addrs)?,
            table,
            supervisor,
            outbound: outbound.handle(),
            admin: admin.handle(),
            servers: vec![actix_rt::spawn(outbound), actix_rt::spawn(admin)],
        };
        info!(
            "outrigger listening: outbound {}, admin {}; {} services",
            sidecar.outbound_addr,
            sidecar.admin_addr,
            config.services.len()
        );
        Ok(sidecar)
    }

    /// Where apps send outbound calls.
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    /// Where probes, metrics and the admin API are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The supervisor, for sources that push snapshots.
    pub fn supervisor(&self) -> &Addr<Supervisor> {
        &self.supervisor
    }

    /// Stops gracefully: `/ready` turns 503, listeners stop accepting,
    /// in-flight requests finish, then the servers end.
    pub async fn stop(self) {
        self.table.begin_shutdown();
        info!("shutting down: finishing in-flight requests");
        self.outbound.stop(true).await;
        self.admin.stop(true).await;
        for server in self.servers {
            let _ = server.await;
        }
        info!("shut down");
    }
}
