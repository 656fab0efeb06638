//! The Redis store (deadpool-redis): shared by every pod that points at the
//! same Redis, each call bounded by `redis.timeout` so a slow Redis costs
//! milliseconds, never seconds.

use std::future::Future;
use std::time::Duration;

use deadpool_redis::redis::AsyncCommands;
use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};

use super::{key, ttl_seconds, RevocationStore, StoreError, StoreFuture};
use crate::config::RedisConfig;

/// Revocations in Redis, under `outrigger:revoked:<hash>` with a TTL.
pub struct RedisStore {
    pool: Pool,
    timeout: Duration,
}

impl RedisStore {
    /// A pool for `config`; connections are made on first use.
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        let mut pool_config = Config::from_url(config.url.clone());
        pool_config.pool = Some(PoolConfig {
            max_size: config.pool_size as usize,
            timeouts: Timeouts {
                wait: Some(config.timeout),
                create: Some(config.timeout),
                recycle: Some(config.timeout),
            },
            ..PoolConfig::default()
        });
        let pool = pool_config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|err| StoreError(format!("cannot set up the Redis pool: {err}")))?;
        Ok(RedisStore {
            pool,
            timeout: config.timeout,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError(format!(
                "Redis did not answer within {}ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

fn redis_error(err: impl std::fmt::Display) -> StoreError {
    StoreError(format!("Redis: {err}"))
}

impl RevocationStore for RedisStore {
    fn revoke<'a>(&'a self, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(self.bounded(async move {
            let mut connection = self.pool.get().await.map_err(redis_error)?;
            connection
                .set_ex::<_, _, ()>(key("revoked", id), 1u8, ttl_seconds(ttl))
                .await
                .map_err(redis_error)
        }))
    }

    fn is_revoked<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(self.bounded(async move {
            let mut connection = self.pool.get().await.map_err(redis_error)?;
            connection
                .exists(key("revoked", id))
                .await
                .map_err(redis_error)
        }))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
