//! Bearer token verification. Algorithms are pinned by config: a token's
//! `alg` header must be one of them and of its key's family, so it can
//! never choose how it is checked (no `none`, no HMAC with a public key).
//! A configured `issuer` or `audience` is required of every token, and a
//! token must name a usable subject ([`usable_name`]): the caller's
//! identity keys the cache and the rate limits, so two tokens without one
//! must never pass as the same caller.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{usable_name, JwtConfig, JwtKeys};

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused; the `result` label of `jwt_validations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRejection {
    /// No credentials at all.
    Missing,
    /// Not a well-formed JWT (or `alg: none`, or too large).
    Malformed,
    /// The signature does not verify under the pinned algorithms.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not one string among `issuer`, when that is configured.
    BadIssuer,
    /// `aud` names none of `audience`, or is missing, when that is configured.
    BadAudience,
    /// `sub` is missing or not a usable name.
    BadSubject,
    /// The roles claim is not a usable name or a list of them (without commas).
    BadRoles,
    /// `scope` or `scp` is not a space-separated string or a list of usable names.
    BadScopes,
    /// No key has the token's `kid`.
    UnknownKid,
    /// The token was revoked.
    Revoked,
}

impl JwtRejection {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::BadSubject => "bad_subject",
            Self::BadRoles => "bad_roles",
            Self::BadScopes => "bad_scopes",
            Self::UnknownKid => "unknown_kid",
            Self::Revoked => "revoked",
        }
    }
}

/// What a valid token says about its bearer; every name in it is usable
/// ([`usable_name`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenClaims {
    /// `sub`.
    pub subject: String,
    /// The roles claim (string or list).
    pub roles: Vec<String>,
    /// `scope` (space-separated) or `scp` (list).
    pub scopes: Vec<String>,
    /// `jti`, when the token has one.
    pub jti: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

/// One verification key and the validation that goes with it.
struct VerifyKey {
    key: DecodingKey,
    validation: Validation,
}

/// The keys in force, by `kid`; `only` serves tokens without a `kid`.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    only: Option<Arc<VerifyKey>>,
}

/// Verifies bearer tokens against the configured keys.
pub struct Verifier {
    config: JwtConfig,
    keys: ArcSwap<KeySet>,
}

impl Verifier {
    /// A verifier for `config`; with a JWKS URL it starts with no keys until
    /// [`Verifier::install_jwks`] is called.
    pub fn new(config: JwtConfig) -> Result<Self, String> {
        let keys = match &config.keys {
            JwtKeys::Secret(secret) => {
                let key = VerifyKey {
                    key: DecodingKey::from_secret(secret),
                    validation: validation(&config, &config.algorithms),
                };
                single(key)
            }
            JwtKeys::PublicKeyFile(path) => {
                let pem = std::fs::read(path)
                    .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
                single(pem_key(&config, &pem)?)
            }
            JwtKeys::JwksUrl(_) => KeySet::default(),
        };
        Ok(Verifier {
            config,
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// The config it verifies with.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Replaces the keys with those of a JWKS document; keeps the old ones
    /// (and says why) when the document yields none.
    pub fn install_jwks(&self, document: &[u8]) -> Result<usize, String> {
        let set: JwkSet = serde_json::from_slice(document)
            .map_err(|err| format!("not a JWKS document: {err}"))?;
        let mut keys = KeySet::default();
        for jwk in &set.keys {
            let family: &[Algorithm] = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => {
                    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
                }
                AlgorithmParameters::EllipticCurve(_) => &[Algorithm::ES256, Algorithm::ES384],
                AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
                // Symmetric keys are never taken from a JWKS, nor kinds this build does not know.
                _ => continue,
            };
            let algorithms: Vec<Algorithm> = self
                .config
                .algorithms
                .iter()
                .copied()
                .filter(|a| family.contains(a))
                .collect();
            let (Some(kid), false) = (jwk.common.key_id.clone(), algorithms.is_empty()) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = Arc::new(VerifyKey {
                key,
                validation: validation(&self.config, &algorithms),
            });
            keys.only = Some(Arc::clone(&key));
            keys.by_kid.insert(kid, key);
        }
        if keys.by_kid.is_empty() {
            return Err("the JWKS has no usable key for the configured algorithms".to_string());
        }
        if keys.by_kid.len() > 1 {
            keys.only = None;
        }
        let count = keys.by_kid.len();
        self.keys.store(Arc::new(keys));
        Ok(count)
    }

    /// Whether a key with this `kid` is in force.
    pub fn knows(&self, kid: &str) -> bool {
        self.keys.load().by_kid.contains_key(kid)
    }

    /// The `kid` in a token's header, if it has one.
    pub fn kid_of(token: &str) -> Option<String> {
        decode_header(token).ok()?.kid
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, JwtRejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtRejection::Malformed);
        }
        let header = decode_header(token).map_err(|_| JwtRejection::Malformed)?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(JwtRejection::BadSignature);
        }
        let keys = self.keys.load();
        let key = match &header.kid {
            Some(kid) => keys
                .by_kid
                .get(kid)
                .or(keys.only.as_ref().filter(|_| keys.by_kid.is_empty())),
            None => keys.only.as_ref(),
        }
        .ok_or(JwtRejection::UnknownKid)?;
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(JwtRejection::BadSignature);
        }
        let data = decode::<Map<String, Value>>(token, &key.key, &key.validation).map_err(
            |err| match err.kind() {
                ErrorKind::ExpiredSignature => JwtRejection::Expired,
                ErrorKind::ImmatureSignature => JwtRejection::NotYetValid,
                ErrorKind::InvalidAudience => JwtRejection::BadAudience,
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                    JwtRejection::BadAudience
                }
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidKeyFormat => JwtRejection::BadSignature,
                _ => JwtRejection::Malformed,
            },
        )?;
        claims(&data.claims, &self.config)
    }
}

fn single(key: VerifyKey) -> KeySet {
    KeySet {
        by_kid: HashMap::new(),
        only: Some(Arc::new(key)),
    }
}

/// Reads a PEM public key of one family.
type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// The key in a PEM file, read as the family of the configured algorithms.
fn pem_key(config: &JwtConfig, pem: &[u8]) -> Result<VerifyKey, String> {
    let families: [(&[Algorithm], PemParser); 3] = [
        (
            &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            DecodingKey::from_rsa_pem,
        ),
        (
            &[Algorithm::ES256, Algorithm::ES384],
            DecodingKey::from_ec_pem,
        ),
        (&[Algorithm::EdDSA], DecodingKey::from_ed_pem),
    ];
    for (family, parse) in families {
        let algorithms: Vec<Algorithm> = config
            .algorithms
            .iter()
            .copied()
            .filter(|a| family.contains(a))
            .collect();
        if algorithms.is_empty() {
            continue;
        }
        if let Ok(key) = parse(pem) {
            return Ok(VerifyKey {
                key,
                validation: validation(config, &algorithms),
            });
        }
    }
    Err("the public key file holds no key of the configured algorithms' kind".to_string())
}

fn validation(config: &JwtConfig, algorithms: &[Algorithm]) -> Validation {
    let mut validation = Validation::new(algorithms.first().copied().unwrap_or(Algorithm::HS256));
    validation.algorithms = algorithms.to_vec();
    validation.leeway = config.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // `iss` is checked by `claims`: the library takes a list of issuers too.
    validation.iss = None;
    if config.audience.is_empty() {
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
    } else {
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.set_audience(&config.audience);
    }
    validation
}

/// The claims of a token whose signature and times verified: its issuer
/// checked (one string, among `issuer`), its subject, roles and scopes read
/// and each found usable, or why not.
fn claims(claims: &Map<String, Value>, config: &JwtConfig) -> Result<TokenClaims, JwtRejection> {
    let issuer = claims.get("iss").and_then(Value::as_str);
    if !config.issuer.is_empty()
        && !issuer.is_some_and(|iss| config.issuer.iter().any(|i| i == iss))
    {
        return Err(JwtRejection::BadIssuer);
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|sub| usable_name(sub))
        .ok_or(JwtRejection::BadSubject)?;
    let roles_claim = config.roles_claim.as_str();
    let roles = match claims.get(roles_claim) {
        None if roles_claim == "roles" => claims.get("role"),
        roles => roles,
    };
    // Roles reach the app joined by commas.
    let roles = roles
        .map_or(Some(Vec::new()), |roles| {
            names(roles, |role| usable_name(role) && !role.contains(','))
        })
        .ok_or(JwtRejection::BadRoles)?;
    let scopes = match claims.get("scope").or_else(|| claims.get("scp")) {
        None => Some(Vec::new()),
        Some(Value::String(list)) => list
            .split_whitespace()
            .map(|scope| usable_name(scope).then(|| scope.to_string()))
            .collect(),
        // Scopes reach the app joined by spaces.
        Some(list) => names(list, |scope| {
            usable_name(scope) && !scope.contains(char::is_whitespace)
        }),
    }
    .ok_or(JwtRejection::BadScopes)?;
    Ok(TokenClaims {
        subject: subject.to_string(),
        roles,
        scopes,
        jti: claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string),
        expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// The names in a claim that is one string or a list of strings, when
/// each is `usable`; `None` when one is not, or the claim is anything else.
fn names(claim: &Value, usable: impl Fn(&str) -> bool) -> Option<Vec<String>> {
    let name = |item: &Value| {
        item.as_str()
            .filter(|name| usable(name))
            .map(str::to_string)
    };
    match claim {
        Value::String(_) => name(claim).map(|one| vec![one]),
        Value::Array(items) => items.iter().map(name).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CallTls;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    fn config() -> JwtConfig {
        JwtConfig {
            algorithms: vec![Algorithm::HS256],
            keys: JwtKeys::Secret(b"secret".to_vec()),
            issuer: vec!["issuer".to_string()],
            audience: vec!["front".to_string()],
            leeway: Duration::from_secs(5),
            roles_claim: "roles".to_string(),
            jwks_refresh: Duration::from_secs(600),
            jwks_tls: CallTls::default(),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("signs")
    }

    fn valid() -> Value {
        json!({"sub": "ana", "exp": now() + 600, "iss": "issuer", "aud": "front", "role": "admin", "scope": "read write", "jti": "j1"})
    }

    #[test]
    fn a_valid_token_yields_its_claims() {
        let verifier = Verifier::new(config()).expect("verifier");
        let claims = verifier.verify(&token(valid())).expect("valid");
        assert_eq!(claims.subject, "ana");
        assert_eq!(claims.roles, vec!["admin"], "falls back to the role claim");
        assert_eq!(claims.scopes, vec!["read", "write"]);
        assert_eq!(claims.jti.as_deref(), Some("j1"));
    }

    #[test]
    fn each_defect_has_its_reason() {
        let verifier = Verifier::new(config()).expect("verifier");
        let with = |key: &str, value: Value| {
            let mut claims = valid();
            claims[key] = value;
            verifier.verify(&token(claims))
        };
        assert_eq!(with("exp", json!(now() - 60)), Err(JwtRejection::Expired));
        assert_eq!(
            with("nbf", json!(now() + 600)),
            Err(JwtRejection::NotYetValid)
        );
        assert_eq!(with("iss", json!("other")), Err(JwtRejection::BadIssuer));
        assert_eq!(
            with("iss", json!(["issuer"])),
            Err(JwtRejection::BadIssuer),
            "iss is one string"
        );
        assert_eq!(with("sub", json!("")), Err(JwtRejection::BadSubject));
        assert_eq!(with("role", json!("a,b")), Err(JwtRejection::BadRoles));
        assert_eq!(with("scope", json!(["a b"])), Err(JwtRejection::BadScopes));
        for (claim, why) in [
            ("iss", JwtRejection::BadIssuer),
            ("aud", JwtRejection::BadAudience),
            ("sub", JwtRejection::BadSubject),
        ] {
            let mut without = valid();
            without.as_object_mut().expect("object").remove(claim);
            assert_eq!(
                verifier.verify(&token(without)),
                Err(why),
                "{claim} is required"
            );
        }
        assert_eq!(
            with("aud", json!(["elsewhere"])),
            Err(JwtRejection::BadAudience)
        );
        let mut no_exp = valid();
        no_exp.as_object_mut().expect("object").remove("exp");
        assert_eq!(
            verifier.verify(&token(no_exp)),
            Err(JwtRejection::Malformed),
            "exp is required"
        );
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &valid(),
            &EncodingKey::from_secret(b"guess"),
        )
        .expect("signs");
        assert_eq!(verifier.verify(&forged), Err(JwtRejection::BadSignature));
        let other_alg = encode(
            &Header::new(Algorithm::HS512),
            &valid(),
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("signs");
        assert_eq!(
            verifier.verify(&other_alg),
            Err(JwtRejection::BadSignature),
            "HS512 is not pinned"
        );
        assert_eq!(verifier.verify("abc.def"), Err(JwtRejection::Malformed));
        assert_eq!(
            verifier.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(JwtRejection::Malformed)
        );
    }

    #[test]
    fn alg_none_is_malformed() {
        let verifier = Verifier::new(config()).expect("verifier");
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64_url(valid().to_string().as_bytes());
        assert_eq!(
            verifier.verify(&format!("{header}.{body}.")),
            Err(JwtRejection::Malformed)
        );
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
