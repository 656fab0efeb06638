//! The `static` source: the endpoints listed under `services[].endpoints`
//! (an `https://` one by its `host:port`: its service's `ServiceTls` says
//! it is called over TLS).

use super::{DiscoveredEndpoint, DiscoverySource, Snapshot, SnapshotFuture};
use crate::config::{endpoint_address, ServiceConfig};

/// Replicas as the config file lists them; never changes.
pub struct StaticSource {
    snapshot: Snapshot,
}

impl StaticSource {
    /// The snapshot of `services`' configured endpoints.
    pub fn new(services: &[ServiceConfig]) -> Self {
        let snapshot = services
            .iter()
            .map(|s| {
                let endpoints = s
                    .endpoints
                    .iter()
                    .map(|e| DiscoveredEndpoint::new(endpoint_address(e)))
                    .collect();
                (s.name.clone(), endpoints)
            })
            .collect();
        StaticSource { snapshot }
    }

    /// The endpoints it lists.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

impl DiscoverySource for StaticSource {
    fn name(&self) -> &'static str {
        "static"
    }

    fn fetch(&mut self) -> SnapshotFuture {
        let snapshot = self.snapshot.clone();
        Box::pin(async move { Ok(Some(snapshot)) })
    }
}
