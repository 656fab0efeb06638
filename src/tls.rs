//! TLS material: the process's one crypto provider (aws-lc-rs), and what a
//! call to an HTTPS replica is made with, its [`Origination`]: a verifying
//! rustls client configuration built from PEM files (a CA bundle or the
//! system's roots, and an optional client certificate) and the name the
//! replica's certificate must carry.
//!
//! The replica client (`src/http/client/stream.rs`) only asks an
//! `Origination` for its configuration and a replica's server name, so what
//! a later step adds here (a mesh identity as the client certificate, a
//! peer identity check in the verifier, files reloaded when they rotate)
//! reaches every TLS connection without the client changing.
//!
//! The mesh's identity (`mesh.rs`) makes the originations of meshed
//! services and the server configuration of the inbound listener;
//! `rotation.rs` watches its files, and the `edge` mode's certificate's
//! (`edge.rs`), and puts a rotated chain in use; `presented.rs` reads a
//! chain and key for both.

mod edge;
mod mesh;
mod presented;
pub mod rotation;

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

pub use edge::EdgeCertificate;
pub use mesh::{
    is_spiffe_id, peer_identity, wrong_identity_of, Chain, IdentityError, IdentityFiles,
    MeshIdentity, Termination, WrongIdentity,
};
pub use presented::expired;

/// The name a replica's certificate is checked against (and sent as SNI).
pub use rustls::pki_types::ServerName;

/// Installs the process's one crypto provider, aws-lc-rs (the backend
/// jsonwebtoken already uses), if none is yet, and returns the one in
/// force. `outrigger` calls it at start; every TLS configuration is built
/// with it.
pub fn provider() -> Arc<CryptoProvider> {
    if let Some(installed) = CryptoProvider::get_default() {
        return Arc::clone(installed);
    }
    // A race with another thread's install leaves that one in force: fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Arc::clone(CryptoProvider::get_default().expect("a provider was installed just above"))
}

/// The files an [`Origination`] is built from; `None` for the defaults.
#[derive(Debug, Clone, Default)]
pub struct OriginationFiles<'a> {
    /// CA certificates (PEM) the replica's chain must lead to; the system's
    /// roots when `None`.
    pub ca_file: Option<&'a str>,
    /// The client certificate chain (PEM) to present, with its key.
    pub client_cert_file: Option<&'a str>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<&'a str>,
}

/// Which file an [`Origination`] could not be built from, and why: the
/// config reader reports it under that file's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// `ca_file` is missing, unreadable or holds no certificate.
    Ca(String),
    /// `client_cert_file` is missing, unreadable or holds no certificate.
    ClientCert(String),
    /// `client_key_file` is missing, unreadable, holds no key, or the key
    /// does not match the certificate.
    ClientKey(String),
}

/// How the replicas of one service are called over TLS: the client
/// configuration (roots, client certificate, the process's provider) and
/// the name verified, shared by every worker's connections to them.
pub struct Origination {
    config: Arc<ClientConfig>,
    /// The same, offering `h2` by ALPN: for replicas called over HTTP/2.
    http2: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// The port called instead of each replica's own (a meshed service's
    /// replicas take mutual TLS on `mesh.inbound_port`).
    port: Option<u16>,
}

impl fmt::Debug for Origination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origination")
            .field("server_name", &self.server_name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Origination {
    /// Reads `files` into a verifying client configuration; `server_name`
    /// replaces each replica's host as the name sent and verified.
    pub fn build(
        server_name: Option<ServerName<'static>>,
        files: &OriginationFiles<'_>,
    ) -> Result<Origination, FileError> {
        let roots = match files.ca_file {
            Some(path) => Arc::new(roots_from(path).map_err(FileError::Ca)?),
            None => system_roots(),
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|err| FileError::Ca(format!("cannot verify with these roots: {err}")))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_webpki_verifier(verifier);
        let config = match (files.client_cert_file, files.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates_from(cert).map_err(FileError::ClientCert)?;
                let key = key_from(key).map_err(FileError::ClientKey)?;
                builder.with_client_auth_cert(chain, key).map_err(|err| {
                    FileError::ClientKey(format!("does not fit the certificate: {err}"))
                })?
            }
            // The reader refuses one without the other.
            _ => builder.with_no_client_auth(),
        };
        Ok(Origination::new(config, server_name, None))
    }

    /// An origination that connects with `config` (and, for HTTP/2, the
    /// same offering `h2` by ALPN), checks `server_name` (else each
    /// replica's host) and calls `port` instead of each replica's own when
    /// set.
    fn new(
        config: ClientConfig,
        server_name: Option<ServerName<'static>>,
        port: Option<u16>,
    ) -> Origination {
        let mut http2 = config.clone();
        http2.alpn_protocols = vec![b"h2".to_vec()];
        Origination {
            config: Arc::new(config),
            http2: Arc::new(http2),
            server_name,
            port,
        }
    }

    /// Where a connection to the replica at `address` (`host:port`) is
    /// made: the address itself, or its host with the origination's port.
    pub fn dial<'a>(&self, address: &'a str) -> Cow<'a, str> {
        match (self.port, address.rsplit_once(':')) {
            (Some(port), Some((host, _))) => Cow::Owned(format!("{host}:{port}")),
            _ => Cow::Borrowed(address),
        }
    }

    /// The client configuration every connection is made with.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The client configuration of HTTP/2 connections: the same, with
    /// `h2` offered by ALPN (HTTP/1 connections offer nothing, as before).
    pub fn http2_config(&self) -> &Arc<ClientConfig> {
        &self.http2
    }

    /// The name to send (SNI) and verify for a replica at `host` (a name or
    /// an IP literal, IPv6 in brackets): the configured one, else `host`,
    /// which an IP literal matches against the certificate's IP SANs.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(bare.to_string())
            .map_err(|_| format!("{host} is not a name a certificate can be checked against"))
    }
}

/// `name` as a name to send as SNI and check a certificate against (a DNS
/// name or an IP literal), if it can be one.
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

/// The PEM text of the CA file at `path`, once it is known to hold usable
/// CA certificates: for a client that takes its roots as PEM (Redis).
pub fn ca_pem(path: &str) -> Result<Vec<u8>, String> {
    roots_from(path)?;
    std::fs::read(path).map_err(|err| format!("cannot read {path}: {err}"))
}

/// A verifying client configuration for the sidecar's own calls to an
/// `https://` URL (a JWKS, the registry, the OTLP collector): the CA
/// certificates in `ca_file`, else the system's roots, and no client
/// certificate. The name checked is the URL's host, which the HTTP client
/// sends as SNI.
pub fn call_config(ca_file: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let files = OriginationFiles {
        ca_file,
        ..OriginationFiles::default()
    };
    match Origination::build(None, &files) {
        Ok(origination) => Ok(Arc::clone(origination.config())),
        Err(FileError::Ca(why) | FileError::ClientCert(why) | FileError::ClientKey(why)) => {
            Err(why)
        }
    }
}

/// The HTTP client of one of the sidecar's own calls: each request bounded
/// by `timeout`, and `https://` URLs spoken with `tls` (without it, such a
/// URL fails to connect, so nothing goes out in plain text to a TLS port).
/// Made on the thread that uses it (an awc client is not `Send`).
pub fn call_client(timeout: Duration, tls: Option<&Arc<ClientConfig>>) -> awc::Client {
    let builder = awc::Client::builder().timeout(timeout);
    match tls {
        Some(config) => builder
            .connector(awc::Connector::new().rustls_0_23(Arc::clone(config)))
            .finish(),
        None => builder.finish(),
    }
}

/// What a replica a discovery source lists as `https://` is called with
/// when its service has no `tls:` block: the system's roots, and each
/// replica's host as the name. Built once per process; `Err` says why it
/// cannot be (no usable trust roots on this system).
pub fn system_origination() -> Result<Arc<Origination>, String> {
    static SYSTEM: OnceLock<Result<Arc<Origination>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(
            || match Origination::build(None, &OriginationFiles::default()) {
                Ok(origination) => Ok(Arc::new(origination)),
                Err(
                    FileError::Ca(why) | FileError::ClientCert(why) | FileError::ClientKey(why),
                ) => Err(why),
            },
        )
        .clone()
}

/// The system's trust roots, read once per process. An unreadable system
/// store leaves it empty, so every verification fails closed.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for err in &found.errors {
            log::warn!("reading the system's trust roots: {err}");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if ignored > 0 {
            log::warn!("{ignored} of the system's trust roots could not be used");
        }
        log::debug!("{added} system trust roots");
        Arc::new(roots)
    }))
}

/// The CA certificates in the PEM file at `path`.
fn roots_from(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates_from(path)? {
        roots
            .add(certificate)
            .map_err(|err| format!("{path}: not a usable CA certificate: {err}"))?;
    }
    Ok(roots)
}

/// The certificates in the PEM file at `path`, at least one.
fn certificates_from(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("cannot read {path}: {err}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{path}: not PEM certificates: {err}"))?;
    if certificates.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(certificates)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
fn key_from(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| match err {
        rustls::pki_types::pem::Error::Io(err) => format!("cannot read {path}: {err}"),
        rustls::pki_types::pem::Error::NoItemsFound => format!("{path} holds no PEM private key"),
        other => format!("{path}: not a PEM private key: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replicas_host_is_the_name_by_default() {
        let origination =
            Origination::build(None, &OriginationFiles::default()).expect("system roots");
        assert_eq!(
            origination.server_name("[::1]").expect("an IP"),
            ServerName::try_from("::1").expect("an IP")
        );
        let named = Origination::build(server_name("api.example"), &OriginationFiles::default())
            .expect("system roots");
        assert_eq!(
            named.server_name("10.0.0.7").expect("configured"),
            ServerName::try_from("api.example").expect("a name")
        );
    }
}
