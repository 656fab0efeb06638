//! How far a sidecar's stop has got, as its proxy listeners' workers see
//! it: from the stop signal the listeners drain (every answer says
//! `Connection: close`, so keep-alive clients reconnect elsewhere while the
//! listener still serves); then they close, and a request still unanswered
//! once `lifecycle.shutdown_grace` has run out is cut.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The stop of one sidecar, shared by both proxy listeners.
pub struct Stopping {
    grace: Duration,
    draining: AtomicBool,
    /// Reference point of `cut_from`.
    epoch: Instant,
    /// Nanoseconds after `epoch` from which a request dropped unanswered
    /// was cut by the stop; `u64::MAX` until the listeners close.
    cut_from: AtomicU64,
}

impl Stopping {
    /// A sidecar not stopping yet, whose in-flight requests will get
    /// `grace` to finish once its listeners close.
    pub fn new(grace: Duration) -> Stopping {
        Stopping {
            grace,
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            cut_from: AtomicU64::new(u64::MAX),
        }
    }

    /// `lifecycle.shutdown_grace`.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The stop began: from now on every answer closes its connection.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether answers close their connections (read once per answer).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The listeners close now: a request dropped unanswered after the
    /// grace from now was cut by the stop. Call it before asking the
    /// listeners to stop, so their own forced stop (no sooner than the
    /// grace after they were asked) always comes after this point.
    pub fn close(&self) {
        self.cut_from_now(self.grace);
    }

    /// The listeners stop at once (a second signal): whatever they drop
    /// from now on is cut.
    pub fn hurry(&self) {
        self.cut_from_now(Duration::ZERO);
    }

    fn cut_from_now(&self, after: Duration) {
        let at = self.epoch.elapsed().saturating_add(after);
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        self.cut_from.fetch_min(nanos, Ordering::Relaxed);
    }

    /// Whether a request dropped unanswered now was cut by the stop, rather
    /// than left by its client (read only when a request is dropped).
    pub fn cutting(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now >= self.cut_from.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_count_as_cuts_only_once_the_grace_after_the_close_has_run_out() {
        let stopping = Stopping::new(Duration::from_secs(3600));
        assert!(!stopping.draining() && !stopping.cutting());
        stopping.drain();
        stopping.close();
        assert!(stopping.draining());
        assert!(!stopping.cutting(), "the grace has an hour to run");
        stopping.hurry();
        assert!(stopping.cutting(), "a hurried stop cuts at once");
    }
}
