//! The in-process store: bounded maps with expiry, for a pod without Redis
//! (and the fallback limiter while Redis is down).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;

use super::{key, Store, StoreError, StoreFuture, WindowCount};

/// Entries kept per map at most; past it expired entries are swept, then
/// the oldest make room.
const CAPACITY: usize = 100_000;

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

/// When a usage record expires, and its attempts per endpoint.
type UsageRecord = (Instant, HashMap<String, u64>);

/// Revocations, windows and usage kept in this process only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    revoked: Mutex<HashMap<String, Instant>>,
    windows: Mutex<HashMap<String, HitLog>>,
    usage: Mutex<HashMap<String, UsageRecord>>,
    values: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    mutex
        .lock()
        .map_err(|_| StoreError("the in-process store is poisoned".to_string()))
}

/// Makes room in `map` when it is full: expired entries first, then the one
/// `expiry` says ends soonest.
fn make_room<V>(map: &mut HashMap<String, V>, now: Instant, expiry: impl Fn(&V) -> Instant) {
    if map.len() < CAPACITY {
        return;
    }
    map.retain(|_, value| expiry(value) > now);
    if map.len() >= CAPACITY {
        let soonest = map
            .iter()
            .min_by_key(|(_, v)| expiry(v))
            .map(|(k, _)| k.clone());
        if let Some(soonest) = soonest {
            warn!(
                "in-process store full ({CAPACITY} entries): dropping the entry that ends soonest"
            );
            map.remove(&soonest);
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn insert_revoked(&self, id: &str, ttl: Duration, now: Instant) -> Result<(), StoreError> {
        let mut revoked = lock(&self.revoked)?;
        make_room(&mut revoked, now, |until| *until);
        revoked.insert(key("revoked", id), now + ttl);
        Ok(())
    }

    fn revoked_at(&self, id: &str, now: Instant) -> Result<bool, StoreError> {
        let revoked = lock(&self.revoked)?;
        Ok(revoked
            .get(&key("revoked", id))
            .is_some_and(|until| *until > now))
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
        let mut windows = lock(&self.windows)?;
        make_room(&mut windows, now, |log| {
            log.buckets
                .back()
                .map_or(now, |(_, last, _)| *last + window)
        });
        let log = windows.entry(key.to_string()).or_default();
        while let Some(&(_, last, hits)) = log.buckets.front() {
            if now.duration_since(last) < window {
                break;
            }
            log.buckets.pop_front();
            log.total -= u64::from(hits);
        }
        let allowed = log.total < u64::from(limit);
        if allowed {
            let width = window / BUCKETS_PER_WINDOW;
            match log.buckets.back_mut() {
                Some((first, last, hits)) if now.duration_since(*first) < width => {
                    *last = now;
                    *hits += 1;
                }
                _ => log.buckets.push_back((now, now, 1)),
            }
            log.total += 1;
        }
        let reset_after = log.buckets.front().map_or(window, |(_, last, _)| {
            (*last + window).saturating_duration_since(now)
        });
        Ok(WindowCount {
            allowed,
            count: u32::try_from(log.total).unwrap_or(u32::MAX),
            reset_after,
        })
    }

    fn record_usage_at(
        &self,
        key: &str,
        endpoint: &str,
        window: Duration,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut usage = lock(&self.usage)?;
        make_room(&mut usage, now, |(until, _)| *until);
        let record = usage
            .entry(key.to_string())
            .or_insert_with(|| (now + window, HashMap::new()));
        if record.0 <= now {
            record.1.clear();
        }
        record.0 = now + window;
        *record.1.entry(endpoint.to_string()).or_default() += 1;
        Ok(())
    }

    fn usage_at(&self, key: &str, now: Instant) -> Result<Vec<(String, u64)>, StoreError> {
        let usage = lock(&self.usage)?;
        let mut counts: Vec<(String, u64)> = match usage.get(key) {
            Some((until, counts)) if *until > now => {
                counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
            }
            _ => Vec::new(),
        };
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

    fn record_usage<'a>(
        &'a self,
        key: &'a str,
        endpoint: &'a str,
        window: Duration,
    ) -> StoreFuture<'a, ()> {
        ready(self.record_usage_at(key, endpoint, window, Instant::now()))
    }

    fn usage<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, u64)>> {
        ready(self.usage_at(key, Instant::now()))
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let now = Instant::now();
        ready(lock(&self.values).map(|values| {
            values
                .get(key)
                .filter(|(until, _)| *until > now)
                .map(|(_, value)| value.clone())
        }))
    }

    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> StoreFuture<'a, ()> {
        let now = Instant::now();
        ready(lock(&self.values).map(|mut values| {
            make_room(&mut values, now, |(until, _)| *until);
            values.insert(key.to_string(), (now + ttl, value));
        }))
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
        store
            .set("k", b"v".to_vec(), Duration::from_millis(30))
            .await
            .expect("set");
        assert_eq!(store.get("k").await.expect("get"), Some(b"v".to_vec()));
        assert_eq!(store.get("other").await.expect("get"), None);
        let deadline = Instant::now() + secs(5);
        while store.get("k").await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "the value never expired");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
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
        let buckets = lock(&store.windows).expect("lock")["k"].buckets.len();
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
                .record_usage_at("u", "/login", secs(60), t0)
                .expect("record");
        }
        store
            .record_usage_at("u", "role", secs(60), t0)
            .expect("record");
        assert_eq!(
            store.usage_at("u", t0 + secs(1)).expect("read"),
            vec![("/login".to_string(), 3), ("role".to_string(), 1)]
        );
        assert!(store.usage_at("u", t0 + secs(61)).expect("read").is_empty());
    }
}
