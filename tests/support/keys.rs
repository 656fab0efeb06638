//! Key pairs made by openssl, and HS256 tokens, for the JWT tests.

use base64::Engine;
use serde_json::{json, Value};

use super::files::TempDir;
use super::tls::openssl;

/// A key pair made by openssl for one algorithm family.
pub struct KeyPair {
    /// PEM of the private key (PKCS#8).
    pub private_pem: Vec<u8>,
    /// PEM of the public key.
    pub public_pem: Vec<u8>,
    /// Where the public PEM was written, for `public_key_file`.
    pub public_path: std::path::PathBuf,
    /// The raw public key (for an Ed25519 JWK's `x`), when asked for.
    pub raw_public: Vec<u8>,
}

/// Makes a key pair with openssl: `kind` is `rsa`, `ec` (P-256) or
/// `ed25519`, optionally with a `-suffix` to tell pairs apart.
pub fn key_pair(dir: &TempDir, kind: &str) -> KeyPair {
    let (private, public) = (format!("{kind}-private.pem"), format!("{kind}-public.pem"));
    let algorithm: &[&str] = match kind.split('-').next() {
        Some("rsa") => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Some("ec") => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-algorithm", "ED25519"],
    };
    let mut genpkey = vec!["genpkey"];
    genpkey.extend_from_slice(algorithm);
    genpkey.extend(["-out", &private]);
    openssl(&dir.path, &genpkey);
    openssl(
        &dir.path,
        &["pkey", "-pubout", "-in", &private, "-out", &public],
    );
    let der = openssl(
        &dir.path,
        &["pkey", "-pubin", "-outform", "DER", "-in", &public],
    );
    let public_path = dir.path.join(&public);
    KeyPair {
        private_pem: std::fs::read(dir.path.join(&private)).expect("private pem"),
        public_pem: std::fs::read(&public_path).expect("public pem"),
        public_path,
        raw_public: der[der.len().saturating_sub(32)..].to_vec(),
    }
}

/// The JWK of an Ed25519 pair (made with `key_pair(dir, "ed25519...")`),
/// for a JWKS document.
pub fn ed25519_jwk(kid: &str, pair: &KeyPair) -> Value {
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&pair.raw_public);
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x, "alg": "EdDSA", "use": "sig"})
}

/// `Bearer <token>`, the token `claims` signed with HS256 and `secret`, as
/// the tests' callers send it in `Authorization`.
pub fn hs256_bearer(secret: &[u8], claims: &Value) -> String {
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    );
    format!("Bearer {}", token.expect("signs"))
}
