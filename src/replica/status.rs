//! What a replica publishes for the balancers on every worker: its breaker
//! state, half-open probe permits, in-flight count and latency, as atomics.
//! Balancers read them without a message round trip; only the replica actor
//! writes the breaker fields.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};

use crate::core::breaker::BreakerState;

/// How a pick was admitted by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed.
    Normal,
    /// The breaker is half-open and this call is one of its probes.
    Probe,
}

/// Milliseconds since the first call in this process, never 0: a cheap clock
/// that fits an atomic.
pub fn now_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The published, lock-free view of one replica.
#[derive(Debug)]
pub struct ReplicaStatus {
    state: AtomicU8,
    probe_permits: AtomicU32,
    ewma_bits: AtomicU64,
    rejections: AtomicU64,
    /// When the replica's slow-start ramp began (`now_millis`), 0 when none.
    ramp_from: AtomicU64,
    /// When an open breaker last admitted a forced probe (`now_millis`; 0: never).
    last_forced_probe: AtomicU64,
    /// Requests in flight; also the `replica_load` series.
    in_flight: IntGauge,
    /// The `circuit_breaker_rejected_total` series.
    rejected: IntCounter,
}

impl ReplicaStatus {
    /// A closed replica with no load, counting into the given series.
    pub fn new(in_flight: IntGauge, rejected: IntCounter) -> Self {
        ReplicaStatus {
            state: AtomicU8::new(BreakerState::Closed as u8),
            probe_permits: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(0f64.to_bits()),
            rejections: AtomicU64::new(0),
            ramp_from: AtomicU64::new(0),
            last_forced_probe: AtomicU64::new(0),
            in_flight,
            rejected,
        }
    }

    /// The breaker state as last published.
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a pick could be admitted now (without taking a probe permit).
    pub fn admits(&self) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => self.probe_permits.load(Ordering::Acquire) > 0,
            BreakerState::Open => false,
        }
    }

    /// Admits one call, taking a probe permit when half-open, and counts it
    /// in flight; `None` when the breaker refuses.
    pub fn try_admit(&self) -> Option<Admission> {
        let admission = match self.state() {
            BreakerState::Closed => Some(Admission::Normal),
            BreakerState::HalfOpen => {
                let taken =
                    self.probe_permits
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
                taken.ok().map(|_| Admission::Probe)
            }
            BreakerState::Open => None,
        };
        if admission.is_some() {
            self.in_flight.inc();
        }
        admission
    }

    /// Admits a probe through an open breaker, at most once per `interval`:
    /// used when so many of a service's replicas are cut off that the
    /// service would otherwise be blacked out by its own protection.
    pub fn try_admit_forced(&self, now: u64, interval: Duration) -> Option<Admission> {
        if self.state() != BreakerState::Open {
            return None;
        }
        let interval = interval.as_millis() as u64;
        self.last_forced_probe
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                (last == 0 || now.saturating_sub(last) >= interval).then_some(now)
            })
            .ok()?;
        self.in_flight.inc();
        Some(Admission::Probe)
    }

    /// Starts the slow-start ramp at `now` (`now_millis`).
    pub fn start_ramp(&self, now: u64) {
        self.ramp_from.store(now, Ordering::Relaxed);
    }

    /// The share of its normal traffic the replica should get at `now`
    /// (in [`now_millis`], read only while a ramp is under way): ramping
    /// from 10% to 100% over `slow_start` after the ramp began.
    pub fn share(&self, now: impl FnOnce() -> u64, slow_start: Duration) -> f64 {
        let from = self.ramp_from.load(Ordering::Relaxed);
        let span = slow_start.as_millis() as u64;
        if from == 0 || span == 0 {
            return 1.0;
        }
        let elapsed = now().saturating_sub(from);
        if elapsed >= span {
            return 1.0;
        }
        (elapsed as f64 / span as f64).max(0.1)
    }

    /// Counts a request turned away because this breaker (and every other
    /// of the service's) refused traffic.
    pub fn reject(&self) {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        self.rejected.inc();
    }

    /// Marks one admitted call finished.
    pub fn finish(&self) {
        self.in_flight.dec();
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        u32::try_from(self.in_flight.get().max(0)).unwrap_or(u32::MAX)
    }

    /// Average latency in microseconds (0 before the first answer).
    pub fn ewma_micros(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed))
    }

    /// Picks that were refused by the breaker.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Publishes a breaker state; half-open comes with `probe_permits` permits.
    pub fn publish_state(&self, state: BreakerState, probe_permits: u32) {
        self.probe_permits.store(probe_permits, Ordering::Release);
        self.state.store(state as u8, Ordering::Release);
    }

    /// Gives back the permit of a probe that finished while still half-open.
    pub fn return_probe_permit(&self) {
        if self.state() == BreakerState::HalfOpen {
            self.probe_permits.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Publishes the latency average.
    pub fn publish_ewma(&self, micros: f64) {
        self.ewma_bits.store(micros.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn status() -> ReplicaStatus {
        ReplicaStatus::new(
            IntGauge::new("in_flight", "test").expect("gauge"),
            IntCounter::new("rejected", "test").expect("counter"),
        )
    }

    #[test]
    fn closed_admits_everything_and_counts_load() {
        let status = status();
        assert!(status.admits());
        assert_eq!(status.try_admit(), Some(Admission::Normal));
        assert_eq!(status.try_admit(), Some(Admission::Normal));
        assert_eq!(status.in_flight(), 2);
        status.finish();
        assert_eq!(status.in_flight(), 1);
    }

    #[test]
    fn open_refuses_and_adds_no_load() {
        let status = status();
        status.publish_state(BreakerState::Open, 0);
        assert!(!status.admits());
        assert_eq!(status.try_admit(), None);
        assert_eq!(status.in_flight(), 0);
        status.reject();
        assert_eq!(status.rejections(), 1);
    }

    #[test]
    fn half_open_admits_only_as_many_probes_as_permits() {
        let status = status();
        status.publish_state(BreakerState::HalfOpen, 2);
        assert_eq!(status.try_admit(), Some(Admission::Probe));
        assert_eq!(status.try_admit(), Some(Admission::Probe));
        assert!(!status.admits());
        assert_eq!(status.try_admit(), None);
        status.return_probe_permit();
        assert_eq!(status.try_admit(), Some(Admission::Probe));
    }

    #[test]
    fn forced_probes_pass_an_open_breaker_once_per_interval() {
        let status = status();
        let second = Duration::from_secs(1);
        assert_eq!(
            status.try_admit_forced(5_000, second),
            None,
            "a closed breaker needs none"
        );
        status.publish_state(BreakerState::Open, 0);
        assert_eq!(
            status.try_admit_forced(5_000, second),
            Some(Admission::Probe)
        );
        assert_eq!(status.try_admit_forced(5_999, second), None);
        let young = super::tests::status();
        young.publish_state(BreakerState::Open, 0);
        assert_eq!(
            young.try_admit_forced(10, second),
            Some(Admission::Probe),
            "the first probe need not wait for the process to be a second old"
        );
        assert_eq!(
            status.try_admit_forced(6_000, second),
            Some(Admission::Probe)
        );
        assert_eq!(status.in_flight(), 2);
    }

    #[test]
    fn the_slow_start_share_ramps_from_a_tenth_to_all() {
        let status = status();
        let ramp = Duration::from_secs(10);
        assert_eq!(status.share(|| 1_000, ramp), 1.0, "no ramp started");
        status.start_ramp(1_000);
        assert_eq!(status.share(|| 1_000, ramp), 0.1);
        assert_eq!(status.share(|| 6_000, ramp), 0.5);
        assert_eq!(status.share(|| 11_000, ramp), 1.0);
        assert_eq!(
            status.share(|| 2_000, Duration::ZERO),
            1.0,
            "slow start off"
        );
    }

    #[test]
    fn a_permit_returned_after_the_breaker_left_half_open_is_dropped() {
        let status = status();
        status.publish_state(BreakerState::Closed, 0);
        status.return_probe_permit();
        status.publish_state(BreakerState::HalfOpen, 0);
        assert!(!status.admits());
    }
}
