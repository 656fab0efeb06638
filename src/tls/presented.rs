//! A certificate chain and its key as a listener or a client presents
//! them: read from PEM files, the key checked against the certificate, and
//! the leaf's serial and expiry kept for the admin API, the expiry gauge
//! and rotation's checks.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use super::mesh::parse;
use super::{certificates_from, key_from, provider, IdentityError};

/// One version of a chain and its key, ready for handshakes.
#[derive(Debug)]
pub struct Presented {
    certified: Arc<CertifiedKey>,
    /// The leaf's serial number, lowercase hex without separators.
    serial: String,
    /// When the leaf expires.
    not_after: SystemTime,
}

impl Presented {
    /// Reads the chain in `cert_file` (leaf first) and the key in
    /// `key_file`, and checks that the key is the leaf's.
    pub fn read(cert_file: &str, key_file: &str) -> Result<Presented, IdentityError> {
        let chain = certificates_from(cert_file).map_err(IdentityError::Cert)?;
        let leaf = parse(&chain[0]).map_err(|why| {
            IdentityError::Cert(format!("{cert_file}: the first certificate {why}"))
        })?;
        let serial = serial_hex(leaf.raw_serial());
        let expiry = u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or_default();
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(expiry);
        let key = key_from(key_file).map_err(IdentityError::Key)?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|err| {
            IdentityError::Key(format!("{key_file}: does not fit the certificate: {err}"))
        })?;
        Ok(Presented {
            certified: Arc::new(certified),
            serial,
            not_after,
        })
    }

    /// `self`, unless its certificate (from `cert_file`) has expired: a
    /// rotation never puts an expired chain in use.
    pub fn unexpired(self, cert_file: &str) -> Result<Presented, IdentityError> {
        match expired(cert_file, self.not_after) {
            Some(why) => Err(IdentityError::Cert(why)),
            None => Ok(self),
        }
    }

    /// The chain and key handshakes are made with.
    pub fn certified(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'_> {
        self.certified
            .end_entity_cert()
            .expect("read with at least one certificate")
    }

    /// The serial number of the leaf, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// Why the certificate in `cert_file`, valid until `not_after`, can no
/// longer be presented (naming the file and when it expired); `None`
/// while it is valid.
pub fn expired(cert_file: &str, not_after: SystemTime) -> Option<String> {
    (not_after <= SystemTime::now()).then(|| {
        format!(
            "{cert_file}: the certificate expired at {}",
            crate::logging::rfc3339(not_after)
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_lowercase_hex_without_the_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x33, 0xc1]), "33c1");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
