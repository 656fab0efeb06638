//! The Redis store (deadpool-redis): shared by every sidecar on the same
//! Redis, whether one server, a cluster or a master behind sentinels
//! ([`topology`]). Each operation touches one key, and keys carry a hash
//! tag, so every script stays atomic on a cluster. Each call is bounded by
//! `redis.timeout`, so a slow Redis costs milliseconds (new connections
//! are made apart, with a bound of their own); Redis is guarded
//! by its own circuit breaker, so a dead one is not asked on every
//! request; every failure counts in `redis_errors_total{op, role}`, the
//! role being that of the nodes the calls go to.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use deadpool_redis::redis::{AsyncCommands, Script};
use deadpool_redis::{PoolConfig, Timeouts};
use log::warn;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::{key, ttl_seconds, HitBatch, Store, StoreError, StoreFuture, WindowCount, WindowLoad};
use crate::config::RedisConfig;
use crate::core::backoff::Backoff;
use crate::core::breaker::{BreakerParams, BreakerState, CallResult, CircuitBreaker};
use crate::metrics::Metrics;

mod topology;

use topology::{Connection, Pools};

/// The least time a new connection is given to be made: TCP, a TLS
/// handshake, and in sentinel mode the sentinel's lookup and the master's
/// `ROLE` check (three handshakes), which can take longer than a call may
/// wait. Connections are made in the background (`RedisStore::connection`),
/// so no request waits for this long; it only ends a connection that is
/// not coming.
const CONNECT_TIMEOUT_FLOOR: Duration = Duration::from_secs(2);

/// The sliding window as one atomic script: drop what left the window,
/// admit if there is room, and say how many are in it and when the oldest
/// leaves. KEYS[1] the window; ARGV now (µs), window (µs), limit, member.
const WINDOW_SCRIPT: &str = r"
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, 0, now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, ARGV[4])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', key, math.ceil(window / 1000))
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local first = now
if oldest[2] then first = tonumber(oldest[2]) end
return {allowed, count, first + window - now}
";

/// One usage count and the record's expiry as one script: a single command,
/// so a cluster client follows MOVED and ASK for it while its slot moves
/// (a MULTI/EXEC pipeline's redirections come back inside the aborted
/// transaction, which the client does not follow). KEYS[1] the record;
/// ARGV endpoint, TTL (s).
const USAGE_SCRIPT: &str = r"
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
";

/// A batch of hits one sidecar already admitted (approximate limits), as
/// one atomic script: slide the window, add every hit (past the limit too:
/// they were served), say how many are in it, how long it stays full and
/// when the oldest leaves, and add the attempts to the usage record.
/// KEYS[1] the window, KEYS[2] the usage record (same hash tag); ARGV now
/// (µs), window (µs), limit, hits, member prefix, usage TTL (s), then
/// endpoint and attempts pairs.
const BATCH_SCRIPT: &str = r"
local key, usage = KEYS[1], KEYS[2]
local now, window, limit, hits = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, 0, now - window)
local members = {}
for i = 1, hits do
  members[#members + 1] = now
  members[#members + 1] = ARGV[5] .. ':' .. i
  if #members >= 256 then
    redis.call('ZADD', key, unpack(members))
    members = {}
  end
end
if #members > 0 then redis.call('ZADD', key, unpack(members)) end
local count = redis.call('ZCARD', key)
if count > 0 then redis.call('PEXPIRE', key, math.ceil(window / 1000)) end
local full_for = 0
if limit > 0 and count >= limit then
  local last_over = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  full_for = tonumber(last_over[2]) + window - now
end
local reset = window
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
for i = 7, #ARGV, 2 do redis.call('HINCRBY', usage, ARGV[i], ARGV[i + 1]) end
if #ARGV > 6 then redis.call('EXPIRE', usage, ARGV[6]) end
return {count, full_for, reset}
";

/// Shared state in Redis, under `outrigger:<feature>:{<hash>}` keys.
pub struct RedisStore {
    pool: Pools,
    timeout: Duration,
    breaker: Mutex<CircuitBreaker>,
    window_script: Script,
    usage_script: Script,
    batch_script: Script,
    errors: IntCounterVec,
    connections: IntGaugeVec,
    durations: HistogramVec,
    /// The `role` label of `errors` and `connections`.
    role: &'static str,
}

impl RedisStore {
    /// A pool for `config`, counted in `metrics`. Its first connection is
    /// made at once in the background (when a runtime runs), so the first
    /// requests find it pooled instead of each waiting for a handshake
    /// longer than `redis.timeout` and bypassing Redis (a Redis that is
    /// down costs that one attempt).
    pub fn new(config: &RedisConfig, metrics: &Metrics) -> Result<Self, StoreError> {
        let pool = Pools::new(
            config,
            PoolConfig {
                max_size: config.pool_size as usize,
                timeouts: Timeouts {
                    wait: Some(config.timeout),
                    create: Some(config.timeout.max(CONNECT_TIMEOUT_FLOOR)),
                    recycle: Some(config.timeout),
                },
                ..PoolConfig::default()
            },
            metrics.redis_failovers.clone(),
        )?;
        // Short and capped low: a failover (a sentinel promoting a replica,
        // a cluster moving a master) ends within seconds, and the sidecar
        // must be back on the new master within seconds of it, not after a
        // cooldown that grew while the old master was down. A dead Redis
        // still costs one attempt every 5 s per sidecar.
        let cooldown = Backoff::new(Duration::from_secs(1), Duration::from_secs(5), 0.1)
            .map_err(|err| StoreError(format!("the Redis breaker's cooldown: {err}")))?;
        let breaker = BreakerParams {
            failure_threshold: 3,
            window: Duration::from_secs(10),
            success_threshold: 1,
            cooldown,
        };
        let errors = metrics.redis_errors.clone();
        let connections = metrics.redis_pool_connections.clone();
        let durations = metrics.redis_command_duration.clone();
        let role = pool.role().label();
        // Every operation's series exist from the start, at 0, so a
        // dashboard shows "no errors" rather than "no data".
        for op in [
            "is_revoked",
            "revoke",
            "rate_limit",
            "usage",
            "cache_get",
            "cache_set",
        ] {
            errors.with_label_values(&[op, role]);
            durations.with_label_values(&[op]);
        }
        for state in ["idle", "in_use"] {
            connections.with_label_values(&[state, role]);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = pool.clone();
            // Dropped at once: the connection goes back to the pool.
            runtime.spawn(async move { drop(pool.get().await) });
        }
        Ok(RedisStore {
            pool,
            timeout: config.timeout,
            breaker: Mutex::new(CircuitBreaker::new(
                breaker,
                SmallRng::from_rng(&mut rand::rng()),
            )),
            window_script: Script::new(WINDOW_SCRIPT),
            usage_script: Script::new(USAGE_SCRIPT),
            batch_script: Script::new(BATCH_SCRIPT),
            errors,
            connections,
            durations,
            role,
        })
    }

    /// Runs one Redis call unless the breaker is open, bounded by the timeout.
    async fn call<T>(
        &self,
        op: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if !self.admits() {
            self.errors.with_label_values(&[op, self.role]).inc();
            return Err(StoreError(
                "Redis is cut off by its circuit breaker".to_string(),
            ));
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError(format!(
                "Redis did not answer within {}ms",
                self.timeout.as_millis()
            ))),
        };
        self.durations
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.with_label_values(&[op, self.role]).inc();
        }
        self.record(result.is_ok());
        let status = self.pool.status();
        self.connections
            .with_label_values(&["idle", self.role])
            .set(status.available as i64);
        self.connections
            .with_label_values(&["in_use", self.role])
            .set((status.size - status.available) as i64);
        result
    }

    /// A pooled connection. With none idle, it is made in a task of its
    /// own, bounded by the connect timeout rather than by the call's: a
    /// call that gives up at `redis.timeout` leaves the connection to be
    /// pooled for the next call, so a handshake slower than the timeout
    /// delays Redis by one handshake instead of cutting it off for good.
    async fn connection(&self) -> Result<Connection, StoreError> {
        if self.pool.status().available > 0 {
            return self.pool.get().await;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.get().await })
            .await
            .unwrap_or_else(|err| Err(StoreError(format!("Redis: making a connection: {err}"))))
    }

    fn admits(&self) -> bool {
        let Ok(mut breaker) = self.breaker.lock() else {
            return false;
        };
        breaker.poll(Instant::now());
        breaker.state() != BreakerState::Open
    }

    fn record(&self, ok: bool) {
        let Ok(mut breaker) = self.breaker.lock() else {
            return;
        };
        let probe = breaker.state() == BreakerState::HalfOpen;
        let result = if ok {
            CallResult::Success
        } else {
            CallResult::Failure
        };
        if let Some(transition) = breaker.record(result, probe, Instant::now()) {
            warn!(
                "Redis circuit breaker: {} -> {}",
                transition.from, transition.to
            );
        }
    }
}

fn redis_error(err: impl std::fmt::Display) -> StoreError {
    StoreError(format!("Redis: {err}"))
}

fn micros_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Store for RedisStore {
    fn revoke<'a>(&'a self, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(self.call("revoke", async move {
            let mut connection = self.connection().await?;
            connection
                .set_ex::<_, _, ()>(key("revoked", id), 1u8, ttl_seconds(ttl))
                .await
                .map_err(redis_error)
        }))
    }

    fn is_revoked<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(self.call("is_revoked", async move {
            let mut connection = self.connection().await?;
            connection
                .exists(key("revoked", id))
                .await
                .map_err(redis_error)
        }))
    }

    fn hit<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
        window: Duration,
    ) -> StoreFuture<'a, WindowCount> {
        Box::pin(self.call("rate_limit", async move {
            let mut connection = self.connection().await?;
            let now = micros_since_epoch();
            let member = format!("{now}-{}", rand::random::<u32>());
            let (allowed, count, reset_micros): (u8, u32, i64) = self
                .window_script
                .key(key)
                .arg(now)
                .arg(window.as_micros() as u64)
                .arg(limit)
                .arg(member)
                .invoke_async(&mut connection)
                .await
                .map_err(redis_error)?;
            Ok(WindowCount {
                allowed: allowed == 1,
                count,
                reset_after: Duration::from_micros(reset_micros.max(0) as u64),
            })
        }))
    }

    fn add_hits<'a>(&'a self, batch: &'a HitBatch<'a>) -> StoreFuture<'a, WindowLoad> {
        Box::pin(self.call("rate_limit", async move {
            let mut connection = self.connection().await?;
            let now = micros_since_epoch();
            let mut invocation = self.batch_script.key(batch.window_key);
            invocation
                .key(batch.usage_key)
                .arg(now)
                .arg(batch.window.as_micros() as u64)
                .arg(batch.limit)
                .arg(batch.hits)
                .arg(format!("{now}-{}", rand::random::<u32>()))
                .arg(ttl_seconds(batch.window));
            for (endpoint, attempts) in batch.attempts {
                invocation.arg(endpoint.as_ref()).arg(*attempts);
            }
            let (count, full_for, reset_after): (u32, i64, i64) = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(redis_error)?;
            let micros = |n: i64| Duration::from_micros(n.max(0) as u64);
            Ok(WindowLoad {
                count,
                full_for: micros(full_for),
                reset_after: micros(reset_after),
            })
        }))
    }

    fn record_usage<'a>(
        &'a self,
        key: &'a str,
        endpoint: &'a str,
        window: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.call("usage", async move {
            let mut connection = self.connection().await?;
            self.usage_script
                .key(key)
                .arg(endpoint)
                .arg(ttl_seconds(window))
                .invoke_async::<()>(&mut connection)
                .await
                .map_err(redis_error)
        }))
    }

    fn usage<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, u64)>> {
        Box::pin(self.call("usage", async move {
            let mut connection = self.connection().await?;
            let mut counts: Vec<(String, u64)> =
                connection.hgetall(key).await.map_err(redis_error)?;
            counts.sort();
            Ok(counts)
        }))
    }

    /// Reads at most `max_len + 1` bytes (`GETRANGE`), so a value longer
    /// than the caller takes (another sidecar's, or planted) is never read
    /// whole; it counts as absent. A missing key reads as empty.
    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(self.call("cache_get", async move {
            let mut connection = self.connection().await?;
            let value: Vec<u8> = connection
                .getrange(key, 0, max_len as isize)
                .await
                .map_err(redis_error)?;
            Ok((!value.is_empty() && value.len() <= max_len).then(|| Bytes::from(value)))
        }))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(self.call("cache_set", async move {
            let mut connection = self.connection().await?;
            connection
                .set_ex::<_, _, ()>(key, value.as_ref(), ttl_seconds(ttl))
                .await
                .map_err(redis_error)
        }))
    }

    fn bound_values(&self, _max_bytes: usize) {}

    fn kind(&self) -> &'static str {
        "redis"
    }
}
