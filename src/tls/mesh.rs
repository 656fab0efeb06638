//! The mesh's workload identity: this pod's certificate chain and key, the
//! mesh's trust bundle, and the SPIFFE ID in a certificate's URI SAN.
//!
//! Both ends of a call between sidecars verify the other's chain against
//! the bundle and then its SPIFFE ID instead of a DNS name: a caller's
//! ([`ClientIdentityVerifier`], on the inbound listener) must belong to the
//! bundle's trust domain, a replica's ([`ServerIdentityVerifier`], in the
//! replica client) must be the service's expected ID, or any ID of the
//! trust domain when none is set. A mismatch fails the handshake, with a
//! [`WrongIdentity`] the replica client tells from other TLS failures.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    verify_server_cert_signed_by_trust_anchor, ClientSessionMemoryCache, ClientSessionStore,
    ResolvesClientCert, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ParsedCertificate, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, NamedGroup,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::edge::EdgeCertificate;
use super::presented::Presented;
use super::{provider, roots_from, Origination};

/// The scheme of a SPIFFE ID.
const SPIFFE: &str = "spiffe://";

/// The files a mesh identity is read from.
#[derive(Debug, Clone, Copy)]
pub struct IdentityFiles<'a> {
    /// This pod's certificate chain (PEM), leaf first.
    pub cert_file: &'a str,
    /// Its private key (PEM).
    pub key_file: &'a str,
    /// The mesh's trust bundle (PEM CA certificates).
    pub ca_file: &'a str,
}

/// Which identity file could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// `cert_file`: unreadable, not PEM, or its leaf has no SPIFFE ID.
    Cert(String),
    /// `key_file`: unreadable, not a PEM key, or not the certificate's.
    Key(String),
    /// `ca_file`: unreadable, or no usable CA certificate.
    Ca(String),
}

/// One version of this pod's identity files, read and checked: the chain
/// and key presented, and the bundle peers are verified against.
pub struct Chain {
    spiffe_id: String,
    presented: Presented,
    bundle: Arc<RootCertStore>,
    /// Callers' chains checked against the bundle (a certificate required).
    callers: Arc<dyn ClientCertVerifier>,
    /// Replicas' chains checked against the bundle (signatures).
    replicas: Arc<WebPkiServerVerifier>,
    /// TLS sessions with replicas that this chain made, to resume: a
    /// rotated chain starts with none, so a replica's next connection from
    /// this pod presents the new certificate instead of resuming a session
    /// the old one made.
    replica_sessions: ClientSessionMemoryCache,
    /// TLS sessions callers made with this chain, to resume: a rotated
    /// chain starts with none, so every caller's next connection is
    /// verified against the new bundle and shows its own new certificate.
    caller_sessions: Arc<ServerSessionMemoryCache>,
}

/// Sessions kept for resumption per chain, each way (rustls' default).
const SESSIONS: usize = 256;

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.presented.serial())
            .finish_non_exhaustive()
    }
}

impl Chain {
    /// Reads the chain, key and bundle, and the SPIFFE ID of the chain's
    /// leaf; checks that the key is the certificate's.
    fn read(files: IdentityFiles<'_>) -> Result<Chain, IdentityError> {
        let presented = Presented::read(files.cert_file, files.key_file)?;
        let spiffe_id = spiffe_id(presented.leaf()).map_err(|why| {
            IdentityError::Cert(format!("{}: the first certificate {why}", files.cert_file))
        })?;
        let bundle = Arc::new(roots_from(files.ca_file).map_err(IdentityError::Ca)?);
        let unverifiable = |err| {
            IdentityError::Ca(format!(
                "{}: cannot verify peers with this trust bundle: {err}",
                files.ca_file
            ))
        };
        let callers = WebPkiClientVerifier::builder_with_provider(Arc::clone(&bundle), provider())
            .build()
            .map_err(unverifiable)?;
        let replicas = WebPkiServerVerifier::builder_with_provider(Arc::clone(&bundle), provider())
            .build()
            .map_err(unverifiable)?;
        Ok(Chain {
            spiffe_id,
            presented,
            bundle,
            callers,
            replicas,
            replica_sessions: ClientSessionMemoryCache::new(SESSIONS),
            caller_sessions: ServerSessionMemoryCache::new(SESSIONS),
        })
    }

    /// The SPIFFE ID this pod presents.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The serial number of this pod's certificate, lowercase hex.
    pub fn serial(&self) -> &str {
        self.presented.serial()
    }

    /// When this pod's certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.presented.not_after()
    }

    /// The trust domain of this pod's ID, which callers' IDs must share.
    pub fn trust_domain(&self) -> &str {
        trust_domain(&self.spiffe_id)
    }
}

/// This pod's mesh identity: the [`Chain`] in use, swapped for a new one
/// when the files rotate ([`MeshIdentity::reload`]). Every handshake, in
/// and out, reads the chain in use when it starts, without a lock;
/// connections made with an older chain keep it until they close.
pub struct MeshIdentity {
    cert_file: String,
    key_file: String,
    ca_file: String,
    current: ArcSwap<Chain>,
}

impl fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshIdentity")
            .field("cert_file", &self.cert_file)
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl MeshIdentity {
    /// The identity in `files`, read (and checked) once per process: a
    /// config read again (a reload) gets the identity already in use,
    /// which rotation keeps current.
    pub fn load(files: IdentityFiles<'_>) -> Result<Arc<MeshIdentity>, IdentityError> {
        static IN_USE: Mutex<Vec<Weak<MeshIdentity>>> = Mutex::new(Vec::new());
        let mut in_use = IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        in_use.retain(|identity| identity.strong_count() > 0);
        let same = in_use.iter().filter_map(Weak::upgrade).find(|identity| {
            identity.cert_file == files.cert_file
                && identity.key_file == files.key_file
                && identity.ca_file == files.ca_file
        });
        if let Some(identity) = same {
            return Ok(identity);
        }
        let identity = Arc::new(MeshIdentity {
            cert_file: files.cert_file.to_string(),
            key_file: files.key_file.to_string(),
            ca_file: files.ca_file.to_string(),
            current: ArcSwap::from_pointee(Chain::read(files)?),
        });
        in_use.push(Arc::downgrade(&identity));
        Ok(identity)
    }

    /// The files the identity is read from.
    pub fn files(&self) -> IdentityFiles<'_> {
        IdentityFiles {
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            ca_file: &self.ca_file,
        }
    }

    /// The chain in use.
    pub fn chain(&self) -> Arc<Chain> {
        self.current.load_full()
    }

    /// Reads the files again and puts the new chain in use, unless it
    /// cannot be used (unreadable, not PEM, a key that does not fit, no
    /// SPIFFE ID, or expired): then the chain in use stays, and the error
    /// says why.
    pub fn reload(&self) -> Result<Arc<Chain>, IdentityError> {
        let mut chain = Chain::read(self.files())?;
        chain.presented = chain.presented.unexpired(&self.cert_file)?;
        let chain = Arc::new(chain);
        self.current.store(Arc::clone(&chain));
        Ok(chain)
    }

    /// A server configuration for the inbound listener: the chain in use
    /// at each handshake (and its sessions to resume), and a client
    /// certificate required from its bundle, carrying a SPIFFE ID of its
    /// trust domain.
    pub fn server_config(self: &Arc<Self>) -> ServerConfig {
        let live = Arc::new(Live(Arc::clone(self)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_client_cert_verifier(Arc::clone(&live) as Arc<dyn ClientCertVerifier>)
            .with_cert_resolver(Arc::clone(&live) as Arc<dyn ResolvesServerCert>);
        config.session_storage = live;
        config
    }

    /// How a meshed service's replicas are called: mutual TLS with the
    /// chain in use, on `inbound_port` instead of each replica's own port,
    /// the replica's certificate from the bundle with the SPIFFE ID
    /// `expected` (any of this pod's trust domain when `None`).
    pub fn origination(self: &Arc<Self>, expected: Option<&str>, inbound_port: u16) -> Origination {
        let verifier = ServerIdentityVerifier {
            identity: Arc::clone(self),
            expected: expected.map(str::to_string),
        };
        let live = Arc::new(Live(Arc::clone(self)));
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::clone(&live) as Arc<dyn ResolvesClientCert>);
        config.resumption = Resumption::store(live);
        Origination::new(config, None, Some(inbound_port))
    }
}

/// The chain in use, as rustls asks for it at each handshake: the
/// certificate presented (to callers and to replicas), the verifier of
/// callers' certificates, and the sessions to resume, each way.
#[derive(Debug)]
struct Live(Arc<MeshIdentity>);

impl ResolvesServerCert for Live {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().presented.certified())
    }
}

impl ResolvesClientCert for Live {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().presented.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Sessions with replicas belong to the chain that made them.
impl ClientSessionStore for Live {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        let chain = self.0.current.load();
        chain.replica_sessions.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let chain = self.0.current.load();
        chain.replica_sessions.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        let chain = self.0.current.load();
        chain.replica_sessions.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let chain = self.0.current.load();
        chain.replica_sessions.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        let chain = self.0.current.load();
        chain.replica_sessions.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let chain = self.0.current.load();
        chain
            .replica_sessions
            .insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let chain = self.0.current.load();
        chain.replica_sessions.take_tls13_ticket(server_name)
    }
}

/// Sessions with callers belong to the chain they were made with.
impl StoresServerSessions for Live {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.current.load().caller_sessions.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.current.load().caller_sessions.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.current.load().caller_sessions.take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Whether `id` is written as a SPIFFE ID: `spiffe://<trust domain>/<path>`
/// with a non-empty trust domain and path.
pub fn is_spiffe_id(id: &str) -> bool {
    id.strip_prefix(SPIFFE)
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(domain, path)| {
            !domain.is_empty() && !path.is_empty() && !id.contains(char::is_whitespace)
        })
}

/// The trust domain of a SPIFFE ID (`cluster.local` in
/// `spiffe://cluster.local/ns/shop/sa/catalog`).
fn trust_domain(id: &str) -> &str {
    let rest = id.strip_prefix(SPIFFE).unwrap_or(id);
    rest.split_once('/').map_or(rest, |(domain, _)| domain)
}

/// The SPIFFE ID of a verified peer: the URI SAN of the first certificate
/// it presented. `None` when it presented none or it has no SPIFFE ID
/// (the verifiers refuse those, so a completed mesh handshake has one).
pub fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Option<String> {
    spiffe_id(certificates?.first()?).ok()
}

/// The one SPIFFE ID in the URI SANs of `certificate`, or why it has none.
fn spiffe_id(certificate: &CertificateDer<'_>) -> Result<String, String> {
    spiffe_id_of(&parse(certificate)?)
}

/// `certificate` parsed, or why it cannot be.
pub(super) fn parse<'a>(
    certificate: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, String> {
    X509Certificate::from_der(certificate)
        .map(|(_, parsed)| parsed)
        .map_err(|err| format!("cannot be parsed: {err}"))
}

/// The one SPIFFE ID in the URI SANs of `parsed`, or why it has none.
fn spiffe_id_of(parsed: &X509Certificate<'_>) -> Result<String, String> {
    let names = parsed
        .subject_alternative_name()
        .map_err(|err| format!("has an unreadable subjectAltName: {err}"))?
        .ok_or("has no subjectAltName, so no SPIFFE ID")?;
    let mut ids = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(SPIFFE) => Some(*uri),
            _ => None,
        });
    match (ids.next(), ids.next()) {
        (Some(id), None) if is_spiffe_id(id) => Ok(id.to_string()),
        (Some(id), None) => Err(format!("has a malformed SPIFFE ID \"{id}\"")),
        (None, _) => Err("has no spiffe:// URI SAN".to_string()),
        (Some(_), Some(_)) => Err("has more than one spiffe:// URI SAN".to_string()),
    }
}

/// A peer whose chain verified but whose SPIFFE ID is not the one asked
/// for: the handshake fails with it, so the caller can tell it apart.
#[derive(Debug)]
pub struct WrongIdentity(pub String);

impl fmt::Display for WrongIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongIdentity {}

/// `why` as the certificate error a verifier fails the handshake with.
fn wrong_identity(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        WrongIdentity(why),
    ))))
}

/// The [`WrongIdentity`] a handshake failed with, if that is why.
pub fn wrong_identity_of(error: &rustls::Error) -> Option<&WrongIdentity> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            other.downcast_ref::<WrongIdentity>()
        }
        _ => None,
    }
}

/// Which SPIFFE ID a replica must present.
#[derive(Debug)]
enum Expected {
    /// This one (`services[].identity`).
    Exactly(String),
    /// Any of this trust domain.
    TrustDomain(String),
}

/// Checks `id` (or why the certificate has none) against `expected`.
fn check_identity(id: Result<String, String>, expected: &Expected) -> Result<(), rustls::Error> {
    let id = id.map_err(|why| wrong_identity(format!("its certificate {why}")))?;
    match expected {
        Expected::Exactly(want) if id == *want => Ok(()),
        Expected::Exactly(want) => Err(wrong_identity(format!(
            "it presented the identity {id}, not the expected {want}"
        ))),
        Expected::TrustDomain(domain) if trust_domain(&id) == domain => Ok(()),
        Expected::TrustDomain(domain) => Err(wrong_identity(format!(
            "its identity {id} is not of the trust domain {domain}"
        ))),
    }
}

/// Verifies a replica's chain against the bundle in use as WebPKI does,
/// and its SPIFFE ID (`expected`, or any of the trust domain) in place of
/// the name check.
#[derive(Debug)]
struct ServerIdentityVerifier {
    identity: Arc<MeshIdentity>,
    expected: Option<String>,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = self.identity.current.load();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &chain.bundle,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let expected = match &self.expected {
            Some(id) => Expected::Exactly(id.clone()),
            None => Expected::TrustDomain(chain.trust_domain().to_string()),
        };
        check_identity(spiffe_id(end_entity), &expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let chain = self.identity.current.load();
        chain.replicas.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let chain = self.identity.current.load();
        chain.replicas.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.identity
            .current
            .load()
            .replicas
            .supported_verify_schemes()
    }
}

/// Verifies a caller's chain against the bundle in use (a client
/// certificate is required), then that its SPIFFE ID is of this pod's
/// trust domain.
impl ClientCertVerifier for Live {
    /// No hints: they would have to outlive a rotation of the bundle, and
    /// a mesh client presents its one certificate whatever is hinted.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = self.0.current.load();
        let verified = chain
            .callers
            .verify_client_cert(end_entity, intermediates, now)?;
        let expected = Expected::TrustDomain(chain.trust_domain().to_string());
        check_identity(spiffe_id(end_entity), &expected)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let chain = self.0.current.load();
        chain.callers.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let chain = self.0.current.load();
        chain.callers.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current.load().callers.supported_verify_schemes()
    }
}

/// How a listener takes TLS connections: the server configuration, and
/// whether plain-text clients are taken on the same port too.
pub struct Termination {
    config: Arc<ServerConfig>,
    accepts_plain: bool,
    /// `edge`: the certificate presented, watched for rotation.
    edge: Option<Arc<EdgeCertificate>>,
}

impl fmt::Debug for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Termination")
            .field("accepts_plain", &self.accepts_plain)
            .finish_non_exhaustive()
    }
}

impl Termination {
    /// Connections taken with `config`, and plain ones too when
    /// `accepts_plain`.
    pub fn new(config: ServerConfig, accepts_plain: bool) -> Termination {
        Termination::offering_h2(config, accepts_plain, None)
    }

    /// Server TLS alone (`edge`) with `certificate`; plain text refused.
    pub fn edge(certificate: Arc<EdgeCertificate>) -> Termination {
        Termination::offering_h2(certificate.server_config(), false, Some(certificate))
    }

    /// Every termination offers `h2` and `http/1.1` by ALPN: the listener
    /// serves the one the client chose.
    fn offering_h2(
        mut config: ServerConfig,
        accepts_plain: bool,
        edge: Option<Arc<EdgeCertificate>>,
    ) -> Termination {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Termination {
            config: Arc::new(config),
            accepts_plain,
            edge,
        }
    }

    /// `edge`: the certificate presented.
    pub fn edge_certificate(&self) -> Option<&Arc<EdgeCertificate>> {
        self.edge.as_ref()
    }

    /// The server configuration handshakes are made with.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Whether a client that does not open with TLS is served in plain text.
    pub fn accepts_plain(&self) -> bool {
        self.accepts_plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_have_a_trust_domain_and_a_path() {
        assert!(is_spiffe_id("spiffe://cluster.local/ns/shop/sa/catalog"));
        assert!(!is_spiffe_id("spiffe://cluster.local"));
        assert!(!is_spiffe_id("spiffe:///ns/shop"));
        assert!(!is_spiffe_id("https://cluster.local/ns/shop"));
        assert_eq!(
            trust_domain("spiffe://cluster.local/ns/shop/sa/catalog"),
            "cluster.local"
        );
    }

    #[test]
    fn a_replica_must_present_the_expected_id_or_one_of_the_trust_domain() {
        let catalog = || Ok("spiffe://cluster.local/ns/shop/sa/catalog".to_string());
        let exactly = Expected::Exactly("spiffe://cluster.local/ns/shop/sa/catalog".into());
        assert!(check_identity(catalog(), &exactly).is_ok());
        let other = Expected::Exactly("spiffe://cluster.local/ns/shop/sa/payments".into());
        let refused = check_identity(catalog(), &other).expect_err("another ID");
        assert!(wrong_identity_of(&refused).is_some_and(|w| w.0.contains("payments")));
        assert!(check_identity(catalog(), &Expected::TrustDomain("cluster.local".into())).is_ok());
        assert!(check_identity(catalog(), &Expected::TrustDomain("other.org".into())).is_err());
        assert!(check_identity(Err("has no SAN".into()), &exactly).is_err());
    }
}
