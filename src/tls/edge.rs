//! The `edge` mode's certificate: the chain and key the inbound listener
//! presents to callers from outside the mesh (`listeners.inbound.tls`'s
//! `cert_file` and `key_file`), no client certificate asked, put in use
//! anew when the files rotate.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::presented::Presented;
use super::{provider, IdentityError};

/// The edge certificate in use, swapped for a new one when its files
/// rotate ([`EdgeCertificate::reload`]).
pub struct EdgeCertificate {
    cert_file: String,
    key_file: String,
    current: ArcSwap<Presented>,
}

impl fmt::Debug for EdgeCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeCertificate")
            .field("cert_file", &self.cert_file)
            .field("serial", &self.current.load().serial())
            .finish_non_exhaustive()
    }
}

impl EdgeCertificate {
    /// The chain in `cert_file` with the key in `key_file`.
    pub fn load(cert_file: &str, key_file: &str) -> Result<Arc<EdgeCertificate>, IdentityError> {
        Ok(Arc::new(EdgeCertificate {
            cert_file: cert_file.to_string(),
            key_file: key_file.to_string(),
            current: ArcSwap::from_pointee(Presented::read(cert_file, key_file)?),
        }))
    }

    /// The files it is read from: the chain's and the key's.
    pub fn files(&self) -> [&str; 2] {
        [&self.cert_file, &self.key_file]
    }

    /// The certificate in use.
    pub fn presented(&self) -> Arc<Presented> {
        self.current.load_full()
    }

    /// Reads the files again and puts them in use, unless they cannot be
    /// (unreadable, not PEM, a key that does not fit, expired): then the
    /// certificate in use stays, and the error says why.
    pub fn reload(&self) -> Result<Arc<Presented>, IdentityError> {
        let presented = Presented::read(&self.cert_file, &self.key_file)?;
        let presented = Arc::new(presented.unexpired(&self.cert_file)?);
        self.current.store(Arc::clone(&presented));
        Ok(presented)
    }

    /// A server configuration for server TLS alone: the certificate in use
    /// at each handshake, no client certificate asked.
    pub fn server_config(self: &Arc<Self>) -> ServerConfig {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>)
    }
}

impl ResolvesServerCert for EdgeCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified())
    }
}
