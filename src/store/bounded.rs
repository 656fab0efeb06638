//! A map bounded in entries and in bytes whose entries expire: the least
//! recently used entry makes room (O(1)), and every call sweeps a few slots
//! for expired entries, so expired memory is let go without a whole scan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The end of the recency list.
const NIL: usize = usize::MAX;

/// Slots each call looks at for expired entries: a whole pass over `n`
/// slots takes `n / SWEEP_STEP` calls.
const SWEEP_STEP: usize = 8;

/// One entry, linked into the recency list.
struct Slot<V> {
    key: Arc<str>,
    value: V,
    until: Instant,
    bytes: usize,
    /// The next more recently used slot.
    newer: usize,
    /// The next less recently used slot.
    older: usize,
}

/// Entries by key, at most `max_entries` of them and `max_bytes` bytes as
/// their callers weigh them.
pub struct Bounded<V> {
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Option<Slot<V>>>,
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    /// The next slot the expiry sweep looks at.
    hand: usize,
}

/// A live entry, to change in place.
pub struct Item<'a, V> {
    /// Its value.
    pub value: &'a mut V,
    /// When it expires.
    pub until: &'a mut Instant,
}

impl<V> Bounded<V> {
    /// An empty map for at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Bounded {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
            bytes: 0,
            max_entries,
            max_bytes,
            hand: 0,
        }
    }

    /// Entries kept now (expired ones not yet swept included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// The bytes the kept entries weigh.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Changes the byte bound, dropping the least recently used entries
    /// until the map is within it.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        while self.bytes > self.max_bytes && self.oldest != NIL {
            self.remove_slot(self.oldest);
        }
    }

    /// The value under `key` unless it expired by `now`; it becomes the most
    /// recently used.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<&V> {
        let slot = self.find(key, now)?;
        self.slots[slot].as_ref().map(|slot| &slot.value)
    }

    /// The live entry under `key`, to change in place; it becomes the most
    /// recently used.
    pub fn get_mut(&mut self, key: &str, now: Instant) -> Option<Item<'_, V>> {
        let slot = self.find(key, now)?;
        self.slots[slot].as_mut().map(|slot| Item {
            value: &mut slot.value,
            until: &mut slot.until,
        })
    }

    /// The live entry under `key`, or a new one made by `make` weighing
    /// `bytes` and expiring at `now` until the caller sets `until`; `None`
    /// when a new one could never fit.
    pub fn entry(
        &mut self,
        key: &str,
        now: Instant,
        bytes: usize,
        make: impl FnOnce() -> V,
    ) -> Option<Item<'_, V>> {
        let slot = match self.find(key, now) {
            Some(slot) => slot,
            None => self.put(key, make(), now, bytes)?,
        };
        self.slots[slot].as_mut().map(|slot| Item {
            value: &mut slot.value,
            until: &mut slot.until,
        })
    }

    /// Keeps `value` under `key` until `until`, in place of any value there,
    /// making room from the least recently used; an entry heavier than the
    /// whole bound is not kept (and the old value is gone).
    pub fn insert(&mut self, key: &str, value: V, until: Instant, bytes: usize, now: Instant) {
        if let Some(&slot) = self.index.get(key) {
            self.remove_slot(slot);
        }
        if let Some(slot) = self.put(key, value, now, bytes) {
            if let Some(slot) = self.slots[slot].as_mut() {
                slot.until = until;
            }
        }
    }

    /// The slot of the live entry under `key`, made the most recently used;
    /// an expired one is removed. Sweeps a few slots first.
    fn find(&mut self, key: &str, now: Instant) -> Option<usize> {
        self.sweep(now);
        let slot = *self.index.get(key)?;
        if self.slots[slot].as_ref().is_some_and(|s| s.until <= now) {
            self.remove_slot(slot);
            return None;
        }
        self.unlink(slot);
        self.link_newest(slot);
        Some(slot)
    }

    /// Adds a new entry (its key is not in the map) as the most recently
    /// used, expiring at `now`, after making room.
    fn put(&mut self, key: &str, value: V, now: Instant, bytes: usize) -> Option<usize> {
        if bytes > self.max_bytes || self.max_entries == 0 {
            return None;
        }
        self.sweep(now);
        while self.oldest != NIL
            && (self.index.len() >= self.max_entries || self.bytes + bytes > self.max_bytes)
        {
            self.remove_slot(self.oldest);
        }
        let key: Arc<str> = Arc::from(key);
        let slot = Slot {
            key: Arc::clone(&key),
            value,
            until: now,
            bytes,
            newer: NIL,
            older: NIL,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at] = Some(slot);
                at
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, at);
        self.bytes += bytes;
        self.link_newest(at);
        Some(at)
    }

    /// Looks at the next [`SWEEP_STEP`] slots and removes the expired.
    fn sweep(&mut self, now: Instant) {
        for _ in 0..SWEEP_STEP.min(self.slots.len()) {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            if self.slots[self.hand]
                .as_ref()
                .is_some_and(|slot| slot.until <= now)
            {
                self.remove_slot(self.hand);
            }
            self.hand += 1;
        }
    }

    fn remove_slot(&mut self, at: usize) {
        self.unlink(at);
        if let Some(slot) = self.slots[at].take() {
            self.index.remove(&slot.key);
            self.bytes -= slot.bytes;
            self.free.push(at);
        }
    }

    fn unlink(&mut self, at: usize) {
        let Some(slot) = self.slots[at].as_mut() else {
            return;
        };
        let (newer, older) = (slot.newer, slot.older);
        slot.newer = NIL;
        slot.older = NIL;
        match self.slots.get_mut(newer).and_then(Option::as_mut) {
            Some(newer) => newer.older = older,
            None => self.newest = older,
        }
        match self.slots.get_mut(older).and_then(Option::as_mut) {
            Some(older) => older.newer = newer,
            None => self.oldest = newer,
        }
    }

    fn link_newest(&mut self, at: usize) {
        let previous = self.newest;
        if let Some(slot) = self.slots[at].as_mut() {
            slot.older = previous;
            slot.newer = NIL;
        }
        match self.slots.get_mut(previous).and_then(Option::as_mut) {
            Some(previous) => previous.newer = at,
            None => self.oldest = at,
        }
        self.newest = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn keys<V>(map: &Bounded<V>) -> Vec<String> {
        let mut keys: Vec<String> = map.index.keys().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_byte_bound_holds_and_the_least_recently_used_make_room() {
        let t0 = Instant::now();
        let mut map = Bounded::new(100, 300);
        for key in ["a", "b", "c"] {
            map.insert(key, key.to_string(), t0 + secs(60), 100, t0);
        }
        assert_eq!(map.bytes(), 300);
        // `a` is read, so `b` is now the least recently used.
        assert!(map.get("a", t0).is_some());
        map.insert("d", "d".to_string(), t0 + secs(60), 100, t0);
        assert_eq!(keys(&map), ["a", "c", "d"]);
        // A heavy entry makes room from the oldest until it fits.
        map.insert("e", "e".to_string(), t0 + secs(60), 250, t0);
        assert_eq!(keys(&map), ["e"]);
        assert_eq!(map.bytes(), 250);
        // Heavier than the whole bound: not kept, and nothing else dropped.
        map.insert("f", "f".to_string(), t0 + secs(60), 301, t0);
        assert_eq!(keys(&map), ["e"]);
        map.set_max_bytes(200);
        assert_eq!(map.len(), 0, "a lower bound applies at once");
    }

    #[test]
    fn eviction_follows_recency_of_use_not_of_insertion() {
        let t0 = Instant::now();
        let mut map = Bounded::new(3, usize::MAX);
        for key in ["a", "b", "c"] {
            map.insert(key, (), t0 + secs(60), 1, t0);
        }
        assert!(map.get("b", t0).is_some());
        assert!(map.get("a", t0).is_some());
        // Least recently used first: c, then b, then a.
        map.insert("d", (), t0 + secs(60), 1, t0);
        assert_eq!(keys(&map), ["a", "b", "d"]);
        map.insert("e", (), t0 + secs(60), 1, t0);
        assert_eq!(keys(&map), ["a", "d", "e"]);
        // Replacing a value makes it the most recent too.
        map.insert("a", (), t0 + secs(60), 1, t0);
        map.insert("f", (), t0 + secs(60), 1, t0);
        assert_eq!(keys(&map), ["a", "e", "f"]);
    }

    #[test]
    fn expired_entries_are_swept_a_few_slots_per_call_without_a_full_map() {
        let t0 = Instant::now();
        let mut map = Bounded::new(100_000, usize::MAX);
        for n in 0..1_000 {
            map.insert(&format!("short-{n}"), n, t0 + secs(1), 10, t0);
        }
        map.insert("long", 0, t0 + secs(60), 10, t0);
        let later = t0 + secs(2);
        // One call looks at SWEEP_STEP slots, not all of them.
        assert!(map.get("long", later).is_some());
        assert!((1_001 - SWEEP_STEP..1_001).contains(&map.len()));
        // Calls enough for one pass over the slots sweep every expired entry.
        for _ in 0..=1_001 / SWEEP_STEP {
            assert!(map.get("long", later).is_some());
        }
        assert_eq!(keys(&map), ["long"]);
        assert_eq!(map.bytes(), 10);
        assert!(map.get("short-3", later).is_none(), "expired is gone");
    }

    #[test]
    fn an_entry_is_changed_in_place_or_made() {
        let t0 = Instant::now();
        let mut map: Bounded<u32> = Bounded::new(10, 100);
        for _ in 0..3 {
            let item = map.entry("k", t0, 1, || 0).expect("fits");
            *item.value += 1;
            *item.until = t0 + secs(10);
        }
        assert_eq!(map.get("k", t0 + secs(9)), Some(&3));
        assert_eq!(map.get("k", t0 + secs(10)), None, "expired");
        assert!(map.entry("heavy", t0, 101, || 0).is_none());
    }
}
