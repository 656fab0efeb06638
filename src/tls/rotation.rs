//! Rotation of the certificates the sidecar presents, the mesh identity
//! and the `edge` mode's ([`Rotating`]): their files are watched (a `stat`
//! per file and [`POLL`], as `FileWatch` does, so an atomic rename, an
//! edit in place and a Kubernetes `..data` symlink swap are all seen), and
//! once every change has held still the files are read again and the new
//! chain put in use: new handshakes, in and out, present it within about
//! two polls; connections already open keep theirs. A new chain that
//! cannot be used leaves the old one in use and says why in the log.
//! `tls_certificate_reloads_total{result}` counts both, and
//! `tls_certificate_expiry_timestamp_seconds{name}` follows the chain in
//! use.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use super::{EdgeCertificate, IdentityError, MeshIdentity};
use crate::metrics::Metrics;
use crate::watch::FileWatch;

/// How often the identity files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// A certificate the sidecar presents, read from files and put in use
/// anew when they change.
pub trait Rotating: Send + Sync + 'static {
    /// The key naming it: the expiry gauge's `name` and the log's subject.
    fn name(&self) -> &'static str;
    /// The files it is read from, the certificate chain's first.
    fn watched_files(&self) -> Vec<&str>;
    /// The serial (lowercase hex) and expiry of the certificate in use.
    fn in_use(&self) -> (String, SystemTime);
    /// Reads the files again and puts them in use, or says why they
    /// cannot be (the certificate in use stays).
    fn read_again(&self) -> Result<(), IdentityError>;
}

impl Rotating for MeshIdentity {
    fn name(&self) -> &'static str {
        "mesh.identity"
    }

    fn watched_files(&self) -> Vec<&str> {
        let files = self.files();
        vec![files.cert_file, files.key_file, files.ca_file]
    }

    fn in_use(&self) -> (String, SystemTime) {
        let chain = self.chain();
        (chain.serial().to_string(), chain.not_after())
    }

    fn read_again(&self) -> Result<(), IdentityError> {
        self.reload().map(drop)
    }
}

impl Rotating for EdgeCertificate {
    fn name(&self) -> &'static str {
        "listeners.inbound.tls"
    }

    fn watched_files(&self) -> Vec<&str> {
        self.files().to_vec()
    }

    fn in_use(&self) -> (String, SystemTime) {
        let presented = self.presented();
        (presented.serial().to_string(), presented.not_after())
    }

    fn read_again(&self) -> Result<(), IdentityError> {
        self.reload().map(drop)
    }
}

/// Shows the expiry of the certificate in use, then watches its files on
/// the running actix system for as long as it runs.
pub fn watch(certificate: Arc<dyn Rotating>, metrics: Arc<Metrics>) {
    show_expiry(&*certificate, &metrics);
    let [ok, error] =
        ["ok", "error"].map(|result| metrics.tls_certificate_reloads.with_label_values(&[result]));
    let mut watches: Vec<FileWatch> = certificate
        .watched_files()
        .into_iter()
        .map(|file| FileWatch::new(file.into(), None))
        .collect();
    for watch in &mut watches {
        // The versions read at start are the ones in use.
        watch.due();
    }
    actix_rt::spawn(async move {
        let mut changed = false;
        let mut poll = actix_rt::time::interval(POLL);
        loop {
            poll.tick().await;
            for watch in &mut watches {
                changed |= watch.due();
            }
            // A rotation writes the chain and the key apart: read them
            // once neither is still changing, never a new chain with the
            // old key.
            if !changed || watches.iter().any(FileWatch::settling) {
                continue;
            }
            changed = false;
            let name = certificate.name();
            match certificate.read_again() {
                Ok(()) => {
                    let (serial, _) = certificate.in_use();
                    info!("{name} rotated: serial {serial} now in use");
                    show_expiry(&*certificate, &metrics);
                    ok.inc();
                }
                Err(err) => {
                    let (serial, _) = certificate.in_use();
                    let (IdentityError::Cert(why)
                    | IdentityError::Key(why)
                    | IdentityError::Ca(why)) = err;
                    warn!(
                        "{name}: the changed files cannot be used, serial {serial} stays in use: {why}"
                    );
                    error.inc();
                }
            }
        }
    });
}

/// Sets the expiry gauge of `certificate` to its not-after in use, in
/// Unix seconds.
fn show_expiry(certificate: &dyn Rotating, metrics: &Metrics) {
    let (_, not_after) = certificate.in_use();
    let expiry = not_after.duration_since(UNIX_EPOCH);
    metrics
        .tls_certificate_expiry
        .with_label_values(&[certificate.name()])
        .set(expiry.map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        }));
}
