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
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::{certificates_from, key_from, provider, roots_from, Origination};

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

/// This pod's mesh identity, read once at start.
pub struct MeshIdentity {
    spiffe_id: String,
    /// The leaf's serial number, lowercase hex without separators.
    serial: String,
    /// When the leaf expires.
    not_after: SystemTime,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundle: Arc<RootCertStore>,
}

impl fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl MeshIdentity {
    /// Reads the chain, key and bundle, and the SPIFFE ID of the chain's
    /// leaf; checks that the key is the certificate's.
    pub fn load(files: IdentityFiles<'_>) -> Result<MeshIdentity, IdentityError> {
        let chain = certificates_from(files.cert_file).map_err(IdentityError::Cert)?;
        let unusable =
            |why| IdentityError::Cert(format!("{}: the first certificate {why}", files.cert_file));
        let leaf = parse(&chain[0]).map_err(unusable)?;
        let spiffe_id = spiffe_id_of(&leaf).map_err(unusable)?;
        let serial = serial_hex(leaf.raw_serial());
        let expiry = u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or_default();
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(expiry);
        let key = key_from(files.key_file).map_err(IdentityError::Key)?;
        let bundle = Arc::new(roots_from(files.ca_file).map_err(IdentityError::Ca)?);
        let identity = MeshIdentity {
            spiffe_id,
            serial,
            not_after,
            chain,
            key,
            bundle,
        };
        // Building a server configuration checks that the key fits.
        identity
            .server_config()
            .map_err(|why| IdentityError::Key(format!("{}: {why}", files.key_file)))?;
        Ok(identity)
    }

    /// The SPIFFE ID this pod presents.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The serial number of this pod's certificate, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When this pod's certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The trust domain of this pod's ID, which callers' IDs must share.
    pub fn trust_domain(&self) -> &str {
        trust_domain(&self.spiffe_id)
    }

    /// A server configuration for the inbound listener: this identity's
    /// chain, and a client certificate required from the bundle, carrying
    /// a SPIFFE ID of this trust domain.
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.bundle), provider())
                .build()
                .map_err(|err| format!("cannot verify callers with the trust bundle: {err}"))?;
        let verifier = ClientIdentityVerifier {
            inner,
            trust_domain: self.trust_domain().to_string(),
        };
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|err| format!("the key does not fit the certificate: {err}"))
    }

    /// How a meshed service's replicas are called: mutual TLS with this
    /// identity, on `inbound_port` instead of each replica's own port, the
    /// replica's certificate from the bundle with the SPIFFE ID `expected`
    /// (any of this trust domain when `None`).
    pub fn origination(&self, expected: Option<&str>, inbound_port: u16) -> Origination {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.bundle), provider())
                .build()
                .expect("the bundle was checked usable when the identity was loaded");
        let verifier = ServerIdentityVerifier {
            inner,
            bundle: Arc::clone(&self.bundle),
            expected: match expected {
                Some(id) => Expected::Exactly(id.to_string()),
                None => Expected::TrustDomain(self.trust_domain().to_string()),
            },
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .expect("the key was checked against the certificate when loaded");
        Origination::new(config, None, Some(inbound_port))
    }
}

/// A certificate's serial number (its DER integer's bytes) as lowercase
/// hex without separators or the sign byte DER adds (as `openssl x509
/// -serial` prints it).
fn serial_hex(raw: &[u8]) -> String {
    let significant = raw.iter().position(|byte| *byte != 0);
    let digits = &raw[significant.unwrap_or(raw.len().saturating_sub(1))..];
    digits.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
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
fn parse<'a>(certificate: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
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

/// Verifies a replica's chain against the bundle as WebPKI does, and its
/// SPIFFE ID in place of the name check.
#[derive(Debug)]
struct ServerIdentityVerifier {
    inner: Arc<WebPkiServerVerifier>,
    bundle: Arc<RootCertStore>,
    expected: Expected,
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
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.bundle,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        check_identity(spiffe_id(end_entity), &self.expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a caller's chain against the bundle (a client certificate is
/// required), then that its SPIFFE ID is of the trust domain.
#[derive(Debug)]
struct ClientIdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let expected = Expected::TrustDomain(self.trust_domain.clone());
        check_identity(spiffe_id(end_entity), &expected)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a listener takes TLS connections: the server configuration, and
/// whether plain-text clients are taken on the same port too.
pub struct Termination {
    config: Arc<ServerConfig>,
    accepts_plain: bool,
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
    /// `accepts_plain`; `h2` and `http/1.1` are offered by ALPN.
    pub fn new(mut config: ServerConfig, accepts_plain: bool) -> Termination {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Termination {
            config: Arc::new(config),
            accepts_plain,
        }
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

/// A server configuration for server TLS alone (`edge`): the chain in
/// `cert_file` with the key in `key_file`, no client certificate asked.
pub fn edge_server_config(cert_file: &str, key_file: &str) -> Result<ServerConfig, IdentityError> {
    let chain = certificates_from(cert_file).map_err(IdentityError::Cert)?;
    let key = key_from(key_file).map_err(IdentityError::Key)?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            IdentityError::Key(format!("{key_file}: does not fit the certificate: {err}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_lowercase_hex_without_the_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x33, 0xc1]), "33c1");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

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
