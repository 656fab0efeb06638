//! The `kubernetes` source against an API server written for the test that
//! serves EndpointSlice lists and watch streams the way the real one does
//! (resourceVersion, ADDED/MODIFIED/DELETED events, resuming a watch, and
//! `410 Gone` for a resourceVersion too old): replicas follow each event,
//! not-ready endpoints get no traffic, and serving-while-terminating ones
//! stand in only when nothing is ready.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};
use outrigger::Sidecar;
use serde_json::{json, Value};
use support::admin::first_service_replicas;
use support::client::{get_json, send_ok, status_of};
use support::eventually::eventually;
use support::files::TempDir;
use support::replica::Replica;
use support::sidecar::config_with;
use tokio::sync::mpsc;

type Watcher = mpsc::UnboundedSender<Bytes>;

/// The part of a Kubernetes API server the source uses.
#[derive(Default)]
struct ApiServer {
    cluster: Mutex<Cluster>,
    lists: AtomicUsize,
}

#[derive(Default)]
struct Cluster {
    version: u64,
    slices: BTreeMap<String, Value>,
    /// Every event as sent, by resourceVersion, for watches that resume.
    history: Vec<(u64, Bytes)>,
    /// A watch from before this resourceVersion gets 410 Gone.
    oldest: u64,
    watchers: Vec<Watcher>,
}

impl Cluster {
    fn slice(&mut self, name: &str, service: &str, endpoints: &[(&Replica, Value)]) -> Value {
        self.version += 1;
        let port = endpoints
            .first()
            .map_or(0, |(upstream, _)| upstream.addr.port());
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(upstream, conditions)| {
                json!({"addresses": [upstream.addr.ip().to_string()], "conditions": conditions})
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": "default",
                "resourceVersion": self.version.to_string(),
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
    }

    fn send(&mut self, kind: &str, object: Value) {
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        self.history.push((self.version, line.clone()));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
    }
}

impl ApiServer {
    /// Creates or replaces slice `name` of `service`: each upstream with its
    /// conditions, on the first one's port (a slice has one port for all).
    fn put(&self, name: &str, service: &str, endpoints: &[(&Replica, Value)]) {
        let mut cluster = self.cluster.lock().expect("lock");
        let slice = cluster.slice(name, service, endpoints);
        let kind = if cluster.slices.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        cluster.slices.insert(name.to_string(), slice.clone());
        cluster.send(kind, slice);
    }

    fn delete(&self, name: &str) {
        let mut cluster = self.cluster.lock().expect("lock");
        if let Some(mut slice) = cluster.slices.remove(name) {
            cluster.version += 1;
            slice["metadata"]["resourceVersion"] = json!(cluster.version.to_string());
            cluster.send("DELETED", slice);
        }
    }

    /// Changes a slice while its events are lost (compacted), then ends every
    /// watch with `410 Gone`: only a new list can see the change.
    fn put_unseen_then_expire(&self, name: &str, service: &str, endpoints: &[(&Replica, Value)]) {
        let mut cluster = self.cluster.lock().expect("lock");
        let slice = cluster.slice(name, service, endpoints);
        cluster.slices.insert(name.to_string(), slice);
        cluster.oldest = cluster.version;
        let gone = Bytes::from(format!("{}\n", gone()));
        for watcher in cluster.watchers.drain(..) {
            let _ = watcher.send(gone.clone());
        }
    }
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410,
    }})
}

async fn endpoint_slices(
    api: web::Data<ApiServer>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let mut cluster = api.cluster.lock().expect("lock");
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        api.lists.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::Ok().json(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": cluster.version.to_string()},
            "items": cluster.slices.values().collect::<Vec<_>>(),
        }));
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cluster.version);
    let (sender, mut receiver) = mpsc::unbounded_channel::<Bytes>();
    if since < cluster.oldest {
        let _ = sender.send(Bytes::from(format!("{}\n", gone())));
    } else {
        for (_, line) in cluster.history.iter().filter(|(v, _)| *v > since) {
            let _ = sender.send(line.clone());
        }
        cluster.watchers.push(sender);
    }
    let body = futures_util::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|line| line.map(Ok::<_, actix_web::Error>))
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body)
}

impl ApiServer {
    /// Starts the server and writes a kubeconfig naming it.
    async fn start(dir: &TempDir) -> (Arc<ApiServer>, std::path::PathBuf) {
        let api = Arc::new(ApiServer::default());
        let shared = web::Data::from(Arc::clone(&api));
        let server = HttpServer::new(move || {
            App::new().app_data(shared.clone()).route(
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                web::get().to(endpoint_slices),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the API server");
        let url = format!("http://{}", server.addrs()[0]);
        actix_rt::spawn(server.run());
        let kubeconfig = dir.path.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1
kind: Config
clusters: [{{name: test, cluster: {{server: \"{url}\"}}}}]
users: [{{name: test, user: {{}}}}]
contexts: [{{name: test, context: {{cluster: test, user: test, namespace: default}}}}]
current-context: test
"
            ),
        )
        .expect("write kubeconfig");
        (api, kubeconfig)
    }
}

fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

fn not_ready() -> Value {
    json!({"ready": false, "serving": false, "terminating": false})
}

fn terminating() -> Value {
    json!({"ready": false, "serving": true, "terminating": true})
}

#[actix_web::test]
async fn replicas_follow_endpoint_slice_events_and_a_relist_after_410() {
    // Every replica on one port (a slice has one), each on its own loopback address.
    let a = Replica::start_at("127.0.0.2:0").await;
    let port = a.addr.port();
    let b = Replica::start_at(&format!("127.0.0.3:{port}")).await;
    let c = Replica::start_at(&format!("127.0.0.4:{port}")).await;
    let dir = TempDir::new();
    let (api, kubeconfig) = ApiServer::start(&dir).await;
    // The only test in this binary, so no other test reads the variable.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let sidecar = Sidecar::start(config_with(
        "discovery: { source: kubernetes, kubernetes: { namespace: default } }",
        "  - name: api",
    ))
    .await
    .expect("sidecar starts");
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());

    eventually("the slices are listed", || async {
        api.lists.load(Ordering::SeqCst) >= 1
    })
    .await;
    let (status, body) = get_json(&format!("{admin}/ready")).await;
    assert_eq!(status, 503, "no slice for api yet: {body}");

    // ADDED: a is ready, b is not.
    api.put("api-1", "api", &[(&a, ready()), (&b, not_ready())]);
    eventually("the sidecar is ready", || async {
        status_of(&format!("{admin}/ready")).await == Some(200)
    })
    .await;
    send_ok(&url, 6).await;
    assert_eq!((a.hits(), b.hits()), (6, 0), "not ready: no traffic");

    // MODIFIED: b turns ready.
    api.put("api-1", "api", &[(&a, ready()), (&b, ready())]);
    eventually("b gets traffic", || async {
        send_ok(&url, 1).await;
        b.hits() > 0
    })
    .await;

    // MODIFIED: a leaves readiness, b is terminating but still serving and
    // nothing is ready: b stands in.
    api.put("api-1", "api", &[(&a, not_ready()), (&b, terminating())]);
    eventually("a is drained", || async {
        first_service_replicas(&admin).await.len() == 1
    })
    .await;
    let a_hits = a.hits();
    send_ok(&url, 4).await;
    assert_eq!(a.hits(), a_hits, "a gets no traffic once not ready");

    // A change whose event is lost, then 410 Gone: the relist finds c.
    api.put_unseen_then_expire("api-2", "api", &[(&c, ready())]);
    eventually("c gets traffic after the relist", || async {
        send_ok(&url, 1).await;
        c.hits() > 0
    })
    .await;
    assert!(api.lists.load(Ordering::SeqCst) >= 2, "listed again");
    // c is ready now, so the terminating b no longer stands in.
    eventually("b is drained", || async {
        first_service_replicas(&admin).await.len() == 1
    })
    .await;

    // DELETED: c's slice goes; with nothing ready, the terminating b stands in again.
    api.delete("api-2");
    eventually("b gets traffic again", || async {
        let before = b.hits();
        send_ok(&url, 1).await;
        b.hits() > before
    })
    .await;
    let c_hits = c.hits();
    send_ok(&url, 4).await;
    assert_eq!(c.hits(), c_hits, "c's slice is gone");
}
