//! The services apps may call and their current replicas: the table every
//! worker routes with. The supervisor swaps each service's replica list, a
//! config reload each service's settings and the whole table; readers load
//! all three lock-free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Policy, ReplicaProtocol, RouteConfig, ServiceConfig, ServiceTls};
use crate::core::retry_budget::RetryBudget;
use crate::metrics::{Metrics, ServiceMetrics};
use crate::replica::Endpoint;
use crate::routes::RouteTable;

/// What discovery said about a replica besides its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The share of traffic the source asks for, relative to its siblings.
    pub weight: u32,
    /// The topology zone, when the source says.
    pub zone: Option<String>,
}

/// What a config reload may change about a service in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Drop `/<name>` from the path before forwarding.
    pub strip_prefix: bool,
    /// Timeouts, balancing, breaker, retries, concurrency.
    pub policy: Policy,
    /// How its replicas are called over TLS; `None`: plain text.
    pub tls: Option<ServiceTls>,
    /// The HTTP version its replicas are called with.
    pub protocol: ReplicaProtocol,
}

impl Settings {
    /// The settings `config` asks for.
    pub fn of(config: &ServiceConfig) -> Self {
        Settings {
            strip_prefix: config.strip_prefix,
            policy: config.policy.clone(),
            tls: config.tls.clone(),
            protocol: config.protocol,
        }
    }
}

/// One service: its settings and the replicas it has now.
pub struct Service {
    /// The name apps call it by.
    pub name: Arc<str>,
    /// The retry budget every worker draws from.
    pub retry_budget: RetryBudget,
    /// This service's pre-resolved series.
    pub metrics: ServiceMetrics,
    settings: ArcSwap<Settings>,
    replicas: ArcSwap<Vec<Arc<Endpoint>>>,
    placements: ArcSwap<HashMap<Arc<str>, Placement>>,
    synced: AtomicBool,
    round_robin: AtomicUsize,
    in_flight: AtomicU32,
}

impl Service {
    /// A service with no replicas yet.
    pub fn new(config: &ServiceConfig, metrics: &Metrics) -> Self {
        let retry = &config.policy.retry;
        Service {
            name: Arc::from(config.name.as_str()),
            settings: ArcSwap::from_pointee(Settings::of(config)),
            retry_budget: RetryBudget::new(retry.budget_percent, retry.budget_min_per_second),
            metrics: metrics.service(&config.name),
            replicas: ArcSwap::from_pointee(Vec::new()),
            placements: ArcSwap::from_pointee(HashMap::new()),
            synced: AtomicBool::new(false),
            round_robin: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    /// The settings in force (a snapshot; cheap to take). A request takes
    /// them once and keeps them to its end.
    pub fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Puts new settings in force for the requests that start from now on;
    /// the retry budget keeps its counts under the new limits.
    pub fn set_settings(&self, settings: Settings) {
        let retry = &settings.policy.retry;
        self.retry_budget
            .set_limits(retry.budget_percent, retry.budget_min_per_second);
        self.settings.store(Arc::new(settings));
    }

    /// Takes one of the service's `concurrency.max_in_flight` slots, shared by
    /// every worker; `None` when all are taken. The slot frees on drop.
    pub fn try_enter(self: &Arc<Self>, limit: u32) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.metrics.in_flight.inc();
        Some(InFlight {
            service: Arc::clone(self),
        })
    }

    /// The replicas now (a snapshot; cheap to take).
    pub fn replicas(&self) -> arc_swap::Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.replicas.load()
    }

    /// Where discovery placed the replica at `address`, while it is listed.
    pub fn placement(&self, address: &str) -> Option<Placement> {
        self.placements.load().get(address).cloned()
    }

    /// Replaces the replica list and their placements by address (the
    /// supervisor's job) and marks the service synced.
    pub fn set_replicas(
        &self,
        replicas: Vec<Arc<Endpoint>>,
        placements: HashMap<Arc<str>, Placement>,
    ) {
        self.placements.store(Arc::new(placements));
        self.replicas.store(Arc::new(replicas));
        self.synced.store(true, Ordering::Release);
    }

    /// Whether discovery has delivered this service's replicas at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Advances the shared round-robin cursor and returns its old value.
    pub fn next_turn(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }
}

/// One request's concurrency slot in its service.
pub struct InFlight {
    service: Arc<Service>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.service.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.service.metrics.in_flight.dec();
    }
}

/// Every configured service, by name, and the routes to them: one version
/// of the table.
pub struct ServiceTable {
    /// Looked up on every request: hashed with foldhash, not SipHash.
    services: foldhash::HashMap<Arc<str>, Arc<Service>>,
    ordered: Vec<Arc<Service>>,
    routes: RouteTable,
}

impl ServiceTable {
    /// The table for the configured services, none of them synced yet, and
    /// the configured routes.
    pub fn new(configs: &[ServiceConfig], routes: &[RouteConfig], metrics: &Metrics) -> Self {
        ServiceTable::from_services(
            configs
                .iter()
                .map(|c| Arc::new(Service::new(c, metrics)))
                .collect(),
            routes,
        )
    }

    fn from_services(ordered: Vec<Arc<Service>>, routes: &[RouteConfig]) -> Self {
        let services = ordered
            .iter()
            .map(|s| (Arc::clone(&s.name), Arc::clone(s)))
            .collect();
        ServiceTable {
            services,
            ordered,
            routes: RouteTable::new(routes),
        }
    }

    /// The table for `configs` and `routes` after a reload: a service that
    /// stays is the same [`Service`] (its replicas, breakers and in-flight
    /// count go on), a new one starts unsynced; the routes are the new ones.
    /// Nothing is applied yet: the [`Revision`] says what the supervisor
    /// must change.
    pub fn revise(
        &self,
        configs: &[ServiceConfig],
        routes: &[RouteConfig],
        metrics: &Metrics,
    ) -> Revision {
        let mut retuned = Vec::new();
        let ordered: Vec<Arc<Service>> = configs
            .iter()
            .map(|config| match self.get(&config.name) {
                Some(service) => {
                    let settings = Settings::of(config);
                    if **service.settings() != settings {
                        retuned.push((Arc::clone(service), settings));
                    }
                    Arc::clone(service)
                }
                None => Arc::new(Service::new(config, metrics)),
            })
            .collect();
        let table = ServiceTable::from_services(ordered, routes);
        let removed = self
            .iter()
            .filter(|s| table.get(&s.name).is_none())
            .map(Arc::clone)
            .collect();
        Revision {
            table,
            retuned,
            removed,
        }
    }

    /// The service called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// The routes, tried before the `Host` and `/<service>/` rules.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Every service, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.ordered.iter()
    }

    /// Whether every service has had its first discovery sync.
    pub fn synced(&self) -> bool {
        self.ordered.iter().all(|s| s.synced())
    }
}

/// What a reload changes in the table, for the supervisor to apply.
pub struct Revision {
    /// The table to put in force.
    pub table: ServiceTable,
    /// Services that stay with new settings.
    pub retuned: Vec<(Arc<Service>, Settings)>,
    /// Services that are gone: their replicas are to be drained.
    pub removed: Vec<Arc<Service>>,
}

/// The table in force, which a reload replaces whole, and whether the
/// sidecar is stopping. Workers load the table once per request.
pub struct LiveServices {
    table: ArcSwap<ServiceTable>,
    shutting_down: AtomicBool,
}

impl LiveServices {
    /// Puts `table` in force.
    pub fn new(table: ServiceTable) -> Self {
        LiveServices {
            table: ArcSwap::from_pointee(table),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The table now (a snapshot; cheap to take).
    pub fn load(&self) -> arc_swap::Guard<Arc<ServiceTable>> {
        self.table.load()
    }

    /// Replaces the table (the supervisor's job, on a reload).
    pub fn store(&self, table: Arc<ServiceTable>) {
        self.table.store(table);
    }

    /// Ready to serve: every service synced once, and not shutting down.
    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && self.load().synced()
    }

    /// Turns `/ready` off for good: the sidecar is stopping.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}
