//! Private Redis topologies for the tests of the Redis store: one
//! `redis-server`, a cluster of masters joined by `redis-cli --cluster
//! create`, and a master with a replica watched by a sentinel
//! (`redis-server --sentinel`).

use std::process::{Command, Stdio};

use super::child::OwnedChild;
use super::eventually::eventually;
use super::files::TempDir;
use super::ports::closed_port;

/// A private `redis-server` on a free loopback port, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: OwnedChild,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_on(closed_port()).await
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

    /// A server on `port` with `extra` arguments after the test defaults.
    async fn start_with(port: u16, extra: &[String]) -> RedisServer {
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
        let server = RedisServer {
            port,
            child: OwnedChild::new(child),
        };
        eventually("redis-server answers PING", || async { server.ping() }).await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        answers_ping(self.port)
    }

    /// Runs `redis-cli` against this server; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// How many keys the server holds.
    pub fn dbsize(&self) -> u64 {
        let size = self.cli(&["DBSIZE"]);
        size.parse()
            .unwrap_or_else(|_| panic!("DBSIZE answered {size:?}"))
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
    _dirs: Vec<TempDir>,
}

impl RedisCluster {
    /// `count` masters (at least 3) on free ports, joined and sharing every
    /// slot, once `cluster info` says ok on each.
    pub async fn start(count: usize) -> RedisCluster {
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
            masters.push(RedisServer::start_with(closed_port(), &extra).await);
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster {
            masters,
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

    /// The masters' URLs, as `redis.urls` lists them.
    pub fn urls(&self) -> Vec<String> {
        self.masters
            .iter()
            .map(|m| format!("redis://127.0.0.1:{}", m.port))
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
    _sentinel: OwnedChild,
    _dir: TempDir,
}

impl RedisSentinel {
    /// Starts the three, once the replica is in sync and the sentinel knows it.
    pub async fn start() -> RedisSentinel {
        // Replication writes an RDB file even without --save: in here.
        let dir = TempDir::new();
        let dir_arg = ["--dir".to_string(), dir.path.display().to_string()];
        // The replica's first sync starts at once, not after the default 5 s.
        let no_delay = ["--repl-diskless-sync-delay", "0"].map(str::to_string);
        let master =
            RedisServer::start_with(closed_port(), &[&dir_arg[..], &no_delay[..]].concat()).await;
        let replica_of = ["--replicaof", "127.0.0.1", &master.port.to_string()].map(str::to_string);
        let replica =
            RedisServer::start_with(closed_port(), &[&dir_arg[..], &replica_of[..]].concat()).await;
        eventually("the replica is in sync", || async {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        })
        .await;
        let port = closed_port();
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
",
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
            _sentinel: OwnedChild::new(sentinel),
            _dir: dir,
        };
        eventually("the sentinel knows the replica", || async {
            cli(group.port, &["SENTINEL", "REPLICAS", MASTER_NAME])
                .contains(&group.replica.port.to_string())
        })
        .await;
        group
    }

    /// The sentinel's URL, as `redis.sentinel.urls` lists it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let answer = cli(
            self.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        );
        answer.lines().nth(1)?.trim().parse().ok()
    }
}
