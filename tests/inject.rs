//! `outrigger inject` and `k8s/`: the real binary injects the sample
//! manifests under tests/manifests/ (one per kind), and the output, like
//! every manifest in k8s/, parses as typed Kubernetes objects (k8s-openapi).
//! Typed parsing skips fields it does not know, so each object is also
//! printed back from its typed form and must come out the same; and the
//! OpenAPI schemas (`kubernetes-validate --strict`, which scripts/test.sh
//! installs) judge the same objects independently.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Pod, PodSpec, PodTemplateSpec, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const SIDECAR: &str = "outrigger";
const CONFIG_VOLUME: &str = "outrigger-config";
const SCRAPE_ANNOTATIONS: [&str; 3] = [
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
];

// ---- running the binary ----

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn sample(file: &str) -> PathBuf {
    repo(&format!("tests/manifests/{file}"))
}

/// Runs `outrigger` with `args`, feeding `stdin`.
fn outrigger(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_string();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

/// `outrigger inject ARGS`, which must succeed; returns what it printed.
fn inject(args: &[&str], stdin: &str) -> String {
    let output = outrigger(&[&["inject"], args].concat(), stdin);
    assert!(
        output.status.success(),
        "inject {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `outrigger inject -` on `stdin` must exit 1, print nothing, and give an
/// error containing `expected`.
fn assert_refused(stdin: &str, expected: &str) {
    let output = outrigger(&["inject", "-"], stdin);
    assert_eq!(output.status.code(), Some(1), "inject accepted {stdin:?}");
    assert!(output.stdout.is_empty(), "printed a partial result");
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains(expected), "{error} lacks {expected:?}");
}

// ---- reading YAML ----

/// The non-empty documents of a YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or("")
}

/// Every object: the documents, with each `List` replaced by its items.
fn objects(documents: &[Value]) -> Vec<Value> {
    documents
        .iter()
        .flat_map(|document| match document["items"].as_array() {
            Some(items) if kind(document).ends_with("List") => items.clone(),
            _ => vec![document.clone()],
        })
        .collect()
}

/// Parses `object` as `T` and checks that it prints back unchanged, so no
/// field was unknown to the Kubernetes API, misplaced or of the wrong type.
fn strict<T: DeserializeOwned + Serialize>(object: &Value) -> T {
    let typed: T = serde_json::from_value(object.clone()).unwrap_or_else(|err| {
        panic!(
            "{} is not a {}: {err}\n{object:#}",
            kind(object),
            std::any::type_name::<T>()
        )
    });
    assert_eq!(
        &serde_json::to_value(&typed).unwrap(),
        object,
        "typed parsing drops or changes fields of this {}",
        kind(object)
    );
    typed
}

/// The kinds `inject` adds the sidecar to, typed (boxed: they are large).
#[derive(Debug, Clone, PartialEq)]
enum Workload {
    Pod(Box<Pod>),
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    ReplicaSet(Box<ReplicaSet>),
    Job(Box<Job>),
    CronJob(Box<CronJob>),
}

impl Workload {
    /// The typed workload, or `None` for other kinds.
    fn parse(object: &Value) -> Option<Workload> {
        Some(match kind(object) {
            "Pod" => Workload::Pod(Box::new(strict(object))),
            "Deployment" => Workload::Deployment(Box::new(strict(object))),
            "StatefulSet" => Workload::StatefulSet(Box::new(strict(object))),
            "DaemonSet" => Workload::DaemonSet(Box::new(strict(object))),
            "ReplicaSet" => Workload::ReplicaSet(Box::new(strict(object))),
            "Job" => Workload::Job(Box::new(strict(object))),
            "CronJob" => Workload::CronJob(Box::new(strict(object))),
            _ => return None,
        })
    }

    /// The pod's metadata (created empty when the template has none) and spec.
    fn pod(&mut self) -> (&mut ObjectMeta, &mut PodSpec) {
        match self {
            Workload::Pod(pod) => (&mut pod.metadata, pod.spec.as_mut().unwrap()),
            Workload::Deployment(it) => template(&mut it.spec.as_mut().unwrap().template),
            Workload::StatefulSet(it) => template(&mut it.spec.as_mut().unwrap().template),
            Workload::DaemonSet(it) => template(&mut it.spec.as_mut().unwrap().template),
            Workload::ReplicaSet(it) => {
                template(it.spec.as_mut().unwrap().template.as_mut().unwrap())
            }
            Workload::Job(it) => template(&mut it.spec.as_mut().unwrap().template),
            Workload::CronJob(it) => {
                let job = it.spec.as_mut().unwrap().job_template.spec.as_mut();
                template(&mut job.unwrap().template)
            }
        }
    }
}

fn template(template: &mut PodTemplateSpec) -> (&mut ObjectMeta, &mut PodSpec) {
    (
        template.metadata.get_or_insert_with(ObjectMeta::default),
        template.spec.as_mut().unwrap(),
    )
}

/// Checks an object of a kind that is not a workload: typed where
/// k8s-openapi has the type; a PodMonitor (a CRD) by its shape.
fn check_other(object: &Value) {
    match kind(object) {
        "Service" => drop(strict::<Service>(object)),
        "ConfigMap" => drop(strict::<ConfigMap>(object)),
        "ServiceAccount" => drop(strict::<ServiceAccount>(object)),
        "Namespace" => drop(strict::<Namespace>(object)),
        "Role" => drop(strict::<Role>(object)),
        "RoleBinding" => drop(strict::<RoleBinding>(object)),
        "PodMonitor" => {
            assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
            strict::<ObjectMeta>(&object["metadata"]);
            let endpoints = object["spec"]["podMetricsEndpoints"].as_array().unwrap();
            assert_eq!(endpoints[0]["path"], "/metrics");
        }
        other => panic!("no typed check for kind {other:?}"),
    }
}

// ---- what inject adds ----

fn sidecars(spec: &PodSpec) -> Vec<&Container> {
    let init = spec.init_containers.iter().flatten();
    init.chain(&spec.containers)
        .filter(|container| container.name == SIDECAR)
        .collect()
}

/// Checks the pod has the sidecar exactly once, set up as promised, and
/// returns it.
fn assert_injected(meta: &ObjectMeta, spec: &PodSpec, legacy: bool, config_map: &str) -> Container {
    let found = sidecars(spec);
    assert_eq!(found.len(), 1, "the sidecar exactly once: {spec:#?}");
    let sidecar = found[0].clone();
    if legacy {
        assert_eq!(spec.containers.last(), Some(&sidecar), "last container");
        assert_eq!(sidecar.restart_policy, None);
    } else {
        let first = spec.init_containers.as_ref().and_then(|init| init.first());
        assert_eq!(first, Some(&sidecar), "first init container");
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    }
    let ports: Vec<i32> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [15001, 15006, 15090]);
    let admin = IntOrString::String(String::from("outrigger-admin"));
    let probes = [
        (&sidecar.startup_probe, "/ready"),
        (&sidecar.readiness_probe, "/ready"),
        (&sidecar.liveness_probe, "/live"),
    ];
    for (probe, path) in probes {
        let get = probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .unwrap();
        assert_eq!((get.path.as_deref(), &get.port), (Some(path), &admin));
    }
    let env: BTreeMap<&str, Option<&str>> = sidecar
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.as_str(), var.value.as_deref()))
        .collect();
    assert_eq!(env["OUTRIGGER_CONFIG"], Some("/etc/outrigger/sidecar.yaml"));
    assert_eq!(env["LOG_LEVEL"], Some("info"));
    let mount = &sidecar.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/outrigger", Some(true))
    );
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(volume.config_map.as_ref().unwrap().name, config_map);
    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop,
        Some(vec![String::from("ALL")])
    );
    let resources = sidecar.resources.as_ref().unwrap();
    assert!(resources.requests.as_ref().unwrap().contains_key("memory"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
    let annotations = meta.annotations.as_ref().unwrap();
    assert!(SCRAPE_ANNOTATIONS
        .iter()
        .all(|key| annotations.contains_key(*key)));
    sidecar
}

/// Takes out of `after` what inject adds (the sidecar, its volume, the
/// scrape annotations `before` did not have), so the rest compares equal.
fn strip(after: &mut Workload, before: &mut Workload) {
    let had: Vec<String> = before
        .pod()
        .0
        .annotations
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    let (meta, spec) = after.pod();
    spec.containers
        .retain(|container| container.name != SIDECAR);
    retain_or_none(&mut spec.init_containers, |container| {
        container.name != SIDECAR
    });
    retain_or_none(&mut spec.volumes, |volume| volume.name != CONFIG_VOLUME);
    if let Some(annotations) = &mut meta.annotations {
        annotations
            .retain(|key, _| had.contains(key) || !SCRAPE_ANNOTATIONS.contains(&key.as_str()));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

fn retain_or_none<T>(items: &mut Option<Vec<T>>, keep: impl FnMut(&T) -> bool) {
    if let Some(list) = items {
        list.retain(keep);
        if list.is_empty() {
            *items = None;
        }
    }
}

/// Injects a sample with `args` and checks what holds whatever the flags:
/// same documents and objects in the same order, other kinds and `List`
/// wrappers untouched, typed parsing of everything, and a second pass that
/// prints the same bytes. Returns each workload before and after.
fn injected_pairs(file: &str, args: &[&str]) -> Vec<(Workload, Workload)> {
    let path = sample(file);
    let input = std::fs::read_to_string(&path).unwrap();
    let output = inject(&[args, &[path.to_str().unwrap()]].concat(), "");
    let (before, after) = (documents(&input), documents(&output));
    assert_eq!(before.len(), after.len(), "{file}: documents");
    for (before, after) in before.iter().zip(&after) {
        if kind(before).ends_with("List") {
            let without_items = |list: &Value| {
                let mut list = list.clone();
                list["items"] = Value::Null;
                list
            };
            assert_eq!(without_items(before), without_items(after));
        }
    }
    let (before, after) = (objects(&before), objects(&after));
    assert_eq!(before.len(), after.len(), "{file}: objects");
    let mut pairs = Vec::new();
    for (before, after) in before.iter().zip(&after) {
        match (Workload::parse(before), Workload::parse(after)) {
            (Some(before), Some(after)) => pairs.push((before, after)),
            _ => {
                assert_eq!(before, after, "{file}: a {} changed", kind(before));
                check_other(after);
            }
        }
    }
    assert!(!pairs.is_empty(), "{file} has no workload");
    let again = inject(&[args, &["-"]].concat(), &output);
    assert_eq!(again, output, "{file}: a second pass changed the output");
    pairs
}

/// With the default flags: each workload has the native sidecar once and
/// every other field as it was.
fn check_sample(file: &str) {
    for (mut before, mut after) in injected_pairs(file, &[]) {
        let (meta, spec) = after.pod();
        assert_injected(meta, spec, false, "outrigger-config");
        strip(&mut after, &mut before);
        assert_eq!(
            after, before,
            "{file}: fields other than the sidecar's changed"
        );
    }
}

// ---- inject: each kind ----

#[test]
fn a_deployment_gets_the_sidecar_and_the_service_beside_it_is_untouched() {
    check_sample("deployment.yaml");
}

#[test]
fn a_statefulset_gets_the_sidecar() {
    check_sample("statefulset.yaml");
}

#[test]
fn a_daemonset_gets_the_sidecar() {
    check_sample("daemonset.yaml");
}

#[test]
fn a_replicaset_gets_the_sidecar() {
    check_sample("replicaset.yaml");
}

#[test]
fn a_job_gets_the_sidecar() {
    check_sample("job.yaml");
}

#[test]
fn a_cronjob_gets_the_sidecar_in_its_job_template() {
    check_sample("cronjob.yaml");
}

#[test]
fn a_pod_gets_the_sidecar() {
    check_sample("pod.yaml");
}

#[test]
fn each_workload_in_a_list_gets_the_sidecar_and_other_items_are_untouched() {
    check_sample("list.yaml");
}

#[test]
fn a_pod_that_has_an_outrigger_container_is_left_exactly_as_it_is() {
    let path = sample("injected.yaml");
    let input = std::fs::read_to_string(&path).unwrap();
    let output = inject(&[path.to_str().unwrap()], "");
    assert_eq!(documents(&output), documents(&input));
}

// ---- inject: flags ----

#[test]
fn legacy_adds_the_sidecar_as_the_last_regular_container() {
    for (mut before, mut after) in injected_pairs("deployment.yaml", &["--legacy"]) {
        let (meta, spec) = after.pod();
        assert_injected(meta, spec, true, "outrigger-config");
        let init: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, ["migrate"]);
        strip(&mut after, &mut before);
        assert_eq!(after, before);
    }
}

#[test]
fn proxy_env_goes_to_app_containers_and_keeps_their_own() {
    let proxy = Some("http://127.0.0.1:15001");
    let local = Some("localhost,127.0.0.1,::1");
    let expect = |corporate: Option<&'static str>| {
        BTreeMap::from([
            ("HTTP_PROXY", corporate.or(proxy)),
            ("http_proxy", proxy),
            ("NO_PROXY", local),
            ("no_proxy", local),
        ])
    };
    let cases = [
        ("deployment.yaml", None),
        ("replicaset.yaml", Some("http://corporate-proxy:3128")),
    ];
    for (file, corporate) in cases {
        for (_, mut after) in injected_pairs(file, &["--proxy-env"]) {
            let (_, spec) = after.pod();
            for container in spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
            {
                let proxy_env: BTreeMap<&str, Option<&str>> = container
                    .env
                    .iter()
                    .flatten()
                    .filter(|var| var.name.to_lowercase().ends_with("_proxy"))
                    .map(|var| (var.name.as_str(), var.value.as_deref()))
                    .collect();
                let is_app = spec.containers.contains(container) && container.name != SIDECAR;
                let wanted = if is_app {
                    expect(corporate)
                } else {
                    BTreeMap::new()
                };
                assert_eq!(proxy_env, wanted, "{file}: container {}", container.name);
            }
        }
    }
}

#[test]
fn proxy_env_merges_into_the_apps_no_proxy_instead_of_contradicting_it() {
    let input = "apiVersion: v1
kind: Pod
metadata: { name: p }
spec:
  containers:
    - name: app
      env: [{ name: NO_PROXY, value: \".corp.example, 10.0.0.0/8\" }]
";
    let output = inject(&["--proxy-env", "-"], input);
    let pod: Pod = strict(&documents(&output)[0]);
    let spec = pod.spec.expect("a pod spec");
    let app = spec
        .containers
        .iter()
        .find(|c| c.name == "app")
        .expect("app");
    let no_proxy: BTreeMap<&str, Option<&str>> = app
        .env
        .iter()
        .flatten()
        .filter(|var| var.name.eq_ignore_ascii_case("no_proxy"))
        .map(|var| (var.name.as_str(), var.value.as_deref()))
        .collect();
    let merged = Some(".corp.example,10.0.0.0/8,localhost,127.0.0.1,::1");
    assert_eq!(
        no_proxy,
        BTreeMap::from([("NO_PROXY", merged), ("no_proxy", merged)])
    );
}

/// A Deployment with three Services: `web` in front of it (one port),
/// `web-admin` in front of it with two ports, `db` in front of other pods.
const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: { name: web }
spec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: web-admin }
spec:
  selector: { app: web }
  ports: [{ name: http, port: 80, targetPort: 8080 }, { name: metrics, port: 9090 }]
---
apiVersion: v1
kind: Service
metadata: { name: db }
spec: { selector: { app: db }, ports: [{ port: 5432 }] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web }
spec:
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web, tier: front } }
    spec: { containers: [{ name: web, image: example/web }] }
";

/// The `targetPort` of each port of each Service in `yaml`, by Service name.
fn target_ports(yaml: &str) -> BTreeMap<String, Vec<Option<IntOrString>>> {
    objects(&documents(yaml))
        .iter()
        .filter(|object| kind(object) == "Service")
        .map(|object| {
            let service: Service = strict(object);
            let ports = service.spec.and_then(|spec| spec.ports).unwrap_or_default();
            (
                service.metadata.name.unwrap_or_default(),
                ports.into_iter().map(|port| port.target_port).collect(),
            )
        })
        .collect()
}

#[test]
fn inject_says_which_services_bypass_the_inbound_listener_and_retargets_them_when_asked() {
    let before = target_ports(SERVICES);
    let output = outrigger(&["inject", "-"], SERVICES);
    assert!(output.status.success());
    assert_eq!(
        target_ports(&String::from_utf8_lossy(&output.stdout)),
        before
    );
    let notes = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = notes.lines().collect();
    assert_eq!(lines.len(), 2, "{notes}");
    assert!(lines[0].starts_with("outrigger inject: (stdin): Service web: callers of port http (80 -> 8080) still reach the app directly, bypassing the sidecar's inbound listener"), "{notes}");
    assert!(lines[1].starts_with("outrigger inject: (stdin): Service web-admin: callers of port http (80 -> 8080), port metrics (9090 -> 9090) still reach"), "{notes}");

    let output = outrigger(&["inject", "--retarget-service", "-"], SERVICES);
    assert!(output.status.success());
    let retargeted = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut wanted = before.clone();
    wanted.insert("web".into(), vec![Some(IntOrString::Int(15006))]);
    assert_eq!(target_ports(&retargeted), wanted);
    let notes = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        notes.lines().collect::<Vec<_>>(),
        [
            "outrigger inject: (stdin): Service web: port http (80 -> 8080) now targets the sidecar's inbound listener (15006); the config must set listeners.inbound with app: \"http://127.0.0.1:8080\"",
            "outrigger inject: (stdin): Service web-admin: not retargeted: it has 2 ports (port http (80 -> 8080), port metrics (9090 -> 9090)) and the inbound listener fronts one app port; set targetPort: 15006 on the one listeners.inbound.app serves",
        ]
    );
    let again = outrigger(&["inject", "--retarget-service", "-"], &retargeted);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        retargeted,
        "a second pass changes nothing"
    );
    // In the mesh, the retargeted Service's callers must speak mutual TLS.
    let output = outrigger(&["inject", "--mesh", "--retarget-service", "-"], SERVICES);
    let notes = String::from_utf8_lossy(&output.stderr);
    assert!(notes.lines().any(|line| line.starts_with("outrigger inject: (stdin): Service web: port http (80 -> 8080) now targets")
        && line.ends_with("in the mesh it takes only mutual TLS, so the Service's callers must be meshed sidecars, or the config sets listeners.inbound.tls.mode: permissive for the others")), "{notes}");
}

/// Where `--mesh` mounts the identity files; `mesh.identity` in
/// sidecar-config/examples/mesh.yaml points at them.
const IDENTITY_DIR: &str = "/var/run/outrigger/identity";

/// The sidecar's environment in the mesh: its identity in [`IDENTITY_DIR`],
/// mutual TLS on its inbound listener.
const MESH_ENV: [(&str, &str); 2] = [
    ("OUTRIGGER_MESH_IDENTITY_DIR", IDENTITY_DIR),
    ("OUTRIGGER_INBOUND_TLS_MODE", "mesh"),
];

/// Injects deployment.yaml with `--mesh` and `args`, checks each pod has
/// the sidecar as usual (the mesh inbound port 15006 among its ports) with
/// the identity mounted read-only at [`IDENTITY_DIR`] and [`MESH_ENV`] in
/// its environment, and every other field as it was; returns each pod's
/// identity volume.
fn meshed(args: &[&str]) -> Vec<Volume> {
    let mut volumes = Vec::new();
    for (mut before, mut after) in injected_pairs("deployment.yaml", &[&["--mesh"], args].concat())
    {
        let (meta, spec) = after.pod();
        let sidecar = assert_injected(meta, spec, false, "outrigger-config");
        for (name, value) in MESH_ENV {
            let set = sidecar.env.iter().flatten().find(|var| var.name == name);
            assert_eq!(
                set.and_then(|var| var.value.as_deref()),
                Some(value),
                "{name}"
            );
        }
        let mounts = sidecar.volume_mounts.unwrap();
        let mount = mounts
            .iter()
            .find(|mount| mount.mount_path == IDENTITY_DIR)
            .unwrap_or_else(|| panic!("no mount at {IDENTITY_DIR}: {mounts:#?}"));
        assert_eq!(mount.read_only, Some(true));
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == mount.name)
            .unwrap()
            .clone();
        retain_or_none(&mut spec.volumes, |v| v.name != volume.name);
        strip(&mut after, &mut before);
        assert_eq!(after, before, "fields other than the sidecar's changed");
        volumes.push(volume);
    }
    volumes
}

#[test]
fn mesh_mounts_a_csi_driver_spiffe_identity_by_default() {
    for volume in meshed(&[]) {
        let csi = volume.csi.expect("a CSI volume");
        assert_eq!(csi.driver, "spiffe.csi.cert-manager.io");
        assert_eq!(csi.read_only, Some(true));
        // The sidecar runs as group 65532, not root: it must read its key.
        let attributes = csi.volume_attributes.unwrap();
        assert_eq!(attributes["spiffe.csi.cert-manager.io/fs-group"], "65532");
        assert!(volume.secret.is_none());
    }
    let deployment = std::fs::read_to_string(sample("deployment.yaml")).unwrap();
    let plain = inject(&["-"], &deployment);
    assert!(
        !plain.contains(IDENTITY_DIR) && !plain.contains(MESH_ENV[1].0),
        "mounted without --mesh"
    );
    // inject cannot see the config, so it says what is left to it.
    let output = outrigger(
        &["inject", "--mesh", "--config-map", "web-config", "-"],
        &deployment,
    );
    let notes = String::from_utf8(output.stderr).unwrap();
    assert!(
        notes.contains("the ConfigMap's own mesh.identity and listeners.inbound.tls.mode win")
            && notes.contains("in the ConfigMap web-config's sidecar.yaml"),
        "{notes}"
    );
}

#[test]
fn mesh_certs_secret_mounts_that_secret_instead() {
    for volume in meshed(&["--mesh-certs", "secret:web-identity"]) {
        let secret = volume.secret.expect("a Secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("web-identity"));
        assert!(volume.csi.is_none());
    }
    for (args, expected) in [
        (
            &["--mesh", "--mesh-certs", "secret:Web_Id"][..],
            "not a Secret name",
        ),
        (
            &["--mesh", "--mesh-certs", "spire"],
            "expected csi or secret:<name>",
        ),
        (&["--mesh-certs", "secret:web-identity"], "--mesh"),
    ] {
        let output = outrigger(&[&["inject"], args, &["-"]].concat(), "");
        assert_eq!(output.status.code(), Some(2), "{args:?} accepted");
        let error = String::from_utf8(output.stderr).unwrap();
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}

#[test]
fn image_config_map_and_service_account_come_from_the_flags() {
    let args = [
        "--image",
        "registry.example/outrigger:9.9",
        "--config-map",
        "mesh-config",
        "--service-account",
        "mesh",
    ];
    for (_, mut after) in injected_pairs("pod.yaml", &args) {
        let (meta, spec) = after.pod();
        let sidecar = assert_injected(meta, spec, false, "mesh-config");
        assert_eq!(
            sidecar.image.as_deref(),
            Some("registry.example/outrigger:9.9")
        );
        assert_eq!(spec.service_account_name.as_deref(), Some("mesh"));
    }
}

// ---- inject: refusals ----

const CONFIG_MAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";

#[test]
fn yaml_that_does_not_parse_is_refused_naming_its_document() {
    assert_refused(
        &format!("{CONFIG_MAP}---\nkind: [Pod\n"),
        "document 2: not valid YAML",
    );
    assert_refused("\t{{ not yaml at all", "document 1: not valid YAML");
}

#[test]
fn a_document_that_is_not_a_mapping_is_refused_naming_it() {
    assert_refused(
        &format!("{CONFIG_MAP}---\n{CONFIG_MAP}---\n- a\n- list\n"),
        "document 3: expected a mapping",
    );
    assert_refused("just a line of text\n", "document 1: expected a mapping");
}

#[test]
fn a_workload_without_a_pod_template_is_refused() {
    assert_refused(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n",
        "document 1 (Deployment web): spec.template: missing",
    );
}

#[test]
fn a_pod_spec_of_the_wrong_shape_is_refused_naming_the_field() {
    assert_refused(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
        "document 1 (Pod p): spec: missing",
    );
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: batch/v1\n  kind: Job\n  \
                metadata: {name: j}\n  spec: {template: {spec: {containers: app}}}\n";
    assert_refused(
        list,
        "document 1 (items[0] Job j): spec.template.spec.containers: expected a list, got a string",
    );
}

#[test]
fn a_file_that_cannot_be_read_is_an_error() {
    let output = outrigger(&["inject", "/nonexistent/app.yaml"], "");
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains("/nonexistent/app.yaml: cannot read it"),
        "{error}"
    );
}

// ---- k8s/ ----

/// The resource files a kustomization lists, read as objects.
fn kustomization_objects(dir: &str) -> Vec<Value> {
    let kustomization =
        documents(&std::fs::read_to_string(repo(&format!("{dir}/kustomization.yaml"))).unwrap());
    let resources = kustomization[0]["resources"].as_array().unwrap();
    resources
        .iter()
        .flat_map(|file| {
            let path = repo(&format!("{dir}/{}", file.as_str().unwrap()));
            documents(&std::fs::read_to_string(path).unwrap())
        })
        .collect()
}

#[test]
fn every_manifest_in_k8s_parses_as_typed_objects() {
    let mut kinds = Vec::new();
    for object in kustomization_objects("k8s")
        .iter()
        .chain(&kustomization_objects("k8s/redis"))
    {
        if Workload::parse(object).is_none() {
            check_other(object);
        }
        kinds.push(kind(object).to_string());
    }
    kinds.sort();
    let expected = [
        "Deployment",
        "Deployment",
        "PodMonitor",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, expected);
}

#[test]
fn the_k8s_config_map_source_is_a_valid_sidecar_config() {
    let base = documents(&std::fs::read_to_string(repo("k8s/kustomization.yaml")).unwrap());
    let source = base[0]["configMapGenerator"][0]["files"][0]
        .as_str()
        .unwrap();
    let (key, file) = source.split_once('=').unwrap();
    assert_eq!(key, "sidecar.yaml");
    let path = repo("k8s").join(file);
    let output = outrigger(&["check", "--config", path.to_str().unwrap()], "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_k8s_deployment_sidecar_is_exactly_what_inject_adds() {
    let objects = kustomization_objects("k8s");
    let deployment = objects.iter().find(|o| kind(o) == "Deployment").unwrap();
    let mut bare = deployment.clone();
    let pod = &mut bare["spec"]["template"]["spec"];
    let pod = pod.as_object_mut().unwrap();
    pod.remove("initContainers");
    pod.remove("volumes");
    let injected = documents(&inject(&["-"], &bare.to_string()));
    let Some(Workload::Deployment(injected)) = Workload::parse(&injected[0]) else {
        panic!("inject did not print a Deployment");
    };
    assert_eq!(*injected, strict::<Deployment>(deployment));
}

/// The example namespace in the mesh, k8s/mesh: each app's sidecar is
/// what `inject --mesh` adds with the app's ConfigMap, and each ConfigMap
/// source, which says nothing of the identity or the inbound listener's
/// TLS, is a valid config in the mesh with the environment inject sets
/// (`check` without the files warns that they are mounted where the
/// sidecar runs).
#[test]
fn the_k8s_mesh_example_is_two_apps_as_inject_mesh_makes_them() {
    let objects = kustomization_objects("k8s/mesh");
    let mut kinds: Vec<&str> = objects.iter().map(kind).collect();
    kinds.sort_unstable();
    let expected = [
        "Deployment",
        "Deployment",
        "Namespace",
        "Service",
        "ServiceAccount",
        "ServiceAccount",
    ];
    assert_eq!(kinds, expected);
    for object in &objects {
        let Some(Workload::Deployment(deployment)) = Workload::parse(object) else {
            check_other(object);
            continue;
        };
        let mut bare = object.clone();
        let pod = bare["spec"]["template"]["spec"].as_object_mut().unwrap();
        pod.remove("initContainers");
        let volumes = pod.remove("volumes").unwrap();
        let config_map = volumes[0]["configMap"]["name"].as_str().unwrap();
        let args = ["--mesh", "--config-map", config_map, "-"];
        let injected = documents(&inject(&args, &bare.to_string()));
        assert_eq!(
            Workload::parse(&injected[0]),
            Some(Workload::Deployment(deployment))
        );
    }
    let kustomization =
        documents(&std::fs::read_to_string(repo("k8s/mesh/kustomization.yaml")).unwrap());
    let generators = kustomization[0]["configMapGenerator"].as_array().unwrap();
    assert_eq!(generators.len(), 2);
    for generator in generators {
        let source = generator["files"][0].as_str().unwrap();
        let (key, file) = source.split_once('=').unwrap();
        assert_eq!(key, "sidecar.yaml");
        let path = repo("k8s/mesh").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let config = &documents(&text)[0];
        assert!(config["mesh"].is_null() && config["listeners"]["inbound"]["tls"].is_null());
        let output = Command::new(env!("CARGO_BIN_EXE_outrigger"))
            .args(["check", "--config", path.to_str().unwrap()])
            .envs(MESH_ENV)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{said}");
        let summary = String::from_utf8_lossy(&output.stdout);
        assert!(
            summary.contains("inbound 0.0.0.0:15006 (app 127.0.0.1:8080, tls mesh)"),
            "{summary}"
        );
        assert!(
            said.contains("OUTRIGGER_MESH_IDENTITY_DIR (mesh.identity.cert_file): /var/run/outrigger/identity/tls.crt does not exist"),
            "{said}"
        );
    }
}

#[test]
fn k8s_rbac_allows_only_reading_endpointslices_for_the_app_account() {
    let objects = kustomization_objects("k8s");
    let find = |wanted: &str| objects.iter().find(|o| kind(o) == wanted).unwrap();
    let role: Role = strict(find("Role"));
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups,
        Some(vec![String::from("discovery.k8s.io")])
    );
    assert_eq!(
        rules[0].resources,
        Some(vec![String::from("endpointslices")])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    let binding: RoleBinding = strict(find("RoleBinding"));
    assert_eq!(
        (binding.role_ref.kind.as_str(), binding.role_ref.name),
        ("Role", role.metadata.name.unwrap())
    );
    let subjects = binding.subjects.unwrap();
    let deployment: Deployment = strict(find("Deployment"));
    let account = deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .service_account_name;
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(subjects[0].name.clone()), account);
}

#[test]
fn the_pod_monitor_scrapes_the_example_pods_admin_port() {
    let objects = kustomization_objects("k8s");
    let monitor = objects.iter().find(|o| kind(o) == "PodMonitor").unwrap();
    let mut deployment =
        Workload::parse(objects.iter().find(|o| kind(o) == "Deployment").unwrap()).unwrap();
    let (meta, spec) = deployment.pod();
    let labels = meta.labels.clone().unwrap();
    let selector: BTreeMap<String, String> =
        serde_json::from_value(monitor["spec"]["selector"]["matchLabels"].clone()).unwrap();
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "selector {selector:?} misses {labels:?}"
    );
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let sidecar = sidecars(spec)[0];
    let admin = sidecar
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port))
        .unwrap();
    assert_eq!(admin.container_port, 15090);
}

// ---- an independent judge ----

/// Every sample's output with each flag set, and every object of k8s/
/// (less the PodMonitor, a CRD with no bundled schema), pass the Kubernetes
/// 1.28 OpenAPI schemas in strict mode: no unknown or misplaced field, no
/// missing required one, the right types. 1.28 is the first release with
/// native sidecars.
#[test]
fn kubernetes_validate_strict_accepts_inject_output_and_k8s() {
    let samples = [
        "deployment.yaml",
        "statefulset.yaml",
        "daemonset.yaml",
        "replicaset.yaml",
        "job.yaml",
        "cronjob.yaml",
        "pod.yaml",
        "list.yaml",
    ];
    let mut checked = Vec::new();
    for file in samples {
        let path = sample(file);
        for flags in [
            &[][..],
            &["--legacy"],
            &["--proxy-env", "--service-account", "mesh"],
            &["--mesh"],
            &["--legacy", "--mesh", "--mesh-certs", "secret:web-identity"],
        ] {
            let output = inject(&[flags, &[path.to_str().unwrap()]].concat(), "");
            checked.extend(objects(&documents(&output)));
        }
    }
    let base = kustomization_objects("k8s").into_iter();
    checked.extend(
        base.chain(kustomization_objects("k8s/redis"))
            .chain(kustomization_objects("k8s/mesh"))
            .filter(|o| kind(o) != "PodMonitor"),
    );
    let stream: Vec<String> = checked.iter().map(Value::to_string).collect();
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inject-kubernetes-validate.yaml");
    std::fs::write(&file, stream.join("\n---\n")).unwrap();
    let output = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "--kubernetes-version",
            "1.28.0",
        ])
        .arg(&file)
        .output()
        .unwrap_or_else(|err| {
            panic!("python3 -m kubernetes_validate: {err} (scripts/test.sh installs it)")
        });
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "kubernetes-validate (scripts/test.sh installs it) said:\n{said}"
    );
}
