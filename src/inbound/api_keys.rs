//! API keys for machine callers: held as SHA-256 digests, compared in
//! constant time, each standing for a named identity with roles and scopes.

use actix_web::http::header::HeaderName;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeysConfig;

/// A known key's digest and whose it is.
struct Entry {
    digest: [u8; 32],
    name: String,
    roles: Vec<String>,
    scopes: Vec<String>,
}

/// Whose a known key is.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyHolder<'a> {
    /// The key's name: the caller's identity.
    pub name: &'a str,
    /// Its roles.
    pub roles: &'a [String],
    /// Its scopes.
    pub scopes: &'a [String],
}

/// The known API keys and the header they arrive in.
pub struct ApiKeys {
    /// The header callers send a key in.
    pub header: HeaderName,
    entries: Vec<Entry>,
}

impl ApiKeys {
    /// The table for `config`; the keys themselves are not kept.
    pub fn new(config: &ApiKeysConfig) -> Result<Self, String> {
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| format!("\"{}\" is not a header name", config.header))?;
        let entries = config
            .keys
            .iter()
            .map(|key| Entry {
                digest: Sha256::digest(key.key.as_bytes()).into(),
                name: key.name.clone(),
                roles: key.roles.clone(),
                scopes: key.scopes.clone(),
            })
            .collect();
        Ok(ApiKeys { header, entries })
    }

    /// Whose `presented` is, if it is a known key. Every entry is
    /// compared, so timing says nothing about which matched.
    pub fn identify(&self, presented: &[u8]) -> Option<KeyHolder<'_>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found.map(|entry| KeyHolder {
            name: &entry.name,
            roles: &entry.roles,
            scopes: &entry.scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    #[test]
    fn a_known_key_yields_its_identity_and_others_nothing() {
        let keys = ApiKeys::new(&ApiKeysConfig {
            header: "x-api-key".to_string(),
            keys: vec![ApiKey {
                name: "ci".to_string(),
                roles: vec!["deploy".to_string()],
                scopes: vec!["orders:read".to_string()],
                key: "k-123".to_string(),
            }],
        })
        .expect("valid");
        assert_eq!(
            keys.identify(b"k-123"),
            Some(KeyHolder {
                name: "ci",
                roles: &["deploy".to_string()],
                scopes: &["orders:read".to_string()],
            })
        );
        assert_eq!(keys.identify(b"k-124"), None);
        assert_eq!(keys.identify(b""), None);
    }
}
