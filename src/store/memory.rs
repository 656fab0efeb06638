//! The in-process store: maps bounded in entries (and the cached values in
//! bytes) whose entries expire, for a pod without Redis (and the fallback
//! limiter while Redis is down). A full map makes room from its least
//! recently used entry in constant time, and expired entries are swept a
//! few at a time on every call (see [`Bounded`]); making room logs nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;

use super::bounded::Bounded;
use super::{key, HitBatch, Store, StoreError, StoreFuture, WindowCount, WindowLoad};

/// Entries kept per map at most.
const CAPACITY: usize = 100_000;

/// What a cached value costs beyond its key and its bytes: the slot, the
/// index entry and the allocations' headers, roughly.
const VALUE_OVERHEAD: usize = 128;

/// A window's log coalesces its hits into buckets this fraction of the
/// window wide, so a key's memory is bounded whatever its limit (a high
/// limit counted in process while Redis is down held every admitted hit).
const BUCKETS_PER_WINDOW: u32 = 64;

/// The admitted hits of one key still within its window, oldest first.
#[derive(Debug, Default)]
struct HitLog {
    /// Each bucket's first and last hit and how many it holds. A bucket
    /// leaves the window with its last hit: never early, at most a
    /// bucket's width late.
    buckets: VecDeque<(Instant, Instant, u32)>,
    /// The hits in all buckets.
    total: u64,
}

impl HitLog {
    /// Drops the buckets whose last hit left the window by `now`.
    fn slide(&mut self, window: Duration, now: Instant) {
        while let Some(&(_, last, hits)) = self.buckets.front() {
            if now.duration_since(last) < window {
                break;
            }
            self.buckets.pop_front();
            self.total -= u64::from(hits);
        }
    }

    /// Adds `hits` at `now`, to the newest bucket while it is narrower
    /// than a bucket's width.
    fn add(&mut self, hits: u32, window: Duration, now: Instant) {
        if hits == 0 {
            return;
        }
        let width = window / BUCKETS_PER_WINDOW;
        match self.buckets.back_mut() {
            Some((first, last, held)) if now.duration_since(*first) < width => {
                *last = now;
                *held += hits;
            }
            _ => self.buckets.push_back((now, now, hits)),
        }
        self.total += u64::from(hits);
    }

    fn count(&self) -> u32 {
        u32::try_from(self.total).unwrap_or(u32::MAX)
    }

    /// Until the oldest bucket leaves the window.
    fn reset_after(&self, window: Duration, now: Instant) -> Duration {
        self.buckets.front().map_or(window, |(_, last, _)| {
            (*last + window).saturating_duration_since(now)
        })
    }

    /// Until fewer than `limit` hits are left in the window.
    fn full_for(&self, limit: u32, window: Duration, now: Instant) -> Duration {
        let mut left = self.total;
        for (_, last, hits) in &self.buckets {
            if left < u64::from(limit) {
                break;
            }
            left -= u64::from(*hits);
            if left < u64::from(limit) {
                return (*last + window).saturating_duration_since(now);
            }
        }
        Duration::ZERO
    }
}

/// Revocations, windows and usage kept in this process only, each map
/// bounded to 100,000 entries; cached values also to the bytes the
/// cache sets with [`Store::bound_values`] (none are kept before it does).
pub struct MemoryStore {
    revoked: Mutex<Bounded<()>>,
    windows: Mutex<Bounded<HitLog>>,
    usage: Mutex<Bounded<HashMap<String, u64>>>,
    values: Mutex<Bounded<Bytes>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            revoked: Mutex::new(Bounded::new(CAPACITY, usize::MAX)),
            windows: Mutex::new(Bounded::new(CAPACITY, usize::MAX)),
            usage: Mutex::new(Bounded::new(CAPACITY, usize::MAX)),
            values: Mutex::new(Bounded::new(CAPACITY, 0)),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    mutex
        .lock()
        .map_err(|_| StoreError("the in-process store is poisoned".to_string()))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn insert_revoked(&self, id: &str, ttl: Duration, now: Instant) -> Result<(), StoreError> {
        lock(&self.revoked)?.insert(&key("revoked", id), (), now + ttl, 1, now);
        Ok(())
    }

    fn revoked_at(&self, id: &str, now: Instant) -> Result<bool, StoreError> {
        Ok(lock(&self.revoked)?.get(&key("revoked", id), now).is_some())
    }

    /// Sliding log of the admitted requests within the window, in buckets
    /// (see [`HitLog`]).
    fn hit_at(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        now: Instant,
    ) -> Result<WindowCount, StoreError> {
        self.with_log(key, window, now, |log| {
            let allowed = log.total < u64::from(limit);
            if allowed {
                log.add(1, window, now);
            }
            WindowCount {
                allowed,
                count: log.count(),
                reset_after: log.reset_after(window, now),
            }
        })
    }

    /// Adds a batch of hits already admitted, and its attempts.
    fn add_hits_at(&self, batch: &HitBatch<'_>, now: Instant) -> Result<WindowLoad, StoreError> {
        let window = batch.window;
        let load = self.with_log(batch.window_key, window, now, |log| {
            log.add(batch.hits, window, now);
            WindowLoad {
                count: log.count(),
                full_for: log.full_for(batch.limit, window, now),
                reset_after: log.reset_after(window, now),
            }
        })?;
        for (endpoint, attempts) in batch.attempts {
            self.record_usage_at(batch.usage_key, endpoint, *attempts, window, now)?;
        }
        Ok(load)
    }

    /// Runs `change` on the log of `key`, slid to `now`, and keeps the log
    /// as long as its newest hit is in the window.
    fn with_log<T>(
        &self,
        key: &str,
        window: Duration,
        now: Instant,
        change: impl FnOnce(&mut HitLog) -> T,
    ) -> Result<T, StoreError> {
        let mut windows = lock(&self.windows)?;
        let Some(item) = windows.entry(key, now, 1, HitLog::default) else {
            return Err(StoreError(
                "the in-process windows keep nothing".to_string(),
            ));
        };
        let log = item.value;
        log.slide(window, now);
        let result = change(log);
        *item.until = log
            .buckets
            .back()
            .map_or(now, |(_, last, _)| *last + window);
        Ok(result)
    }

    fn record_usage_at(
        &self,
        key: &str,
        endpoint: &str,
        attempts: u32,
        window: Duration,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut usage = lock(&self.usage)?;
        if let Some(record) = usage.entry(key, now, 1, HashMap::new) {
            *record.value.entry(endpoint.to_string()).or_default() += u64::from(attempts);
            *record.until = now + window;
        }
        Ok(())
    }

    fn usage_at(&self, key: &str, now: Instant) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts: Vec<(String, u64)> = lock(&self.usage)?
            .get(key, now)
            .map(|counts| counts.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        counts.sort();
        Ok(counts)
    }
}

fn ready<'a, T: 'a>(result: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(async move { result })
}

impl Store for MemoryStore {
    fn revoke<'a>(&'a self, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()> {
        ready(self.insert_revoked(id, ttl, Instant::now()))
    }

    fn is_revoked<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        ready(self.revoked_at(id, Instant::now()))
    }

    fn hit<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
        window: Duration,
    ) -> StoreFuture<'a, WindowCount> {
        ready(self.hit_at(key, limit, window, Instant::now()))
    }

    fn add_hits<'a>(&'a self, batch: &'a HitBatch<'a>) -> StoreFuture<'a, WindowLoad> {
        ready(self.add_hits_at(batch, Instant::now()))
    }

    fn record_usage<'a>(
        &'a self,
        key: &'a str,
        endpoint: &'a str,
        window: Duration,
    ) -> StoreFuture<'a, ()> {
        ready(self.record_usage_at(key, endpoint, 1, window, Instant::now()))
    }

    fn usage<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, u64)>> {
        ready(self.usage_at(key, Instant::now()))
    }

    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Option<Bytes>> {
        let now = Instant::now();
        ready(lock(&self.values).map(|mut values| {
            values
                .get(key, now)
                .filter(|value| value.len() <= max_len)
                .cloned()
        }))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        let now = Instant::now();
        let bytes = key.len() + value.len() + VALUE_OVERHEAD;
        ready(lock(&self.values).map(|mut values| values.insert(key, value, now + ttl, bytes, now)))
    }

    fn bound_values(&self, max_bytes: usize) {
        if let Ok(mut values) = self.values.lock() {
            values.set_max_bytes(max_bytes);
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_revocation_lasts_its_ttl() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.insert_revoked("jti-1", secs(60), t0).expect("insert");
        assert!(store.revoked_at("jti-1", t0 + secs(59)).expect("read"));
        assert!(!store.revoked_at("jti-1", t0 + secs(60)).expect("read"));
        assert!(!store.revoked_at("jti-2", t0).expect("read"));
    }

    #[actix_rt::test]
    async fn values_expire_with_their_ttl() {
        let store = MemoryStore::new();
        store.bound_values(1 << 20);
        let value = Bytes::from_static(b"v");
        store
            .set("k", value.clone(), Duration::from_millis(30))
            .await
            .expect("set");
        assert_eq!(store.get("k", 1).await.expect("get"), Some(value));
        assert_eq!(store.get("k", 0).await.expect("get"), None, "over max_len");
        assert_eq!(store.get("other", 1).await.expect("get"), None);
        let deadline = Instant::now() + secs(5);
        while store.get("k", 1).await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "the value never expired");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[actix_rt::test]
    async fn values_are_bounded_in_bytes_and_shared_not_copied() {
        let store = MemoryStore::new();
        let value = Bytes::from(vec![b'x'; 1000]);
        store
            .set("none", value.clone(), secs(60))
            .await
            .expect("set");
        assert_eq!(
            store.get("none", 1000).await.expect("get"),
            None,
            "nothing is kept before the cache bounds the values"
        );
        store.bound_values(10 * (1000 + VALUE_OVERHEAD + 2));
        for n in 0..100 {
            store
                .set(&format!("k{n}"), value.clone(), secs(60))
                .await
                .expect("set");
        }
        let kept = lock(&store.values).expect("lock").bytes();
        assert!(
            kept <= 10 * (1000 + VALUE_OVERHEAD + 2),
            "{kept} bytes kept"
        );
        let newest = store.get("k99", 1000).await.expect("get").expect("kept");
        assert_eq!(newest.as_ptr(), value.as_ptr(), "the same bytes, shared");
        assert_eq!(store.get("k0", 1000).await.expect("get"), None, "made room");
    }

    /// Counts the warnings logged by this module.
    struct WarningCounter(std::sync::atomic::AtomicUsize);

    impl log::Log for WarningCounter {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.target().starts_with("outrigger::store")
        }

        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) && record.level() <= log::Level::Warn {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }

        fn flush(&self) {}
    }

    #[test]
    fn making_room_in_a_full_map_logs_nothing() {
        static WARNINGS: WarningCounter = WarningCounter(std::sync::atomic::AtomicUsize::new(0));
        log::set_logger(&WARNINGS).expect("no other logger in the unit tests");
        log::set_max_level(log::LevelFilter::Warn);
        let store = MemoryStore::new();
        let t0 = Instant::now();
        for n in 0..CAPACITY + 1_000 {
            store
                .insert_revoked(&n.to_string(), secs(60), t0)
                .expect("insert");
        }
        assert_eq!(
            WARNINGS.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "warnings logged while making room"
        );
        assert_eq!(lock(&store.revoked).expect("lock").len(), CAPACITY);
        assert!(store
            .revoked_at(&(CAPACITY + 999).to_string(), t0)
            .expect("read"));
        assert!(
            !store.revoked_at("0", t0).expect("read"),
            "the oldest made room"
        );
    }

    #[test]
    fn a_window_admits_its_limit_then_slides() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        for n in 1..=3 {
            let count = store.hit_at("k", 3, secs(60), t0 + secs(n)).expect("hit");
            assert_eq!((count.allowed, count.count), (true, n as u32));
        }
        let refused = store.hit_at("k", 3, secs(60), t0 + secs(10)).expect("hit");
        assert_eq!((refused.allowed, refused.count), (false, 3));
        assert_eq!(
            refused.reset_after,
            secs(51),
            "the first hit leaves at 61 s"
        );
        let later = store.hit_at("k", 3, secs(60), t0 + secs(61)).expect("hit");
        assert!(later.allowed, "the first hit has left the window");
    }

    #[test]
    fn a_high_limit_keeps_a_bounded_log_and_never_admits_past_it() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        let window = secs(60);
        // 100,000 hits spread over the window: a hit every 0.6 ms.
        for n in 0..100_000u64 {
            let at = t0 + Duration::from_micros(n * 600);
            let count = store.hit_at("k", 100_000, window, at).expect("hit");
            assert!(count.allowed, "hit {n}");
        }
        let last = t0 + Duration::from_micros(99_999 * 600);
        let buckets = lock(&store.windows)
            .expect("lock")
            .get("k", last)
            .map_or(0, |log| log.buckets.len());
        assert!(buckets <= 65, "{buckets} buckets for one key");
        let full = store.hit_at(
            "k",
            100_000,
            window,
            t0 + secs(60) - Duration::from_millis(1),
        );
        assert!(
            !full.expect("hit").allowed,
            "the limit holds within the window"
        );
        let later = store
            .hit_at("k", 100_000, window, t0 + secs(121))
            .expect("hit");
        assert_eq!(
            (later.allowed, later.count),
            (true, 1),
            "every old hit left"
        );
    }

    #[test]
    fn usage_counts_attempts_per_endpoint_for_the_window() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            store
                .record_usage_at("u", "/login", 1, secs(60), t0)
                .expect("record");
        }
        store
            .record_usage_at("u", "role", 1, secs(60), t0)
            .expect("record");
        assert_eq!(
            store.usage_at("u", t0 + secs(1)).expect("read"),
            vec![("/login".to_string(), 3), ("role".to_string(), 1)]
        );
        assert!(store.usage_at("u", t0 + secs(61)).expect("read").is_empty());
    }

    #[test]
    fn a_batch_adds_every_hit_and_says_how_long_the_window_stays_full() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        let attempts = [(Box::from("/search"), 9)];
        let batch = |hits| HitBatch {
            window_key: "k",
            limit: 5,
            window: secs(60),
            hits,
            usage_key: "u",
            attempts: &attempts,
        };
        let first = store.add_hits_at(&batch(3), t0).expect("add");
        assert_eq!((first.count, first.full_for), (3, Duration::ZERO));
        let over = store.add_hits_at(&batch(4), t0 + secs(10)).expect("add");
        assert_eq!(
            over.count, 7,
            "hits past the limit are kept: they were served"
        );
        assert_eq!(
            (over.full_for, over.reset_after),
            (secs(50), secs(50)),
            "below the limit once the first batch leaves"
        );
        let asked = store.add_hits_at(&batch(0), t0 + secs(61)).expect("ask");
        assert_eq!((asked.count, asked.full_for), (4, Duration::ZERO));
        assert_eq!(
            store.usage_at("u", t0 + secs(61)).expect("read"),
            vec![("/search".to_string(), 27)]
        );
    }
}
