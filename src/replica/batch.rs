//! Outcomes on their way from a worker to the replica actors. A worker
//! keeps the outcomes of the calls it finishes for [`OUTCOME_BATCH`], then
//! sends each replica the ones that are its in one message: the replica
//! actors live on another thread, and waking that thread once per call cost
//! a system call and a context switch per request. In-flight counts do not
//! wait for this (they are atomics, updated when a call starts and ends);
//! only the breaker and the latency average see a call up to about
//! [`OUTCOME_BATCH`] later.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use super::{Endpoint, Outcome, Outcomes};

/// How long a worker holds finished calls' outcomes before sending them.
pub const OUTCOME_BATCH: Duration = Duration::from_millis(1);

thread_local! {
    /// This worker's outcomes not sent yet, in the order the calls finished.
    static PENDING: RefCell<Vec<(Arc<Endpoint>, Outcome)>> = const { RefCell::new(Vec::new()) };
}

/// Queues `outcome` for `endpoint`'s actor. On a thread without an actix
/// arbiter (nothing would run the flush), it is sent at once.
pub(super) fn send(endpoint: &Arc<Endpoint>, outcome: Outcome) {
    if actix_rt::Arbiter::try_current().is_none() {
        endpoint.actor.do_send(Outcomes(vec![outcome]));
        return;
    }
    let first = PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        pending.push((Arc::clone(endpoint), outcome));
        pending.len() == 1
    });
    if first {
        actix_rt::spawn(async {
            actix_rt::time::sleep(OUTCOME_BATCH).await;
            flush();
        });
    }
}

/// Sends every pending outcome, one message per replica.
fn flush() {
    let pending = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    let mut by_replica: Vec<(Arc<Endpoint>, Vec<Outcome>)> = Vec::new();
    for (endpoint, outcome) in pending {
        match by_replica
            .iter_mut()
            .find(|(e, _)| Arc::ptr_eq(e, &endpoint))
        {
            Some((_, outcomes)) => outcomes.push(outcome),
            None => by_replica.push((endpoint, vec![outcome])),
        }
    }
    for (endpoint, outcomes) in by_replica {
        endpoint.actor.do_send(Outcomes(outcomes));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::Policy;
    use crate::metrics::Metrics;
    use crate::replica::{lease, Answer, Replica};

    #[actix_web::test]
    async fn every_outcome_reaches_its_replica_and_the_breaker_counts_it() {
        let metrics = Arc::new(Metrics::new());
        let policy = Policy::default();
        let spawn = |address| {
            Replica::spawn(
                Arc::from("api"),
                address,
                &policy,
                false,
                Arc::clone(&metrics),
            )
        };
        let (a, b) = (spawn("127.0.0.1:1"), spawn("127.0.0.1:2"));
        for (endpoint, status) in [(&a, 200), (&b, 503), (&a, 200), (&b, 200), (&a, 500)] {
            let mut lease = lease(endpoint).expect("a closed breaker admits");
            lease.report(Answer::Status(status));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (ra, rb) = (a.inspect().await, b.inspect().await);
            let counts = |r: Option<crate::replica::BreakerReport>| {
                r.map(|r| (r.stats.total_calls, r.stats.total_failures))
            };
            if (counts(ra.clone()), counts(rb.clone())) == (Some((3, 1)), Some((2, 1))) {
                break;
            }
            assert!(Instant::now() < deadline, "outcomes lost: {ra:?} {rb:?}");
            actix_rt::time::sleep(OUTCOME_BATCH).await;
        }
        assert_eq!((a.status.in_flight(), b.status.in_flight()), (0, 0));
    }
}
