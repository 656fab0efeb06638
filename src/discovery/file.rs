//! The `file` source: a YAML endpoints file, watched for changes, so that a
//! Kubernetes ConfigMap update moves traffic without a restart.
//!
//! The file is watched with [`FileWatch`] every [`WATCH_POLL`]: a change
//! is read once it has held still for one poll, and the file is read again
//! every `refresh` whatever happens.
//!
//! ```yaml
//! budgeting:
//!   - "10.0.0.7:8080"
//!   - { address: "10.0.0.8:8080", weight: 2, zone: eu-west-1a, ready: false }
//!   - "https://10.0.0.9:8443"        # called over TLS
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_norway::Value;

use super::{DiscoveredEndpoint, DiscoverySource, FetchResult, Snapshot, SnapshotFuture};
use crate::config::{is_host_port, Problems, Table};
use crate::watch::FileWatch;

/// How often the file's metadata is checked.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// Replicas listed in a YAML file, re-read when it changes.
pub struct FileSource {
    watch: FileWatch,
}

impl FileSource {
    /// A source reading `path` when it changes, and at least every `refresh`.
    pub fn new(path: PathBuf, refresh: Duration) -> Self {
        FileSource {
            watch: FileWatch::new(path, Some(refresh)),
        }
    }

    fn read(&self) -> FetchResult {
        let path = self.watch.path();
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        parse(&text)
            .map(Some)
            .map_err(|problems| format!("{}: {problems}", path.display()))
    }
}

impl DiscoverySource for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    fn fetch(&mut self) -> SnapshotFuture {
        let result = if self.watch.due() {
            self.read()
        } else {
            Ok(None)
        };
        Box::pin(std::future::ready(result))
    }

    fn next_fetch(&self, refresh: Duration) -> Duration {
        refresh.min(WATCH_POLL)
    }
}

/// Parses an endpoints file: a mapping from service name to a list of
/// `host:port` strings or `{address, weight, zone, ready}` mappings. Every
/// problem is reported with its key path, `; `-separated.
pub fn parse(text: &str) -> Result<Snapshot, String> {
    let root: Value =
        serde_norway::from_str(text).map_err(|err| format!("not valid YAML: {err}"))?;
    let mut problems = Problems::default();
    let mut snapshot = Snapshot::new();
    if let Some(mut services) = Table::open(&root, "", &mut problems) {
        let names: Vec<String> = match &root {
            Value::Mapping(map) => map
                .keys()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        for name in names {
            let path = services.path_of(&name);
            let endpoints = match services.raw(&name).and_then(Value::as_sequence) {
                Some(items) => items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| {
                        read_endpoint(item, &format!("{path}[{i}]"), &mut problems)
                    })
                    .collect(),
                None => {
                    problems.add(&path, "expected a list of endpoints");
                    continue;
                }
            };
            snapshot.insert(name, endpoints);
        }
        services.finish(&mut problems);
    }
    if problems.is_empty() {
        Ok(snapshot)
    } else {
        let problems: Vec<String> = problems
            .into_vec()
            .iter()
            .map(ToString::to_string)
            .collect();
        Err(problems.join("; "))
    }
}

fn read_endpoint(item: &Value, path: &str, problems: &mut Problems) -> Option<DiscoveredEndpoint> {
    let endpoint = match item {
        Value::String(address) => DiscoveredEndpoint::written(address),
        other => {
            let mut t = Table::open(other, path, problems)?;
            let Some(address) = t.get::<String>("address", problems) else {
                problems.add(
                    &t.path_of("address"),
                    "required: host:port (or https://host:port) of the replica",
                );
                return None;
            };
            let base = DiscoveredEndpoint::written(&address);
            let endpoint = DiscoveredEndpoint {
                weight: t.get("weight", problems).unwrap_or(base.weight),
                zone: t.get("zone", problems),
                ready: t.get("ready", problems).unwrap_or(base.ready),
                ..base
            };
            t.finish(problems);
            endpoint
        }
    };
    if !is_host_port(&endpoint.address) {
        problems.add(
            path,
            format!(
                "expected host:port like \"10.0.0.7:8080\" or https://host:port, got \"{}\"",
                endpoint.address
            ),
        );
        return None;
    }
    Some(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_endpoint_forms_parse() {
        let snapshot = parse(
            "api:\n  - \"10.0.0.7:8080\"\n  - { address: \"10.0.0.8:8080\", weight: 3, zone: z1, ready: false }\n  - \"https://10.0.0.9:8443\"\n  - { address: \"https://[::1]:8443\" }\nweb: []",
        )
        .expect("valid");
        let api = &snapshot["api"];
        assert_eq!(api[0], DiscoveredEndpoint::new("10.0.0.7:8080"));
        assert_eq!(
            api[1],
            DiscoveredEndpoint {
                address: "10.0.0.8:8080".to_string(),
                weight: 3,
                zone: Some("z1".to_string()),
                ready: false,
                tls: false,
            }
        );
        assert_eq!(
            (
                api[2].address.as_str(),
                api[2].tls,
                api[3].address.as_str(),
                api[3].tls
            ),
            ("10.0.0.9:8443", true, "[::1]:8443", true),
            "https:// is called over TLS"
        );
        assert!(snapshot["web"].is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let error = parse(
            "api:\n  - nowhere\n  - { weight: two }\n  - { address: \"a:1\", color: red }\nweb: 3",
        )
        .expect_err("invalid");
        assert_eq!(
            error,
            "api[0]: expected host:port like \"10.0.0.7:8080\" or https://host:port, got \"nowhere\"; \
             api[1].address: required: host:port (or https://host:port) of the replica; \
             api[2].color: unknown key; \
             web: expected a list of endpoints"
        );
    }

    #[test]
    fn an_empty_file_lists_nothing() {
        assert_eq!(parse(""), Ok(Snapshot::new()));
    }
}
