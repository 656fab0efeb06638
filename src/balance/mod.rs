//! Picking a replica. Each worker runs one [`Balancer`] actor; the handler
//! on the same thread sends it [`Pick`] and gets a [`Lease`] back. It reads
//! the replicas' published status, so a pick never leaves the worker thread.

mod pick;

use std::sync::Arc;

use actix::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use pick::{ewma_score, least_load, p2c, round_robin};

use crate::config::LoadBalancer;
use crate::replica::{lease, Endpoint, Lease};
use crate::service::Service;

/// Why no replica could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Discovery has no replica for the service.
    NoReplicas,
    /// Every replica's breaker refuses traffic.
    AllRefused,
}

/// Asks for a replica of `service`; answered on the caller's own thread.
#[derive(Message)]
#[rtype(result = "Result<Lease, PickError>")]
pub struct Pick {
    /// The service to pick from.
    pub service: Arc<Service>,
}

/// The per-worker balancer; owns the worker's random source.
pub struct Balancer {
    rng: SmallRng,
}

impl Balancer {
    /// A balancer seeded from the operating system.
    pub fn new() -> Self {
        Balancer {
            rng: SmallRng::from_os_rng(),
        }
    }

    fn choose(&mut self, service: &Service, replicas: &[Arc<Endpoint>]) -> Option<usize> {
        let admitted = |e: &Arc<Endpoint>| e.status.admits();
        match service.policy.load_balancer {
            LoadBalancer::LeastLoad => least_load(replicas, &mut self.rng, |e| {
                admitted(e).then(|| e.status.in_flight())
            }),
            LoadBalancer::P2cEwma => p2c(replicas, &mut self.rng, |e| {
                admitted(e).then(|| ewma_score(e.status.ewma_micros(), e.status.in_flight()))
            }),
            LoadBalancer::RoundRobin => round_robin(replicas, service.next_turn(), admitted),
        }
    }
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer::new()
    }
}

impl Actor for Balancer {
    type Context = Context<Self>;
}

impl Handler<Pick> for Balancer {
    type Result = MessageResult<Pick>;

    fn handle(&mut self, pick: Pick, _: &mut Context<Self>) -> Self::Result {
        let replicas = pick.service.replicas();
        if replicas.is_empty() {
            return MessageResult(Err(PickError::NoReplicas));
        }
        // A half-open replica's last probe permit can go to another worker
        // between `choose` and `lease`; then choose again, at most once per replica.
        for _ in 0..replicas.len() {
            let Some(index) = self.choose(&pick.service, &replicas) else {
                break;
            };
            if let Some(lease) = lease(&replicas[index]) {
                return MessageResult(Ok(lease));
            }
        }
        for replica in replicas.iter() {
            replica.status.reject();
        }
        MessageResult(Err(PickError::AllRefused))
    }
}
