//! What a listener knows of a client's connection that its requests'
//! handlers read: the client's IP ([`PeerIp`]), its verified mesh identity
//! ([`PeerIdentity`]), the chunk-size verdict of an HTTP/1 connection
//! ([`ChunkVerdict`]) and the waiting streams of an HTTP/2 one
//! ([`Streams`]). Gathered once per connection by [`gather`]: actix-http's
//! HTTP/1 server keeps it as the connection's data (`conn_data`); the
//! HTTP/2 dispatcher, which cannot set that, puts one shared
//! [`ConnectionData`] in each request's extensions. Handlers read either
//! through [`connection_data`].

use std::rc::Rc;

use actix_http::{HttpMessage, Protocol, Version};
use actix_web::dev::Extensions;
use actix_web::HttpRequest;

use super::http2::Streams;
use super::stream::ClientStream;
use super::PeerIp;

/// One HTTP/2 connection's data, shared by its requests (in their
/// extensions).
#[derive(Clone)]
pub struct ConnectionData(Rc<Extensions>);

impl ConnectionData {
    /// The data of the connection on `io`.
    pub fn of(io: &ClientStream) -> ConnectionData {
        let mut data = Extensions::new();
        gather(io, &mut data);
        ConnectionData(Rc::new(data))
    }

    /// The connection's `T`, if it has one.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.get::<T>()
    }
}

/// Puts what `io`'s requests read about their connection in `data`.
pub fn gather(io: &ClientStream, data: &mut Extensions) {
    if let Some(ip) = io.peer_addr().and_then(|peer| PeerIp::new(peer.ip())) {
        data.insert(ip);
    }
    if let Some(identity) = io.peer_identity() {
        data.insert(identity.clone());
    }
    if io.protocol() == Protocol::Http2 {
        data.insert(Streams::default());
    } else {
        data.insert(io.chunk_verdict());
    }
}

/// The `T` of the connection `req` came on (see the module doc), if any.
/// An HTTP/1 request's is one look-up in its connection's data, as before
/// there was an HTTP/2 dispatcher.
pub fn connection_data<T: Clone + 'static>(req: &HttpRequest) -> Option<T> {
    if req.version() != Version::HTTP_2 {
        return req.conn_data::<T>().cloned();
    }
    req.extensions()
        .get::<ConnectionData>()
        .and_then(|data| data.get::<T>().cloned())
}
