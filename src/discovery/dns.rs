//! The `dns` source: each service's replicas are the A/AAAA records of
//! `<service><suffix>` (a Kubernetes headless Service) on the configured
//! port, or its SRV records (`<srv>.<service><suffix>`) when `srv` is set.
//! An SRV name for the `https` service (`_https._tcp`, a Kubernetes port
//! named `https`) lists replicas called over TLS.
//!
//! TTL-aware: the resolver caches each answer for its TTL, and the next
//! read comes when the shortest TTL runs out (at least [`MIN_INTERVAL`]
//! after the last, at most `refresh`). A name with no records keeps its
//! service's replicas, like a service a snapshot does not mention; any other
//! failure (timeout, SERVFAIL, no server) fails the read. Either way the
//! name is tried again within [`RETRY_AFTER`].

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use log::warn;

use super::{DiscoveredEndpoint, DiscoverySource, Snapshot, SnapshotFuture};
use crate::config::{DnsDiscovery, ServiceConfig};

/// The shortest wait between two reads, whatever the TTLs say.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait before a name that failed or had no records is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Replicas as DNS lists them.
pub struct DnsSource {
    /// The resolver, or why it could not be built (reported on each read).
    resolver: Result<TokioResolver, String>,
    services: Vec<String>,
    config: DnsDiscovery,
    /// When the next read is due: the shortest TTL of the last read, or a
    /// retry after a failure (`None`: after `refresh`).
    next_read: Rc<Cell<Option<Instant>>>,
}

impl DnsSource {
    /// A source resolving each of `services` with the configured name
    /// servers, or those of `/etc/resolv.conf`.
    pub fn new(config: &DnsDiscovery, services: &[ServiceConfig]) -> Self {
        DnsSource {
            resolver: resolver(&config.nameservers),
            services: services.iter().map(|s| s.name.clone()).collect(),
            config: config.clone(),
            next_read: Rc::new(Cell::new(None)),
        }
    }

    /// The name looked up for `service`; fully qualified when a suffix is
    /// set, so no search domain is tried first.
    fn name_of(&self, service: &str) -> String {
        let mut name = format!("{service}{}", self.config.suffix);
        if let Some(srv) = &self.config.srv {
            name = format!("{srv}.{name}");
        }
        if !self.config.suffix.is_empty() && !name.ends_with('.') {
            name.push('.');
        }
        name
    }
}

fn resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let builder = if nameservers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|err| format!("cannot read the system's DNS configuration: {err}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    builder
        .build()
        .map_err(|err| format!("cannot set up the DNS resolver: {err}"))
}

/// One service's replicas and when its answer expires.
type Resolved = Result<(Vec<DiscoveredEndpoint>, Instant), NetError>;

impl DiscoverySource for DnsSource {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn fetch(&mut self) -> SnapshotFuture {
        let resolver = match &self.resolver {
            Ok(resolver) => resolver.clone(),
            Err(reason) => return Box::pin(std::future::ready(Err(reason.clone()))),
        };
        let lookups = self.services.iter().map(|service| {
            let (resolver, name) = (resolver.clone(), self.name_of(service));
            let (service, port, srv) =
                (service.clone(), self.config.port, self.config.srv.is_some());
            async move {
                let resolved = if srv {
                    resolve_srv(&resolver, &name).await
                } else {
                    resolve_ip(&resolver, &name, port).await
                };
                (service, name, resolved)
            }
        });
        let lookups = join_all(lookups);
        let next_read = Rc::clone(&self.next_read);
        Box::pin(async move {
            let mut snapshot = Snapshot::new();
            let mut failures = Vec::new();
            let mut earliest: Option<Instant> = None;
            let mut due = |at: Instant| earliest = Some(earliest.map_or(at, |e| e.min(at)));
            for (service, name, resolved) in lookups.await {
                match resolved {
                    Ok((endpoints, valid_until)) => {
                        due(valid_until);
                        snapshot.insert(service, endpoints);
                    }
                    Err(err) if err.is_no_records_found() => {
                        due(Instant::now() + RETRY_AFTER);
                        warn!("dns: {name} has no records; service {service} keeps its replicas")
                    }
                    Err(err) => {
                        due(Instant::now() + RETRY_AFTER);
                        failures.push(format!("{name}: {err}"));
                    }
                }
            }
            next_read.set(earliest);
            if failures.is_empty() {
                Ok(Some(snapshot))
            } else {
                Err(failures.join("; "))
            }
        })
    }

    fn next_fetch(&self, refresh: Duration) -> Duration {
        let until_expiry = self
            .next_read
            .get()
            .map_or(refresh, |at| at.saturating_duration_since(Instant::now()));
        until_expiry.clamp(MIN_INTERVAL, refresh.max(MIN_INTERVAL))
    }
}

async fn resolve_ip(resolver: &TokioResolver, name: &str, port: u16) -> Resolved {
    let lookup = resolver.lookup_ip(name).await?;
    let mut addresses: Vec<String> = lookup
        .iter()
        .map(|ip| SocketAddr::new(ip, port).to_string())
        .collect();
    addresses.sort();
    addresses.dedup();
    let endpoints = addresses.into_iter().map(DiscoveredEndpoint::new).collect();
    Ok((endpoints, lookup.valid_until()))
}

/// SRV records give each target's port and weight (0 counts as 1); the
/// targets of the lowest priority are then resolved to their addresses,
/// called over TLS when `name` is for the `https` service.
async fn resolve_srv(resolver: &TokioResolver, name: &str) -> Resolved {
    let tls = name.starts_with("_https.");
    let lookup = resolver.srv_lookup(name).await?;
    let mut valid_until = lookup.valid_until();
    let records: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv),
            _ => None,
        })
        .collect();
    // Only the most preferred (lowest) priority gets traffic.
    let priority = records.iter().map(|srv| srv.priority).min();
    let mut endpoints = Vec::new();
    for srv in records
        .into_iter()
        .filter(|srv| Some(srv.priority) == priority)
    {
        let (targets, target_until) =
            resolve_ip(resolver, &srv.target.to_string(), srv.port).await?;
        valid_until = valid_until.min(target_until);
        endpoints.extend(targets.into_iter().map(|target| DiscoveredEndpoint {
            weight: u32::from(srv.weight.max(1)),
            tls,
            ..target
        }));
    }
    Ok((endpoints, valid_until))
}
