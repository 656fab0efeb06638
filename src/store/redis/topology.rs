//! One pool for each `redis.mode`, behind one `get`: a standalone server,
//! a cluster (the client follows MOVED, ASK and topology changes), or the
//! master the sentinels name (asked again for each new connection, so a
//! failover is followed once the old master's connections fail).

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{Cmd, Pipeline, RedisFuture, Value};
use deadpool_redis::{cluster, sentinel, PoolConfig, Runtime, Status};

use crate::config::RedisTopology;
use crate::store::StoreError;

/// The connection pool of one topology.
pub(super) enum Pools {
    Standalone(deadpool_redis::Pool),
    Cluster(cluster::Pool),
    Sentinel(sentinel::Pool),
}

/// A pooled connection of any topology; commands go to the node that
/// holds their key (cluster) or to the current master.
pub(super) enum Connection {
    Standalone(deadpool_redis::Connection),
    Cluster(cluster::Connection),
    Sentinel(sentinel::Connection),
}

impl Pools {
    /// A pool for `topology`; connections are made on first use.
    pub(super) fn new(topology: &RedisTopology, pool: PoolConfig) -> Result<Self, StoreError> {
        let runtime = Some(Runtime::Tokio1);
        let pools = match topology {
            RedisTopology::Standalone { url } => {
                let mut config = deadpool_redis::Config::from_url(url.clone());
                config.pool = Some(pool);
                config.create_pool(runtime).map(Pools::Standalone)
            }
            RedisTopology::Cluster { urls } => {
                let mut config = cluster::Config::from_urls(urls.clone());
                config.pool = Some(pool);
                config.create_pool(runtime).map(Pools::Cluster)
            }
            RedisTopology::Sentinel { sentinel } => {
                let mut config = sentinel::Config::from_urls(
                    sentinel.urls.clone(),
                    sentinel.master_name.clone(),
                    sentinel::SentinelServerType::Master,
                );
                config.pool = Some(pool);
                config.create_pool(runtime).map(Pools::Sentinel)
            }
        };
        pools.map_err(|err| StoreError(format!("cannot set up the Redis pool: {err}")))
    }

    /// A connection from the pool, made when none is idle.
    pub(super) async fn get(&self) -> Result<Connection, StoreError> {
        let connection = match self {
            Pools::Standalone(pool) => pool
                .get()
                .await
                .map(Connection::Standalone)
                .map_err(|err| err.to_string()),
            Pools::Cluster(pool) => pool
                .get()
                .await
                .map(Connection::Cluster)
                .map_err(|err| err.to_string()),
            Pools::Sentinel(pool) => pool
                .get()
                .await
                .map(Connection::Sentinel)
                .map_err(|err| err.to_string()),
        };
        connection.map_err(|err| StoreError(format!("Redis: {err}")))
    }

    /// Connections kept and idle.
    pub(super) fn status(&self) -> Status {
        match self {
            Pools::Standalone(pool) => pool.status(),
            Pools::Cluster(pool) => pool.status(),
            Pools::Sentinel(pool) => pool.status(),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(c) => c.get_db(),
        }
    }
}
