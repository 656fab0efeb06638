//! Certificates made by `openssl` for a test, in a scratch directory: a CA,
//! server certificates it signs, and one signed by another CA.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::files::TempDir;

/// A test's CA and the certificates it makes; removed when dropped.
pub struct Certificates {
    dir: TempDir,
}

/// A certificate chain and its key, as PEM files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificates {
    /// A new CA (`ca.pem`), and another one (`other-ca.pem`) that nothing
    /// trusts.
    pub fn new() -> Certificates {
        let certificates = Certificates {
            dir: TempDir::new(),
        };
        certificates.make_ca("ca");
        certificates.make_ca("other-ca");
        certificates
    }

    /// The CA's certificate, to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path.join("ca.pem")
    }

    /// The other CA's certificate, which signs [`Certificates::untrusted`].
    pub fn untrusted_ca(&self) -> PathBuf {
        self.dir.path.join("other-ca.pem")
    }

    /// A certificate from the CA for `sans` (for a server or a client) (`DNS:name`,
    /// `IP:127.0.0.1`, comma-separated).
    pub fn server(&self, file: &str, sans: &str) -> Pair {
        self.signed("ca", file, sans, "2")
    }

    /// A server certificate for `sans` from the CA nothing trusts.
    pub fn untrusted(&self, file: &str, sans: &str) -> Pair {
        self.signed("other-ca", file, sans, "2")
    }

    /// A certificate from the CA for `sans` that expired a day ago.
    pub fn expired(&self, file: &str, sans: &str) -> Pair {
        self.signed("ca", file, sans, "-1")
    }

    fn make_ca(&self, name: &str) {
        openssl(
            &self.dir.path,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=Test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    /// A certificate from `ca` valid for `days` from now (negative: expired).
    fn signed(&self, ca: &str, file: &str, sans: &str, days: &str) -> Pair {
        let dir = &self.dir.path;
        let extensions = format!(
            "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
        );
        std::fs::write(dir.join(format!("{file}.ext")), extensions).expect("write extensions");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={file}"),
                "-keyout",
                &format!("{file}.key"),
                "-out",
                &format!("{file}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                days,
                "-in",
                &format!("{file}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-extfile",
                &format!("{file}.ext"),
                "-out",
                &format!("{file}.pem"),
            ],
        );
        Pair {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        }
    }
}

/// Runs `openssl` with `args` in `dir` and returns what it printed;
/// panics with its errors on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (scripts/test.sh installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
