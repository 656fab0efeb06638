//! One worker's idle keep-alive connections, by replica address. The most
//! recently used connection is taken first, so a burst's extra connections
//! go unused and age out. A connection is handed out only when it is still
//! open and has nothing unread; that check costs no system call unless the
//! socket has signalled something since its last read.

use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_http::h1::ClientCodec;
use tokio::net::TcpStream;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per replica; one released past this is closed.
const MAX_IDLE_PER_REPLICA: usize = 256;

/// A keep-alive connection to one replica, with its read and write buffers.
pub struct Connection {
    /// The socket, framed by the HTTP/1 client codec.
    pub framed: Framed<TcpStream, ClientCodec>,
    /// The replica's `host:port`, the pool's key.
    pub address: Rc<str>,
    /// When it was last released to the pool.
    idle_since: Instant,
}

impl Connection {
    /// A fresh connection to `address`.
    pub fn new(framed: Framed<TcpStream, ClientCodec>, address: Rc<str>) -> Connection {
        Connection {
            framed,
            address,
            idle_since: Instant::now(),
        }
    }

    /// Whether it can carry another request at `now`: not idle too long,
    /// nothing left unread, and the replica has not closed it.
    fn usable(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.idle_since) > IDLE_TIMEOUT
            || !self.framed.is_read_buf_empty()
        {
            return false;
        }
        let socket = self.framed.io_ref();
        let mut cx = Context::from_waker(Waker::noop());
        match socket.poll_read_ready(&mut cx) {
            // Nothing has arrived since the last read drained the socket.
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Something arrived: an end of stream, a reset, or bytes no
            // request asked for. Only a spurious wake-up leaves it usable.
            Poll::Ready(Ok(())) => matches!(
                socket.try_read(&mut [0u8; 1]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// Idle connections by replica address.
#[derive(Default)]
pub struct Pool {
    idle: HashMap<Rc<str>, Vec<Connection>>,
}

impl Pool {
    /// The most recently released usable connection to `address`; the
    /// unusable ones met on the way are closed.
    pub fn take(&mut self, address: &str) -> Option<Connection> {
        let idle = self.idle.get_mut(address)?;
        let now = Instant::now();
        while let Some(mut connection) = idle.pop() {
            if connection.usable(now) {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection` for the next request to its replica.
    pub fn put(&mut self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let idle = match self.idle.get_mut(&*connection.address) {
            Some(idle) => idle,
            None => self.idle.entry(Rc::clone(&connection.address)).or_default(),
        };
        if idle.len() < MAX_IDLE_PER_REPLICA {
            idle.push(connection);
        }
    }

    /// Closes the connections that are no longer usable, and forgets the
    /// replicas left with none (those gone from discovery among them).
    pub fn sweep(&mut self) {
        let now = Instant::now();
        self.idle.retain(|_, idle| {
            idle.retain_mut(|connection| connection.usable(now));
            !idle.is_empty()
        });
    }
}
