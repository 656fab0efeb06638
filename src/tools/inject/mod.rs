//! `outrigger inject`: adds the sidecar to the workloads in Kubernetes YAML.
//!
//! Documents are read as generic YAML values, so every field, known to us
//! or not, is kept as it was, and printed back in their order (comments and
//! quoting are YAML text, not values: they are not kept). A workload
//! whose pod template already has a container or init container named
//! `outrigger` is left as it is, which makes injecting twice a no-op.
//! Empty documents are dropped; a document that is not YAML or not a
//! mapping is refused with its index (counted from 1).

mod pod;

use std::fmt;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

/// What `outrigger inject` adds, from its command-line flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The sidecar's container image.
    pub image: String,
    /// The ConfigMap holding `sidecar.yaml`, mounted at `/etc/outrigger`.
    pub config_map: String,
    /// The service account set on each injected pod, when given.
    pub service_account: Option<String>,
    /// Add the sidecar as a regular container instead of a native sidecar
    /// (an init container with `restartPolicy: Always`, Kubernetes 1.28+).
    pub legacy: bool,
    /// Give app containers `HTTP_PROXY`/`NO_PROXY` pointing at the sidecar.
    pub proxy_env: bool,
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
/// and returns the stream printed back, documents separated by `---`.
pub fn inject(input: &str, options: &Options) -> Result<String, InjectError> {
    let mut printed = Vec::new();
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
        inject_object(object, options).map_err(|(object, message)| refuse(&object, message))?;
        let text = serde_norway::to_string(&value)
            .map_err(|err| refuse("", format!("cannot print it back: {err}")))?;
        printed.push(text);
    }
    Ok(printed.join("---\n"))
}

/// Where an object is and what is wrong with it.
type ObjectError = (String, String);

/// Injects one object (or each item of a `List`); other kinds pass through.
fn inject_object(object: &mut Mapping, options: &Options) -> Result<(), ObjectError> {
    let kind = text(object.get("kind")).to_string();
    let name = object
        .get("metadata")
        .and_then(|metadata| metadata.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string();
    if kind.ends_with("List") {
        return inject_list(object, options);
    }
    let Some(template) = template_path(api_group(text(object.get("apiVersion"))), &kind) else {
        return Ok(());
    };
    let here = |message: String| (format!("{kind} {name}"), message);
    let pod = walk(object, template).map_err(here)?;
    // pod::inject names fields from the pod down; prefix the way to the pod.
    let prefix: String = template.iter().map(|key| format!("{key}.")).collect();
    pod::inject(pod, options).map_err(|message| here(format!("{prefix}{message}")))
}

/// Injects each item of a `List` kind, naming the item in errors.
fn inject_list(list: &mut Mapping, options: &Options) -> Result<(), ObjectError> {
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
        inject_object(item, options)
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
