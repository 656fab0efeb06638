//! The `registry` source: the HTTP service-registry protocol of the seed
//! gateway. `GET {url}/services` lists the replicas every `refresh`; the
//! [`Reporter`](super::registry_feedback::Reporter) sends the increments and
//! deregistrations back.
//!
//! Both our shape and the seed's are read. An entry is an object with an
//! address (`url`/`URL`/`address`, or `host` and `port`), and optionally `id`,
//! `name`, `healthy`, `weight` and `zone`; keys match whatever their case or
//! underscores (`RequestCount`, `request_count`). Entries come as a list
//! (`[...]` or `{"services": [...]}`, each entry naming its service), or keyed
//! by service name (`{"budgeting": [...]}`), or keyed by service and then by
//! replica id (`{"budgeting": {"b-1": {...}}}`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::registry_feedback::{Ids, Reporter};
use super::{DiscoveredEndpoint, DiscoverySource, FeedbackFuture, Snapshot, SnapshotFuture};
use crate::config::RegistryDiscovery;
use crate::metrics::Metrics;
use crate::service::ServiceTable;
use crate::tls::call_client;

/// Bound on each call to the registry.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `/services` answer read.
const MAX_LISTING: usize = 8 << 20;

/// Replicas as an HTTP service registry lists them.
pub struct RegistrySource {
    url: String,
    client: awc::Client,
    ids: Rc<RefCell<Ids>>,
    reporter: Reporter,
}

impl RegistrySource {
    /// A source reading `{url}/services`; builds its HTTP client, so it must
    /// be created on the arbiter the supervisor runs on.
    pub fn new(config: &RegistryDiscovery) -> Self {
        let client = call_client(REGISTRY_TIMEOUT, config.tls.config());
        let ids = Rc::new(RefCell::new(Ids::new()));
        RegistrySource {
            url: config.url.clone(),
            reporter: Reporter::new(
                config.url.clone(),
                client.clone(),
                Rc::clone(&ids),
                config.deregister_on_trip,
            ),
            client,
            ids,
        }
    }
}

impl DiscoverySource for RegistrySource {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn fetch(&mut self) -> SnapshotFuture {
        let url = format!("{}/services", self.url);
        let request = self.client.get(&url).send();
        let ids = Rc::clone(&self.ids);
        Box::pin(async move {
            let mut response = request.await.map_err(|err| format!("GET {url}: {err}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("GET {url}: answered {status}"));
            }
            let body = response
                .body()
                .limit(MAX_LISTING)
                .await
                .map_err(|err| format!("GET {url}: {err}"))?;
            let listing: Value = serde_json::from_slice(&body)
                .map_err(|err| format!("GET {url}: not JSON: {err}"))?;
            let (snapshot, listed_ids) =
                parse(&listing).map_err(|err| format!("GET {url}: {err}"))?;
            *ids.borrow_mut() = listed_ids;
            Ok(Some(snapshot))
        })
    }

    fn feedback(&mut self, table: &ServiceTable, metrics: &Metrics) -> Option<FeedbackFuture> {
        self.reporter.tick(table, metrics)
    }
}

/// One replica as the registry lists it.
struct Entry {
    service: String,
    id: String,
    endpoint: DiscoveredEndpoint,
}

/// Reads a `/services` answer into a snapshot and the registry id of each
/// `(service, address)`; any malformed entry fails the whole read, so a
/// half-understood answer never removes replicas.
pub fn parse(listing: &Value) -> Result<(Snapshot, Ids), String> {
    let mut entries = Vec::new();
    collect(listing, None, None, &mut entries)?;
    let mut snapshot = Snapshot::new();
    let mut ids = Ids::new();
    for entry in entries {
        ids.insert(
            (entry.service.clone(), entry.endpoint.address.clone()),
            entry.id,
        );
        snapshot
            .entry(entry.service)
            .or_default()
            .push(entry.endpoint);
    }
    Ok((snapshot, ids))
}

/// Walks the listing: lists hold entries; an object is an entry when it has
/// an address, otherwise its keys name the service, then the replica id.
fn collect(
    value: &Value,
    service: Option<&str>,
    id: Option<&str>,
    entries: &mut Vec<Entry>,
) -> Result<(), String> {
    match value {
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| collect(item, service, None, entries)),
        Value::Object(map) => {
            let fields = normalised(map);
            if ["url", "address", "host"]
                .iter()
                .any(|k| fields.contains_key(*k))
            {
                entries.push(entry(&fields, service, id)?);
                return Ok(());
            }
            if let (Some(services), None) = (fields.get("services"), service) {
                return collect(services, None, None, entries);
            }
            map.iter().try_for_each(|(key, value)| match service {
                None => collect(value, Some(key), None, entries),
                Some(_) => collect(value, service, Some(key), entries),
            })
        }
        other => Err(format!("expected a list or an object, got {other}")),
    }
}

/// The object's fields by lowercase name without underscores.
fn normalised(map: &Map<String, Value>) -> HashMap<String, &Value> {
    map.iter()
        .map(|(key, value)| (key.to_lowercase().replace('_', ""), value))
        .collect()
}

fn entry(
    fields: &HashMap<String, &Value>,
    service: Option<&str>,
    id: Option<&str>,
) -> Result<Entry, String> {
    let text = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| fields.get(*k).and_then(|v| v.as_str()))
            .map(str::to_string)
    };
    let (address, tls) = match (text(&["url", "address"]), text(&["host"])) {
        (Some(url), _) => authority(&url)?,
        (None, Some(host)) => match fields.get("port").and_then(|p| p.as_u64()) {
            Some(port) => (format!("{host}:{port}"), false),
            None => return Err(format!("replica {host} has no port")),
        },
        (None, None) => return Err("a replica has no address".to_string()),
    };
    let service = text(&["name", "service", "servicename"])
        .or_else(|| service.map(str::to_string))
        .ok_or_else(|| format!("replica {address} names no service"))?;
    let id = text(&["id", "serviceid", "replicaid", "instanceid"])
        .or_else(|| id.map(str::to_string))
        .unwrap_or_else(|| address.clone());
    let flag = |key: &str| fields.get(key).and_then(|v| v.as_bool());
    let base = DiscoveredEndpoint::new(address);
    let endpoint = DiscoveredEndpoint {
        ready: flag("healthy").or_else(|| flag("ready")).unwrap_or(true),
        weight: fields
            .get("weight")
            .and_then(|w| w.as_u64())
            .and_then(|w| u32::try_from(w).ok())
            .unwrap_or(base.weight),
        zone: text(&["zone"]),
        tls,
        ..base
    };
    Ok(Entry {
        service,
        id,
        endpoint,
    })
}

/// `http://10.0.0.7:8080/x` -> `10.0.0.7:8080`, and whether it is called
/// over TLS (`https://`); a URL without a port gets its scheme's, one
/// without a scheme is `http://`. Any other scheme is refused: its replica
/// could be neither called as it asks nor left to plain text.
fn authority(url: &str) -> Result<(String, bool), String> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => {
            return Err(format!(
                "replica {url}: expected an http:// or https:// URL"
            ))
        }
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let address = match (has_port, tls) {
        (true, _) => authority.to_string(),
        (false, true) => format!("{authority}:443"),
        (false, false) => format!("{authority}:80"),
    };
    Ok((address, tls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addresses(snapshot: &Snapshot, service: &str) -> Vec<(String, bool)> {
        snapshot[service]
            .iter()
            .map(|e| (e.address.clone(), e.ready))
            .collect()
    }

    #[test]
    fn our_shape_lists_entries_with_their_service() {
        let (snapshot, ids) = parse(&json!({"services": [
            {"id": "api-1", "name": "api", "host": "10.0.0.7", "port": 8080, "request_count": 3, "healthy": true, "weight": 2, "zone": "z1"},
            {"id": "api-2", "name": "api", "host": "10.0.0.8", "port": 8080, "healthy": false},
        ]}))
        .expect("valid");
        assert_eq!(
            addresses(&snapshot, "api"),
            vec![
                ("10.0.0.7:8080".to_string(), true),
                ("10.0.0.8:8080".to_string(), false)
            ]
        );
        assert_eq!(snapshot["api"][0].weight, 2);
        assert_eq!(snapshot["api"][0].zone.as_deref(), Some("z1"));
        assert_eq!(
            ids[&("api".to_string(), "10.0.0.8:8080".to_string())],
            "api-2"
        );
    }

    #[test]
    fn the_seed_shape_is_keyed_by_service_then_id() {
        let (snapshot, ids) = parse(&json!({
            "api": {"a1": {"URL": "http://10.0.0.7:8080", "RequestCount": 12, "Healthy": true}},
            "web": [{"ID": "w1", "URL": "http://web.local", "Healthy": false}],
        }))
        .expect("valid");
        assert_eq!(
            addresses(&snapshot, "api"),
            vec![("10.0.0.7:8080".to_string(), true)]
        );
        assert_eq!(
            addresses(&snapshot, "web"),
            vec![("web.local:80".to_string(), false)]
        );
        assert_eq!(ids[&("api".to_string(), "10.0.0.7:8080".to_string())], "a1");
        assert_eq!(ids[&("web".to_string(), "web.local:80".to_string())], "w1");
    }

    #[test]
    fn an_https_url_is_called_over_tls_on_its_port() {
        let (snapshot, _) = parse(&json!({"pay": [
            {"url": "https://api.pay.example/v1"},
            {"url": "HTTPS://10.0.0.9:8443"},
            {"url": "http://10.0.0.7"},
        ]}))
        .expect("valid");
        let seen: Vec<(&str, bool)> = snapshot["pay"]
            .iter()
            .map(|e| (e.address.as_str(), e.tls))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("api.pay.example:443", true),
                ("10.0.0.9:8443", true),
                ("10.0.0.7:80", false)
            ]
        );
        assert!(
            parse(&json!({"pay": [{"url": "grpcs://10.0.0.9:8443"}]})).is_err(),
            "a scheme that is neither is refused"
        );
    }

    #[test]
    fn a_malformed_entry_fails_the_whole_read() {
        assert!(
            parse(&json!([{"host": "10.0.0.7", "port": 1}])).is_err(),
            "no service"
        );
        assert!(
            parse(&json!({"api": [{"host": "10.0.0.7"}]})).is_err(),
            "no port"
        );
        assert!(parse(&json!({"api": [3]})).is_err());
        assert!(parse(&json!({"services": []})).is_ok());
    }
}
