//! Where replicas come from. A [`DiscoverySource`] returns a whole
//! [`Snapshot`]; the [`Supervisor`] actor diffs it against the live set,
//! starts a replica actor for each new endpoint and drains the ones that left.

mod static_source;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{info, warn};

pub use static_source::StaticSource;

use crate::metrics::Metrics;
use crate::replica::{Endpoint, Replica};
use crate::service::{Service, ServiceTable};

/// Every service's endpoints (`host:port`) at one moment.
pub type Snapshot = BTreeMap<String, Vec<String>>;

/// The future a source returns: a snapshot, or why there is none.
pub type SnapshotFuture = Pin<Box<dyn Future<Output = Result<Snapshot, String>>>>;

/// A place replicas are listed: config, a file, a registry, DNS, Kubernetes.
pub trait DiscoverySource {
    /// The `source` label of `discovery_syncs_total`.
    fn name(&self) -> &'static str;
    /// Fetches the current snapshot.
    fn fetch(&mut self) -> SnapshotFuture;
}

/// Extra time a removed replica gets, beyond its service's timeout, to finish its calls.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Keeps each service's replica actors in step with discovery.
pub struct Supervisor {
    table: Arc<ServiceTable>,
    source: Box<dyn DiscoverySource>,
    refresh: Duration,
    metrics: Arc<Metrics>,
}

impl Supervisor {
    /// A supervisor for `table`, fed by `source` every `refresh`.
    pub fn new(
        table: Arc<ServiceTable>,
        source: Box<dyn DiscoverySource>,
        refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Supervisor {
            table,
            source,
            refresh,
            metrics,
        }
    }

    fn sync(&mut self, ctx: &mut Context<Self>) {
        let source = self.source.name();
        self.source
            .fetch()
            .into_actor(self)
            .map(move |result, supervisor, _| match result {
                Ok(snapshot) => {
                    supervisor.apply(&snapshot);
                    supervisor.metrics.discovery_syncs.with_label_values(&[source, "ok"]).inc();
                }
                Err(reason) => {
                    warn!("discovery sync from {source} failed, keeping the last replica set: {reason}");
                    supervisor.metrics.discovery_syncs.with_label_values(&[source, "error"]).inc();
                }
            })
            .wait(ctx);
    }

    fn apply(&mut self, snapshot: &Snapshot) {
        for service in self.table.iter() {
            match snapshot.get(&*service.name) {
                Some(addresses) => self.apply_service(service, addresses),
                None => warn!(
                    "discovery has no entry for service {}; keeping its {} replicas",
                    service.name,
                    service.replicas().len()
                ),
            }
        }
    }

    fn apply_service(&self, service: &Service, addresses: &[String]) {
        let current = service.replicas();
        let mut kept: HashMap<&str, &Arc<Endpoint>> =
            current.iter().map(|e| (&*e.address, e)).collect();
        let mut next = Vec::with_capacity(addresses.len());
        for address in addresses {
            if next.iter().any(|e: &Arc<Endpoint>| &*e.address == address) {
                continue;
            }
            let endpoint = match kept.remove(address.as_str()) {
                Some(endpoint) => Arc::clone(endpoint),
                None => Replica::spawn(
                    Arc::clone(&service.name),
                    address,
                    &service.policy,
                    service.synced(),
                    Arc::clone(&self.metrics),
                ),
            };
            next.push(endpoint);
        }
        let changed = !kept.is_empty() || next.len() != current.len();
        for gone in kept.values() {
            gone.drain(service.policy.timeout + DRAIN_GRACE);
        }
        self.metrics
            .discovery_replicas
            .with_label_values(&[&service.name])
            .set(next.len() as i64);
        if changed {
            info!("service {}: {} replicas", service.name, next.len());
        }
        service.set_replicas(next);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sync(ctx);
        ctx.run_interval(self.refresh, |supervisor, ctx| supervisor.sync(ctx));
    }
}

/// Applies a snapshot pushed by a watching source (or a test).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplySnapshot(pub Snapshot);

impl Handler<ApplySnapshot> for Supervisor {
    type Result = ();

    fn handle(&mut self, ApplySnapshot(snapshot): ApplySnapshot, _: &mut Context<Self>) {
        self.apply(&snapshot);
    }
}
