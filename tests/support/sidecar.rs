//! The sidecar in this process: test configs on ephemeral ports, and
//! [`Sidecar`]s started from them and waited for until ready.

use std::sync::Arc;

use outrigger::config::Config;
use outrigger::Sidecar;

use super::client::status_of;
use super::eventually::eventually;

/// A config for an in-process sidecar on ephemeral ports; `services` is the
/// YAML of the `services:` list.
pub fn config(services: &str) -> Config {
    config_with("", services)
}

/// Like [`config`], with more top-level YAML (a `discovery:` block) first.
pub fn config_with(top: &str, services: &str) -> Config {
    let text = format!(
        "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}\n{top}\nservices:\n{services}"
    );
    Config::from_yaml(&text, &|_| None)
        .unwrap_or_else(|errors| panic!("bad test config: {errors:?}"))
}

/// The `listeners:` block of an in-process sidecar on ephemeral ports with
/// the inbound listener in front of the app at `app` (`host:port`).
pub fn listeners_with_inbound(app: impl std::fmt::Display) -> String {
    format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{app}\" }}"
    )
}

/// Starts a sidecar in this process and waits until it is ready.
pub async fn sidecar(services: &str) -> Sidecar {
    sidecar_with("", services).await
}

/// Like [`sidecar`], with more top-level YAML (a `discovery:` block).
pub async fn sidecar_with(top: &str, services: &str) -> Sidecar {
    ready(Sidecar::start(config_with(top, services)).await).await
}

/// Starts a sidecar in this process whose outbound listener has `limits`
/// added to its section (as `, max_header_bytes: 8192`), with `services`
/// (the YAML of the `services:` list), and waits until it is ready.
pub async fn sidecar_with_outbound(limits: &str, services: &str) -> Sidecar {
    let yaml = format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\"{limits} }}
  admin: {{ bind: \"127.0.0.1:0\" }}
services:
{services}"
    );
    sidecar_from(&yaml, &[]).await
}

/// Starts a sidecar in this process from a whole config (listeners given
/// as 127.0.0.1:0), with `env` as its environment, and waits until ready.
pub async fn sidecar_from(yaml: &str, env: &[(&str, &str)]) -> Sidecar {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let config = Config::from_yaml(yaml, &lookup)
        .unwrap_or_else(|errors| panic!("bad test config: {errors:?}"));
    ready(Sidecar::start(config).await).await
}

/// Starts a sidecar in this process from the config file at `path` (no
/// environment overrides), reloadable, and waits until it is ready.
pub async fn sidecar_from_file(path: &std::path::Path) -> Sidecar {
    let file = outrigger::reload::ConfigFile::with_env(path, Arc::new(|_: &str| None));
    let config = file
        .load()
        .unwrap_or_else(|errors| panic!("bad test config: {errors:?}"));
    ready(Sidecar::start_from(config, file).await).await
}

/// The sidecar that started, once `/ready` answers 200.
async fn ready(started: std::io::Result<Sidecar>) -> Sidecar {
    let sidecar = started.expect("sidecar starts");
    let ready = format!("http://{}/ready", sidecar.admin_addr());
    eventually("the sidecar is ready", || async {
        status_of(&ready).await == Some(200)
    })
    .await;
    sidecar
}

/// An `inbound:` section's `auth` that takes an HS256 token (`JWT_SECRET`)
/// or an API key in `x-api-key` (`OUTRIGGER_API_KEYS`), indented for it.
pub const JWT_OR_API_KEY: &str = "  auth:
    jwt: { algorithms: [HS256] }
    api_keys: { header: x-api-key }";
