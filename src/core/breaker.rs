//! The circuit breaker of one replica (or of Redis), as a plain state machine.
//!
//! Closed: calls flow; `failure_threshold` failures within `window` open it.
//! Open: calls are refused until the cooldown ends; the cooldown is a
//! [`Backoff`]: each re-open doubles it up to its cap, spread by its jitter.
//! Half-open: only probes are admitted; `success_threshold` probe successes
//! close it, one probe failure re-opens it.
//!
//! Time and the random source are passed in, so every transition is tested
//! exactly. The replica actor owns one of these and publishes its state for
//! the balancers; the Redis store guards Redis with another.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::SmallRng;

use crate::core::backoff::Backoff;

/// The three breaker states; the numbers are the `circuit_breaker_state` gauge values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed = 0,
    /// Traffic is refused until the cooldown ends.
    Open = 1,
    /// A few probes test whether the replica recovered.
    HalfOpen = 2,
}

impl BreakerState {
    /// The state's name in logs, labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one call to the replica went, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// An answer below 500.
    Success,
    /// A connect error, a timeout or a 5xx answer.
    Failure,
    /// The caller went away before an answer: counts neither way.
    Cancelled,
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
}

/// Counters and times the admin API reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BreakerStats {
    /// Calls that ended in success or failure.
    pub total_calls: u64,
    /// Calls that failed.
    pub total_failures: u64,
    /// Calls that succeeded.
    pub total_successes: u64,
    /// When the breaker last opened.
    pub opened_at: Option<SystemTime>,
    /// When a call last failed.
    pub last_failure_time: Option<SystemTime>,
    /// When a call last succeeded.
    pub last_success_time: Option<SystemTime>,
}

/// What a breaker is tuned by.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerParams {
    /// Failures within `window` that open the breaker.
    pub failure_threshold: u32,
    /// The sliding window failures are counted in.
    pub window: Duration,
    /// Probe successes in half-open that close the breaker.
    pub success_threshold: u32,
    /// How long an open breaker refuses, by the re-opens since it last closed.
    pub cooldown: Backoff,
}

/// The breaker state machine of one replica (or of Redis).
#[derive(Debug)]
pub struct CircuitBreaker {
    params: BreakerParams,
    /// Spreads each cooldown by the backoff's jitter.
    rng: SmallRng,
    state: BreakerState,
    /// Times of the failures still inside `window` (at most `failure_threshold`).
    recent_failures: VecDeque<Instant>,
    /// The failures that opened the breaker last (`failure_threshold`, or
    /// one failed probe), kept until it closes.
    opened_by: usize,
    half_open_successes: u32,
    /// Re-opens since the breaker last closed; the cooldown doubles with each.
    reopens: u32,
    open_until: Option<Instant>,
    stats: BreakerStats,
}

impl CircuitBreaker {
    /// A closed breaker tuned by `params`, spreading its cooldowns with `rng`.
    pub fn new(params: BreakerParams, rng: SmallRng) -> Self {
        CircuitBreaker {
            params,
            rng,
            state: BreakerState::Closed,
            recent_failures: VecDeque::new(),
            opened_by: 0,
            half_open_successes: 0,
            reopens: 0,
            open_until: None,
            stats: BreakerStats::default(),
        }
    }

    /// New thresholds (a config reload). The state is kept: an open breaker
    /// stays open until its current cooldown ends (the new cooldown applies
    /// from the next opening), failures already in the window count
    /// against the new `failure_threshold` from the next failure on, and
    /// the new `window` bounds them from then too.
    pub fn set_params(&mut self, params: BreakerParams) {
        self.params = params;
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// When an open breaker may move to half-open.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    /// The parameters in force.
    pub fn params(&self) -> &BreakerParams {
        &self.params
    }

    /// For the admin API: while closed, the failures counted in the current
    /// window; while open or half-open, the failures that opened it.
    pub fn failure_count(&self) -> usize {
        match self.state {
            BreakerState::Closed => self.recent_failures.len(),
            BreakerState::Open | BreakerState::HalfOpen => self.opened_by,
        }
    }

    /// Probe successes so far (half-open), for the admin API.
    pub fn success_count(&self) -> u32 {
        self.half_open_successes
    }

    /// Counters and times.
    pub fn stats(&self) -> &BreakerStats {
        &self.stats
    }

    /// Records how a call went. `probe` says whether the call was admitted
    /// as a probe; only probes can close or re-open a half-open breaker, so
    /// a slow call from before the breaker opened cannot. A probe forced
    /// through an open breaker that succeeds moves it on to half-open.
    pub fn record(&mut self, result: CallResult, probe: bool, now: Instant) -> Option<Transition> {
        match result {
            CallResult::Cancelled => None,
            CallResult::Success => {
                self.stats.total_calls += 1;
                self.stats.total_successes += 1;
                self.stats.last_success_time = Some(SystemTime::now());
                if self.state == BreakerState::Open && probe {
                    self.enter(BreakerState::HalfOpen, now);
                    self.half_open_successes = 1;
                    let to = if self.params.success_threshold <= 1 {
                        self.reopens = 0;
                        self.enter(BreakerState::Closed, now);
                        BreakerState::Closed
                    } else {
                        BreakerState::HalfOpen
                    };
                    return Some(Transition {
                        from: BreakerState::Open,
                        to,
                    });
                }
                if self.state == BreakerState::HalfOpen && probe {
                    self.half_open_successes += 1;
                    if self.half_open_successes >= self.params.success_threshold {
                        self.reopens = 0;
                        return Some(self.enter(BreakerState::Closed, now));
                    }
                }
                None
            }
            CallResult::Failure => {
                self.stats.total_calls += 1;
                self.stats.total_failures += 1;
                self.stats.last_failure_time = Some(SystemTime::now());
                match self.state {
                    BreakerState::Closed => {
                        self.forget_failures_before(now);
                        self.recent_failures.push_back(now);
                        if self.recent_failures.len() >= self.params.failure_threshold as usize {
                            return Some(self.enter(BreakerState::Open, now));
                        }
                        None
                    }
                    BreakerState::HalfOpen if probe => {
                        self.reopens = self.reopens.saturating_add(1);
                        Some(self.enter(BreakerState::Open, now))
                    }
                    _ => None,
                }
            }
        }
    }

    /// Moves an open breaker to half-open once its cooldown has ended.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        match self.open_until {
            Some(until) if self.state == BreakerState::Open && now >= until => {
                Some(self.enter(BreakerState::HalfOpen, now))
            }
            _ => None,
        }
    }

    /// Closes the breaker and forgets its failures (admin reset).
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        self.reopens = 0;
        if self.state == BreakerState::Closed {
            self.recent_failures.clear();
            return None;
        }
        Some(self.enter(BreakerState::Closed, now))
    }

    /// The cooldown of the current opening (of the last one while
    /// half-open; the configured one while closed), before jitter: it
    /// doubles with each re-open since the breaker last closed.
    pub fn cooldown(&self) -> Duration {
        self.params.cooldown.delay(self.reopens)
    }

    fn enter(&mut self, to: BreakerState, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        self.opened_by = match (from, to) {
            (BreakerState::Closed, BreakerState::Open) => self.recent_failures.len(),
            (_, BreakerState::Open) => 1,
            (_, BreakerState::HalfOpen) => self.opened_by,
            (_, BreakerState::Closed) => 0,
        };
        self.recent_failures.clear();
        self.half_open_successes = 0;
        self.open_until = None;
        if to == BreakerState::Open {
            self.stats.opened_at = Some(SystemTime::now());
            let cooldown = self.params.cooldown.sample(self.reopens, &mut self.rng);
            self.open_until = Some(now + cooldown);
        }
        Transition { from, to }
    }

    fn forget_failures_before(&mut self, now: Instant) {
        while let Some(&oldest) = self.recent_failures.front() {
            if now.duration_since(oldest) < self.params.window {
                break;
            }
            self.recent_failures.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BreakerState::{Closed, HalfOpen, Open};
    use super::CallResult::{Cancelled, Failure, Success};
    use super::*;
    use rand::SeedableRng;

    /// Cooldowns from `base` seconds doubling up to 100 s, spread by `jitter`.
    fn cooldown(base: u64, jitter: f64) -> Backoff {
        Backoff::new(secs(base), secs(100), jitter).expect("valid")
    }

    fn params() -> BreakerParams {
        BreakerParams {
            failure_threshold: 3,
            window: secs(10),
            success_threshold: 2,
            cooldown: cooldown(30, 0.0),
        }
    }

    /// A closed breaker with a seeded random source.
    fn closed(params: BreakerParams) -> CircuitBreaker {
        CircuitBreaker::new(params, SmallRng::seed_from_u64(7))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn opened(at: Instant) -> CircuitBreaker {
        let mut breaker = closed(params());
        breaker.record(Failure, false, at);
        breaker.record(Failure, false, at);
        assert_eq!(
            breaker.record(Failure, false, at),
            Some(Transition {
                from: Closed,
                to: Open
            })
        );
        breaker
    }

    fn half_open(at: Instant) -> CircuitBreaker {
        let mut breaker = opened(at);
        let transition = breaker.poll(at + secs(30));
        assert_eq!(
            transition,
            Some(Transition {
                from: Open,
                to: HalfOpen
            })
        );
        breaker
    }

    #[test]
    fn opens_at_the_threshold_within_the_window() {
        let t0 = Instant::now();
        let mut breaker = closed(params());
        assert_eq!(breaker.record(Failure, false, t0), None);
        assert_eq!(
            breaker.record(Success, false, t0),
            None,
            "successes do not reset the window"
        );
        assert_eq!(breaker.record(Failure, false, t0 + secs(1)), None);
        assert_eq!(breaker.failure_count(), 2);
        let transition = breaker.record(Failure, false, t0 + secs(9));
        assert_eq!(
            transition,
            Some(Transition {
                from: Closed,
                to: Open
            })
        );
        assert_eq!(breaker.open_until(), Some(t0 + secs(39)));
        assert!(breaker.stats().opened_at.is_some());
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut breaker = closed(params());
        breaker.record(Failure, false, t0);
        breaker.record(Failure, false, t0 + secs(5));
        assert_eq!(
            breaker.record(Failure, false, t0 + secs(10)),
            None,
            "the first one left the window"
        );
        assert_eq!(breaker.failure_count(), 2);
        assert_eq!(breaker.state(), Closed);
    }

    #[test]
    fn open_stays_open_until_the_cooldown_ends() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        assert_eq!(breaker.poll(t0 + secs(29)), None);
        assert_eq!(
            breaker.record(Failure, false, t0 + secs(1)),
            None,
            "late failures change nothing"
        );
        assert_eq!(
            breaker.record(Success, false, t0 + secs(1)),
            None,
            "late successes change nothing"
        );
        assert_eq!(breaker.state(), Open);
        assert_eq!(
            breaker.poll(t0 + secs(30)),
            Some(Transition {
                from: Open,
                to: HalfOpen
            })
        );
    }

    #[test]
    fn half_open_closes_after_enough_probe_successes() {
        let t0 = Instant::now();
        let mut breaker = half_open(t0);
        assert_eq!(breaker.record(Success, true, t0 + secs(31)), None);
        assert_eq!(breaker.success_count(), 1);
        let transition = breaker.record(Success, true, t0 + secs(32));
        assert_eq!(
            transition,
            Some(Transition {
                from: HalfOpen,
                to: Closed
            })
        );
        assert_eq!(breaker.cooldown(), secs(30), "closing forgets the re-opens");
    }

    #[test]
    fn only_probes_decide_a_half_open_breaker() {
        let t0 = Instant::now();
        let mut breaker = half_open(t0);
        assert_eq!(breaker.record(Success, false, t0 + secs(31)), None);
        assert_eq!(breaker.record(Success, false, t0 + secs(31)), None);
        assert_eq!(breaker.record(Failure, false, t0 + secs(31)), None);
        assert_eq!(breaker.state(), HalfOpen);
        assert_eq!(breaker.record(Cancelled, true, t0 + secs(31)), None);
        assert_eq!(breaker.state(), HalfOpen);
    }

    #[test]
    fn a_probe_failure_reopens_with_a_doubled_cooldown_up_to_the_cap() {
        let t0 = Instant::now();
        let mut breaker = half_open(t0);
        let mut now = t0 + secs(30);
        for expected in [60, 100, 100] {
            let transition = breaker.record(Failure, true, now);
            assert_eq!(
                transition,
                Some(Transition {
                    from: HalfOpen,
                    to: Open
                })
            );
            assert_eq!(breaker.cooldown(), secs(expected));
            assert_eq!(breaker.open_until(), Some(now + secs(expected)));
            now += secs(expected);
            assert!(breaker.poll(now).is_some());
        }
    }

    #[test]
    fn a_forced_probe_success_moves_an_open_breaker_on() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        assert_eq!(
            breaker.record(Failure, true, t0),
            None,
            "a failed forced probe changes nothing"
        );
        assert_eq!(
            breaker.cooldown(),
            secs(30),
            "and does not double the cooldown"
        );
        let transition = breaker.record(Success, true, t0 + secs(1));
        assert_eq!(
            transition,
            Some(Transition {
                from: Open,
                to: HalfOpen
            })
        );
        assert_eq!(breaker.success_count(), 1);
        let transition = breaker.record(Success, true, t0 + secs(2));
        assert_eq!(
            transition,
            Some(Transition {
                from: HalfOpen,
                to: Closed
            })
        );

        let mut quick = closed(BreakerParams {
            success_threshold: 1,
            ..params()
        });
        for _ in 0..3 {
            quick.record(Failure, false, t0);
        }
        assert_eq!(
            quick.record(Success, true, t0),
            Some(Transition {
                from: Open,
                to: Closed
            })
        );
    }

    #[test]
    fn new_thresholds_apply_from_the_next_call_and_the_state_is_kept() {
        let now = Instant::now();
        let mut breaker = closed(params());
        for i in 0..2 {
            assert_eq!(
                breaker.record(CallResult::Failure, false, now + secs(i)),
                None
            );
        }
        let threshold = |failure_threshold| BreakerParams {
            failure_threshold,
            ..params()
        };
        breaker.set_params(threshold(5));
        assert_eq!(
            breaker.record(CallResult::Failure, false, now + secs(2)),
            None
        );
        assert_eq!(breaker.failure_count(), 3, "the window is kept");
        breaker.set_params(threshold(4));
        let opened = breaker.record(CallResult::Failure, false, now + secs(3));
        assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
        let until = breaker.open_until();
        breaker.set_params(BreakerParams {
            cooldown: cooldown(1, 0.0),
            ..params()
        });
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "an open breaker stays open"
        );
        assert_eq!(
            breaker.open_until(),
            until,
            "until its current cooldown ends"
        );
        assert_eq!(
            breaker.cooldown(),
            secs(1),
            "the next opening uses the new one"
        );
    }

    #[test]
    fn the_failures_that_opened_it_are_kept_until_it_closes() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        assert_eq!(
            breaker.failure_count(),
            3,
            "open: the failures that opened it"
        );
        breaker.record(Failure, false, t0 + secs(1));
        assert_eq!(breaker.failure_count(), 3, "late failures add nothing");
        breaker.poll(t0 + secs(30));
        assert_eq!(breaker.failure_count(), 3, "half-open: still those");
        breaker.record(Failure, true, t0 + secs(31));
        assert_eq!(breaker.state(), Open);
        assert_eq!(breaker.failure_count(), 1, "re-opened by one failed probe");
        breaker.poll(t0 + secs(91));
        breaker.record(Success, true, t0 + secs(92));
        breaker.record(Success, true, t0 + secs(92));
        assert_eq!(breaker.state(), Closed);
        assert_eq!(breaker.failure_count(), 0, "closed: the window, empty");
    }

    #[test]
    fn the_cooldown_reported_is_the_current_openings() {
        let t0 = Instant::now();
        let breaker = closed(params());
        assert_eq!(breaker.cooldown(), secs(30), "closed: the configured one");
        assert_eq!(breaker.params().failure_threshold, 3);
        let mut breaker = half_open(t0);
        assert_eq!(
            breaker.cooldown(),
            secs(30),
            "half-open: the last opening's"
        );
        breaker.record(Failure, true, t0 + secs(30));
        assert_eq!(breaker.cooldown(), secs(60), "re-opened: doubled");
        breaker.poll(t0 + secs(90));
        assert_eq!(
            breaker.cooldown(),
            secs(60),
            "half-open again: that opening's"
        );
    }

    #[test]
    fn cancelled_calls_count_neither_way() {
        let t0 = Instant::now();
        let mut breaker = closed(params());
        for _ in 0..10 {
            assert_eq!(breaker.record(Cancelled, false, t0), None);
        }
        assert_eq!(breaker.stats().total_calls, 0);
        assert_eq!(breaker.state(), Closed);
    }

    #[test]
    fn stats_count_every_finished_call() {
        let t0 = Instant::now();
        let mut breaker = closed(params());
        breaker.record(Success, false, t0);
        breaker.record(Success, false, t0);
        breaker.record(Failure, false, t0);
        let stats = breaker.stats();
        assert_eq!(
            (
                stats.total_calls,
                stats.total_successes,
                stats.total_failures
            ),
            (3, 2, 1)
        );
        assert!(stats.last_success_time.is_some() && stats.last_failure_time.is_some());
        assert!(stats.opened_at.is_none());
    }

    #[test]
    fn reset_closes_from_any_state() {
        let t0 = Instant::now();
        let mut open = opened(t0);
        assert_eq!(
            open.reset(t0),
            Some(Transition {
                from: Open,
                to: Closed
            })
        );
        let mut probing = half_open(t0);
        assert_eq!(
            probing.reset(t0),
            Some(Transition {
                from: HalfOpen,
                to: Closed
            })
        );
        let mut closed = closed(params());
        closed.record(Failure, false, t0);
        assert_eq!(closed.reset(t0), None);
        assert_eq!(closed.failure_count(), 0);
    }

    #[test]
    fn jitter_spreads_the_cooldown_within_its_fraction() {
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for seed in 0..50 {
            let params = BreakerParams {
                cooldown: cooldown(30, 0.1),
                ..params()
            };
            let mut breaker = CircuitBreaker::new(params, SmallRng::seed_from_u64(seed));
            for _ in 0..3 {
                breaker.record(Failure, false, t0);
            }
            let wait = breaker.open_until().expect("open").duration_since(t0);
            assert!(wait >= secs(27) && wait <= secs(33), "{wait:?}");
            waits.push(wait);
        }
        waits.dedup();
        assert!(waits.len() > 1, "the cooldowns are spread: {waits:?}");
    }
}
