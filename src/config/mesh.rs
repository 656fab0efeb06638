//! The mesh: `mesh.identity` (this pod's certificate chain, key and the
//! mesh's trust bundle, read at load so `outrigger check` names a bad
//! file), `mesh.inbound_port`, the inbound listener's `tls` block, and what
//! makes a service meshed (`mesh: true`, `identity`).

use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::reader::{config_words, Problems, Table};
use super::tls::{ServiceTls, TlsScope};
use crate::tls::{
    is_spiffe_id, EdgeCertificate, IdentityError, IdentityFiles, MeshIdentity, Termination,
};

/// The names of the identity files in a directory, as cert-manager's
/// csi-driver-spiffe and a Secret of cert-manager's `Certificate` write
/// them: the chain, its key, the trust bundle.
pub const IDENTITY_FILE_NAMES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// The `mesh` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshConfig {
    /// This pod's identity; `None`: not in a mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    /// The port meshed calls go to on every replica's host (default 15006).
    pub inbound_port: u16,
}

impl MeshConfig {
    /// The identity read from `mesh.identity`, when there is one.
    pub fn loaded_identity(&self) -> Option<&Arc<MeshIdentity>> {
        self.identity.as_ref()?.loaded.as_ref()
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            identity: None,
            inbound_port: 15006,
        }
    }
}

/// `mesh.identity`: the files, and the identity read from them.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityConfig {
    /// This pod's certificate chain (PEM), its SPIFFE ID in the leaf's URI SAN.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The mesh's trust bundle (PEM CA certificates).
    pub ca_file: String,
    /// The identity read from the files; `None` only where the config is
    /// checked without them (`outrigger check` in CI, the files mounted
    /// where the sidecar runs): such a config is for showing, never running.
    #[serde(skip)]
    pub loaded: Option<Arc<MeshIdentity>>,
}

/// Two identities are the same when their files are (re-reading changed
/// files is rotation's work).
impl PartialEq for IdentityConfig {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.ca_file == other.ca_file
    }
}

/// How the inbound listener takes connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain text only.
    #[default]
    Off,
    /// Mutual TLS with a client certificate from the mesh's trust bundle;
    /// plain text refused.
    Mesh,
    /// Mutual TLS as `mesh`, or plain text, on the same port.
    Permissive,
    /// Server TLS with `cert_file`, no client certificate.
    Edge,
}

config_words!(TlsMode {
    Off => "off",
    Mesh => "mesh",
    Permissive => "permissive",
    Edge => "edge",
});

impl Serialize for TlsMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// `listeners.inbound.tls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListenerTls {
    /// Plain, mutual TLS, both, or server TLS.
    pub mode: TlsMode,
    /// `edge`: the certificate chain (PEM) presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// `edge`: its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// What connections are accepted with; `None` for `off`.
    #[serde(skip)]
    pub termination: Option<Arc<Termination>>,
}

impl PartialEq for ListenerTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.cert_file == other.cert_file
            && self.key_file == other.key_file
    }
}

/// Reads the `mesh` section (read at start only), loading the identity.
pub(super) fn read_mesh(t: &mut Table, base: &MeshConfig, problems: &mut Problems) -> MeshConfig {
    let identity = t.section("identity", &None, problems, |t, _, problems| {
        read_identity(t, problems)
    });
    let port: u32 = t.get_or("inbound_port", u32::from(base.inbound_port), problems);
    let inbound_port = match u16::try_from(port) {
        Ok(port) if port > 0 => port,
        _ => {
            problems.add(
                &t.path_of("inbound_port"),
                format!("expected a port from 1 to 65535, got {port}"),
            );
            base.inbound_port
        }
    };
    MeshConfig {
        identity,
        inbound_port,
    }
}

/// Reads `mesh.identity` and loads it, naming a bad file by its key.
fn read_identity(t: &mut Table, problems: &mut Problems) -> Option<IdentityConfig> {
    let mut required = |key: &str, what: &str| {
        let value: Option<String> = t.get(key, problems);
        if value.is_none() {
            problems.add(&t.path_of(key), format!("required: {what}"));
        }
        value
    };
    let cert_file = required("cert_file", "this pod's certificate chain (PEM)");
    let key_file = required("key_file", "the certificate's private key (PEM)");
    let ca_file = required("ca_file", "the mesh's trust bundle (PEM)");
    load_identity(
        [cert_file?, key_file?, ca_file?],
        &|key| t.path_of(key),
        problems,
    )
}

/// The identity in the directory `dir` names (from
/// `OUTRIGGER_MESH_IDENTITY_DIR`): [`IDENTITY_FILE_NAMES`] in it, each
/// problem named by the variable and the key the file stands for.
pub(super) fn identity_in_dir(
    variable: &str,
    dir: &str,
    problems: &mut Problems,
) -> Option<IdentityConfig> {
    let dir = std::path::Path::new(dir);
    let [cert_file, key_file, ca_file] =
        IDENTITY_FILE_NAMES.map(|name| dir.join(name).to_string_lossy().into_owned());
    load_identity(
        [cert_file, key_file, ca_file],
        &|key| format!("{variable} (mesh.identity.{key})"),
        problems,
    )
}

/// Loads the identity in `[cert_file, key_file, ca_file]`, a problem with
/// a file reported under `path_of` its key.
fn load_identity(
    [cert_file, key_file, ca_file]: [String; 3],
    path_of: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<IdentityConfig> {
    let files = IdentityFiles {
        cert_file: &cert_file,
        key_file: &key_file,
        ca_file: &ca_file,
    };
    let absent = [
        ("cert_file", &cert_file),
        ("key_file", &key_file),
        ("ca_file", &ca_file),
    ]
    .into_iter()
    .find(|(_, file)| !std::path::Path::new(file).exists());
    let loaded = match (MeshIdentity::load(files), absent) {
        (Ok(identity), _) => Some(identity),
        // Mounted where the sidecar runs (a CSI volume, a Secret): where
        // the config is only checked, a file's absence is a warning, and
        // the config goes on without the identity (for showing only).
        (Err(_), Some((key, file))) => {
            let message = format!("{file} does not exist (mounted where the sidecar runs?)");
            if !problems.missing_secret(&path_of(key), message) {
                return None;
            }
            None
        }
        (Err(error), None) => {
            let (key, why) = file_key(error);
            problems.add(&path_of(key), why);
            return None;
        }
    };
    Some(IdentityConfig {
        cert_file,
        key_file,
        ca_file,
        loaded,
    })
}

/// The key of the file an [`IdentityError`] is about, and why.
fn file_key(error: IdentityError) -> (&'static str, String) {
    match error {
        IdentityError::Cert(why) => ("cert_file", why),
        IdentityError::Key(why) => ("key_file", why),
        IdentityError::Ca(why) => ("ca_file", why),
    }
}

/// Reads `listeners.inbound.tls` (at start only); the termination is made
/// by [`terminate`] once the mesh section is read.
pub(super) fn read_listener_tls(
    t: &mut Table,
    _: &ListenerTls,
    problems: &mut Problems,
) -> ListenerTls {
    let mode = t.get_or("mode", TlsMode::Off, problems);
    let cert_file: Option<String> = t.get("cert_file", problems);
    let key_file: Option<String> = t.get("key_file", problems);
    if mode == TlsMode::Edge {
        for (key, file, what) in [
            (
                "cert_file",
                &cert_file,
                "the certificate chain presented to callers",
            ),
            ("key_file", &key_file, "its private key"),
        ] {
            if file.is_none() {
                problems.add(&t.path_of(key), format!("required with mode edge: {what}"));
            }
        }
    } else if cert_file.is_some() || key_file.is_some() {
        let key = if cert_file.is_some() {
            "cert_file"
        } else {
            "key_file"
        };
        problems.add(
            &t.path_of(key),
            format!(
                "only read with mode edge; mode {} uses mesh.identity",
                mode.as_str()
            ),
        );
    }
    ListenerTls {
        mode,
        cert_file,
        key_file,
        termination: None,
    }
}

/// Makes the termination `tls` (at `path`) asks for: the mesh identity's
/// for `mesh` and `permissive`, the given files' for `edge`.
pub(super) fn terminate(
    tls: &mut ListenerTls,
    mesh: &MeshConfig,
    path: &str,
    problems: &mut Problems,
) {
    let termination = match tls.mode {
        TlsMode::Off => return,
        TlsMode::Mesh | TlsMode::Permissive => {
            let Some(identity) = &mesh.identity else {
                problems.add(
                    &format!("{path}.mode"),
                    format!(
                        "mode {} needs mesh.identity: the certificate callers are checked with",
                        tls.mode.as_str()
                    ),
                );
                return;
            };
            let Some(loaded) = &identity.loaded else {
                return; // Checked without its files: warned about.
            };
            Termination::new(loaded.server_config(), tls.mode == TlsMode::Permissive)
        }
        TlsMode::Edge => {
            let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
                return; // Reported as required.
            };
            match EdgeCertificate::load(cert, key) {
                Ok(certificate) => Termination::edge(certificate),
                Err(error) => {
                    let (key, why) = file_key(error);
                    return problems.add(&format!("{path}.{key}"), why);
                }
            }
        }
    };
    tls.termination = Some(Arc::new(termination));
}

/// Reads a service's `identity` (the SPIFFE ID its replicas must present)
/// and, for a meshed service, makes its TLS: mutual TLS with the mesh
/// identity to `mesh.inbound_port`. A meshed service cannot also have
/// `tls:` or `https://` endpoints.
pub(super) fn read_service_mesh(
    t: &mut Table,
    meshed: bool,
    tls: &Option<ServiceTls>,
    mesh: &MeshConfig,
    problems: &mut Problems,
) -> (Option<String>, Option<ServiceTls>) {
    let expected: Option<String> = t.get("identity", problems);
    let tls = mesh_tls(t, meshed, expected.as_deref(), tls, mesh, problems);
    (expected, tls)
}

/// The TLS of a meshed service expecting `expected`, if it is one.
fn mesh_tls(
    t: &Table,
    meshed: bool,
    expected: Option<&str>,
    tls: &Option<ServiceTls>,
    mesh: &MeshConfig,
    problems: &mut Problems,
) -> Option<ServiceTls> {
    if let Some(id) = expected {
        if !is_spiffe_id(id) {
            problems.add(
                &t.path_of("identity"),
                format!("expected a SPIFFE ID like \"spiffe://cluster.local/ns/shop/sa/catalog\", got \"{id}\""),
            );
        } else if !meshed {
            problems.add(
                &t.path_of("identity"),
                "only read for a meshed service (mesh: true): the ID its replicas must present",
            );
        }
    }
    if !meshed {
        return None;
    }
    if tls.is_some() {
        problems.add(
            &t.path_of("mesh"),
            "a meshed service is called over mutual TLS with mesh.identity: remove its tls block and https:// endpoints",
        );
        return None;
    }
    let Some(identity) = &mesh.identity else {
        problems.add(
            &t.path_of("mesh"),
            "needs mesh.identity: the certificate meshed calls are made with",
        );
        return None;
    };
    // Checked without its files (warned about): nothing to call with.
    let loaded = identity.loaded.as_ref()?;
    let origination = loaded.origination(expected, mesh.inbound_port);
    Some(ServiceTls {
        server_name: None,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        scope: TlsScope::Mesh {
            identity: expected.map(str::to_string),
            port: mesh.inbound_port,
        },
        origination: Arc::new(origination),
    })
}

#[cfg(test)]
mod tests {
    use super::super::reader::SecretEnv;
    use super::super::tests::errors;
    use super::super::Config;

    const INBOUND: &str =
        "listeners:\n  inbound: { app: \"http://127.0.0.1:8080\", tls: { mode: MODE } }\n";

    fn found(text: &str, path: &str, words: &str) -> bool {
        errors(text)
            .iter()
            .any(|e| e.starts_with(path) && e.contains(words))
    }

    #[test]
    fn mutual_tls_needs_the_mesh_identity_and_edge_its_files() {
        let mesh = INBOUND.replace("MODE", "mesh");
        assert!(found(
            &mesh,
            "listeners.inbound.tls.mode",
            "needs mesh.identity"
        ));
        let edge = INBOUND.replace("MODE", "edge");
        assert!(found(
            &edge,
            "listeners.inbound.tls.cert_file",
            "required with mode edge"
        ));
        let stray = INBOUND.replace("MODE", "permissive, cert_file: a.pem");
        assert!(found(
            &stray,
            "listeners.inbound.tls.cert_file",
            "only read with mode edge"
        ));
        let unknown = INBOUND.replace("MODE", "strict");
        assert!(found(
            &unknown,
            "listeners.inbound.tls.mode",
            "one of off, mesh, permissive, edge"
        ));
    }

    #[test]
    fn identity_files_are_required_and_named_by_their_key() {
        let missing = "mesh:\n  identity: { cert_file: /nonexistent/tls.crt, ca_file: /nonexistent/ca.crt }\n";
        assert!(found(missing, "mesh.identity.key_file", "required"));
        let unreadable = "mesh:\n  identity: { cert_file: /nonexistent/tls.crt, key_file: k, ca_file: c }\n  inbound_port: 70000\n";
        assert!(found(
            unreadable,
            "mesh.identity.cert_file",
            "/nonexistent/tls.crt"
        ));
        assert!(found(unreadable, "mesh.inbound_port", "1 to 65535"));
    }

    #[test]
    fn identity_files_absent_where_the_config_is_checked_are_a_warning() {
        let text = "mesh:\n  identity: { cert_file: /nonexistent/tls.crt, key_file: /nonexistent/tls.key, ca_file: /nonexistent/ca.crt }\nlisteners:\n  inbound: { app: \"http://127.0.0.1:8080\", tls: { mode: mesh } }\nservices:\n  - { name: catalog, endpoints: [\"127.0.0.1:9000\"], mesh: true }\n";
        let checked = Config::read(text, &|_| None, SecretEnv::Optional);
        assert!(checked.outcome.is_ok(), "{:?}", checked.outcome);
        assert!(
            checked.warnings.iter().any(
                |w| w.path == "mesh.identity.cert_file" && w.message.contains("does not exist")
            ),
            "{:?}",
            checked.warnings
        );
    }

    #[test]
    fn a_meshed_service_needs_the_identity_and_expects_a_spiffe_id() {
        let service = |extra: &str| {
            format!("services:\n  - name: catalog\n    endpoints: [\"127.0.0.1:9000\"]\n{extra}")
        };
        assert!(found(
            &service("    mesh: true\n"),
            "services[0].mesh",
            "needs mesh.identity"
        ));
        assert!(found(
            &service("    mesh: true\n    identity: catalog\n"),
            "services[0].identity",
            "expected a SPIFFE ID"
        ));
        assert!(found(
            &service("    identity: \"spiffe://cluster.local/ns/shop/sa/catalog\"\n"),
            "services[0].identity",
            "only read for a meshed service"
        ));
        let rule = "listeners:\n  inbound: { app: \"http://127.0.0.1:8080\" }\ninbound:\n  authorization: [{ path: admin, identities: [console] }]\n";
        assert!(found(
            rule,
            "inbound.authorization[0].path",
            "starting with /"
        ));
        assert!(found(
            rule,
            "inbound.authorization[0].identities[0]",
            "SPIFFE ID"
        ));
    }
}
