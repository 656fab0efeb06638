//! The services apps may call and their current replicas: the table every
//! worker routes with. The supervisor swaps each service's replica list;
//! readers load it lock-free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Policy, ServiceConfig};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::outbound::RetryBudget;
use crate::replica::Endpoint;

/// What discovery said about a replica besides its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The share of traffic the source asks for, relative to its siblings.
    pub weight: u32,
    /// The topology zone, when the source says.
    pub zone: Option<String>,
}

/// One service: its policy and the replicas it has now.
pub struct Service {
    /// The name apps call it by.
    pub name: Arc<str>,
    /// Drop `/<name>` from the path before forwarding.
    pub strip_prefix: bool,
    /// Timeouts, balancing, breaker.
    pub policy: Policy,
    /// The retry budget every worker draws from.
    pub retry_budget: RetryBudget,
    /// This service's pre-resolved series.
    pub metrics: ServiceMetrics,
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
            strip_prefix: config.strip_prefix,
            policy: config.policy.clone(),
            retry_budget: RetryBudget::new(retry.budget_percent, retry.budget_min_per_second),
            metrics: metrics.service(&config.name),
            replicas: ArcSwap::from_pointee(Vec::new()),
            placements: ArcSwap::from_pointee(HashMap::new()),
            synced: AtomicBool::new(false),
            round_robin: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Takes one of the service's `concurrency.max_in_flight` slots, shared by
    /// every worker; `None` when all are taken. The slot frees on drop.
    pub fn try_enter(self: &Arc<Self>) -> Option<InFlight> {
        let limit = self.policy.concurrency.max_in_flight;
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

/// Every configured service, by name.
pub struct ServiceTable {
    services: HashMap<Arc<str>, Arc<Service>>,
    ordered: Vec<Arc<Service>>,
    shutting_down: AtomicBool,
}

impl ServiceTable {
    /// The table for the configured services, none of them synced yet.
    pub fn new(configs: &[ServiceConfig], metrics: &Metrics) -> Self {
        let ordered: Vec<Arc<Service>> = configs
            .iter()
            .map(|c| Arc::new(Service::new(c, metrics)))
            .collect();
        let services = ordered
            .iter()
            .map(|s| (Arc::clone(&s.name), Arc::clone(s)))
            .collect();
        ServiceTable {
            services,
            ordered,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The service called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// Every service, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.ordered.iter()
    }

    /// Ready to serve: every service synced once, and not shutting down.
    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && self.ordered.iter().all(|s| s.synced())
    }

    /// Turns `/ready` off for good: the sidecar is stopping.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}
