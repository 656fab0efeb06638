//! Where shared state lives: Redis when `redis.url` is set, in-process
//! otherwise. Keys are namespaced `outrigger:<feature>:` and built from a
//! hash of user input, never the input itself.

mod bounded;
mod memory;
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use sha2::{Digest, Sha256};

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A store call that did not complete (Redis down, slow or refusing).
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A boxed store call.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + 'a>>;

/// What the inbound features keep: revoked tokens, sliding-window
/// counters and per-user usage. Keys passed in are already built with
/// [`key`]; implementations add nothing raw.
pub trait Store: Send + Sync {
    /// Revokes the token identified by `id` (its `jti`, or the token) for `ttl`.
    fn revoke<'a>(&'a self, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()>;
    /// Whether `id` was revoked.
    fn is_revoked<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;
    /// Counts one request against the sliding window `key` (at most `limit`
    /// per `window`), atomically: the request is admitted only if the window
    /// had room.
    fn hit<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
        window: Duration,
    ) -> StoreFuture<'a, WindowCount>;
    /// Adds one attempt to `endpoint` in the usage record `key`, kept for `window`.
    fn record_usage<'a>(
        &'a self,
        key: &'a str,
        endpoint: &'a str,
        window: Duration,
    ) -> StoreFuture<'a, ()>;
    /// The usage record `key`: attempts per endpoint.
    fn usage<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, u64)>>;
    /// The value under `key`, if present, not expired and at most
    /// `max_len` bytes long (a longer one is never read whole).
    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Option<Bytes>>;
    /// Stores `value` under `key` for `ttl`.
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()>;
    /// Bounds the bytes the values kept in this process may take, making
    /// room at once when they take more. Redis bounds itself (its
    /// `maxmemory`), so there it does nothing.
    fn bound_values(&self, max_bytes: usize);
    /// `memory` or `redis`, for logs.
    fn kind(&self) -> &'static str;
}

/// The state of one sliding window after a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// Whether this request fit in the window.
    pub allowed: bool,
    /// Requests admitted in the window, this one included when allowed.
    pub count: u32,
    /// Until the oldest admitted request leaves the window.
    pub reset_after: Duration,
}

/// The store key for `input` under `feature`: `outrigger:<feature>:<sha256 hex>`.
pub fn key(feature: &str, input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut key = String::with_capacity(11 + feature.len() + 1 + 64);
    key.push_str("outrigger:");
    key.push_str(feature);
    key.push(':');
    for byte in digest.iter() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// Whole seconds for a Redis TTL: at least one.
fn ttl_seconds(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_hashes_never_raw_input() {
        let key = key("revoked", "user-controlled \r\n value");
        assert!(key.starts_with("outrigger:revoked:"));
        assert_eq!(key.len(), "outrigger:revoked:".len() + 64);
        assert!(!key.contains("user"));
        assert_eq!(
            key,
            super::key("revoked", "user-controlled \r\n value"),
            "stable"
        );
    }

    #[test]
    fn ttls_round_to_at_least_a_second() {
        assert_eq!(ttl_seconds(Duration::from_millis(10)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(90)), 90);
    }
}
