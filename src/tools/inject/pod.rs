//! The changes made to one pod: the sidecar container, its config volume,
//! the Prometheus annotations, and optionally the app containers' proxy env
//! and the service account.

use serde_norway::{Mapping, Value};

use super::mesh::{identity_mount, identity_volume, sidecar_env, IDENTITY_VOLUME};
use super::{shape, Options};

/// The sidecar container's name; a pod that has a container or init
/// container by this name is taken as already injected.
const SIDECAR_NAME: &str = "outrigger";

/// The pod volume that mounts the ConfigMap at `/etc/outrigger`.
const CONFIG_VOLUME: &str = "outrigger-config";

/// The sidecar container, less its image. The probes use the admin port
/// (`/ready` turns 200 after the first discovery sync); requests and limits
/// come from the measured footprint (~7 MiB at rest, 10-16 MiB under load).
const SIDECAR: &str = r#"
name: outrigger
image: ""
restartPolicy: Always
args: [run]
env:
  - { name: OUTRIGGER_CONFIG, value: /etc/outrigger/sidecar.yaml }
  - { name: LOG_LEVEL, value: info }
ports:
  - { name: outrigger-out, containerPort: 15001, protocol: TCP }
  - { name: outrigger-in, containerPort: 15006, protocol: TCP }
  - { name: outrigger-admin, containerPort: 15090, protocol: TCP }
startupProbe:
  httpGet: { path: /ready, port: outrigger-admin }
  periodSeconds: 1
  failureThreshold: 30
readinessProbe:
  httpGet: { path: /ready, port: outrigger-admin }
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet: { path: /live, port: outrigger-admin }
  periodSeconds: 10
  failureThreshold: 3
resources:
  requests: { cpu: 50m, memory: 32Mi }
  limits: { memory: 64Mi }
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: { drop: [ALL] }
  seccompProfile: { type: RuntimeDefault }
volumeMounts:
  - { name: outrigger-config, mountPath: /etc/outrigger, readOnly: true }
"#;

/// Annotations Prometheus' pod discovery reads; an app's own are kept.
const SCRAPE_ANNOTATIONS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "15090"),
    ("prometheus.io/path", "/metrics"),
];

/// The proxy `--proxy-env` gives app containers, under both spellings:
/// plain-HTTP calls go through the sidecar. No `HTTPS_PROXY`: the sidecar
/// does not tunnel TLS.
const HTTP_PROXY: [(&str, &str); 2] = [
    ("HTTP_PROXY", "http://127.0.0.1:15001"),
    ("http_proxy", "http://127.0.0.1:15001"),
];

/// The two spellings of the no-proxy list; tools read one or the other, so
/// both must say the same.
const NO_PROXY: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The hosts `--proxy-env` adds to the no-proxy list: local calls (the
/// sidecar's own ports among them) never go through the sidecar.
const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Injects the sidecar into a pod (a mapping with `metadata` and `spec`),
/// unless it is already there. Errors name the field at fault.
/// Notes for the user (a no-proxy list that could not be merged) go to
/// `notes`, naming the field from the pod down.
pub(super) fn inject(
    pod: &mut Mapping,
    options: &Options,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let spec = match pod.get_mut("spec") {
        Some(Value::Mapping(spec)) => spec,
        Some(other) => return Err(format!("spec: expected a mapping, got {}", shape(other))),
        None => return Err(String::from("spec: missing")),
    };
    let mut spec_notes = Vec::new();
    let added = inject_spec(spec, options, &mut spec_notes).map_err(|err| format!("spec.{err}"))?;
    notes.extend(spec_notes.into_iter().map(|note| format!("spec.{note}")));
    if !added {
        return Ok(());
    }
    let annotations = mapping(mapping(pod, "metadata")?, "annotations")
        .map_err(|err| format!("metadata.{err}"))?;
    for (key, value) in SCRAPE_ANNOTATIONS {
        if !annotations.contains_key(key) {
            annotations.insert(key.into(), value.into());
        }
    }
    Ok(())
}

/// Adds the sidecar, its volume, and the proxy env and service account when
/// asked, to a pod spec; false when the sidecar was there already.
fn inject_spec(
    spec: &mut Mapping,
    options: &Options,
    notes: &mut Vec<String>,
) -> Result<bool, String> {
    if has_sidecar(spec)? {
        return Ok(false);
    }
    for volume in [CONFIG_VOLUME, IDENTITY_VOLUME] {
        if has_named(list(spec, "volumes")?, volume) {
            return Err(format!(
                "volumes: a volume named {volume} exists but no {SIDECAR_NAME} container"
            ));
        }
    }
    if options.proxy_env {
        for (index, container) in list(spec, "containers")?.iter_mut().enumerate() {
            let here = format!("containers[{index}]");
            let Value::Mapping(container) = container else {
                return Err(format!(
                    "{here}: expected a mapping, got {}",
                    shape(container)
                ));
            };
            if let Some(note) = add_proxy_env(container).map_err(|err| format!("{here}.{err}"))? {
                notes.push(format!("{here}.{note}"));
            }
        }
    }
    let sidecar = sidecar(options)?;
    if options.legacy {
        list(spec, "containers")?.push(sidecar);
    } else {
        list(spec, "initContainers")?.insert(0, sidecar);
    }
    list(spec, "volumes")?.push(config_volume(&options.config_map));
    if options.mesh {
        list(spec, "volumes")?.push(identity_volume(&options.mesh_certs));
    }
    if let Some(account) = &options.service_account {
        spec.insert("serviceAccountName".into(), account.as_str().into());
    }
    Ok(true)
}

/// The sidecar container for these options.
fn sidecar(options: &Options) -> Result<Value, String> {
    let mut container: Mapping = serde_norway::from_str(SIDECAR)
        .map_err(|err| format!("the built-in sidecar template is invalid: {err}"))?;
    container.insert("image".into(), options.image.as_str().into());
    if options.legacy {
        container.shift_remove("restartPolicy");
    }
    if options.mesh {
        list(&mut container, "volumeMounts")?.push(identity_mount());
        let env = list(&mut container, "env")?;
        env.extend(sidecar_env().map(|(name, value)| variable(name, value)));
    }
    Ok(Value::Mapping(container))
}

/// The `outrigger-config` volume backed by the ConfigMap `config_map`.
fn config_volume(config_map: &str) -> Value {
    let mut source = Mapping::new();
    source.insert("name".into(), config_map.into());
    let mut volume = Mapping::new();
    volume.insert("name".into(), CONFIG_VOLUME.into());
    volume.insert("configMap".into(), Value::Mapping(source));
    Value::Mapping(volume)
}

/// True when a container or init container is named [`SIDECAR_NAME`].
fn has_sidecar(spec: &Mapping) -> Result<bool, String> {
    for key in ["initContainers", "containers"] {
        if let Some(containers) = spec.get(key) {
            let Value::Sequence(containers) = containers else {
                return Err(format!("{key}: expected a list, got {}", shape(containers)));
            };
            if has_named(containers, SIDECAR_NAME) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// True when an item of the list is a mapping with this `name`.
fn has_named(items: &[Value], name: &str) -> bool {
    items
        .iter()
        .any(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

/// Adds [`HTTP_PROXY`] under each spelling the container does not set
/// itself, and merges [`LOCAL_HOSTS`] into its no-proxy list: whatever it
/// lists under either spelling, plus the local hosts, set under both, so
/// no tool reads a list the other spelling contradicts. Returns a note when
/// the list comes from `valueFrom` and cannot be merged (it is left as it is).
fn add_proxy_env(container: &mut Mapping) -> Result<Option<String>, String> {
    let env = list(container, "env")?;
    for (name, value) in HTTP_PROXY {
        if !has_named(env, name) {
            env.push(variable(name, value));
        }
    }
    let mut hosts: Vec<String> = Vec::new();
    for var in env.iter().filter(|var| is_no_proxy(var)) {
        let Some(value) = var.get("value").and_then(Value::as_str) else {
            let name = text_of(var.get("name"));
            return Ok(Some(format!(
                "env: {name} is not a plain value (valueFrom?), so {} was not merged into it; \
                 make sure it lists them, under both NO_PROXY and no_proxy",
                LOCAL_HOSTS.join(",")
            )));
        };
        for host in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            if !hosts.iter().any(|known| known == host) {
                hosts.push(host.to_string());
            }
        }
    }
    for host in LOCAL_HOSTS {
        if !hosts.iter().any(|known| known == host) {
            hosts.push(host.to_string());
        }
    }
    let merged = hosts.join(",");
    for var in env.iter_mut().filter(|var| is_no_proxy(var)) {
        if let Value::Mapping(var) = var {
            var.insert("value".into(), merged.as_str().into());
        }
    }
    for name in NO_PROXY {
        if !has_named(env, name) {
            env.push(variable(name, &merged));
        }
    }
    Ok(None)
}

/// True for an env entry named `NO_PROXY` or `no_proxy`.
fn is_no_proxy(var: &Value) -> bool {
    NO_PROXY.contains(&text_of(var.get("name")))
}

/// A `{name, value}` env entry.
fn variable(name: &str, value: &str) -> Value {
    let mut var = Mapping::new();
    var.insert("name".into(), name.into());
    var.insert("value".into(), value.into());
    Value::Mapping(var)
}

/// A string field's value, or empty.
fn text_of(value: Option<&Value>) -> &str {
    value.and_then(Value::as_str).unwrap_or("")
}

/// The list at `key`, created empty when missing.
fn list<'a>(map: &'a mut Mapping, key: &str) -> Result<&'a mut Vec<Value>, String> {
    match map.entry(key.into()).or_insert(Value::Sequence(Vec::new())) {
        Value::Sequence(items) => Ok(items),
        other => Err(format!("{key}: expected a list, got {}", shape(other))),
    }
}

/// The mapping at `key`, created empty when missing or null.
fn mapping<'a>(map: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping, String> {
    let value = map
        .entry(key.into())
        .or_insert(Value::Mapping(Mapping::new()));
    if value.is_null() {
        *value = Value::Mapping(Mapping::new());
    }
    match value {
        Value::Mapping(inner) => Ok(inner),
        other => Err(format!("{key}: expected a mapping, got {}", shape(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::inject::MeshCerts;

    fn options() -> Options {
        Options {
            image: String::from("outrigger:test"),
            config_map: String::from("cfg"),
            service_account: None,
            legacy: false,
            proxy_env: false,
            retarget_service: false,
            mesh: false,
            mesh_certs: MeshCerts::Csi,
        }
    }

    #[test]
    fn the_template_parses_and_takes_the_image() {
        let container = sidecar(&options()).unwrap();
        assert_eq!(container["name"], SIDECAR_NAME);
        assert_eq!(container["image"], "outrigger:test");
        assert_eq!(container["restartPolicy"], "Always");
        assert_eq!(container["volumeMounts"][0]["name"], CONFIG_VOLUME);
    }

    #[test]
    fn legacy_drops_the_restart_policy() {
        let legacy = Options {
            legacy: true,
            ..options()
        };
        assert!(sidecar(&legacy).unwrap().get("restartPolicy").is_none());
    }

    #[test]
    fn proxy_env_keeps_what_the_app_set() {
        let mut container: Mapping = serde_norway::from_str(
            "{name: app, env: [{name: HTTP_PROXY, value: http://corp:3128}]}",
        )
        .unwrap();
        assert_eq!(add_proxy_env(&mut container).unwrap(), None);
        let env = container["env"].as_sequence().unwrap();
        assert_eq!(env.len(), 4);
        assert_eq!(env[0]["value"], "http://corp:3128");
        assert!(!has_named(env, "HTTPS_PROXY"));
    }

    #[test]
    fn proxy_env_merges_into_the_apps_no_proxy_under_both_spellings() {
        let mut container: Mapping = serde_norway::from_str(
            "{name: app, env: [{name: no_proxy, value: \".corp, 10.0.0.0/8,localhost\"}]}",
        )
        .unwrap();
        assert_eq!(add_proxy_env(&mut container).unwrap(), None);
        let env = container["env"].as_sequence().unwrap();
        let no_proxy: Vec<(&str, &str)> = env
            .iter()
            .filter(|var| is_no_proxy(var))
            .map(|var| (text_of(var.get("name")), text_of(var.get("value"))))
            .collect();
        let merged = ".corp,10.0.0.0/8,localhost,127.0.0.1,::1";
        assert_eq!(no_proxy, [("no_proxy", merged), ("NO_PROXY", merged)]);
    }

    #[test]
    fn a_no_proxy_from_value_from_is_left_with_a_note() {
        let mut container: Mapping = serde_norway::from_str(
            "{name: app, env: [{name: NO_PROXY, valueFrom: {configMapKeyRef: {name: n, key: k}}}]}",
        )
        .unwrap();
        let note = add_proxy_env(&mut container).unwrap().expect("a note");
        assert!(
            note.starts_with("env: NO_PROXY is not a plain value"),
            "{note}"
        );
        let env = container["env"].as_sequence().unwrap();
        assert!(!has_named(env, "no_proxy"), "no conflicting lowercase copy");
    }

    #[test]
    fn a_config_volume_without_the_sidecar_is_refused() {
        let mut pod: Mapping = serde_norway::from_str(
            "spec: {containers: [{name: app}], volumes: [{name: outrigger-config, emptyDir: {}}]}",
        )
        .unwrap();
        let err = inject(&mut pod, &options(), &mut Vec::new()).unwrap_err();
        assert!(err.contains("outrigger-config"), "{err}");
    }
}
