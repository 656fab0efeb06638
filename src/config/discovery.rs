//! The `discovery:` section: which source lists the replicas, how often it
//! is read, and each source's own settings (all with defaults, so only the
//! chosen source's keys need writing).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_norway::Value;

use super::call_tls::{read_call_url, CallTls};
use super::reader::{config_words, Problems, Table};
use super::{as_duration, positive};

/// Which discovery source feeds the supervisor, and how often it is asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discovery {
    /// The source (default `static`).
    pub source: SourceKind,
    /// How often a polling source is read again (default 30s).
    #[serde(serialize_with = "as_duration")]
    pub refresh: Duration,
    /// The `file` source's settings.
    pub file: FileDiscovery,
    /// The `registry` source's settings.
    pub registry: RegistryDiscovery,
    /// The `dns` source's settings.
    pub dns: DnsDiscovery,
    /// The `kubernetes` source's settings.
    pub kubernetes: KubernetesDiscovery,
}

/// The kinds of discovery source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Endpoints come from `services[].endpoints`.
    Static,
    /// Endpoints come from a YAML file that is watched for changes.
    File,
    /// Endpoints come from an HTTP service registry.
    Registry,
    /// Endpoints come from DNS records (a Kubernetes headless Service).
    Dns,
    /// Endpoints come from Kubernetes EndpointSlices, watched.
    Kubernetes,
}

config_words!(SourceKind {
    Static => "static",
    File => "file",
    Registry => "registry",
    Dns => "dns",
    Kubernetes => "kubernetes",
});

/// Settings of the `file` source.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistryDiscovery {
    /// The registry's base URL, `http://` or `https://` (default `http://service-discovery:9000`).
    pub url: String,
    /// Deregister a replica from the registry when its breaker opens (default true).
    pub deregister_on_trip: bool,
    /// How an `https://` registry is verified: `ca_file`, or the system's roots.
    #[serde(rename = "ca_file")]
    pub tls: CallTls,
}

impl Default for RegistryDiscovery {
    fn default() -> Self {
        RegistryDiscovery {
            url: "http://service-discovery:9000".to_string(),
            deregister_on_trip: true,
            tls: CallTls::default(),
        }
    }
}

/// Settings of the `dns` source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsDiscovery {
    /// Appended to each service name to make the name looked up
    /// (default `.default.svc.cluster.local`).
    pub suffix: String,
    /// The replicas' port with A/AAAA records (default 8080).
    pub port: u16,
    /// Look up SRV records at `<srv>.<service><suffix>` instead, like
    /// `_http._tcp`; they carry the port (default: none, A/AAAA records).
    pub srv: Option<String>,
    /// Name servers as `ip:port` (default: none, those of `/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

impl Default for DnsDiscovery {
    fn default() -> Self {
        DnsDiscovery {
            suffix: ".default.svc.cluster.local".to_string(),
            port: 8080,
            srv: None,
            nameservers: Vec::new(),
        }
    }
}

/// Settings of the `kubernetes` source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubernetesDiscovery {
    /// The namespace whose EndpointSlices are watched (default `default`).
    pub namespace: String,
}

impl Default for KubernetesDiscovery {
    fn default() -> Self {
        KubernetesDiscovery {
            namespace: "default".to_string(),
        }
    }
}

/// Reads the `discovery:` section; every key has a default. Its caller
/// reads it with [`Table::raw_restart`]: the sources are started once.
pub fn read(value: Option<&Value>, problems: &mut Problems) -> Option<Discovery> {
    let mut table = Table::open(value.unwrap_or(&Value::Null), "discovery", problems)?;
    let source = table.get_or("source", SourceKind::Static, problems);
    let refresh = table.get_or("refresh", Duration::from_secs(30), problems);
    positive(refresh, "discovery.refresh", problems);
    let file = table.section("file", &FileDiscovery::default(), problems, read_file);
    let registry = table.section(
        "registry",
        &RegistryDiscovery::default(),
        problems,
        read_registry,
    );
    let dns = table.section("dns", &DnsDiscovery::default(), problems, read_dns);
    let kubernetes = table.section(
        "kubernetes",
        &KubernetesDiscovery::default(),
        problems,
        read_kubernetes,
    );
    table.finish(problems);
    Some(Discovery {
        source,
        refresh,
        file,
        registry,
        dns,
        kubernetes,
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
    let tls = read_call_url(
        t,
        Some(&url),
        ("url", "ca_file"),
        "http://service-discovery:9000",
        problems,
    );
    RegistryDiscovery {
        url: url.trim_end_matches('/').to_string(),
        deregister_on_trip: t.get_or("deregister_on_trip", base.deregister_on_trip, problems),
        tls,
    }
}

fn read_dns(t: &mut Table, base: &DnsDiscovery, problems: &mut Problems) -> DnsDiscovery {
    let port = match t.get::<u32>("port", problems) {
        None => base.port,
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or_else(|| {
                problems.add(
                    &t.path_of("port"),
                    format!("expected a port from 1 to 65535, got {port}"),
                );
                base.port
            }),
    };
    let srv: Option<String> = t.get("srv", problems).or_else(|| base.srv.clone());
    if srv.as_deref().is_some_and(|s| !s.starts_with('_')) {
        problems.add(
            &t.path_of("srv"),
            "expected a service and protocol like \"_http._tcp\"",
        );
    }
    let path = t.path_of("nameservers");
    let nameservers = match t.list::<String>("nameservers", problems) {
        None => base.nameservers.clone(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(index, text)| {
                let parsed = text
                    .parse::<SocketAddr>()
                    .or_else(|_| text.parse().map(|ip| SocketAddr::new(ip, 53)));
                if parsed.is_err() {
                    problems.add(
                        &format!("{path}[{index}]"),
                        format!("expected an address like \"10.96.0.10\" or \"127.0.0.1:5353\", got \"{text}\""),
                    );
                }
                parsed.ok()
            })
            .collect(),
    };
    DnsDiscovery {
        suffix: t
            .get("suffix", problems)
            .unwrap_or_else(|| base.suffix.clone()),
        port,
        srv,
        nameservers,
    }
}

fn read_kubernetes(
    t: &mut Table,
    base: &KubernetesDiscovery,
    problems: &mut Problems,
) -> KubernetesDiscovery {
    let namespace: String = t
        .get("namespace", problems)
        .unwrap_or_else(|| base.namespace.clone());
    if !super::is_service_name(&namespace) {
        problems.add(
            &t.path_of("namespace"),
            format!(
                "expected a DNS label (lowercase letters, digits and '-'), got \"{namespace}\""
            ),
        );
    }
    KubernetesDiscovery { namespace }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::errors;
    use crate::config::Config;

    fn valid(text: &str) -> Config {
        Config::from_yaml(text, &|_| None).expect("valid")
    }

    #[test]
    fn the_file_source_reads_its_path_and_services_need_no_endpoints() {
        let config = valid(
            "discovery: { source: file, file: { path: /tmp/e.yaml } }\nservices: [{name: api}]",
        );
        assert_eq!(config.discovery.file.path.to_str(), Some("/tmp/e.yaml"));
        assert!(config.service("api").expect("api").endpoints.is_empty());
    }

    #[test]
    fn the_registry_source_needs_an_http_or_https_url() {
        let config = valid(
            "discovery: { source: registry, registry: { url: \"http://reg:9000/\", deregister_on_trip: false } }",
        );
        assert_eq!(config.discovery.registry.url, "http://reg:9000");
        assert!(!config.discovery.registry.deregister_on_trip);
        assert_eq!(
            errors("discovery: { registry: { url: \"reg:9000\", deregister_on_trip: yes } }"),
            vec![
                "discovery.registry.url: expected an http:// or https:// URL like \"http://service-discovery:9000\", got \"reg:9000\"",
                "discovery.registry.deregister_on_trip: expected true or false, got \"yes\"",
            ]
        );
    }

    #[test]
    fn the_dns_source_reads_its_names_port_and_servers() {
        let config = valid(
            "discovery: { source: dns, dns: { suffix: .ns.svc, port: 9000, srv: _http._tcp, nameservers: [\"10.96.0.10\", \"127.0.0.1:5353\"] } }",
        );
        let dns = &config.discovery.dns;
        assert_eq!((dns.suffix.as_str(), dns.port), (".ns.svc", 9000));
        assert_eq!(dns.srv.as_deref(), Some("_http._tcp"));
        let servers: Vec<String> = dns.nameservers.iter().map(ToString::to_string).collect();
        assert_eq!(servers, vec!["10.96.0.10:53", "127.0.0.1:5353"]);
        assert_eq!(
            errors("discovery: { dns: { port: 70000, srv: http, nameservers: [\"dns.local\"] } }"),
            vec![
                "discovery.dns.port: expected a port from 1 to 65535, got 70000",
                "discovery.dns.srv: expected a service and protocol like \"_http._tcp\"",
                "discovery.dns.nameservers[0]: expected an address like \"10.96.0.10\" or \"127.0.0.1:5353\", got \"dns.local\"",
            ]
        );
    }

    #[test]
    fn the_kubernetes_source_reads_its_namespace() {
        let config = valid("discovery: { source: kubernetes, kubernetes: { namespace: shop } }");
        assert_eq!(config.discovery.kubernetes.namespace, "shop");
        assert_eq!(
            errors("discovery: { kubernetes: { namespace: Shop_1 } }"),
            vec!["discovery.kubernetes.namespace: expected a DNS label (lowercase letters, digits and '-'), got \"Shop_1\""]
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
