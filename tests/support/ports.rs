//! Free loopback ports, for servers a test starts and for addresses that
//! must refuse connections.

use std::net::{SocketAddr, TcpListener};

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A loopback address nothing listens on (see [`closed_port`]).
pub fn loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], closed_port()))
}
