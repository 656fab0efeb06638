//! A service's retry budget: retries may add at most a percentage of the
//! service's requests, plus a floor per second, so that retries do not
//! multiply the load on a service that is already failing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Seconds the budget looks back over.
const WINDOW_SECS: usize = 10;

/// A service's retry budget: over the last 10 s, retries may be at most
/// `percent` of requests, plus `min_per_second` each second so that a quiet
/// service can still retry. Shared by every worker.
#[derive(Debug)]
pub struct RetryBudget {
    percent: AtomicU32,
    min_per_second: AtomicU32,
    started: Instant,
    window: Mutex<Window>,
}

/// Requests and retries per second, in a ring of `WINDOW_SECS` slots.
#[derive(Debug, Default)]
struct Window {
    /// For each slot: (the second it counts, requests, retries).
    slots: [(u64, u32, u32); WINDOW_SECS],
}

impl Window {
    fn slot(&mut self, second: u64) -> &mut (u64, u32, u32) {
        let slot = &mut self.slots[(second % WINDOW_SECS as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot
    }

    fn totals(&self, second: u64) -> (u64, u64) {
        let oldest = second.saturating_sub(WINDOW_SECS as u64 - 1);
        self.slots
            .iter()
            .filter(|(at, _, _)| *at >= oldest && *at <= second)
            .fold((0, 0), |(requests, retries), (_, rq, rt)| {
                (requests + u64::from(*rq), retries + u64::from(*rt))
            })
    }
}

impl RetryBudget {
    /// A budget of `percent` of requests plus `min_per_second` retries per second.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        RetryBudget {
            percent: AtomicU32::new(percent),
            min_per_second: AtomicU32::new(min_per_second),
            started: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// New limits (a config reload); the counts in the window stay.
    pub fn set_limits(&self, percent: u32, min_per_second: u32) {
        self.percent.store(percent, Ordering::Relaxed);
        self.min_per_second.store(min_per_second, Ordering::Relaxed);
    }

    /// Counts one request (not a retry).
    pub fn record_request(&self) {
        self.record_request_at(self.second());
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(self.second())
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn record_request_at(&self, second: u64) {
        if let Ok(mut window) = self.window.lock() {
            let slot = window.slot(second);
            slot.1 = slot.1.saturating_add(1);
        }
    }

    fn try_retry_at(&self, second: u64) -> bool {
        let Ok(mut window) = self.window.lock() else {
            return false;
        };
        let (requests, retries) = window.totals(second);
        let percent = self.percent.load(Ordering::Relaxed);
        let min_per_second = self.min_per_second.load(Ordering::Relaxed);
        let allowed =
            requests * u64::from(percent) / 100 + u64::from(min_per_second) * WINDOW_SECS as u64;
        if retries >= allowed {
            return false;
        }
        let slot = window.slot(second);
        slot.2 = slot.2.saturating_add(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_percentage_plus_the_floor() {
        let budget = RetryBudget::new(20, 1);
        for _ in 0..100 {
            budget.record_request_at(0);
        }
        let granted = (0..100).filter(|_| budget.try_retry_at(0)).count();
        assert_eq!(
            granted,
            20 + 10,
            "20% of 100 requests plus 1/s over the 10 s window"
        );
    }

    #[test]
    fn the_budget_forgets_what_left_the_window() {
        let budget = RetryBudget::new(50, 0);
        for _ in 0..10 {
            budget.record_request_at(0);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry_at(0)).count(), 5);
        assert!(
            !budget.try_retry_at(9),
            "second 0 is still inside the window at second 9"
        );
        assert!(
            !budget.try_retry_at(10),
            "at second 10 the requests left with the retries"
        );
        for _ in 0..2 {
            budget.record_request_at(10);
        }
        assert!(budget.try_retry_at(10));
        assert!(!budget.try_retry_at(10));
    }
}
