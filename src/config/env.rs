//! Environment overrides for the common knobs, as the gateways users come
//! from named them. They apply to `defaults` (and so to every service that
//! does not set the key itself), to `discovery` and to the worker count.
//! Two more put a pod in the mesh without editing its config, as
//! `outrigger inject --mesh` sets them: each fills in what the file leaves
//! out (`mesh.identity`, `listeners.inbound.tls.mode`), and the file's own
//! value wins.

use std::time::Duration;

use serde_norway::Value;

use super::mesh::{self, IdentityConfig, TlsMode};
use super::reader::{parse_duration, FromYaml, Problems};
use super::{Discovery, Env, Policy};

/// The directory holding this pod's mesh identity as `tls.crt`, `tls.key`
/// and `ca.crt` ([`mesh::IDENTITY_FILE_NAMES`]).
pub const MESH_IDENTITY_DIR: &str = "OUTRIGGER_MESH_IDENTITY_DIR";

/// The inbound listener's TLS mode: `off`, `mesh` or `permissive`.
pub const INBOUND_TLS_MODE: &str = "OUTRIGGER_INBOUND_TLS_MODE";

/// Applies every override variable that `env` finds; a bad value is a problem
/// reported under the variable's name.
pub fn apply(
    policy: &mut Policy,
    discovery: &mut Discovery,
    env: Env<'_>,
    problems: &mut Problems,
) {
    let breaker = &mut policy.circuit_breaker;
    if let Some(n) = count(env, "CIRCUIT_BREAKER_FAILURE_THRESHOLD", problems) {
        breaker.failure_threshold = n;
    }
    if let Some(n) = count(env, "CIRCUIT_BREAKER_SUCCESS_THRESHOLD", problems) {
        breaker.success_threshold = n;
    }
    if let Some(d) = seconds(env, "CIRCUIT_BREAKER_TIMEOUT_SECONDS", problems) {
        breaker.cooldown = d;
        breaker.max_cooldown = breaker.max_cooldown.max(d);
    }
    if let Some(d) = seconds(env, "REQUEST_TIMEOUT", problems) {
        policy.timeout = d;
    }
    if let Some(d) = seconds(env, "SERVICE_REFRESH_INTERVAL", problems) {
        discovery.refresh = d;
    }
}

/// `OUTRIGGER_WORKERS`: the listeners' worker count, over the file's `workers`.
pub fn workers(env: Env<'_>, problems: &mut Problems) -> Option<u32> {
    count(env, "OUTRIGGER_WORKERS", problems)
}

/// [`MESH_IDENTITY_DIR`]: the identity in that directory, loaded (for a
/// file without `mesh.identity`); `None` when it is not set or empty.
pub fn mesh_identity(env: Env<'_>, problems: &mut Problems) -> Option<IdentityConfig> {
    let dir = env(MESH_IDENTITY_DIR).filter(|dir| !dir.is_empty())?;
    mesh::identity_in_dir(MESH_IDENTITY_DIR, &dir, problems)
}

/// [`INBOUND_TLS_MODE`] (for a file whose inbound listener sets no
/// `tls.mode`). `edge` is refused: its certificate is named in the file.
pub fn inbound_tls_mode(env: Env<'_>, problems: &mut Problems) -> Option<TlsMode> {
    let text = env(INBOUND_TLS_MODE).filter(|text| !text.is_empty())?;
    match TlsMode::from_yaml(&Value::String(text.trim().to_string())) {
        Some(TlsMode::Edge) => {
            problems.add(
                INBOUND_TLS_MODE,
                "edge is set in the file, with its cert_file and key_file (listeners.inbound.tls); \
                 this variable takes off, mesh or permissive",
            );
            None
        }
        Some(mode) => Some(mode),
        None => {
            problems.add(
                INBOUND_TLS_MODE,
                format!("expected off, mesh or permissive, got \"{text}\""),
            );
            None
        }
    }
}

fn count(env: Env<'_>, name: &str, problems: &mut Problems) -> Option<u32> {
    let text = env(name)?;
    match text.trim().parse::<u32>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            problems.add(
                name,
                format!("expected a whole number of at least 1, got \"{text}\""),
            );
            None
        }
    }
}

/// A number of seconds ("30"), or a duration ("30s", "500ms").
fn seconds(env: Env<'_>, name: &str, problems: &mut Problems) -> Option<Duration> {
    let text = env(name)?;
    let parsed = match text.trim().parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => parse_duration(&text),
    };
    match parsed {
        Some(d) if !d.is_zero() => Some(d),
        _ => {
            problems.add(
                name,
                format!("expected seconds (\"30\") or a duration (\"30s\"), got \"{text}\""),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::reader::{ConfigError, SecretEnv};
    use crate::config::{Config, TlsMode};
    use std::time::Duration;

    const FILE: &str = "services: [{name: api, endpoints: [\"127.0.0.1:9000\"], circuit_breaker: {failure_threshold: 9}}]";

    fn load(vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        crate::config::tests::load(FILE, vars)
    }

    #[test]
    fn overrides_reach_defaults_and_the_services_that_inherit_them() {
        let config = load(&[
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"),
            ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "4"),
            ("CIRCUIT_BREAKER_TIMEOUT_SECONDS", "600"),
            ("REQUEST_TIMEOUT", "250ms"),
            ("SERVICE_REFRESH_INTERVAL", "5"),
        ])
        .expect("valid");
        assert_eq!(config.defaults.policy.circuit_breaker.failure_threshold, 3);
        assert_eq!(
            config.defaults.policy.circuit_breaker.cooldown,
            Duration::from_secs(600)
        );
        assert_eq!(
            config.defaults.policy.circuit_breaker.max_cooldown,
            Duration::from_secs(600)
        );
        assert_eq!(config.discovery.refresh, Duration::from_secs(5));
        let api = &config.service("api").expect("api").policy;
        assert_eq!(api.timeout, Duration::from_millis(250));
        assert_eq!(api.circuit_breaker.success_threshold, 4);
        assert_eq!(
            api.circuit_breaker.failure_threshold, 9,
            "the service's own value wins"
        );
    }

    /// What `outrigger check` makes of `text` with `vars` as the
    /// environment (identity files may be absent): the config or the
    /// errors, and the warnings.
    fn checked(text: &str, vars: &[(&str, &str)]) -> (Result<Config, Vec<String>>, Vec<String>) {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let checked = Config::read(text, &env, SecretEnv::Optional);
        let shown = |problems: Vec<ConfigError>| problems.iter().map(ToString::to_string).collect();
        (checked.outcome.map_err(shown), shown(checked.warnings))
    }

    const INBOUND: &str = "listeners: { inbound: { app: \"http://127.0.0.1:8080\" } }\n";
    const MESHED: [(&str, &str); 2] = [
        ("OUTRIGGER_MESH_IDENTITY_DIR", "/run/identity"),
        ("OUTRIGGER_INBOUND_TLS_MODE", "mesh"),
    ];

    #[test]
    fn the_mesh_variables_fill_in_the_identity_and_the_inbound_mode() {
        let (config, warnings) = checked(INBOUND, &MESHED);
        let config = config.expect("valid");
        let identity = config.mesh.identity.expect("mesh.identity");
        assert_eq!(
            [identity.cert_file, identity.key_file, identity.ca_file],
            [
                "/run/identity/tls.crt",
                "/run/identity/tls.key",
                "/run/identity/ca.crt"
            ]
        );
        let inbound = config.listeners.inbound.expect("inbound");
        assert_eq!(inbound.tls.mode, TlsMode::Mesh);
        assert!(
            warnings.contains(&String::from("OUTRIGGER_MESH_IDENTITY_DIR (mesh.identity.cert_file): /run/identity/tls.crt does not exist (mounted where the sidecar runs?)")),
            "{warnings:?}"
        );
        // Where the sidecar runs, the files must be there.
        let errors = crate::config::tests::load(INBOUND, &MESHED).unwrap_err();
        assert_eq!(errors[0], "OUTRIGGER_MESH_IDENTITY_DIR (mesh.identity.cert_file): /run/identity/tls.crt does not exist (mounted where the sidecar runs?)");
    }

    #[test]
    fn the_files_own_identity_and_inbound_mode_win() {
        let text =
            "listeners: { inbound: { app: \"http://127.0.0.1:8080\", tls: { mode: permissive } } }
mesh: { identity: { cert_file: /own/a.pem, key_file: /own/a.key, ca_file: /own/ca.pem } }
";
        let config = checked(text, &MESHED).0.expect("valid");
        assert_eq!(
            config.mesh.identity.expect("identity").cert_file,
            "/own/a.pem"
        );
        let inbound = config.listeners.inbound.expect("inbound");
        assert_eq!(inbound.tls.mode, TlsMode::Permissive);
        // An explicit off stays off, and no inbound listener takes no mode.
        let off =
            "listeners: { inbound: { app: \"http://127.0.0.1:8080\", tls: { mode: off } } }\n";
        let config = checked(off, &MESHED).0.expect("valid");
        assert_eq!(
            config.listeners.inbound.expect("inbound").tls.mode,
            TlsMode::Off
        );
        assert!(checked("{}", &MESHED)
            .0
            .expect("valid")
            .listeners
            .inbound
            .is_none());
    }

    #[test]
    fn a_bad_inbound_mode_names_the_variable() {
        for (mode, expected) in [
            (
                "edge",
                "OUTRIGGER_INBOUND_TLS_MODE: edge is set in the file",
            ),
            (
                "strict",
                "OUTRIGGER_INBOUND_TLS_MODE: expected off, mesh or permissive, got \"strict\"",
            ),
        ] {
            let errors = checked(INBOUND, &[("OUTRIGGER_INBOUND_TLS_MODE", mode)])
                .0
                .unwrap_err();
            assert!(errors[0].starts_with(expected), "{errors:?}");
        }
    }

    #[test]
    fn a_bad_override_names_the_variable() {
        let errors = load(&[
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "many"),
            ("REQUEST_TIMEOUT", "0"),
        ])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "CIRCUIT_BREAKER_FAILURE_THRESHOLD: expected a whole number of at least 1, got \"many\"",
                "REQUEST_TIMEOUT: expected seconds (\"30\") or a duration (\"30s\"), got \"0\"",
            ]
        );
    }
}
