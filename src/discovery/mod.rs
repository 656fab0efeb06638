//! Where replicas come from. A [`DiscoverySource`] returns a whole
//! [`Snapshot`]; the [`Supervisor`] actor diffs it against the live set,
//! starts a replica actor for each new endpoint and drains the ones that left.
//! A config reload hands it a revised table ([`Reconfigure`]): it alone
//! starts, retunes and stops replicas.

mod dns;
mod file;
mod kubernetes;
mod registry;
mod registry_feedback;
mod static_source;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, warn};

pub use dns::DnsSource;
pub use file::FileSource;
pub use kubernetes::KubernetesSource;
pub use registry::RegistrySource;
pub use static_source::StaticSource;

use crate::config::{Config, SourceKind};
use crate::metrics::Metrics;
use crate::replica::{Endpoint, Replica};
use crate::service::{LiveServices, Placement, Revision, Service, ServiceTable};
use crate::tls::{system_origination, Origination};

/// One replica as a source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredEndpoint {
    /// `host:port`.
    pub address: String,
    /// The share of traffic the source asks for, relative to its siblings (default 1).
    pub weight: u32,
    /// The topology zone the source places it in, when it says.
    pub zone: Option<String>,
    /// Whether it may get traffic; a replica that is not ready is drained.
    pub ready: bool,
    /// Whether the source says it speaks HTTPS (an `https://` URL, an
    /// `https` port or SRV name): it is called over TLS, with its service's
    /// `tls:` block or else the system's roots, never in plain text.
    pub tls: bool,
}

impl DiscoveredEndpoint {
    /// A ready plain-text endpoint at `address` with weight 1 and no zone.
    pub fn new(address: impl Into<String>) -> Self {
        DiscoveredEndpoint {
            address: address.into(),
            weight: 1,
            zone: None,
            ready: true,
            tls: false,
        }
    }

    /// An endpoint as a list writes it: `host:port`, or `https://host:port`
    /// for one called over TLS.
    pub fn written(text: &str) -> Self {
        match text.strip_prefix(HTTPS) {
            Some(address) => DiscoveredEndpoint {
                tls: true,
                ..DiscoveredEndpoint::new(address)
            },
            None => DiscoveredEndpoint::new(text),
        }
    }
}

/// The scheme that marks an endpoint as speaking HTTPS.
const HTTPS: &str = "https://";

/// What the replica `discovered` of `service` is called with: `Some(None)`
/// for plain text, `Some(Some(_))` for TLS with the system's roots (its
/// service's `tls:` block, when it has one, is used instead at each call),
/// `None` when it is listed as HTTPS and this system has no roots to verify
/// it with: it is left out with a warning rather than called in plain text.
fn replica_tls(service: &str, discovered: &DiscoveredEndpoint) -> Option<Option<Arc<Origination>>> {
    if !discovered.tls {
        return Some(None);
    }
    match system_origination() {
        Ok(origination) => Some(Some(origination)),
        Err(why) => {
            warn!(
                "service {service}: https://{} left out: no trust roots to verify it with ({why})",
                discovered.address
            );
            None
        }
    }
}

/// Every service's endpoints at one moment. A service a source does not
/// mention keeps its replicas; a service listed with no ready endpoint has none.
pub type Snapshot = BTreeMap<String, Vec<DiscoveredEndpoint>>;

/// What one fetch found: a snapshot, `None` when nothing changed since the
/// last one (a watched file that was not touched), or why there is none.
pub type FetchResult = Result<Option<Snapshot>, String>;

/// The future a source returns.
pub type SnapshotFuture = Pin<Box<dyn Future<Output = FetchResult>>>;

/// A future a source runs beside the supervisor to report back to its origin.
pub type FeedbackFuture = Pin<Box<dyn Future<Output = ()>>>;

/// A place replicas are listed: config, a file, a registry, DNS, Kubernetes.
pub trait DiscoverySource {
    /// The `source` label of `discovery_syncs_total`.
    fn name(&self) -> &'static str;

    /// Fetches the current snapshot.
    fn fetch(&mut self) -> SnapshotFuture;

    /// How long to wait after a fetch before the next one; `refresh` is the
    /// configured interval, which is the default.
    fn next_fetch(&self, refresh: Duration) -> Duration {
        refresh
    }

    /// Called every [`FEEDBACK_TICK`], and before each snapshot is applied
    /// (so replicas about to leave are reported first), with the live
    /// replicas, for a source that reports traffic or breaker trips back to
    /// where it reads from; the future runs beside the supervisor. The
    /// default reports nothing.
    fn feedback(&mut self, _table: &ServiceTable, _metrics: &Metrics) -> Option<FeedbackFuture> {
        None
    }
}

/// The source `config.discovery.source` names, set up from its section.
pub fn source_for(config: &Config) -> Box<dyn DiscoverySource> {
    let discovery = &config.discovery;
    match discovery.source {
        SourceKind::Static => Box::new(StaticSource::new(&config.services)),
        SourceKind::File => Box::new(FileSource::new(
            discovery.file.path.clone(),
            discovery.refresh,
        )),
        SourceKind::Registry => Box::new(RegistrySource::new(&discovery.registry)),
        SourceKind::Dns => Box::new(DnsSource::new(&discovery.dns, &config.services)),
        SourceKind::Kubernetes => Box::new(KubernetesSource::new(
            &discovery.kubernetes,
            &config.services,
        )),
    }
}

/// How often a source is offered [`DiscoverySource::feedback`].
pub const FEEDBACK_TICK: Duration = Duration::from_millis(250);

/// Extra time a removed replica gets, beyond its service's timeout, to finish its calls.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Keeps each service's replica actors in step with discovery.
pub struct Supervisor {
    live: Arc<LiveServices>,
    source: Box<dyn DiscoverySource>,
    refresh: Duration,
    metrics: Arc<Metrics>,
    /// The fetch in progress and the wait for the next one, cancelled
    /// when a reload replaces the source.
    fetching: Option<SpawnHandle>,
    waiting: Option<SpawnHandle>,
}

impl Supervisor {
    /// A supervisor for the table in `live`, fed by `source` every `refresh`.
    pub fn new(
        live: Arc<LiveServices>,
        source: Box<dyn DiscoverySource>,
        refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Supervisor {
            live,
            source,
            refresh,
            metrics,
            fetching: None,
            waiting: None,
        }
    }

    fn sync(&mut self, ctx: &mut Context<Self>) {
        let source = self.source.name();
        // Spawned, not awaited in the mailbox: a watching source's fetch
        // waits for the next change, and messages must not wait with it.
        let fetch = self
            .source
            .fetch()
            .into_actor(self)
            .map(move |result, supervisor, ctx| {
                match result {
                    Ok(Some(snapshot)) => {
                        supervisor.feedback();
                        supervisor.apply(&snapshot);
                        supervisor.count_sync(source, "ok");
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        warn!("discovery sync from {source} failed, keeping the last replica set: {reason}");
                        supervisor.count_sync(source, "error");
                    }
                }
                let wait = supervisor.source.next_fetch(supervisor.refresh);
                supervisor.fetching = None;
                supervisor.waiting =
                    Some(ctx.run_later(wait, |supervisor, ctx| supervisor.sync(ctx)));
            });
        self.fetching = Some(ctx.spawn(fetch));
    }

    fn count_sync(&self, source: &str, result: &str) {
        self.metrics
            .discovery_syncs
            .with_label_values(&[source, result])
            .inc();
    }

    fn feedback(&mut self) {
        let table = self.live.load();
        if let Some(report) = self.source.feedback(&table, &self.metrics) {
            actix_rt::spawn(report);
        }
    }

    fn apply(&self, snapshot: &Snapshot) {
        self.apply_to(&self.live.load(), snapshot);
    }

    fn apply_to(&self, table: &ServiceTable, snapshot: &Snapshot) {
        for service in table.iter() {
            match snapshot.get(&*service.name) {
                Some(endpoints) => self.apply_service(service, endpoints),
                None => warn!(
                    "discovery has no entry for service {}; keeping its {} replicas",
                    service.name,
                    service.replicas().len()
                ),
            }
        }
    }

    fn apply_service(&self, service: &Service, endpoints: &[DiscoveredEndpoint]) {
        let current = service.replicas();
        let settings = service.settings();
        let mut kept: HashMap<&str, &Arc<Endpoint>> =
            current.iter().map(|e| (&*e.address, e)).collect();
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(endpoints.len());
        let mut placements = HashMap::with_capacity(endpoints.len());
        for discovered in endpoints {
            let address = discovered.address.as_str();
            if !discovered.ready {
                debug!("service {}: {address} is not ready", service.name);
                continue;
            }
            if next.iter().any(|e| &*e.address == address) {
                continue;
            }
            let Some(tls) = replica_tls(&service.name, discovered) else {
                continue;
            };
            // A replica whose scheme changed is a new one; the old one drains.
            let reusable = kept
                .get(address)
                .filter(|e| e.tls.is_some() == tls.is_some())
                .map(|e| Arc::clone(e));
            let endpoint = match reusable {
                Some(endpoint) => {
                    kept.remove(address);
                    endpoint
                }
                None => Replica::spawn(
                    Arc::clone(&service.name),
                    address,
                    tls,
                    &settings.policy,
                    service.synced(),
                    Arc::clone(&self.metrics),
                ),
            };
            placements.insert(
                Arc::clone(&endpoint.address),
                Placement {
                    weight: discovered.weight,
                    zone: discovered.zone.clone(),
                },
            );
            next.push(endpoint);
        }
        let changed = !kept.is_empty() || next.len() != current.len();
        for gone in kept.values() {
            gone.drain(settings.policy.timeout + DRAIN_GRACE);
        }
        self.metrics
            .discovery_replicas
            .with_label_values(&[&service.name])
            .set(next.len() as i64);
        if changed {
            info!(
                "service {}: {} replicas ({} listed, {} draining)",
                service.name,
                next.len(),
                endpoints.len(),
                kept.len()
            );
        }
        service.set_replicas(next, placements);
    }

    /// A service a reload removed: its replicas drain as if discovery had
    /// dropped them, and its replica count series goes.
    fn retire(&self, service: &Service) {
        let replicas = service.replicas();
        let deadline = service.settings().policy.timeout + DRAIN_GRACE;
        for endpoint in replicas.iter() {
            endpoint.drain(deadline);
        }
        info!(
            "service {} removed from the config: draining its {} replicas",
            service.name,
            replicas.len()
        );
        service.set_replicas(Vec::new(), HashMap::new());
        let _ = self
            .metrics
            .discovery_replicas
            .remove_label_values(&[&service.name]);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sync(ctx);
        ctx.run_interval(FEEDBACK_TICK, |supervisor, _| supervisor.feedback());
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

/// A config reload's changes to the services, put in force by the
/// supervisor. Services that stay keep their replica actors (and breaker
/// state); retuned ones get their new settings, and each of their replicas
/// the new breaker thresholds; removed ones drain.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    /// The revised table and what changed in it.
    pub revision: Revision,
    /// The `static` source's new snapshot, applied before the table is put
    /// in force, so an added service is never seen without its replicas.
    pub snapshot: Option<Snapshot>,
    /// When the service list changed: the config to build the source
    /// anew from (a source may list only the services it was built for);
    /// the sync loop restarts on it at once.
    pub new_source: Option<Config>,
}

impl Handler<Reconfigure> for Supervisor {
    type Result = ();

    fn handle(&mut self, change: Reconfigure, ctx: &mut Context<Self>) {
        let Revision {
            table,
            retuned,
            removed,
        } = change.revision;
        for (service, settings) in retuned {
            for endpoint in service.replicas().iter() {
                endpoint.retune(&settings.policy);
            }
            service.set_settings(settings);
        }
        if let Some(snapshot) = &change.snapshot {
            self.apply_to(&table, snapshot);
        }
        self.live.store(Arc::new(table));
        for service in &removed {
            self.retire(service);
        }
        if let Some(config) = change.new_source {
            for handle in [self.fetching.take(), self.waiting.take()]
                .into_iter()
                .flatten()
            {
                ctx.cancel_future(handle);
            }
            self.source = source_for(&config);
            self.sync(ctx);
        }
    }
}
