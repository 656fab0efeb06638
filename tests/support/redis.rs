//! Private Redis topologies for the tests of the Redis store: one
//! `redis-server`, a cluster of masters joined by `redis-cli --cluster
//! create`, and a master with a replica watched by a sentinel
//! (`redis-server --sentinel`).

use std::path::Path;
use std::process::{Command, Stdio};

use super::child::OwnedChild;
use super::eventually::eventually;
use super::files::TempDir;
use super::ports::closed_port;
use super::tls::Pair;

/// A private `redis-server` on a free loopback port, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: OwnedChild,
    /// What `redis-cli` needs to reach it (TLS, the password), if anything.
    access: Vec<String>,
}

/// A server reached over TLS only, with a certificate from the test CA
/// (`ca`), that asks for `password`.
pub struct Secured<'a> {
    pub pair: &'a Pair,
    pub ca: &'a Path,
    pub password: &'a str,
}

impl Secured<'_> {
    /// The server's arguments: no plain port, TLS on `port` (for
    /// replication too), and the password, which a replica also gives its
    /// master.
    fn server_args(&self, port: u16) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&self.pair.cert),
            "--tls-key-file",
            &path(&self.pair.key),
            "--tls-ca-cert-file",
            &path(self.ca),
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
            "--requirepass",
            self.password,
            "--masterauth",
            self.password,
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// `redis-cli`'s arguments to reach such a server.
    fn cli_args(&self) -> Vec<String> {
        let password = ["--no-auth-warning", "-a", self.password].map(str::to_string);
        [self.tls_cli_args(), password.to_vec()].concat()
    }

    /// `redis-cli`'s arguments to reach such a server's sentinel, which
    /// asks for no password.
    fn tls_cli_args(&self) -> Vec<String> {
        ["--tls", "--cacert", &self.ca.display().to_string()]
            .map(str::to_string)
            .to_vec()
    }
}

impl RedisServer {
    /// A server on a free port. A port found free may be taken before the
    /// server binds it (tests run in parallel): a server that exits at
    /// once is started again on another.
    pub async fn start() -> RedisServer {
        for _ in 0..3 {
            if let Some(server) = RedisServer::started(closed_port(), &[], Vec::new()).await {
                return server;
            }
        }
        panic!("redis-server exited at start on three ports in a row")
    }

    /// Kills the server (its data goes with it).
    pub fn kill(&mut self) {
        self.child.kill_and_reap();
    }

    /// Stops the server (SIGSTOP): its connections stay open and nothing
    /// on them is answered, like a Redis stalled by a fork or a full disk.
    pub fn pause(&self) {
        self.child.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.child.signal("CONT");
    }

    /// Starts a fresh server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        *self = RedisServer::start_on(self.port).await;
    }

    async fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, &[]).await
    }

    /// A server that speaks only TLS and asks for a password.
    pub async fn start_secured(secured: &Secured<'_>) -> RedisServer {
        let port = closed_port();
        RedisServer::start_accessed(port, &secured.server_args(port), secured.cli_args()).await
    }

    /// A server on `port` with `extra` arguments after the test defaults.
    async fn start_with(port: u16, extra: &[String]) -> RedisServer {
        RedisServer::start_accessed(port, extra, Vec::new()).await
    }

    /// A server on `port` with `extra` arguments, which `redis-cli` reaches
    /// with `access`.
    async fn start_accessed(port: u16, extra: &[String], access: Vec<String>) -> RedisServer {
        RedisServer::started(port, extra, access)
            .await
            .unwrap_or_else(|| panic!("redis-server exited at start on port {port}"))
    }

    /// A server on `port` once it answers PING, or `None` when it exited
    /// first (its port was taken).
    async fn started(port: u16, extra: &[String], access: Vec<String>) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test.sh installs it)");
        let mut server = RedisServer {
            port,
            child: OwnedChild::new(child),
            access,
        };
        let mut exited = false;
        eventually("redis-server answers PING", || {
            exited = exited || matches!(server.child.try_wait(), Ok(Some(_)));
            let answered = exited || server.ping();
            async move { answered }
        })
        .await;
        (!exited).then_some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The URL of a [`RedisServer::start_secured`] one, without the password.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        if self.access.is_empty() {
            answers_ping(self.port)
        } else {
            self.cli(&["PING"]) == "PONG"
        }
    }

    /// Runs `redis-cli` against this server; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let access: Vec<&str> = self.access.iter().map(String::as_str).collect();
        cli(self.port, &[&access[..], args].concat())
    }

    /// How many keys the server holds.
    pub fn dbsize(&self) -> u64 {
        let size = self.cli(&["DBSIZE"]);
        size.parse()
            .unwrap_or_else(|_| panic!("DBSIZE answered {size:?}"))
    }
}

/// A door in front of a Redis that holds each new connection for `delay`
/// before it lets its bytes through, both ways: connections slow to make
/// (a far TLS handshake, three in sentinel mode) on plain loopback, with
/// every command on a made connection as fast as Redis answers it. Closed
/// when dropped.
pub struct SlowDoor {
    pub port: u16,
    accepting: tokio::task::AbortHandle,
}

impl SlowDoor {
    pub async fn start(to: &RedisServer, delay: std::time::Duration) -> SlowDoor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the door");
        let port = listener.local_addr().expect("the door's address").port();
        let redis = to.port;
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", redis)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        SlowDoor {
            port,
            accepting: accepting.abort_handle(),
        }
    }

    /// Its URL, for database 1: the client selects it when it connects, so
    /// making a connection waits for Redis's first answer, through the door.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/1", self.port)
    }
}

impl Drop for SlowDoor {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// Runs `redis-cli -p port args`; its output, trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli (scripts/test.sh installs redis-tools)");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A Redis Cluster of masters without replicas, each with its own
/// directory for `nodes.conf`; killed when dropped.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    tls: bool,
    _dirs: Vec<TempDir>,
}

impl RedisCluster {
    /// `count` masters (at least 3) on free ports, joined and sharing every
    /// slot, once `cluster info` says ok on each.
    pub async fn start(count: usize) -> RedisCluster {
        RedisCluster::start_as(count, None).await
    }

    /// Like [`RedisCluster::start`], every node speaking only TLS (the
    /// cluster bus too) and asking for the password.
    pub async fn start_secured(count: usize, secured: &Secured<'_>) -> RedisCluster {
        RedisCluster::start_as(count, Some(secured)).await
    }

    async fn start_as(count: usize, secured: Option<&Secured<'_>>) -> RedisCluster {
        let mut masters = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..count {
            let dir = TempDir::new();
            // The bus port is set: the default (port + 10000) may not exist.
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &closed_port().to_string(),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                &dir.path.display().to_string(),
            ]
            .map(str::to_string);
            let port = closed_port();
            masters.push(match secured {
                Some(secured) => {
                    let tls_bus = ["--tls-cluster", "yes"].map(str::to_string);
                    let args = [&secured.server_args(port)[..], &tls_bus, &extra].concat();
                    RedisServer::start_accessed(port, &args, secured.cli_args()).await
                }
                None => RedisServer::start_with(port, &extra).await,
            });
            dirs.push(dir);
        }
        let nodes: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .args(secured.map(Secured::cli_args).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster {
            masters,
            tls: secured.is_some(),
            _dirs: dirs,
        };
        eventually("every node says cluster_state:ok", || async {
            cluster
                .masters
                .iter()
                .all(|m| m.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        })
        .await;
        cluster
    }

    /// Moves `slots` slots of master `from` to master `to` with `redis-cli
    /// --cluster reshard` (keys migrate, clients meet ASK and MOVED), on a
    /// thread of its own so the test's runtime goes on meanwhile.
    pub async fn move_slots(&self, from: usize, to: usize, slots: u16) {
        let id = |m: &RedisServer| m.cli(&["CLUSTER", "MYID"]);
        let (from_id, to_id) = (id(&self.masters[from]), id(&self.masters[to]));
        let entry = format!("127.0.0.1:{}", self.masters[to].port);
        let moved = actix_rt::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(["--cluster", "reshard", &entry])
                .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
                .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("run redis-cli --cluster reshard")
        })
        .await
        .expect("the reshard thread");
        assert!(moved.success(), "redis-cli --cluster reshard failed");
    }

    /// The masters' URLs, as `redis.urls` lists them.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        self.masters
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.port))
            .collect()
    }
}

/// The name the test sentinel monitors its master under.
pub const MASTER_NAME: &str = "outrigger-test";

/// A master, one replica and one sentinel watching them, quick to fail
/// over (the master is down after 500 ms of silence); killed when dropped.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub port: u16,
    access: Vec<String>,
    tls: bool,
    _sentinel: OwnedChild,
    _dir: TempDir,
}

impl RedisSentinel {
    /// Starts the three, once the replica is in sync and the sentinel knows it.
    pub async fn start() -> RedisSentinel {
        RedisSentinel::start_as(None).await
    }

    /// Like [`RedisSentinel::start`], every one speaking only TLS; the
    /// master and the replica ask for the password, the sentinel (as Redis
    /// ships it) for none.
    pub async fn start_secured(secured: &Secured<'_>) -> RedisSentinel {
        RedisSentinel::start_as(Some(secured)).await
    }

    async fn start_as(secured: Option<&Secured<'_>>) -> RedisSentinel {
        // Replication writes an RDB file even without --save: in here.
        let dir = TempDir::new();
        let dir_arg = ["--dir".to_string(), dir.path.display().to_string()];
        // The replica's first sync starts at once, not after the default 5 s.
        let no_delay = ["--repl-diskless-sync-delay", "0"].map(str::to_string);
        let server = |port: u16, extra: Vec<String>| async move {
            match secured {
                Some(secured) => {
                    let args = [&secured.server_args(port)[..], &extra[..]].concat();
                    RedisServer::start_accessed(port, &args, secured.cli_args()).await
                }
                None => RedisServer::start_with(port, &extra).await,
            }
        };
        let master = server(closed_port(), [&dir_arg[..], &no_delay[..]].concat()).await;
        let replica_of = ["--replicaof", "127.0.0.1", &master.port.to_string()].map(str::to_string);
        let replica = server(closed_port(), [&dir_arg[..], &replica_of[..]].concat()).await;
        eventually("the replica is in sync", || async {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        })
        .await;
        let port = closed_port();
        // TLS to the sentinel and from it to the master and the replica,
        // which it asks with their password.
        let secured_lines = secured.map_or_else(String::new, |secured| {
            format!(
                "port 0
tls-port {port}
tls-cert-file {cert}
tls-key-file {key}
tls-ca-cert-file {ca}
tls-auth-clients no
tls-replication yes
sentinel auth-pass {MASTER_NAME} {password}
",
                cert = secured.pair.cert.display(),
                key = secured.pair.key.display(),
                ca = secured.ca.display(),
                password = secured.password,
            )
        });
        // The sentinel rewrites its config file, so it gets its own.
        let config = dir.path.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}
bind 127.0.0.1
dir {dir}
sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1
sentinel down-after-milliseconds {MASTER_NAME} 500
sentinel failover-timeout {MASTER_NAME} 2000
sentinel parallel-syncs {MASTER_NAME} 1
{secured_lines}",
                dir = dir.path.display(),
                master = master.port,
            ),
        )
        .expect("write sentinel.conf");
        let sentinel = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let group = RedisSentinel {
            master,
            replica,
            port,
            access: secured.map(Secured::tls_cli_args).unwrap_or_default(),
            tls: secured.is_some(),
            _sentinel: OwnedChild::new(sentinel),
            _dir: dir,
        };
        eventually("the sentinel knows the replica", || async {
            group
                .cli(&["SENTINEL", "REPLICAS", MASTER_NAME])
                .contains(&group.replica.port.to_string())
        })
        .await;
        group
    }

    /// The sentinel's URL, as `redis.sentinel.urls` lists it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let answer = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// Runs `redis-cli` against the sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        let access: Vec<&str> = self.access.iter().map(String::as_str).collect();
        cli(self.port, &[&access[..], args].concat())
    }
}
