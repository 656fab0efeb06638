//! Every key path the config reader accepts, and whether a reload applies
//! it, as the reader itself reports them: the configuration reference,
//! docs/reference/config.md, is tested against this list
//! (tests/config_reference.rs), and a reload holds back the restart-only
//! ones (src/reload.rs).

use serde_norway::Value;

use super::reader::{KeyLog, Problems};

/// A config that opens every section, each an empty mapping (a list of one
/// for lists of mappings). Each section's reader asks for every key it
/// knows whether the file has it or not, so reading this logs them all; a
/// new section needs a line here for its keys to be listed.
const EVERY_SECTION: &str = "
listeners: { outbound: {}, admin: {}, inbound: { tls: {} } }
discovery: { file: {}, registry: {}, dns: {}, kubernetes: {} }
defaults: { circuit_breaker: {}, retry: {}, concurrency: {} }
services: [{ circuit_breaker: {}, retry: {}, concurrency: {}, tls: {} }]
routes: [{ match: {}, backends: [{}] }]
inbound:
  auth: { jwt: {}, api_keys: {}, rules: [{}], websocket_token: {} }
  authorization: [{}]
  cors: {}
  rate_limit: { routes: [{}] }
  concurrency: {}
  cache: { routes: [{}] }
redis: { sentinel: {} }
mesh: { identity: {} }
lifecycle: {}
reload: {}
tracing: {}
";

/// The key paths the reader accepts, with list items written `[]`
/// (`services[].circuit_breaker.window`), which of them are sections
/// (mappings, or lists of mappings as `inbound.auth.rules[]`), and which
/// are read only at start ([`KeyLog::reload_class`]).
///
/// # Panics
/// Never for the built-in skeleton config, which is valid YAML.
pub fn accepted() -> KeyLog {
    let root: Value = serde_norway::from_str(EVERY_SECTION).expect("the skeleton config parses");
    let mut problems = Problems::recording_keys();
    // Its values are empty, so it has problems (missing names, URLs): only the keys matter.
    let _ = super::read_config(&root, &|_| None, &mut problems);
    problems.into_key_log().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReloadClass;

    #[test]
    fn every_section_of_the_skeleton_is_read_as_one() {
        let log = accepted();
        for section in [
            "listeners.inbound",
            "services[]",
            "services[].retry",
            "inbound.auth.rules[]",
            "inbound.cache.routes[]",
            "tracing",
        ] {
            assert!(log.sections.contains(section), "{section} not read");
        }
        for key in [
            "listeners.inbound.app",
            "defaults.circuit_breaker.window",
            "services[].name",
            "inbound.auth.jwt.jwks_url",
            "inbound.rate_limit.roles",
            "access_log",
        ] {
            assert!(log.keys.contains(key), "{key} not accepted");
        }
    }

    #[test]
    fn keys_read_at_start_are_restart_only_and_the_rest_live() {
        let log = accepted();
        for key in [
            "listeners.outbound.bind",
            "listeners.inbound.max_connections",
            "defaults.connect_timeout",
            "discovery.dns.port",
            "redis.url",
            "redis.mode",
            "redis.sentinel.urls",
            "lifecycle.drain_delay",
            "reload.interval",
            "tracing.sample_rate",
            "access_log",
            "workers",
        ] {
            assert_eq!(log.reload_class(key), ReloadClass::Restart, "{key}");
        }
        for key in [
            "listeners.inbound.app",
            "listeners.inbound.timeout",
            "defaults.timeout",
            "services[].retry.attempts",
            "inbound.cache.max_bytes",
        ] {
            assert_eq!(log.reload_class(key), ReloadClass::Live, "{key}");
        }
    }

    #[test]
    fn connect_timeout_is_a_defaults_key_only() {
        let log = accepted();
        assert!(log.keys.contains("defaults.connect_timeout"));
        assert!(!log.keys.contains("services[].connect_timeout"));
    }
}
