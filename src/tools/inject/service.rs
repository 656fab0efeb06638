//! Services in front of injected pods. A Service whose `targetPort` is the
//! app's port sends callers straight to the app, past the sidecar's inbound
//! listener (authentication, rate limits, cache). `inject` cannot tell
//! whether the sidecar's config sets `listeners.inbound` (the ConfigMap is
//! not in its input), and retargeting a Service without it refuses every
//! caller, so moving the Service is asked for with `--retarget-service`;
//! without it, each such Service is named in a note saying callers bypass
//! the listener. With `--mesh` the listener takes only mutual TLS, which
//! the note on a retargeted Service says of its callers.

use serde_norway::{Mapping, Value};

use super::{object_name, Options};

/// The inbound listener's port in the injected sidecar. A number, not the
/// port's name: a named `targetPort` is looked up in the pod's regular
/// containers, and a native sidecar is an init container.
pub(super) const INBOUND_PORT: u64 = 15006;

/// Looks at one Service given the labels of every injected pod template;
/// retargets it when `--retarget-service` was given and it has exactly one
/// port. Returns a note for the user, or `None` when the Service selects no
/// injected pod or already targets the inbound listener.
pub(super) fn review(
    service: &mut Mapping,
    injected: &[Mapping],
    options: &Options,
) -> Option<String> {
    let name = object_name(service);
    let spec = service.get_mut("spec")?.as_mapping_mut()?;
    let selector = spec.get("selector")?.as_mapping()?;
    if selector.is_empty() || !injected.iter().any(|labels| selects(selector, labels)) {
        return None;
    }
    let ports = spec.get_mut("ports")?.as_sequence_mut()?;
    let inbound = Value::from(INBOUND_PORT);
    if ports
        .iter()
        .any(|port| port.get("targetPort") == Some(&inbound))
    {
        return None;
    }
    let described: Vec<String> = ports.iter().map(describe).collect();
    let listed = described.join(", ");
    if !options.retarget_service {
        return Some(format!(
            "Service {name}: callers of {listed} still reach the app directly, bypassing the \
             sidecar's inbound listener (authentication, rate limits, cache); once the config sets \
             listeners.inbound, run inject with --retarget-service or set targetPort: {INBOUND_PORT}"
        ));
    }
    let [port] = ports.as_mut_slice() else {
        return Some(format!(
            "Service {name}: not retargeted: it has {} ports ({listed}) and the inbound listener \
             fronts one app port; set targetPort: {INBOUND_PORT} on the one listeners.inbound.app serves",
            ports.len()
        ));
    };
    let Value::Mapping(port) = port else {
        return None;
    };
    let app_port = port
        .get("targetPort")
        .or_else(|| port.get("port"))
        .map(scalar)
        .unwrap_or_default();
    port.insert("targetPort".into(), inbound);
    let meshed = if options.mesh {
        "; in the mesh it takes only mutual TLS, so the Service's callers must be meshed \
         sidecars, or the config sets listeners.inbound.tls.mode: permissive for the others"
    } else {
        ""
    };
    Some(format!(
        "Service {name}: {listed} now targets the sidecar's inbound listener ({INBOUND_PORT}); \
         the config must set listeners.inbound with app: \"http://127.0.0.1:{app_port}\"{meshed}"
    ))
}

/// True when every `key: value` of the selector is among the labels.
fn selects(selector: &Mapping, labels: &Mapping) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// `port http (80 -> 8080)` for one entry of a Service's `ports`.
fn describe(port: &Value) -> String {
    let field = |key: &str| port.get(key).map(scalar).unwrap_or_default();
    let name = match port.get("name") {
        Some(name) => format!("port {}", scalar(name)),
        None => format!("port {}", field("port")),
    };
    let target = port
        .get("targetPort")
        .map(scalar)
        .unwrap_or_else(|| field("port"));
    format!("{name} ({} -> {target})", field("port"))
}

/// A scalar as text (`8080`, `http`); empty for anything else.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => String::new(),
    }
}
