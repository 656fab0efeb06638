//! The in-process store: a bounded map with expiry, for a pod without Redis.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::warn;

use super::{key, RevocationStore, StoreError, StoreFuture};

/// Entries kept at most; past it the soonest-expiring entry makes room.
const CAPACITY: usize = 100_000;

/// Revocations kept in this process only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    revoked: Mutex<HashMap<String, Instant>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn insert(&self, id: &str, ttl: Duration, now: Instant) -> Result<(), StoreError> {
        let mut revoked = self
            .revoked
            .lock()
            .map_err(|_| StoreError("the in-process store is poisoned".to_string()))?;
        if revoked.len() >= CAPACITY {
            revoked.retain(|_, until| *until > now);
        }
        if revoked.len() >= CAPACITY {
            let soonest = revoked
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| k.clone());
            if let Some(soonest) = soonest {
                warn!(
                    "revocation store full ({CAPACITY} entries): dropping the one expiring soonest"
                );
                revoked.remove(&soonest);
            }
        }
        revoked.insert(key("revoked", id), now + ttl);
        Ok(())
    }

    fn contains(&self, id: &str, now: Instant) -> Result<bool, StoreError> {
        let revoked = self
            .revoked
            .lock()
            .map_err(|_| StoreError("the in-process store is poisoned".to_string()))?;
        Ok(revoked
            .get(&key("revoked", id))
            .is_some_and(|until| *until > now))
    }
}

impl RevocationStore for MemoryStore {
    fn revoke<'a>(&'a self, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()> {
        let result = self.insert(id, ttl, Instant::now());
        Box::pin(async move { result })
    }

    fn is_revoked<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        let result = self.contains(id, Instant::now());
        Box::pin(async move { result })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_lasts_its_ttl() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store
            .insert("jti-1", Duration::from_secs(60), t0)
            .expect("insert");
        assert!(store
            .contains("jti-1", t0 + Duration::from_secs(59))
            .expect("read"));
        assert!(!store
            .contains("jti-1", t0 + Duration::from_secs(60))
            .expect("read"));
        assert!(!store.contains("jti-2", t0).expect("read"));
    }
}
