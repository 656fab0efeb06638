//! One pool for each `redis.mode`, behind one `get`: a standalone server,
//! a cluster (the client follows MOVED, ASK and topology changes), or the
//! master the sentinels name (asked again for each new connection, so a
//! failover is followed once the old master's connections fail or it
//! answers as a replica).
//!
//! Every mode takes `rediss://` URLs, checked against `redis.ca_file` (or
//! the system's roots) through rustls, and the data nodes' password from
//! `redis.password_env` (or the URL). The cluster and sentinel pools are
//! managed here rather than by deadpool-redis, whose own take neither a CA
//! nor the master's password.

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use deadpool_redis::redis::{
    self, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    TlsCertificates, TlsMode, Value,
};
use deadpool_redis::{PoolConfig, Runtime, Status};
use log::warn;
use prometheus::IntCounter;
use tokio::sync::Mutex;

use crate::config::{RedisConfig, RedisTopology, Secret};
use crate::store::StoreError;

/// The connection pool of one topology (a clone shares it).
#[derive(Clone)]
pub(super) enum Pools {
    Standalone(deadpool_redis::Pool),
    Cluster(managed::Pool<ClusterManager>),
    Sentinel(managed::Pool<SentinelManager>),
}

/// A pooled connection of any topology; commands go to the node that
/// holds their key (cluster) or to the current master.
pub(super) enum Connection {
    Standalone(deadpool_redis::Connection),
    Cluster(Object<ClusterManager>),
    Sentinel(Object<SentinelManager>),
}

/// The role of the Redis nodes a store's calls go to, as its metrics'
/// `role` label says it: `standalone` for one server, `master` for a
/// cluster's masters (every data node a cluster client addresses is one)
/// and for the master the sentinels name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Standalone,
    Master,
}

impl Role {
    /// The metrics' label value.
    pub(super) fn label(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Master => "master",
        }
    }
}

impl Pools {
    /// A pool for `config`; connections are made on first use. A master
    /// the sentinels name in place of another counts in `failovers`.
    pub(super) fn new(
        config: &RedisConfig,
        pool: PoolConfig,
        failovers: IntCounter,
    ) -> Result<Self, StoreError> {
        Pools::build(config, pool, failovers)
            .map_err(|err| StoreError(format!("cannot set up the Redis pool: {err}")))
    }

    fn build(
        config: &RedisConfig,
        pool: PoolConfig,
        failovers: IntCounter,
    ) -> Result<Self, String> {
        let certificates = certificates(config)?;
        let password = config.password.as_ref().map(Secret::expose);
        let redis_error = |err: RedisError| err.to_string();
        match &config.topology {
            RedisTopology::Standalone { url } => {
                let mut info = url.as_str().into_connection_info().map_err(redis_error)?;
                if let Some(password) = password {
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                if let Some(certificates) = certificates {
                    info = Client::build_with_tls(info, certificates)
                        .map_err(redis_error)?
                        .get_connection_info()
                        .clone();
                }
                let manager = deadpool_redis::Manager::new(info).map_err(redis_error)?;
                deadpool_redis::Pool::builder(manager)
                    .config(pool)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map(Pools::Standalone)
                    .map_err(|err| err.to_string())
            }
            RedisTopology::Cluster { urls } => {
                // The first seed's credentials and scheme hold for every node.
                let mut client = ClusterClientBuilder::new(urls.iter().map(String::as_str));
                if let Some(password) = password {
                    client = client.password(password);
                }
                if let Some(certificates) = certificates {
                    client = client.certs(certificates);
                }
                let manager = ClusterManager {
                    client: client.build().map_err(redis_error)?,
                };
                managed::Pool::builder(manager)
                    .config(pool)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map(Pools::Cluster)
                    .map_err(|err| err.to_string())
            }
            RedisTopology::Sentinel { sentinel } => {
                let sentinels = sentinel
                    .urls
                    .iter()
                    .map(|url| url.as_str().into_connection_info())
                    .collect::<Result<Vec<ConnectionInfo>, _>>()
                    .map_err(redis_error)?;
                let addresses = sentinels.iter().map(|info| info.addr().clone());
                let mut client = SentinelClientBuilder::new(
                    addresses.collect::<Vec<_>>(),
                    &sentinel.master_name,
                    SentinelServerType::Master,
                )
                .map_err(redis_error)?;
                // The sentinels: the credentials of the first URL with some,
                // the password from sentinel.password_env before any.
                let written = sentinels
                    .iter()
                    .map(ConnectionInfo::redis_settings)
                    .find(|settings| settings.password().is_some());
                if let Some(username) = written.and_then(|settings| settings.username()) {
                    client = client.set_client_to_sentinel_username(username);
                }
                let sentinel_password = sentinel
                    .password
                    .as_ref()
                    .map(Secret::expose)
                    .or_else(|| written.and_then(|settings| settings.password()));
                if let Some(password) = sentinel_password {
                    client = client.set_client_to_sentinel_password(password);
                }
                // The master: reached as the sentinels are, with the data
                // nodes' password.
                if config.tls() {
                    client = client.set_client_to_redis_tls_mode(TlsMode::Secure);
                }
                if let Some(certificates) = certificates {
                    client = client
                        .set_client_to_sentinel_certificates(certificates.clone())
                        .set_client_to_redis_certificates(certificates);
                }
                if let Some(password) = password {
                    client = client.set_client_to_redis_password(password);
                }
                let manager = SentinelManager {
                    client: Mutex::new(client.build().map_err(redis_error)?),
                    master: std::sync::Mutex::new(None),
                    failovers,
                };
                managed::Pool::builder(manager)
                    .config(pool)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map(Pools::Sentinel)
                    .map_err(|err| err.to_string())
            }
        }
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

    /// The role of the nodes this pool's connections reach.
    pub(super) fn role(&self) -> Role {
        match self {
            Pools::Standalone(_) => Role::Standalone,
            Pools::Cluster(_) | Pools::Sentinel(_) => Role::Master,
        }
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

/// The roots `rediss://` servers are checked against: `redis.ca_file`'s,
/// or `None` for the system's (the client's default).
fn certificates(config: &RedisConfig) -> Result<Option<TlsCertificates>, String> {
    let Some(path) = config.ca_file.as_deref().filter(|_| config.tls()) else {
        return Ok(None);
    };
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(crate::tls::ca_pem(path)?),
    }))
}

/// Whether a pooled connection still answers: the check deadpool runs
/// before it hands an idle connection out again.
async fn answers(connection: &mut impl ConnectionLike) -> RecycleResult<RedisError> {
    redis::cmd("PING")
        .query_async::<()>(connection)
        .await
        .map_err(RecycleError::Backend)
}

/// Makes cluster connections: each reaches every master, learning the
/// slot map from the seeds.
pub(super) struct ClusterManager {
    client: ClusterClient,
}

impl managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        connection: &mut ClusterConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        answers(connection).await
    }
}

/// Makes connections to the master the sentinels name now, and notices
/// when that is a new one.
pub(super) struct SentinelManager {
    client: Mutex<SentinelClient>,
    /// The master (`host:port`) the last connection was made to.
    master: std::sync::Mutex<Option<String>>,
    failovers: IntCounter,
}

impl SentinelManager {
    /// Remembers `master` as the current one; a change from another is a
    /// failover followed, logged and counted.
    fn follow(&self, master: String) {
        let Ok(mut known) = self.master.lock() else {
            return;
        };
        if let Some(previous) = known.as_ref().filter(|previous| **previous != master) {
            warn!("Redis: the sentinels name a new master, {master} (was {previous})");
            self.failovers.inc();
        }
        *known = Some(master);
    }
}

impl managed::Manager for SentinelManager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        let master = self.client.lock().await.async_get_client().await?;
        let connection = master.get_multiplexed_async_connection().await?;
        self.follow(master.get_connection_info().addr().to_string());
        Ok(connection)
    }

    /// `ROLE` instead of `PING`, at the same cost: a master demoted by a
    /// failover (`SENTINEL FAILOVER`, a network split healed) keeps its
    /// connections open but refuses writes; its connections are dropped,
    /// so the next one is made to the master the sentinels name.
    async fn recycle(
        &self,
        connection: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        let role: Vec<Value> = redis::cmd("ROLE")
            .query_async(connection)
            .await
            .map_err(RecycleError::Backend)?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok(()),
            _ => Err(RecycleError::message("no longer the master")),
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
