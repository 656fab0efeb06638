//! `outrigger inject`: adds the sidecar to the workloads in Kubernetes YAML.
//!
//! Documents are read as generic YAML values, so every field, known to us
//! or not, is kept as it was, and printed back in their order (comments and
//! quoting are YAML text, not values: they are not kept). A workload
//! whose pod template already has a container or init container named
//! `outrigger` is left as it is, which makes injecting twice a no-op.
//! Empty documents are dropped; a document that is not YAML or not a
//! mapping is refused with its index (counted from 1). Services that send
//! callers to an injected pod are looked at after every workload is
//! injected (`service`), wherever they are in the stream.

mod mesh;
mod pod;
mod service;

pub use mesh::MeshCerts;

use std::fmt;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

/// What `outrigger inject` adds: its command-line flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Options {
    /// The sidecar's container image.
    #[arg(long, default_value = concat!("outrigger:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The ConfigMap with `sidecar.yaml`, mounted at /etc/outrigger.
    #[arg(long, default_value = "outrigger-config")]
    pub config_map: String,
    /// Set this service account on each injected pod.
    #[arg(long)]
    pub service_account: Option<String>,
    /// Add the sidecar as a regular container, for clusters before 1.28
    /// (by default it is a native sidecar: an init container with
    /// `restartPolicy: Always`).
    #[arg(long)]
    pub legacy: bool,
    /// Set HTTP_PROXY/NO_PROXY in the app containers to use the sidecar.
    #[arg(long)]
    pub proxy_env: bool,
    /// Point each one-port Service that selects an injected pod at the
    /// sidecar's inbound listener (15006); needs `listeners.inbound` in
    /// the sidecar's config. Without it, such Services are named on
    /// stderr: their callers bypass the inbound listener.
    #[arg(long)]
    pub retarget_service: bool,
    /// Put the pods in the mesh: mount their identity (`--mesh-certs`)
    /// read-only at /var/run/outrigger/identity (tls.crt, tls.key, ca.crt),
    /// and tell the sidecar to use it and to take only mutual TLS on its
    /// inbound listener (15006), unless the ConfigMap's sidecar.yaml sets
    /// `mesh.identity` or `listeners.inbound.tls.mode` itself.
    #[arg(long)]
    pub mesh: bool,
    /// Where the mesh identity comes from: `csi` (cert-manager's
    /// csi-driver-spiffe) or `secret:<name>` (a Secret with those files).
    #[arg(long, default_value = "csi", requires = "mesh")]
    pub mesh_certs: MeshCerts,
}

/// The injected stream, and what the user should know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The documents printed back, separated by `---`.
    pub yaml: String,
    /// One line per thing left for the user to do or decide (a Service
    /// callers still reach the app through, a proxy variable not merged).
    pub notes: Vec<String>,
}

/// What injecting the workloads found, for the Services and the notes.
#[derive(Default)]
struct Found {
    /// The labels of each injected pod template.
    labels: Vec<Mapping>,
    /// Whether the stream has a workload (for `--mesh`'s note).
    workloads: bool,
    notes: Vec<String>,
}

/// Why a document could not be injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectError {
    /// The document's index in the stream, counted from 1.
    pub document: usize,
    /// Which object in the document, e.g. `Deployment web` or
    /// `items[2] Pod db`; empty when the document itself is at fault.
    pub object: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if !self.object.is_empty() {
            write!(f, " ({})", self.object)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for InjectError {}

/// Injects the sidecar into every workload of a multi-document YAML stream
/// and returns the stream printed back, with notes for the user.
pub fn inject(input: &str, options: &Options) -> Result<Injected, InjectError> {
    let mut documents = Vec::new();
    let mut found = Found::default();
    for (index, document) in serde_norway::Deserializer::from_str(input).enumerate() {
        let number = index + 1;
        let refuse = |object: &str, message: String| InjectError {
            document: number,
            object: object.to_string(),
            message,
        };
        let mut value = Value::deserialize(document)
            .map_err(|err| refuse("", format!("not valid YAML: {err}")))?;
        if value.is_null() {
            continue;
        }
        let Value::Mapping(object) = &mut value else {
            return Err(refuse(
                "",
                format!(
                    "expected a mapping (a Kubernetes object), got {}",
                    shape(&value)
                ),
            ));
        };
        inject_object(object, options, &mut found)
            .map_err(|(object, message)| refuse(&object, message))?;
        documents.push((number, value));
    }
    let mut printed = Vec::new();
    for (number, mut value) in documents {
        if let Value::Mapping(object) = &mut value {
            review_services(object, options, &mut found);
        }
        let text = serde_norway::to_string(&value).map_err(|err| InjectError {
            document: number,
            object: String::new(),
            message: format!("cannot print it back: {err}"),
        })?;
        printed.push(text);
    }
    if options.mesh && found.workloads {
        found.notes.push(mesh::config_note(&options.config_map));
    }
    Ok(Injected {
        yaml: printed.join("---\n"),
        notes: found.notes,
    })
}

/// Reviews a Service (or each of a `List`'s) against the injected pods.
fn review_services(object: &mut Mapping, options: &Options, found: &mut Found) {
    let kind = text(object.get("kind"));
    if kind == "Service" && api_group(text(object.get("apiVersion"))).is_empty() {
        if let Some(note) = service::review(object, &found.labels, options) {
            found.notes.push(note);
        }
    } else if kind.ends_with("List") {
        if let Some(Value::Sequence(items)) = object.get_mut("items") {
            for item in items {
                if let Value::Mapping(item) = item {
                    review_services(item, options, found);
                }
            }
        }
    }
}

/// Where an object is and what is wrong with it.
type ObjectError = (String, String);

/// An object's `metadata.name`, or `(unnamed)`, as notes and errors name it.
fn object_name(object: &Mapping) -> String {
    object
        .get("metadata")
        .and_then(|metadata| metadata.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string()
}

/// Injects one object (or each item of a `List`); other kinds pass through.
fn inject_object(
    object: &mut Mapping,
    options: &Options,
    found: &mut Found,
) -> Result<(), ObjectError> {
    let kind = text(object.get("kind")).to_string();
    let name = object_name(object);
    if kind.ends_with("List") {
        return inject_list(object, options, found);
    }
    let Some(template) = template_path(api_group(text(object.get("apiVersion"))), &kind) else {
        return Ok(());
    };
    let what = format!("{kind} {name}");
    let here = |message: String| (what.clone(), message);
    let pod = walk(object, template).map_err(here)?;
    // pod::inject names fields from the pod down; prefix the way to the pod.
    let prefix: String = template.iter().map(|key| format!("{key}.")).collect();
    let mut notes = Vec::new();
    pod::inject(pod, options, &mut notes).map_err(|message| here(format!("{prefix}{message}")))?;
    found.workloads = true;
    found.notes.extend(
        notes
            .into_iter()
            .map(|note| format!("{what}: {prefix}{note}")),
    );
    if let Some(Value::Mapping(labels)) = pod.get("metadata").and_then(|m| m.get("labels")) {
        found.labels.push(labels.clone());
    }
    Ok(())
}

/// Injects each item of a `List` kind, naming the item in errors.
fn inject_list(
    list: &mut Mapping,
    options: &Options,
    found: &mut Found,
) -> Result<(), ObjectError> {
    let Some(items) = list.get_mut("items") else {
        return Ok(());
    };
    let Value::Sequence(items) = items else {
        return Err((
            String::from("List"),
            format!("items: expected a list, got {}", shape(items)),
        ));
    };
    for (index, item) in items.iter_mut().enumerate() {
        let Value::Mapping(item) = item else {
            return Err((
                format!("items[{index}]"),
                format!("expected a mapping, got {}", shape(item)),
            ));
        };
        inject_object(item, options, found)
            .map_err(|(object, message)| (format!("items[{index}] {object}"), message))?;
    }
    Ok(())
}

/// The API group of an `apiVersion`: `apps` for `apps/v1`, empty for `v1`.
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Where a workload keeps its pod (the mapping with `metadata` and `spec`),
/// or `None` for kinds that have no pod to inject.
fn template_path(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
            Some(&["spec", "template"])
        }
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Follows `path` down nested mappings.
fn walk<'a>(mut at: &'a mut Mapping, path: &[&str]) -> Result<&'a mut Mapping, String> {
    for (depth, key) in path.iter().enumerate() {
        let here = path[..=depth].join(".");
        at = match at.get_mut(*key) {
            Some(Value::Mapping(inner)) => inner,
            Some(other) => return Err(format!("{here}: expected a mapping, got {}", shape(other))),
            None => return Err(format!("{here}: missing (no pod template to inject into)")),
        };
    }
    Ok(at)
}

/// A string field's value, or empty when it is absent or not a string.
fn text(value: Option<&Value>) -> &str {
    value.and_then(Value::as_str).unwrap_or("")
}

/// A YAML value's shape, for error messages.
fn shape(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
