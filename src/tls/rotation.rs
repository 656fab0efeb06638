//! Rotation of the mesh identity: its three files are watched (a `stat`
//! per file and [`POLL`], as [`FileWatch`] does, so an atomic rename, an
//! edit in place and a Kubernetes `..data` symlink swap are all seen), and
//! once every change has held still the files are read again and the new
//! chain put in use ([`MeshIdentity::reload`]): new handshakes, in and
//! out, present it within about two polls; connections already open keep
//! theirs. A new chain that cannot be used leaves the old one in use and
//! says why in the log. `tls_certificate_reloads_total{result}` counts
//! both, and `tls_certificate_expiry_timestamp_seconds{name="mesh.identity"}`
//! follows the chain in use.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use log::{info, warn};

use super::{Chain, IdentityError, MeshIdentity};
use crate::metrics::Metrics;
use crate::watch::FileWatch;

/// How often the identity files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// The `name` label of the identity's expiry gauge: the key naming it.
const NAME: &str = "mesh.identity";

/// Shows the expiry of the chain `identity` has in use, then watches its
/// files on the running actix system for as long as it runs.
pub fn watch(identity: Arc<MeshIdentity>, metrics: Arc<Metrics>) {
    show_expiry(&identity.chain(), &metrics);
    let [ok, error] =
        ["ok", "error"].map(|result| metrics.tls_certificate_reloads.with_label_values(&[result]));
    let files = identity.files();
    let mut watches = [files.cert_file, files.key_file, files.ca_file]
        .map(|file| FileWatch::new(file.into(), None));
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
            match identity.reload() {
                Ok(chain) => {
                    info!(
                        "mesh.identity rotated: {} serial {} now in use",
                        chain.spiffe_id(),
                        chain.serial()
                    );
                    show_expiry(&chain, &metrics);
                    ok.inc();
                }
                Err(err) => {
                    let in_use = identity.chain();
                    let (IdentityError::Cert(why)
                    | IdentityError::Key(why)
                    | IdentityError::Ca(why)) = err;
                    warn!(
                        "mesh.identity: the changed files cannot be used, serial {} stays in use: {why}",
                        in_use.serial()
                    );
                    error.inc();
                }
            }
        }
    });
}

/// Sets the expiry gauge to `chain`'s not-after, in Unix seconds.
fn show_expiry(chain: &Chain, metrics: &Metrics) {
    let expiry = chain.not_after().duration_since(UNIX_EPOCH);
    metrics
        .tls_certificate_expiry
        .with_label_values(&[NAME])
        .set(expiry.map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        }));
}
