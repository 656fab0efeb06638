//! A private `redis-server` for the tests of the Redis store.

use super::child::OwnedChild;
use super::eventually::eventually;
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
        let child = std::process::Command::new("redis-server")
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
            .stdout(std::process::Stdio::null())
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
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}
