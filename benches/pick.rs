//! Picking a replica the way each worker's balancer does (`least_load` over
//! the replicas' published atomics, then admitting the call and finishing
//! it), against a naive balancer that keeps its replicas in a locked map and
//! sorts the candidates for every pick. 3, 30 and 300 replicas.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;

use outrigger::balance::least_load;
use outrigger::replica::{BreakerState, ReplicaStatus};
use prometheus::{IntCounter, IntGauge};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// A replica as the naive balancer keeps it.
struct NaiveReplica {
    open: bool,
    in_flight: u32,
}

/// The naive balancer: one lock around every replica, candidates sorted.
struct NaiveBalancer {
    replicas: Mutex<HashMap<String, NaiveReplica>>,
}

impl NaiveBalancer {
    fn pick_and_finish(&self) -> Option<String> {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        let mut candidates: Vec<(String, u32)> = replicas
            .iter()
            .filter(|(_, r)| !r.open)
            .map(|(address, r)| (address.clone(), r.in_flight))
            .collect();
        candidates.sort_by_key(|(_, load)| *load);
        let (address, _) = candidates.into_iter().next()?;
        if let Some(r) = replicas.get_mut(&address) {
            r.in_flight += 1;
            r.in_flight -= 1;
        }
        Some(address)
    }
}

/// `n` replicas, the first one's breaker open, loads falling with the
/// index so the least loaded one is unique (the last).
fn replicas(n: usize) -> (Vec<String>, Vec<ReplicaStatus>, NaiveBalancer) {
    let addresses: Vec<String> = (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
        .collect();
    let statuses: Vec<ReplicaStatus> = (0..n)
        .map(|i| {
            let status = ReplicaStatus::new(
                IntGauge::new("load", "bench").expect("gauge"),
                IntCounter::new("rejected", "bench").expect("counter"),
            );
            for _ in 0..n - i {
                status.try_admit();
            }
            if i == 0 {
                status.publish_state(BreakerState::Open, 0);
            }
            status
        })
        .collect();
    let naive = NaiveBalancer {
        replicas: Mutex::new(
            addresses
                .iter()
                .enumerate()
                .map(|(i, address)| {
                    let replica = NaiveReplica {
                        open: i == 0,
                        in_flight: (n - i) as u32,
                    };
                    (address.clone(), replica)
                })
                .collect(),
        ),
    };
    (addresses, statuses, naive)
}

fn main() {
    let bench = support::Bench::from_args();
    let mut rng = SmallRng::seed_from_u64(1);
    for n in [3, 30, 300] {
        let (addresses, statuses, naive) = replicas(n);
        let mut pick = || {
            let index = least_load(&statuses, &mut rng, |s| s.admits().then(|| s.in_flight()))?;
            statuses[index].try_admit()?;
            statuses[index].finish();
            Some(index)
        };
        let ours = pick().map(|index| addresses[index].clone());
        assert_eq!(
            ours,
            naive.pick_and_finish(),
            "both pick the least loaded replica"
        );
        assert_eq!(
            ours.as_ref(),
            addresses.last(),
            "the least loaded is the last"
        );
        bench.compare(&format!("least_load pick, {n} replicas"), &mut pick, || {
            naive.pick_and_finish()
        });
    }
}
