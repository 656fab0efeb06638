//! Key pairs made by openssl, for the JWT tests.

use super::files::TempDir;

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
    let private = dir.path.join(format!("{kind}-private.pem"));
    let public = dir.path.join(format!("{kind}-public.pem"));
    let mut generate = std::process::Command::new("openssl");
    generate.arg("genpkey");
    match kind.split('-').next() {
        Some("rsa") => generate.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        Some("ec") => generate.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        _ => generate.args(["-algorithm", "ED25519"]),
    };
    let generated = generate
        .arg("-out")
        .arg(&private)
        .output()
        .expect("run openssl");
    assert!(generated.status.success(), "openssl genpkey {kind}");
    let exported = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .expect("run openssl");
    assert!(exported.status.success(), "openssl pkey -pubout");
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&public)
        .output()
        .expect("run openssl");
    let raw_public = der.stdout[der.stdout.len().saturating_sub(32)..].to_vec();
    KeyPair {
        private_pem: std::fs::read(&private).expect("private pem"),
        public_pem: std::fs::read(&public).expect("public pem"),
        public_path: public,
        raw_public,
    }
}
