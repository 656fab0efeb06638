//! The `kubernetes` source: a list + watch of the `discovery.k8s.io/v1`
//! EndpointSlices of the configured services (label
//! `kubernetes.io/service-name`) in one namespace, with the kube crate.
//!
//! The client uses `KUBECONFIG` (or `~/.kube/config`) when there is one, and
//! the pod's service-account token and CA otherwise. kube's watcher resumes
//! an interrupted watch from the last resourceVersion, lists everything again
//! on `410 Gone`, and backs off between failures. Each change publishes a new
//! snapshot that the supervisor's next fetch picks up at once; only the
//! latest one counts, so a burst of events is applied once.
//!
//! Only `ready` endpoints get traffic; when none of a service's endpoints is
//! ready, those that are `serving` and `terminating` do, so a rollout that
//! terminates every pod at once still has somewhere to send requests.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use log::{info, warn};
use tokio::sync::watch;

use super::{DiscoveredEndpoint, DiscoverySource, FetchResult, Snapshot, SnapshotFuture};
use crate::config::{KubernetesDiscovery, ServiceConfig};

/// The label an EndpointSlice names its Service with.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// The longest wait between two tries to build a client.
const MAX_CLIENT_BACKOFF: Duration = Duration::from_secs(30);

/// The latest state the watch published: `None` until its first list.
type Published = Option<FetchResult>;

/// Replicas as the Kubernetes API's EndpointSlices list them.
pub struct KubernetesSource {
    /// The receiving end of the watch task's publications; taken by a fetch
    /// while it waits.
    updates: Rc<RefCell<Option<watch::Receiver<Published>>>>,
    /// The watch task ended (it should not): fetch at `refresh` instead of at once.
    stopped: Rc<Cell<bool>>,
}

impl KubernetesSource {
    /// Starts watching the EndpointSlices of `services` on the current arbiter.
    pub fn new(config: &KubernetesDiscovery, services: &[ServiceConfig]) -> Self {
        let (publish, updates) = watch::channel(None);
        let services: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        actix_rt::spawn(watch_slices(config.namespace.clone(), services, publish));
        KubernetesSource {
            updates: Rc::new(RefCell::new(Some(updates))),
            stopped: Rc::new(Cell::new(false)),
        }
    }
}

impl DiscoverySource for KubernetesSource {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// Waits for the next publication of the watch.
    fn fetch(&mut self) -> SnapshotFuture {
        let (slot, stopped) = (Rc::clone(&self.updates), Rc::clone(&self.stopped));
        Box::pin(async move {
            let Some(mut updates) = slot.borrow_mut().take() else {
                return Err("the EndpointSlice watch is already being read".to_string());
            };
            let result = match updates.changed().await {
                Ok(()) => updates.borrow_and_update().clone().unwrap_or(Ok(None)),
                Err(_) => {
                    stopped.set(true);
                    Err("the EndpointSlice watch stopped".to_string())
                }
            };
            *slot.borrow_mut() = Some(updates);
            result
        })
    }

    fn next_fetch(&self, refresh: Duration) -> Duration {
        if self.stopped.get() {
            refresh
        } else {
            Duration::ZERO
        }
    }
}

/// Lists and watches the slices for good, publishing a snapshot after each
/// complete list and each change, and each failure as an error.
async fn watch_slices(namespace: String, services: Vec<String>, publish: watch::Sender<Published>) {
    let client = connect(&publish).await;
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let selector = format!("{SERVICE_LABEL} in ({})", services.join(","));
    info!("kubernetes: watching EndpointSlices in namespace {namespace} with {selector}");
    let events = watcher::watcher(api, watcher::Config::default().labels(&selector));
    let mut events = std::pin::pin!(events.default_backoff());
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut relisting: Option<BTreeMap<String, EndpointSlice>> = None;
    loop {
        // A config reload that changes the service list replaces the
        // source: its receiver goes, and this watch with it.
        let next = std::pin::pin!(events.next());
        let closed = std::pin::pin!(publish.closed());
        let event = match futures_util::future::select(next, closed).await {
            Either::Left((Some(event), _)) => event,
            Either::Left((None, _)) => break,
            Either::Right(_) => {
                info!("kubernetes: the EndpointSlice watch with {selector} is no longer read; stopping it");
                break;
            }
        };
        let changed = match event {
            Ok(Event::Init) => {
                relisting = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(slice)) => {
                if let Some(listed) = relisting.as_mut() {
                    listed.insert(slice_name(&slice), slice);
                }
                false
            }
            Ok(Event::InitDone) => {
                slices = relisting.take().unwrap_or_default();
                true
            }
            Ok(Event::Apply(slice)) => {
                slices.insert(slice_name(&slice), slice);
                true
            }
            Ok(Event::Delete(slice)) => {
                slices.remove(&slice_name(&slice));
                true
            }
            Err(err) => {
                warn!("kubernetes: EndpointSlice watch failed, retrying with backoff: {err}");
                publish.send_replace(Some(Err(err.to_string())));
                false
            }
        };
        if changed {
            publish.send_replace(Some(Ok(Some(snapshot(&slices, &services)))));
        }
    }
}

/// A client from `KUBECONFIG` or the pod's service account, retried with
/// backoff until one can be built; each failure is published.
async fn connect(publish: &watch::Sender<Published>) -> Client {
    let mut backoff = Duration::from_secs(1);
    loop {
        match Client::try_default().await {
            Ok(client) => return client,
            Err(err) => {
                let reason = format!("cannot set up the Kubernetes client: {err}");
                warn!("kubernetes: {reason}; retrying in {}s", backoff.as_secs());
                publish.send_replace(Some(Err(reason)));
                actix_rt::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_CLIENT_BACKOFF);
            }
        }
    }
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// Each service's endpoints from its slices; a service with no slice is left
/// out, so it keeps its replicas.
fn snapshot(slices: &BTreeMap<String, EndpointSlice>, services: &[String]) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for service in services {
        let mine: Vec<&EndpointSlice> = slices
            .values()
            .filter(|slice| {
                let labels = slice.metadata.labels.as_ref();
                labels.and_then(|l| l.get(SERVICE_LABEL)) == Some(service)
            })
            .collect();
        if !mine.is_empty() {
            snapshot.insert(service.clone(), endpoints(&mine));
        }
    }
    snapshot
}

/// The endpoints of one service's slices, ready ones first choice and
/// serving-while-terminating ones when nothing is ready.
fn endpoints(slices: &[&EndpointSlice]) -> Vec<DiscoveredEndpoint> {
    let mut endpoints = Vec::new();
    let mut fallback = Vec::new();
    for slice in slices {
        let Some((port, tls)) = slice_port(slice) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint.addresses.first() else {
                continue;
            };
            let conditions = endpoint.conditions.as_ref();
            // The API says an unknown `ready` is to be taken as ready.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let address = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            if serving && terminating {
                fallback.push(endpoints.len());
            }
            endpoints.push(DiscoveredEndpoint {
                zone: endpoint.zone.clone(),
                ready,
                tls,
                ..DiscoveredEndpoint::new(address)
            });
        }
    }
    if !endpoints.iter().any(|e| e.ready) {
        for index in fallback {
            endpoints[index].ready = true;
        }
    }
    endpoints
}

/// The slice's port named `http`, or its first one, and whether it speaks
/// HTTPS: its `appProtocol` is `https`, or, without one, its name is
/// `https` or starts with `https-` (the convention meshes read).
fn slice_port(slice: &EndpointSlice) -> Option<(i32, bool)> {
    let ports = slice.ports.as_ref()?;
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .or_else(|| ports.first())?;
    let tls = match (port.app_protocol.as_deref(), port.name.as_deref()) {
        (Some(protocol), _) => protocol.eq_ignore_ascii_case("https"),
        (None, Some(name)) => name == "https" || name.starts_with("https-"),
        (None, None) => false,
    };
    Some((port.port?, tls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-x"), "labels": {SERVICE_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}],
            "endpoints": endpoints,
        }))
        .expect("a valid slice")
    }

    fn listed(slice: EndpointSlice, service: &str) -> Vec<(String, bool)> {
        let slices = BTreeMap::from([(slice_name(&slice), slice)]);
        snapshot(&slices, &[service.to_string()])[service]
            .iter()
            .map(|e| (e.address.clone(), e.ready))
            .collect()
    }

    #[test]
    fn ready_endpoints_get_traffic_on_the_http_port() {
        let api = slice(
            "api",
            json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "zone": "z1"},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["fd00::3"]},
            ]),
        );
        assert_eq!(
            listed(api, "api"),
            vec![
                ("10.0.0.1:8080".to_string(), true),
                ("10.0.0.2:8080".to_string(), false),
                ("[fd00::3]:8080".to_string(), true),
            ]
        );
    }

    #[test]
    fn serving_terminating_endpoints_stand_in_when_none_is_ready() {
        let api = slice(
            "api",
            json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": false}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        );
        assert_eq!(
            listed(api, "api"),
            vec![
                ("10.0.0.1:8080".to_string(), false),
                ("10.0.0.2:8080".to_string(), true),
            ]
        );
    }

    #[test]
    fn an_https_port_is_called_over_tls() {
        let tls_of = |ports: serde_json::Value| {
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": "api-x", "labels": {SERVICE_LABEL: "api"}},
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": [{"addresses": ["10.0.0.1"]}],
            }))
            .expect("a valid slice");
            let slices = BTreeMap::from([(slice_name(&slice), slice)]);
            let api = &snapshot(&slices, &["api".to_string()])["api"][0];
            (api.address.clone(), api.tls)
        };
        assert_eq!(
            tls_of(json!([{"name": "https", "port": 8443}])),
            ("10.0.0.1:8443".to_string(), true)
        );
        assert_eq!(
            tls_of(json!([{"name": "web", "port": 8443, "appProtocol": "https"}])),
            ("10.0.0.1:8443".to_string(), true)
        );
        assert_eq!(
            tls_of(json!([{"name": "https-web", "port": 8443, "appProtocol": "http"}])),
            ("10.0.0.1:8443".to_string(), false),
            "appProtocol says, when it is set"
        );
        assert_eq!(
            tls_of(json!([{"name": "https", "port": 8443}, {"name": "http", "port": 8080}])),
            ("10.0.0.1:8080".to_string(), false),
            "the http port is preferred"
        );
    }

    #[test]
    fn a_service_without_slices_is_left_out() {
        let slices = BTreeMap::from([("web-x".to_string(), slice("web", json!([])))]);
        let snapshot = snapshot(&slices, &["api".to_string(), "web".to_string()]);
        assert!(!snapshot.contains_key("api"));
        assert_eq!(snapshot["web"], Vec::new());
    }
}
