//! The `discovery:` section: which source lists the replicas, how often it
//! is read, and each source's own settings (all with defaults, so only the
//! chosen source's keys need writing).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_norway::Value;

use super::reader::{FromYaml, Problems, Table};
use super::{as_duration, positive};

/// Which discovery source feeds the supervisor, and how often it is asked.
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    /// The source (default `static`).
    pub source: DiscoverySource,
    /// How often a polling source is read again (default 30s).
    #[serde(serialize_with = "as_duration")]
    pub refresh: Duration,
    /// The `file` source's settings.
    pub file: FileDiscovery,
    /// The `registry` source's settings.
    pub registry: RegistryDiscovery,
}

/// The kinds of discovery source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoverySource {
    /// Endpoints come from `services[].endpoints`.
    Static,
    /// Endpoints come from a YAML file that is watched for changes.
    File,
    /// Endpoints come from an HTTP service registry.
    Registry,
}

impl DiscoverySource {
    /// The name config files and the `source` metric label use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::File => "file",
            Self::Registry => "registry",
        }
    }
}

impl FromYaml for DiscoverySource {
    const EXPECTED: &'static str = "one of static, file, registry";
    fn from_yaml(value: &Value) -> Option<Self> {
        match value.as_str()? {
            "static" => Some(Self::Static),
            "file" => Some(Self::File),
            "registry" => Some(Self::Registry),
            _ => None,
        }
    }
}

/// Settings of the `file` source.
#[derive(Debug, Clone, Serialize)]
pub struct FileDiscovery {
    /// The endpoints file (default `/etc/outrigger/endpoints.yaml`).
    pub path: PathBuf,
}

impl Default for FileDiscovery {
    fn default() -> Self {
        FileDiscovery {
            path: PathBuf::from("/etc/outrigger/endpoints.yaml"),
        }
    }
}

/// Settings of the `registry` source.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryDiscovery {
    /// The registry's base URL, `http://` only (default `http://service-discovery:9000`).
    pub url: String,
    /// Deregister a replica from the registry when its breaker opens (default true).
    pub deregister_on_trip: bool,
}

impl Default for RegistryDiscovery {
    fn default() -> Self {
        RegistryDiscovery {
            url: "http://service-discovery:9000".to_string(),
            deregister_on_trip: true,
        }
    }
}

/// Reads the `discovery:` section; every key has a default.
pub fn read(value: Option<&Value>, problems: &mut Problems) -> Option<Discovery> {
    let mut table = Table::open(value.unwrap_or(&Value::Null), "discovery", problems)?;
    let source = table
        .get("source", problems)
        .unwrap_or(DiscoverySource::Static);
    let refresh = table
        .get("refresh", problems)
        .unwrap_or(Duration::from_secs(30));
    positive(refresh, "discovery.refresh", problems);
    let file = table.section("file", &FileDiscovery::default(), problems, read_file);
    let registry = table.section(
        "registry",
        &RegistryDiscovery::default(),
        problems,
        read_registry,
    );
    table.finish(problems);
    Some(Discovery {
        source,
        refresh,
        file,
        registry,
    })
}

fn read_file(t: &mut Table, base: &FileDiscovery, problems: &mut Problems) -> FileDiscovery {
    FileDiscovery {
        path: t
            .get::<String>("path", problems)
            .map_or_else(|| base.path.clone(), PathBuf::from),
    }
}

fn read_registry(
    t: &mut Table,
    base: &RegistryDiscovery,
    problems: &mut Problems,
) -> RegistryDiscovery {
    let url: String = t.get("url", problems).unwrap_or_else(|| base.url.clone());
    let rest = url.strip_prefix("http://").unwrap_or("");
    if rest.is_empty() || rest.starts_with('/') {
        problems.add(
            &t.path_of("url"),
            format!(
                "expected an http:// URL like \"http://service-discovery:9000\", got \"{url}\""
            ),
        );
    }
    RegistryDiscovery {
        url: url.trim_end_matches('/').to_string(),
        deregister_on_trip: t
            .get("deregister_on_trip", problems)
            .unwrap_or(base.deregister_on_trip),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_yaml(text, &|_| None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_file_source_reads_its_path_and_services_need_no_endpoints() {
        let config = Config::from_yaml(
            "discovery: { source: file, file: { path: /tmp/e.yaml } }\nservices: [{name: api}]",
            &|_| None,
        )
        .expect("valid");
        assert_eq!(config.discovery.file.path.to_str(), Some("/tmp/e.yaml"));
        assert!(config.service("api").expect("api").endpoints.is_empty());
    }

    #[test]
    fn the_registry_source_needs_a_plain_http_url() {
        let config = Config::from_yaml(
            "discovery: { source: registry, registry: { url: \"http://reg:9000/\", deregister_on_trip: false } }",
            &|_| None,
        )
        .expect("valid");
        assert_eq!(config.discovery.registry.url, "http://reg:9000");
        assert!(!config.discovery.registry.deregister_on_trip);
        assert_eq!(
            errors("discovery: { registry: { url: \"https://reg\", deregister_on_trip: yes } }"),
            vec![
                "discovery.registry.url: expected an http:// URL like \"http://service-discovery:9000\", got \"https://reg\"",
                "discovery.registry.deregister_on_trip: expected true or false, got \"yes\"",
            ]
        );
    }

    #[test]
    fn endpoints_belong_to_the_static_source_only() {
        assert_eq!(
            errors("discovery: { source: file, file: { path: 3, colour: red } }\nservices: [{name: api, endpoints: [\"a:1\"]}]"),
            vec![
                "discovery.file.path: expected a string, got 3",
                "discovery.file.colour: unknown key",
                "services[0].endpoints: only read with discovery.source static; replicas come from file",
            ]
        );
    }
}
