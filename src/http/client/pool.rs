//! One worker's idle keep-alive connections, by replica address. The most
//! recently used connection is taken first, so a burst's extra connections
//! go unused and age out. A TLS connection is handed out only for calls
//! made with the origination it was opened with. An idle connection keeps only its socket and
//! codec, not its buffers (the read buffer alone grows to 32 KiB, and a
//! burst's connections would hold theirs until they age out). A connection
//! is handed out only when it is still open and has nothing unread; that
//! check costs no system call unless the socket has signalled something
//! since its last read. Each connection counts itself in its replica's
//! `upstream_connections` gauges (idle or in use) until it closes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_codec::{Framed, FramedParts};
use actix_http::h1::ClientCodec;
use foldhash::HashMap;

use super::stream::Transport;
use crate::metrics::PoolGauges;
use crate::tls::Origination;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per replica by one worker; one released past this
/// is closed. Connections in use have no cap of their own.
pub const MAX_IDLE_PER_REPLICA: usize = 256;

/// A connection's place in `upstream_connections`: under `in_use` or
/// `idle` of the replica it was last used for, until it is dropped. No
/// gauges for a peer that is not a replica (the app).
pub struct Counted {
    gauges: Option<Arc<PoolGauges>>,
    idle: bool,
}

impl Counted {
    /// A new connection, in use for the replica of `gauges`.
    pub fn in_use(gauges: Option<&Arc<PoolGauges>>) -> Counted {
        let counted = Counted {
            gauges: gauges.cloned(),
            idle: false,
        };
        counted.count(1);
        counted
    }

    /// Moves the connection from in use to idle.
    pub(super) fn idle(&mut self) {
        self.count(-1);
        self.idle = true;
        self.count(1);
    }

    /// Moves the connection from idle to in use for the replica of
    /// `gauges` (a connection is pooled by address, which two services may
    /// share: the handles are cloned only then).
    pub(super) fn in_use_for(&mut self, gauges: Option<&Arc<PoolGauges>>) {
        self.count(-1);
        let same = match (&self.gauges, gauges) {
            (Some(counted), Some(asked)) => Arc::ptr_eq(counted, asked),
            (counted, asked) => counted.is_none() && asked.is_none(),
        };
        if !same {
            self.gauges = gauges.cloned();
        }
        self.idle = false;
        self.count(1);
    }

    /// Adds `by` to the gauge of the connection's state.
    fn count(&self, by: i64) {
        if let Some(gauges) = &self.gauges {
            let gauge = if self.idle {
                &gauges.idle
            } else {
                &gauges.in_use
            };
            gauge.add(by);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count(-1);
    }
}

/// A keep-alive connection to one replica.
pub struct Connection {
    /// The socket (or TLS over it), framed by the HTTP/1 client codec.
    pub framed: Framed<Transport, ClientCodec>,
    /// The replica's `host:port`, the pool's key.
    pub address: Rc<str>,
    /// The origination its TLS was opened with; `None`: plain text.
    pub origination: Option<Arc<Origination>>,
    /// When it was last released to the pool.
    idle_since: Instant,
    /// Where it is counted in `upstream_connections`.
    pub counted: Counted,
}

impl Connection {
    /// `framed`, a connection to `address` (over TLS opened with
    /// `origination`) counted as `counted`, idle from now.
    pub fn new(
        framed: Framed<Transport, ClientCodec>,
        address: Rc<str>,
        origination: Option<Arc<Origination>>,
        counted: Counted,
    ) -> Connection {
        Connection {
            framed,
            address,
            origination,
            idle_since: Instant::now(),
            counted,
        }
    }

    /// Whether it was opened as a call made with `origination` asks:
    /// plain text for `None`, else TLS with that very origination.
    fn made_for(&self, origination: Option<&Arc<Origination>>) -> bool {
        match (&self.origination, origination) {
            (None, None) => true,
            (Some(opened), Some(asked)) => Arc::ptr_eq(opened, asked),
            _ => false,
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
        self.framed.io_mut().quiet()
    }
}

/// Idle connections by replica address.
#[derive(Default)]
pub struct Pool {
    idle: HashMap<Rc<str>, Vec<Connection>>,
}

impl Pool {
    /// The most recently released usable connection to `address` made
    /// with `origination`, now in use for the replica of `gauges`; the
    /// others met on the way are closed (one made otherwise is met only
    /// when two services call one address differently, or after a reload
    /// changed a service's TLS).
    pub fn take(
        &mut self,
        address: &str,
        origination: Option<&Arc<Origination>>,
        gauges: Option<&Arc<PoolGauges>>,
    ) -> Option<Connection> {
        let idle = self.idle.get_mut(address)?;
        let now = Instant::now();
        while let Some(mut connection) = idle.pop() {
            if connection.made_for(origination) && connection.usable(now) {
                connection.counted.in_use_for(gauges);
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection`, without its buffers, for the next request to its
    /// replica, when the replica keeps it alive and sent nothing past its
    /// answer; closes it otherwise.
    pub fn put(&mut self, connection: Connection) {
        if !connection.framed.codec_ref().keep_alive() || !connection.framed.is_read_buf_empty() {
            return;
        }
        let Connection {
            framed,
            address,
            origination,
            mut counted,
            ..
        } = connection;
        let parts = framed.into_parts();
        let idle = match self.idle.get_mut(&*address) {
            Some(idle) => idle,
            None => self.idle.entry(Rc::clone(&address)).or_default(),
        };
        if idle.len() < MAX_IDLE_PER_REPLICA {
            counted.idle();
            let framed = Framed::from_parts(FramedParts::new(parts.io, parts.codec));
            idle.push(Connection::new(framed, address, origination, counted));
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::body::BodySize;
    use actix_http::h1::Message;
    use actix_http::{RequestHead, RequestHeadType, ServiceConfig};
    use std::pin::Pin;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A keep-alive connection to a listener of its own that has carried a
    /// request, and the listener's end.
    async fn connected() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let socket = TcpStream::connect(&address).await.expect("connect");
        let (peer, _) = listener.accept().await.expect("accept");
        let config = actix_http::ServiceConfigBuilder::new()
            .keep_alive(actix_http::KeepAlive::Timeout(IDLE_TIMEOUT))
            .build();
        let mut framed = Framed::new(Transport::Plain(socket), ClientCodec::new(config));
        let request = (
            RequestHeadType::Owned(RequestHead::default()),
            BodySize::None,
        );
        Pin::new(&mut framed)
            .write(Message::Item(request))
            .expect("encode a request");
        (
            Connection::new(framed, Rc::from(address), None, Counted::in_use(None)),
            peer,
        )
    }

    /// Whether `pool` still hands out a connection to `address`, within a
    /// deadline for the socket's news to reach the event loop.
    async fn handed_out_within(pool: &mut Pool, address: &str, expected: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let taken = pool.take(address, None, None);
            let found = taken.is_some();
            if let Some(connection) = taken {
                pool.put(connection);
            }
            if found == expected || Instant::now() > deadline {
                return found;
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[actix_rt::test]
    async fn the_most_recently_released_connection_is_taken_first() {
        let (first, _first_peer) = connected().await;
        let (mut second, _second_peer) = connected().await;
        second.address = Rc::clone(&first.address);
        let second_port = second.framed.io_ref().socket().local_addr().expect("port");
        let address = first.address.to_string();
        let mut pool = Pool::default();
        pool.put(first);
        pool.put(second);
        let taken = pool.take(&address, None, None).expect("a connection");
        assert_eq!(
            taken.framed.io_ref().socket().local_addr().ok(),
            Some(second_port)
        );
    }

    #[actix_rt::test]
    async fn a_connection_the_replica_closed_is_not_handed_out() {
        let (connection, peer) = connected().await;
        let address = connection.address.to_string();
        let mut pool = Pool::default();
        pool.put(connection);
        assert!(handed_out_within(&mut pool, &address, true).await);
        drop(peer);
        assert!(!handed_out_within(&mut pool, &address, false).await);
        pool.sweep();
        assert!(pool.idle.is_empty(), "the replica is forgotten");
    }

    #[actix_rt::test]
    async fn a_connection_idle_past_the_idle_timeout_is_not_handed_out() {
        let (mut connection, _peer) = connected().await;
        let now = Instant::now();
        assert!(connection.usable(now));
        assert!(!connection.usable(now + IDLE_TIMEOUT + Duration::from_secs(1)));
    }

    #[actix_rt::test]
    async fn a_replica_keeps_at_most_its_cap_of_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address: Rc<str> = Rc::from(listener.local_addr().expect("address").to_string());
        let mut pool = Pool::default();
        let mut peers = Vec::new();
        for _ in 0..=MAX_IDLE_PER_REPLICA {
            let (mut connection, peer) = connected().await;
            connection.address = Rc::clone(&address);
            pool.put(connection);
            peers.push(peer);
        }
        assert_eq!(pool.idle[&address].len(), MAX_IDLE_PER_REPLICA);
    }

    #[actix_rt::test]
    async fn a_connection_the_replica_will_close_is_not_kept() {
        let (connection, _peer) = connected().await;
        let address = connection.address.to_string();
        let socket = connection.framed.into_parts().io;
        let fresh = Connection::new(
            Framed::new(socket, ClientCodec::new(ServiceConfig::default())),
            Rc::from(address.as_str()),
            None,
            Counted::in_use(None),
        );
        let mut pool = Pool::default();
        pool.put(fresh);
        assert!(
            pool.take(&address, None, None).is_none(),
            "a connection without keep-alive was kept"
        );
    }

    #[actix_rt::test]
    async fn a_connection_with_bytes_no_request_asked_for_is_not_handed_out() {
        let (connection, mut peer) = connected().await;
        let address = connection.address.to_string();
        let mut pool = Pool::default();
        pool.put(connection);
        peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        assert!(!handed_out_within(&mut pool, &address, false).await);
    }
}
