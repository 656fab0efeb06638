//! `--mesh`: the pod's mesh identity. The sidecar reads its certificate
//! chain, key and the mesh's trust bundle from files; here they are
//! mounted, read-only, at [`IDENTITY_DIR`] as `tls.crt`, `tls.key` and
//! `ca.crt` ([`crate::config::IDENTITY_FILE_NAMES`]), the names both
//! sources write: cert-manager's csi-driver-spiffe (the default: a
//! short-lived certificate for the pod's service account, renewed in
//! place) or a Secret (as cert-manager's `Certificate` writes it). The
//! sidecar's environment ([`sidecar_env`]) points `mesh.identity` there and
//! turns the inbound listener's mutual TLS on, where its config does not
//! say otherwise.

use std::fmt;
use std::str::FromStr;

use serde_norway::{Mapping, Value};

use crate::config::{INBOUND_TLS_MODE, MESH_IDENTITY_DIR};

/// The pod volume holding the identity files.
pub(super) const IDENTITY_VOLUME: &str = "outrigger-identity";

/// Where the identity files are mounted in the sidecar; `mesh.identity`
/// in sidecar-config/examples/mesh.yaml points here.
pub(super) const IDENTITY_DIR: &str = "/var/run/outrigger/identity";

/// cert-manager's csi-driver-spiffe.
const SPIFFE_CSI_DRIVER: &str = "spiffe.csi.cert-manager.io";

/// The group csi-driver-spiffe gives the files, so the sidecar (which runs
/// as user and group 65532, not root) can read its key.
const SIDECAR_GROUP: &str = "65532";

/// Where the mesh identity comes from (`--mesh-certs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshCerts {
    /// A csi-driver-spiffe volume: `csi`.
    Csi,
    /// The Secret with this name: `secret:<name>`.
    Secret(String),
}

impl FromStr for MeshCerts {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text == "csi" => Ok(MeshCerts::Csi),
            Some(("secret", name)) if is_object_name(name) => {
                Ok(MeshCerts::Secret(name.to_string()))
            }
            Some(("secret", name)) => Err(format!(
                "{name:?} is not a Secret name (lowercase letters, digits, '-' and '.', \
                 at most 253, starting and ending with a letter or digit)"
            )),
            _ => Err(format!("expected csi or secret:<name>, got {text:?}")),
        }
    }
}

impl fmt::Display for MeshCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeshCerts::Csi => f.write_str("csi"),
            MeshCerts::Secret(name) => write!(f, "secret:{name}"),
        }
    }
}

/// True for a valid Kubernetes object name (an RFC 1123 subdomain).
fn is_object_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// The pod volume with the identity files.
pub(super) fn identity_volume(certs: &MeshCerts) -> Value {
    let mut volume = Mapping::new();
    volume.insert("name".into(), IDENTITY_VOLUME.into());
    let mut source = Mapping::new();
    match certs {
        MeshCerts::Csi => {
            let mut attributes = Mapping::new();
            attributes.insert(
                format!("{SPIFFE_CSI_DRIVER}/fs-group").into(),
                SIDECAR_GROUP.into(),
            );
            source.insert("driver".into(), SPIFFE_CSI_DRIVER.into());
            source.insert("readOnly".into(), true.into());
            source.insert("volumeAttributes".into(), Value::Mapping(attributes));
            volume.insert("csi".into(), Value::Mapping(source));
        }
        MeshCerts::Secret(name) => {
            source.insert("secretName".into(), name.as_str().into());
            volume.insert("secret".into(), Value::Mapping(source));
        }
    }
    Value::Mapping(volume)
}

/// The sidecar's read-only mount of [`IDENTITY_VOLUME`] at [`IDENTITY_DIR`].
pub(super) fn identity_mount() -> Value {
    let mut mount = Mapping::new();
    mount.insert("name".into(), IDENTITY_VOLUME.into());
    mount.insert("mountPath".into(), IDENTITY_DIR.into());
    mount.insert("readOnly".into(), true.into());
    Value::Mapping(mount)
}

/// The sidecar's environment in the mesh: its identity in [`IDENTITY_DIR`]
/// and mutual TLS required on its inbound listener, each taken only where
/// the config leaves it out (a namespace migrating sets `permissive`).
pub(super) fn sidecar_env() -> [(&'static str, &'static str); 2] {
    [
        (MESH_IDENTITY_DIR, IDENTITY_DIR),
        (INBOUND_TLS_MODE, "mesh"),
    ]
}

/// The note `--mesh` leaves: `inject` cannot see the config (the ConfigMap
/// is not its input), where the calls that go over mutual TLS are chosen.
pub(super) fn config_note(config_map: &str) -> String {
    format!(
        "--mesh: the sidecar takes its identity from {IDENTITY_DIR} and only mutual TLS on \
         its inbound listener ({MESH_IDENTITY_DIR}, {INBOUND_TLS_MODE}=mesh; the ConfigMap's \
         own mesh.identity and listeners.inbound.tls.mode win); in the ConfigMap {config_map}'s \
         sidecar.yaml, listeners.inbound must be set and the services called over mutual TLS \
         need mesh: true"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_certs_parse_and_print_back() {
        for text in ["csi", "secret:shop-frontend-identity"] {
            assert_eq!(text.parse::<MeshCerts>().unwrap().to_string(), text);
        }
        for bad in ["", "spire", "secret:", "secret:Bad_Name", "secret:-x"] {
            assert!(bad.parse::<MeshCerts>().is_err(), "{bad:?} was accepted");
        }
    }
}
