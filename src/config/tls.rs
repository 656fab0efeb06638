//! `services[].tls` and endpoints written `https://host:port`: which of a
//! service's replicas are called over TLS, and how. The files are read at
//! load (so `outrigger check` and a reload report a missing or unparsable
//! one under its key), into the [`Origination`] every connection uses.

use std::sync::Arc;

use serde::Serialize;
use serde_norway::Value;

use super::reader::{Problems, Table};
use crate::tls::{server_name, FileError, Origination, OriginationFiles, ServerName};

/// The scheme that turns TLS on for one static endpoint.
const HTTPS: &str = "https://";

/// How a service's replicas are called over TLS.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceTls {
    /// SNI and the name verified; `None`: each replica's host.
    pub server_name: Option<String>,
    /// CA bundle (PEM) the replicas' certificates must lead to; `None`:
    /// the system's roots.
    pub ca_file: Option<String>,
    /// Client certificate chain (PEM) presented to the replicas.
    pub client_cert_file: Option<String>,
    /// Its private key (PEM).
    pub client_key_file: Option<String>,
    /// Which replicas it is for.
    #[serde(skip)]
    pub scope: TlsScope,
    /// What connections are made with, built from the files above.
    #[serde(skip)]
    pub origination: Arc<Origination>,
}

/// Which of a service's replicas are called over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsScope {
    /// Every replica, however discovered: the service has a `tls:` block.
    Every,
    /// Only these `host:port` addresses: static endpoints written `https://`.
    Only(Vec<String>),
    /// Every replica, as a meshed service's: mutual TLS with the mesh
    /// identity on `port` (`mesh.inbound_port`), the replica presenting
    /// `identity` (any ID of the trust domain when `None`).
    Mesh {
        /// `services[].identity`.
        identity: Option<String>,
        /// `mesh.inbound_port`.
        port: u16,
    },
}

/// Two settings are the same when their keys and scope are: the files are
/// not compared (re-reading changed files is rotation's work).
impl PartialEq for ServiceTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.ca_file == other.ca_file
            && self.client_cert_file == other.client_cert_file
            && self.client_key_file == other.client_key_file
            && self.scope == other.scope
    }
}

impl ServiceTls {
    /// The origination for a call to the replica at `address`, `None` for
    /// plain text. A service without TLS has no `ServiceTls`, so its
    /// requests never get here.
    pub fn for_replica(&self, address: &str) -> Option<&Arc<Origination>> {
        let applies = match &self.scope {
            TlsScope::Every | TlsScope::Mesh { .. } => true,
            TlsScope::Only(addresses) => addresses.iter().any(|a| a == address),
        };
        applies.then_some(&self.origination)
    }
}

/// Whether no `tls:` block was written: `GET /config` leaves it out (the
/// `https://` endpoints, or `mesh: true`, say it).
pub(super) fn unwritten(tls: &Option<ServiceTls>) -> bool {
    !matches!(
        tls,
        Some(ServiceTls {
            scope: TlsScope::Every,
            ..
        })
    )
}

/// The `host:port` of a static endpoint, without its `https://`.
pub fn endpoint_address(endpoint: &str) -> &str {
    endpoint.strip_prefix(HTTPS).unwrap_or(endpoint)
}

/// Reads the `tls` key of the service table `t` and its `endpoints` (as
/// written): a `tls:` block for every replica, else TLS for the endpoints
/// written `https://` with the system's roots, else `None`.
pub(super) fn read_service_tls(
    t: &mut Table,
    endpoints: &[String],
    problems: &mut Problems,
) -> Option<ServiceTls> {
    let block = t.raw("tls");
    let path = t.path_of("tls");
    let https: Vec<String> = endpoints
        .iter()
        .filter_map(|e| e.strip_prefix(HTTPS).map(str::to_string))
        .collect();
    match block {
        Some(value) => read_block(value, &path, problems),
        None if https.is_empty() => None,
        None => {
            let files = OriginationFiles::default();
            let origination = build(None, &files, &path, problems)?;
            Some(ServiceTls {
                server_name: None,
                ca_file: None,
                client_cert_file: None,
                client_key_file: None,
                scope: TlsScope::Only(https),
                origination,
            })
        }
    }
}

/// Reads a `tls:` block at `path` and builds its origination.
fn read_block(value: &Value, path: &str, problems: &mut Problems) -> Option<ServiceTls> {
    let mut table = Table::open(value, path, problems)?;
    let name: Option<String> = table.get("server_name", problems);
    let ca_file: Option<String> = table.get("ca_file", problems);
    let client_cert_file: Option<String> = table.get("client_cert_file", problems);
    let client_key_file: Option<String> = table.get("client_key_file", problems);
    let mut usable = true;
    let checked = name.as_deref().and_then(|name| {
        let checked = server_name(name);
        if checked.is_none() {
            problems.add(
                &table.path_of("server_name"),
                format!("expected a DNS name or an IP address, got \"{name}\""),
            );
            usable = false;
        }
        checked
    });
    match (&client_cert_file, &client_key_file) {
        (Some(_), None) => {
            problems.add(
                &table.path_of("client_key_file"),
                "required with client_cert_file: the certificate's private key",
            );
            usable = false;
        }
        (None, Some(_)) => {
            problems.add(
                &table.path_of("client_cert_file"),
                "required with client_key_file: the certificate the key belongs to",
            );
            usable = false;
        }
        _ => {}
    }
    table.finish(problems);
    if !usable {
        return None;
    }
    let files = OriginationFiles {
        ca_file: ca_file.as_deref(),
        client_cert_file: client_cert_file.as_deref(),
        client_key_file: client_key_file.as_deref(),
    };
    let origination = build(checked, &files, path, problems)?;
    Some(ServiceTls {
        server_name: name,
        ca_file,
        client_cert_file,
        client_key_file,
        scope: TlsScope::Every,
        origination,
    })
}

/// Builds the origination, reporting a file that fails under its key.
fn build(
    server_name: Option<ServerName<'static>>,
    files: &OriginationFiles<'_>,
    path: &str,
    problems: &mut Problems,
) -> Option<Arc<Origination>> {
    match Origination::build(server_name, files) {
        Ok(origination) => Some(Arc::new(origination)),
        Err(error) => {
            let (key, why) = match error {
                FileError::Ca(why) => ("ca_file", why),
                FileError::ClientCert(why) => ("client_cert_file", why),
                FileError::ClientKey(why) => ("client_key_file", why),
            };
            problems.add(&format!("{path}.{key}"), why);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::errors;
    use crate::config::Config;

    fn service(extra: &str) -> String {
        format!("services:\n  - name: api\n    endpoints: [\"https://127.0.0.1:9443\", \"127.0.0.1:9000\"]\n{extra}")
    }

    #[test]
    fn https_endpoints_alone_are_called_over_tls_with_the_system_roots() {
        let config = Config::from_yaml(&service(""), &|_| None).expect("valid");
        let tls = config.services[0]
            .tls
            .as_ref()
            .expect("TLS for the https endpoint");
        assert!(tls.for_replica("127.0.0.1:9443").is_some());
        assert!(tls.for_replica("127.0.0.1:9000").is_none());
        let block = "    tls: { server_name: api.example }\n";
        let config = Config::from_yaml(&service(block), &|_| None).expect("valid");
        let tls = config.services[0].tls.as_ref().expect("a tls block");
        assert!(
            tls.for_replica("127.0.0.1:9000").is_some(),
            "a block is for every replica"
        );
    }

    #[test]
    fn missing_or_unparsable_files_are_named_by_their_key() {
        let not_pem =
            std::env::temp_dir().join(format!("outrigger-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "not a certificate").expect("write");
        let block = format!(
            "    tls: {{ ca_file: /nonexistent/ca.pem, client_cert_file: \"{}\", client_key_file: \"{}\" }}\n",
            not_pem.display(),
            not_pem.display()
        );
        let found = errors(&service(&block));
        let unparsable = errors(&service(
            &block.replace("ca_file: /nonexistent/ca.pem, ", ""),
        ));
        std::fs::remove_file(&not_pem).ok();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("services[0].tls.ca_file"), "{found:?}");
        assert!(found[0].contains("/nonexistent/ca.pem"), "{found:?}");
        assert_eq!(unparsable.len(), 1, "{unparsable:?}");
        assert!(
            unparsable[0].starts_with("services[0].tls.client_cert_file")
                && unparsable[0].contains("no PEM certificate"),
            "{unparsable:?}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_a_name_must_be_checkable() {
        let found = errors(&service(
            "    tls: { client_cert_file: a.pem, server_name: \"not a name\" }\n",
        ));
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("services[0].tls.client_key_file")
                    && e.contains("required with client_cert_file")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("services[0].tls.server_name")),
            "{found:?}"
        );
        let found = errors("services:\n  - name: api\n    endpoints: [\"https://\"]\n");
        assert!(
            found.iter().any(|e| e.contains("https://host:port")),
            "{found:?}"
        );
    }
}
