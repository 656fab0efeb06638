//! Approximate limits (`mode: approximate`): each key is counted in this
//! process and its admitted hits are sent to the shared store in the
//! background, in one call per key every `sync_interval`, or sooner once
//! they reach a hundredth of the limit. The answer from the store (the
//! window's count from every sidecar) corrects the local count; a key the
//! store says is full is refused here, without asking the store, until
//! the window has room again. No request waits for the store.
//!
//! A sidecar admits a hit when what it knows of the window (the count at
//! its last sync plus its own hits since) is under the limit, so the
//! excess over the limit is what the other sidecars admitted that it did
//! not know of yet: the bound is derived in docs/guide/inbound.md.
//!
//! Memory is bounded: at most [`TRACKED_KEYS`] keys, the least recently
//! used making room, and a key leaves a window after its last hit.

use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use log::warn;
use prometheus::{Histogram, HistogramVec};
use tokio::sync::Notify;

use crate::inbound::gate::store_failed;
use crate::logging::summary;
use crate::store::{key, Bounded, HitBatch, Store, WindowCount};

/// Keys tracked at most; the least recently used makes room (its hits not
/// yet sent are lost, a few at most).
const TRACKED_KEYS: usize = 100_000;

/// A key's hits are sent once they reach this fraction of its limit,
/// before `sync_interval` ends: a sidecar holds about 1% of a limit
/// unknown to the others, plus what it admits while a sync is on its way.
const SYNC_SHARE: u32 = 100;

/// Distinct endpoints a key's usage record gathers between two syncs;
/// attempts on more are left out of the record (never out of the limit).
const ENDPOINTS_PER_SYNC: usize = 16;

/// Keys synced at once.
const SYNCS_IN_FLIGHT: usize = 16;

/// What a hit came to.
pub(super) enum Tally {
    /// Counted here: the verdict.
    Counted(WindowCount),
    /// The store did not take this key's last sync: counted the way a
    /// store error says (`on_redis_error`), until a retry succeeds.
    Offline,
}

/// The local counts of approximate limits and their background sync.
pub(super) struct Approximate {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    /// Whether the sync task runs; it clears it when it ends, however.
    syncing: Arc<AtomicBool>,
}

/// Held by the sync task: clears `syncing` when the task ends or is
/// dropped with the worker it ran on, so the next hit starts another.
struct Syncing(Arc<AtomicBool>);

impl Drop for Syncing {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What requests and the sync task share.
struct Shared {
    keys: Mutex<Bounded<Tracked>>,
    /// Keys with something to send, in the order they got it.
    due: Mutex<Vec<Due>>,
    /// Rung when a key's unsent hits reach its share of the limit.
    wake: Arc<Notify>,
    interval: Duration,
    /// Syncs taken (`ok`) and failed (`error`), timed.
    synced: Histogram,
    failed: Histogram,
}

/// One window as this process knows it.
struct Tracked {
    /// The window's count at the last sync, every sidecar's hits included.
    known: u32,
    /// Hits admitted here the store has not counted yet (`sending` of
    /// them are on their way).
    unsent: u32,
    sending: u32,
    /// Attempts per endpoint since the last sync, for the usage record.
    attempts: Vec<(Box<str>, u32)>,
    /// Until when the store says the window is full: refused here.
    full_until: Option<Instant>,
    /// When the oldest hit leaves, as of the last sync.
    reset_at: Instant,
    /// In the due list.
    queued: bool,
    /// The last sync failed.
    offline: bool,
}

/// A key to sync, and how.
struct Due {
    window_key: String,
    usage_key: String,
    limit: u32,
    window: Duration,
    since: Instant,
}

impl Approximate {
    /// Local counts synced with `store` at least every `interval`, each
    /// sync timed in `syncs` by result; syncing starts with the first hit,
    /// on the worker taking it (and again on another if that one stops).
    pub(super) fn new(store: Arc<dyn Store>, interval: Duration, syncs: &HistogramVec) -> Self {
        Approximate {
            shared: Arc::new(Shared {
                keys: Mutex::new(Bounded::new(TRACKED_KEYS, usize::MAX)),
                due: Mutex::new(Vec::new()),
                wake: Arc::new(Notify::new()),
                interval,
                synced: syncs.with_label_values(&["ok"]),
                failed: syncs.with_label_values(&["error"]),
            }),
            store,
            syncing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts one attempt on `endpoint` against the window `window_key` of
    /// `subject`, from what this process knows: never waits for the store.
    pub(super) fn hit(
        &self,
        window_key: &str,
        subject: &str,
        endpoint: &str,
        limit: u32,
        window: Duration,
    ) -> Tally {
        if !self.syncing.load(Ordering::Acquire)
            && self
                .syncing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let running = Syncing(Arc::clone(&self.syncing));
            let shared = Arc::downgrade(&self.shared);
            let wake = Arc::clone(&self.shared.wake);
            let store = Arc::clone(&self.store);
            actix_rt::spawn(async move {
                let _running = running;
                sync_forever(shared, wake, store).await;
            });
        }
        let now = Instant::now();
        let (tally, queue, wake) = {
            let Ok(mut keys) = self.shared.keys.lock() else {
                return Tally::Offline;
            };
            let Some(item) = keys.entry(window_key, now, 1, || Tracked::new(now + window)) else {
                return Tally::Offline;
            };
            *item.until = now + window;
            let tracked = item.value;
            if tracked.offline {
                // Retried by the next sync, while requests keep coming;
                // the caller counts this one, and its attempt, in process.
                let queue = !mem::replace(&mut tracked.queued, true);
                (Tally::Offline, queue, false)
            } else {
                tracked.note_attempt(endpoint);
                let counted = tracked.admit(limit, now);
                let queue = counted.allowed && !mem::replace(&mut tracked.queued, true);
                let wake = counted.allowed && tracked.unsent - tracked.sending >= sync_share(limit);
                (Tally::Counted(counted), queue, wake)
            }
        };
        if queue {
            let due = Due {
                window_key: window_key.to_string(),
                usage_key: key("usage", subject),
                limit,
                window,
                since: now,
            };
            if let Ok(mut list) = self.shared.due.lock() {
                list.push(due);
            }
        }
        if wake {
            self.shared.wake.notify_one();
        }
        tally
    }
}

/// Hits a key may hold unsent before its sync is due at once.
fn sync_share(limit: u32) -> u32 {
    (limit / SYNC_SHARE).max(1)
}

impl Tracked {
    fn new(reset_at: Instant) -> Self {
        Tracked {
            known: 0,
            unsent: 0,
            sending: 0,
            attempts: Vec::new(),
            full_until: None,
            reset_at,
            queued: false,
            offline: false,
        }
    }

    /// Admits a hit if the window, as known here, has room.
    fn admit(&mut self, limit: u32, now: Instant) -> WindowCount {
        if let Some(until) = self.full_until {
            if now < until {
                return WindowCount {
                    allowed: false,
                    count: self.known.saturating_add(self.unsent),
                    reset_after: until - now,
                };
            }
            // The store said when the window has room again: one place,
            // until the next sync says how many.
            self.full_until = None;
            self.known = self.known.min(limit.saturating_sub(1));
        }
        let allowed = self.known.saturating_add(self.unsent) < limit;
        if allowed {
            self.unsent += 1;
        }
        WindowCount {
            allowed,
            count: self.known.saturating_add(self.unsent),
            reset_after: self.reset_at.saturating_duration_since(now),
        }
    }

    fn note_attempt(&mut self, endpoint: &str) {
        if let Some((_, attempts)) = self.attempts.iter_mut().find(|(e, _)| &**e == endpoint) {
            *attempts += 1;
        } else if self.attempts.len() < ENDPOINTS_PER_SYNC {
            self.attempts.push((Box::from(endpoint), 1));
        }
    }
}

/// Syncs due keys until the limiter is gone: every `interval` for the keys
/// that waited that long, and at once for a key `wake` rings for.
async fn sync_forever(shared: Weak<Shared>, wake: Arc<Notify>, store: Arc<dyn Store>) {
    loop {
        let Some(next) = shared.upgrade().map(|shared| shared.next_sync()) else {
            return;
        };
        let _ = tokio::time::timeout_at(next.into(), wake.notified()).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let ready = shared.take_ready(Instant::now());
        stream::iter(ready)
            .for_each_concurrent(SYNCS_IN_FLIGHT, |due| shared.sync(due, store.as_ref()))
            .await;
    }
}

impl Shared {
    /// When the longest-waiting key is due.
    fn next_sync(&self) -> Instant {
        let oldest = self
            .due
            .lock()
            .ok()
            .and_then(|due| due.iter().map(|d| d.since).min());
        oldest.unwrap_or_else(Instant::now) + self.interval
    }

    /// The keys to sync now: those that waited `interval`, and those whose
    /// unsent hits reached their share; a key still being sent waits.
    fn take_ready(&self, now: Instant) -> Vec<Due> {
        let Ok(mut list) = self.due.lock() else {
            return Vec::new();
        };
        let waiting = mem::take(&mut *list);
        drop(list);
        let mut ready = Vec::new();
        let mut wait = Vec::new();
        {
            let Ok(mut keys) = self.keys.lock() else {
                return Vec::new();
            };
            for due in waiting {
                // A key gone from the map has nothing left to send.
                let Some(item) = keys.get_mut(&due.window_key, now) else {
                    continue;
                };
                let tracked = item.value;
                if tracked.sending == 0
                    && (now >= due.since + self.interval || tracked.unsent >= sync_share(due.limit))
                {
                    ready.push(due);
                } else {
                    wait.push(due);
                }
            }
        }
        if let Ok(mut list) = self.due.lock() {
            list.extend(wait);
        }
        ready
    }

    /// Sends a key's unsent hits and attempts, and takes the store's count.
    async fn sync(&self, due: Due, store: &dyn Store) {
        let (hits, attempts) = {
            let Ok(mut keys) = self.keys.lock() else {
                return;
            };
            let Some(item) = keys.get_mut(&due.window_key, Instant::now()) else {
                return;
            };
            let tracked = item.value;
            tracked.queued = false;
            tracked.sending = tracked.unsent;
            (tracked.sending, mem::take(&mut tracked.attempts))
        };
        let batch = HitBatch {
            window_key: &due.window_key,
            limit: due.limit,
            window: due.window,
            hits,
            usage_key: &due.usage_key,
            attempts: &attempts,
        };
        let started = Instant::now();
        let result = store.add_hits(&batch).await;
        let now = Instant::now();
        let took = now.duration_since(started).as_secs_f64();
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        let Some(item) = keys.get_mut(&due.window_key, now) else {
            return;
        };
        let tracked = item.value;
        tracked.unsent -= tracked.sending;
        tracked.sending = 0;
        match result {
            Ok(load) => {
                self.synced.observe(took);
                tracked.offline = false;
                tracked.known = load.count;
                tracked.reset_at = now + load.reset_after;
                tracked.full_until = (!load.full_for.is_zero()).then(|| now + load.full_for);
            }
            Err(err) => {
                self.failed.observe(took);
                tracked.offline = true;
                if summary::first(store_failed("rate_limit_sync_failed")) {
                    warn!("approximate rate limits counted as on_redis_error says: {err}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_admitted_to_its_limit_then_refused_until_the_store_says_room() {
        let t0 = Instant::now();
        let mut tracked = Tracked::new(t0);
        let admitted = (0..5).filter(|_| tracked.admit(3, t0).allowed).count();
        assert_eq!((admitted, tracked.unsent), (3, 3));
        tracked.unsent = 0;
        tracked.known = 7;
        tracked.full_until = Some(t0 + Duration::from_secs(10));
        let refused = tracked.admit(3, t0 + Duration::from_secs(1));
        assert!(!refused.allowed);
        assert_eq!(refused.reset_after, Duration::from_secs(9));
        let after = t0 + Duration::from_secs(10);
        assert!(tracked.admit(3, after).allowed, "one place opened");
        assert!(
            !tracked.admit(3, after).allowed,
            "and only one until the next sync"
        );
    }

    #[test]
    fn attempts_gather_per_endpoint_and_their_count_is_bounded() {
        let mut tracked = Tracked::new(Instant::now());
        for n in 0..40 {
            tracked.note_attempt(&format!("/e{}", n % 20));
        }
        assert_eq!(tracked.attempts.len(), ENDPOINTS_PER_SYNC);
        assert_eq!(tracked.attempts[0], (Box::from("/e0"), 2));
    }

    #[test]
    fn syncing_starts_again_when_the_worker_it_ran_on_stops() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        let opts = prometheus::HistogramOpts::new("syncs", "syncs");
        let syncs = HistogramVec::new(opts, &["result"]).expect("a histogram");
        let approximate = Approximate::new(Arc::clone(&store), Duration::from_millis(10), &syncs);
        let hit = || approximate.hit("k", "user:ana", "/search", 100, Duration::from_secs(60));
        actix_rt::System::new().block_on(async {
            assert!(matches!(hit(), Tally::Counted(c) if c.allowed));
        });
        // That worker's runtime is gone, and its sync task with it.
        assert!(!approximate.syncing.load(Ordering::Acquire));
        actix_rt::System::new().block_on(async {
            assert!(matches!(hit(), Tally::Counted(c) if c.allowed));
            let deadline = Instant::now() + Duration::from_secs(5);
            while syncs.with_label_values(&["ok"]).get_sample_count() == 0 {
                assert!(Instant::now() < deadline, "the hits are sent");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let asked = HitBatch {
                window_key: "k",
                limit: 100,
                window: Duration::from_secs(60),
                hits: 0,
                usage_key: "u",
                attempts: &[],
            };
            let load = store.add_hits(&asked).await.expect("the in-process store");
            assert_eq!(load.count, 2, "both hits, in one sync");
        });
    }

    #[test]
    fn a_key_is_sent_after_a_hundredth_of_its_limit() {
        assert_eq!(sync_share(5), 1);
        assert_eq!(sync_share(1000), 10);
    }
}
