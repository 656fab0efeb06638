//! A replica's breaker: admitting a call (the published state, read by
//! every worker) and recording how it went (the actor's state machine),
//! against a naive breaker that locks a map of every call's time and
//! outcome and counts the failures in the window by scanning them.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use outrigger::config::Policy;
use outrigger::replica::{breaker_params, BreakerState, CallResult, CircuitBreaker, ReplicaStatus};
use prometheus::{IntCounter, IntGauge};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// The last calls' times and outcomes, per replica, behind one lock.
struct NaiveBreaker {
    calls: Mutex<HashMap<String, Vec<(Instant, bool)>>>,
    threshold: usize,
    window: Duration,
}

/// Calls the naive breaker remembers per replica.
const NAIVE_MEMORY: usize = 100;

impl NaiveBreaker {
    fn admits(&self, replica: &str, now: Instant) -> bool {
        let calls = self.calls.lock().expect("not poisoned");
        let failures = calls.get(replica).map_or(0, |calls| {
            calls
                .iter()
                .filter(|(at, failed)| *failed && now.duration_since(*at) < self.window)
                .count()
        });
        failures < self.threshold
    }

    fn record(&self, replica: &str, failed: bool, now: Instant) {
        let mut calls = self.calls.lock().expect("not poisoned");
        let calls = calls.entry(replica.to_string()).or_default();
        if calls.len() == NAIVE_MEMORY {
            calls.remove(0);
        }
        calls.push((now, failed));
    }
}

fn main() {
    let bench = support::Bench::from_args();
    let config = Policy::default().circuit_breaker;
    let threshold = config.failure_threshold as usize;
    let naive = NaiveBreaker {
        calls: Mutex::new(HashMap::new()),
        threshold,
        window: config.window,
    };
    let mut breaker = CircuitBreaker::new(breaker_params(&config), SmallRng::seed_from_u64(1));
    let status = ReplicaStatus::new(
        IntGauge::new("load", "bench").expect("gauge"),
        IntCounter::new("rejected", "bench").expect("counter"),
    );
    let replica = "10.0.0.1:8080";

    // Both open on the same failure, and refuse from then on.
    let start = Instant::now();
    for n in 1..=threshold {
        let now = start + Duration::from_millis(n as u64);
        if let Some(transition) = breaker.record(CallResult::Failure, false, now) {
            status.publish_state(transition.to, 0);
        }
        naive.record(replica, true, now);
        let now = now + Duration::from_micros(1);
        assert_eq!(
            status.try_admit().is_some(),
            naive.admits(replica, now),
            "after {n} failures"
        );
        status.finish();
    }
    assert_eq!(breaker.state(), BreakerState::Open);

    let mut breaker = CircuitBreaker::new(breaker_params(&config), SmallRng::seed_from_u64(2));
    let status = ReplicaStatus::new(
        IntGauge::new("load", "bench").expect("gauge"),
        IntCounter::new("rejected", "bench").expect("counter"),
    );
    naive.calls.lock().expect("not poisoned").clear();
    // A call every millisecond (simulated), one in 2500 failing: fewer than
    // `failure_threshold` per window, so both stay closed, as for a healthy replica.
    let outcome = |call: u64| {
        (
            start + Duration::from_millis(call),
            call.is_multiple_of(2500),
        )
    };
    let (mut ours_calls, mut naive_calls) = (0u64, 0u64);
    bench.compare(
        "admit + record, closed breaker",
        || {
            ours_calls += 1;
            let (now, failed) = outcome(ours_calls);
            let admitted = status.try_admit().is_some();
            let result = if failed {
                CallResult::Failure
            } else {
                CallResult::Success
            };
            let transition = breaker.record(result, false, now);
            status.finish();
            (admitted, transition)
        },
        || {
            naive_calls += 1;
            let (now, failed) = outcome(naive_calls);
            let admitted = naive.admits(replica, now);
            naive.record(replica, failed, now);
            admitted
        },
    );
    assert!(status.admits() && naive.admits(replica, outcome(naive_calls + 1).0));
    assert_eq!(breaker.state(), BreakerState::Closed);
}
