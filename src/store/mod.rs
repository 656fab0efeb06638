//! Where shared state lives: Redis when a `redis` section (or `REDIS_URL`)
//! is set, in-process otherwise. Keys are namespaced `outrigger:<feature>:`
//! and built from a hash of user input, never the input itself.

mod bounded;
mod memory;
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use sha2::{Digest, Sha256};

pub use bounded::Bounded;
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
    /// Adds the hits one sidecar already admitted to a sliding window, all
    /// of them (they were served), and the attempts behind them to the
    /// usage record, in one atomic call: how approximate limits catch up.
    fn add_hits<'a>(&'a self, batch: &'a HitBatch<'a>) -> StoreFuture<'a, WindowLoad>;
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

/// Hits admitted in one process, sent to the shared window in one call
/// ([`Store::add_hits`]).
#[derive(Debug, Clone, Copy)]
pub struct HitBatch<'a> {
    /// The window ([`owned_key`]).
    pub window_key: &'a str,
    /// Requests allowed per window, to say when it is full.
    pub limit: u32,
    /// The window's length.
    pub window: Duration,
    /// Admitted hits to add; 0 only asks how full the window is.
    pub hits: u32,
    /// The owner's usage record ([`key`], the same hash tag as the window).
    pub usage_key: &'a str,
    /// Attempts per endpoint to add to the usage record.
    pub attempts: &'a [(Box<str>, u32)],
}

/// A sliding window after a [`HitBatch`] was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLoad {
    /// Hits in the window, from every process sharing it.
    pub count: u32,
    /// Until the window holds fewer than its limit (zero when it does now).
    pub full_for: Duration,
    /// Until its oldest hit leaves (the window's length when it is empty).
    pub reset_after: Duration,
}

/// The store key for `input` under `feature`:
/// `outrigger:<feature>:{<sha256 hex>}`. The braces make the hash the key's
/// hash tag: on a Redis Cluster its slot is the hash's, and a key from
/// [`owned_key`] with the same `input` as owner lands in the same slot.
pub fn key(feature: &str, input: &str) -> String {
    tagged(feature, input, 0)
}

/// `outrigger:<feature>:{<sha256 hex of tag>}`, with room for `more` bytes.
fn tagged(feature: &str, tag: &str, more: usize) -> String {
    let mut key = String::with_capacity(10 + feature.len() + 3 + 64 + more);
    key.push_str("outrigger:");
    key.push_str(feature);
    key.push_str(":{");
    push_hex_digest(&mut key, tag);
    key.push('}');
    key
}

/// The store key for `part` of `owner`'s state under `feature`:
/// `outrigger:<feature>:{<sha256 hex of owner>}:<sha256 hex of part>`.
/// Every key of one owner (a user's windows, its usage record under
/// [`key`]) shares the owner's hash tag, so a script over them stays in one
/// slot of a cluster, while different owners spread over the slots.
pub fn owned_key(feature: &str, owner: &str, part: &str) -> String {
    let mut key = tagged(feature, owner, 1 + 64);
    key.push(':');
    push_hex_digest(&mut key, part);
    key
}

fn push_hex_digest(key: &mut String, input: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in Sha256::digest(input.as_bytes()) {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
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
        assert!(key.starts_with("outrigger:revoked:{"));
        assert!(key.ends_with('}'));
        assert_eq!(key.len(), "outrigger:revoked:{}".len() + 64);
        assert!(!key.contains("user"));
        assert_eq!(
            key,
            super::key("revoked", "user-controlled \r\n value"),
            "stable"
        );
        assert_eq!(
            super::key("x", "abc"),
            "outrigger:x:{ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad}",
            "the sha-256 of the input, in lowercase hex"
        );
    }

    /// The part of a key Redis Cluster hashes to pick its slot.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = open + key[open..].find('}').expect("a closed tag");
        &key[open + 1..close]
    }

    #[test]
    fn an_owners_keys_share_one_hash_tag_and_owners_differ() {
        let window = owned_key("ratelimit", "user:ann", "/login");
        let other_window = owned_key("ratelimit", "user:ann", "/search");
        let usage = key("usage", "user:ann");
        assert_eq!(hash_tag(&window), hash_tag(&usage));
        assert_eq!(hash_tag(&window), hash_tag(&other_window));
        assert_ne!(window, other_window);
        assert_ne!(
            hash_tag(&window),
            hash_tag(&owned_key("ratelimit", "user:bob", "/login"))
        );
        assert!(!window.contains("ann") && !window.contains("login"));
        assert_eq!(window.len(), "outrigger:ratelimit:{}:".len() + 128);
    }

    #[test]
    fn ttls_round_to_at_least_a_second() {
        assert_eq!(ttl_seconds(Duration::from_millis(10)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(90)), 90);
    }
}
