//! Every key path the config reader accepts, as the reader itself reports
//! it: the configuration reference, docs/reference/config.md, is tested
//! against this list (tests/config_reference.rs).

use serde_norway::Value;

use super::reader::{KeyLog, Problems};

/// A config that opens every section, each an empty mapping (a list of one
/// for lists of mappings). Each section's reader asks for every key it
/// knows whether the file has it or not, so reading this logs them all; a
/// new section needs a line here for its keys to be listed.
const EVERY_SECTION: &str = "
listeners: { outbound: {}, admin: {}, inbound: {} }
discovery: { file: {}, registry: {}, dns: {}, kubernetes: {} }
defaults: { circuit_breaker: {}, retry: {}, concurrency: {} }
services: [{ circuit_breaker: {}, retry: {}, concurrency: {} }]
inbound:
  auth: { jwt: {}, api_keys: {}, rules: [{}] }
  cors: {}
  rate_limit: { routes: [{}] }
  concurrency: {}
  cache: { routes: [{}] }
redis: {}
lifecycle: {}
reload: {}
tracing: {}
";

/// The key paths the reader accepts, with list items written `[]`
/// (`services[].circuit_breaker.window`), and which of them are sections
/// (mappings, or lists of mappings as `inbound.auth.rules[]`).
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
}
