//! Outcomes on their way from a worker to the replica actors. The replica
//! actors live on another thread, and waking that thread once per call cost
//! a system call and a context switch per request. So a worker holds the
//! successes of the calls it finishes for up to [`OUTCOME_BATCH`], then
//! sends each replica the outcomes that are its in one message. A failure
//! or a half-open probe's outcome sends everything pending at once, in the
//! order the calls finished: a breaker learns of a failure as soon as the
//! worker does, and never sees it ahead of the successes before it.
//! In-flight counts do not wait for this (they are atomics, updated when a
//! call starts and ends); only the latency average and a closed breaker's
//! record of successes see a call up to [`OUTCOME_BATCH`] later.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use super::{Endpoint, Outcome, Outcomes};
use crate::core::breaker::CallResult;

/// How long a worker may hold finished calls' successes before sending them.
pub const OUTCOME_BATCH: Duration = Duration::from_millis(10);

/// A worker's outcomes not sent yet.
struct Pending {
    /// In the order the calls finished.
    outcomes: Vec<(Arc<Endpoint>, Outcome)>,
    /// Whether a flush is already due within [`OUTCOME_BATCH`].
    flush_due: bool,
}

thread_local! {
    /// This worker's outcomes not sent yet.
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending { outcomes: Vec::new(), flush_due: false })
    };
}

/// Queues `outcome` for `endpoint`'s actor, or sends the batch now if the
/// breaker must hear of it at once. On a thread without an actix arbiter
/// (nothing would run a later flush), it is sent at once.
pub(super) fn send(endpoint: &Arc<Endpoint>, outcome: Outcome) {
    if actix_rt::Arbiter::try_current().is_none() {
        endpoint.actor.do_send(Outcomes(vec![outcome]));
        return;
    }
    let urgent = outcome.probe || outcome.answer.call_result() == CallResult::Failure;
    let arm = PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        pending.outcomes.push((Arc::clone(endpoint), outcome));
        let arm = !urgent && !pending.flush_due;
        pending.flush_due |= arm;
        arm
    });
    if urgent {
        flush();
    } else if arm {
        actix_rt::spawn(async {
            actix_rt::time::sleep(OUTCOME_BATCH).await;
            PENDING.with(|pending| pending.borrow_mut().flush_due = false);
            flush();
        });
    }
}

/// Sends every pending outcome, one message per replica.
fn flush() {
    let pending = PENDING.with(|pending| std::mem::take(&mut pending.borrow_mut().outcomes));
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
    use crate::core::breaker::BreakerState;
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
                None,
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

    fn pending() -> usize {
        PENDING.with(|pending| pending.borrow().outcomes.len())
    }

    #[actix_web::test]
    async fn successes_wait_for_the_batch_and_a_failure_sends_it_at_once() {
        let metrics = Arc::new(Metrics::new());
        let endpoint = Replica::spawn(
            Arc::from("api"),
            "127.0.0.1:1",
            None,
            &Policy::default(),
            false,
            metrics,
        );
        let report = |answer| {
            lease(&endpoint)
                .expect("a closed breaker admits")
                .report(answer);
        };
        report(Answer::Status(200));
        report(Answer::Status(404));
        assert_eq!(pending(), 2, "successes are held for the batch");
        report(Answer::Status(502));
        assert_eq!(
            pending(),
            0,
            "a failure flushes the successes before it and itself"
        );
        let report = endpoint.inspect().await.expect("the replica answers");
        assert_eq!(
            (report.stats.total_calls, report.stats.total_failures),
            (3, 1)
        );
    }

    #[actix_web::test]
    async fn a_half_open_probes_success_is_sent_at_once() {
        let endpoint = Replica::spawn(
            Arc::from("api"),
            "127.0.0.1:1",
            None,
            &Policy::default(),
            false,
            Arc::new(Metrics::new()),
        );
        endpoint.status.publish_state(BreakerState::HalfOpen, 1);
        lease(&endpoint)
            .expect("a half-open breaker admits its probe")
            .report(Answer::Status(200));
        assert_eq!(pending(), 0, "the probe's outcome waits for no batch");
    }
}
