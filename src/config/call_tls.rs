//! The URLs the sidecar calls itself (`inbound.auth.jwt.jwks_url`,
//! `discovery.registry.url`, `tracing.otlp_endpoint`): `http://` or
//! `https://`, and for `https://` the `ca_file` beside the URL, read at load
//! into the client configuration the call verifies the server with, so
//! `outrigger check` and a reload name a missing or unparsable file by its
//! key.

use std::fmt;
use std::sync::Arc;

use rustls::ClientConfig;
use serde::{Serialize, Serializer};

use super::reader::{Problems, Table};
use crate::tls::call_config;

/// How one of the sidecar's own calls verifies an `https://` server: the
/// CA bundle of its `ca_file` key, or the system's roots; nothing for an
/// `http://` URL. Shown (in `GET /config`) as that key's value.
#[derive(Clone, Default)]
pub struct CallTls {
    ca_file: Option<String>,
    config: Option<Arc<ClientConfig>>,
}

impl CallTls {
    /// The client configuration for an `https://` URL, `None` for `http://`.
    pub fn config(&self) -> Option<&Arc<ClientConfig>> {
        self.config.as_ref()
    }
}

/// Two are the same when their key is and both are for the same scheme: the
/// files are not compared (as for `services[].tls`).
impl PartialEq for CallTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file && self.config.is_some() == other.config.is_some()
    }
}

impl fmt::Debug for CallTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallTls")
            .field("ca_file", &self.ca_file)
            .field("https", &self.config.is_some())
            .finish()
    }
}

impl Serialize for CallTls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.ca_file.serialize(serializer)
    }
}

/// Checks `url` (the value of `url_key` in `t`) is an `http://` or
/// `https://` URL with a host, like `example`, and reads the CA file key
/// `ca_key` beside it: for `https://`, the client configuration verifying
/// with it (or the system's roots); for `http://`, it must not be set.
pub(super) fn read_call_url(
    t: &mut Table,
    url: Option<&str>,
    (url_key, ca_key): (&str, &str),
    example: &str,
    problems: &mut Problems,
) -> CallTls {
    let ca_file: Option<String> = t.get(ca_key, problems);
    let Some(url) = url else {
        if ca_file.is_some() {
            problems.add(
                &t.path_of(ca_key),
                format!("only for an https:// {url_key}, which is not set"),
            );
        }
        return CallTls::default();
    };
    let https = match scheme(url) {
        Some(https) => https,
        None => {
            problems.add(
                &t.path_of(url_key),
                format!("expected an http:// or https:// URL like \"{example}\", got \"{url}\""),
            );
            return CallTls::default();
        }
    };
    if !https {
        if ca_file.is_some() {
            problems.add(
                &t.path_of(ca_key),
                format!("only for an https:// URL: {url} is called in plain text"),
            );
        }
        return CallTls::default();
    }
    match call_config(ca_file.as_deref()) {
        Ok(config) => CallTls {
            ca_file,
            config: Some(config),
        },
        Err(why) => {
            problems.add(&t.path_of(ca_key), why);
            CallTls::default()
        }
    }
}

/// Whether `url` is `https://` (`Some(true)`) or `http://` (`Some(false)`)
/// with a host; `None` when it is neither.
fn scheme(url: &str) -> Option<bool> {
    let uri = url.parse::<actix_web::http::Uri>().ok()?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return None,
    };
    uri.host()
        .is_some_and(|host| !host.is_empty())
        .then_some(https)
}

#[cfg(test)]
mod tests {
    use super::super::tests::errors;

    const JWT: &str = "listeners: { inbound: { app: \"http://127.0.0.1:8080\" } }
inbound:
  auth:
    jwt: { algorithms: [RS256], ";

    fn with_jwt(keys: &str) -> String {
        format!("{JWT}{keys} }}\n")
    }

    #[test]
    fn an_https_url_verifies_with_the_system_roots_or_its_ca_file() {
        use crate::config::{Config, JwtKeys};
        let config =
            Config::from_yaml(&with_jwt("jwks_url: \"https://idp.example/jwks\""), &|_| {
                None
            })
            .expect("valid");
        let inbound = config.inbound.expect("inbound");
        let jwt = inbound.auth.jwt.as_ref().expect("jwt");
        assert_eq!(
            jwt.keys,
            JwtKeys::JwksUrl("https://idp.example/jwks".to_string())
        );
        assert!(jwt.jwks_tls.config().is_some(), "the system's roots");
        let plain = Config::from_yaml(&with_jwt("jwks_url: \"http://idp/jwks\""), &|_| None)
            .expect("valid");
        let plain = plain.inbound.expect("inbound");
        let plain = plain.auth.jwt.as_ref().expect("jwt");
        assert!(plain.jwks_tls.config().is_none());
    }

    #[test]
    fn a_bad_ca_file_or_url_is_named_by_its_key() {
        assert_eq!(
            errors(&with_jwt(
                "jwks_url: \"https://idp.example/jwks\", ca_file: /nonexistent/ca.pem"
            )),
            vec!["inbound.auth.jwt.ca_file: cannot read /nonexistent/ca.pem: I/O error: No such file or directory (os error 2)"]
        );
        assert_eq!(
            errors(&with_jwt("jwks_url: \"http://idp/jwks\", ca_file: ca.pem")),
            vec!["inbound.auth.jwt.ca_file: only for an https:// URL: http://idp/jwks is called in plain text"]
        );
        assert_eq!(
            errors(&with_jwt("jwks_url: \"ftp://idp/jwks\"")),
            vec!["inbound.auth.jwt.jwks_url: expected an http:// or https:// URL like \"https://idp.example/.well-known/jwks.json\", got \"ftp://idp/jwks\""]
        );
        assert_eq!(
            errors(
                "services: [{name: api, endpoints: [\"127.0.0.1:9000\"]}]\ntracing: { otlp_ca_file: ca.pem }\n"
            ),
            vec!["tracing.otlp_ca_file: only for an https:// otlp_endpoint, which is not set"]
        );
        assert_eq!(
            errors(
                "services: [{name: api, endpoints: [\"127.0.0.1:9000\"]}]\ndiscovery: { registry: { url: \"https://reg:9000\", ca_file: /nonexistent/ca.pem } }\n"
            ),
            vec!["discovery.registry.ca_file: cannot read /nonexistent/ca.pem: I/O error: No such file or directory (os error 2)"]
        );
    }
}
