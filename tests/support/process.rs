//! The real `outrigger` binary as a child process: started with a config
//! file on free ports, signalled, read from `/proc`, killed when dropped.

use std::net::SocketAddr;

use super::child::OwnedChild;
use super::client::status_of;
use super::eventually::eventually;
use super::files::{swap_in, TempDir};
use super::ports::loopback_port;

/// The real `outrigger` binary, running `run` with a config file on free
/// ports; killed when dropped.
pub struct SidecarProcess {
    pub child: OwnedChild,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// The inbound listener, when it was started with one.
    pub inbound: Option<SocketAddr>,
    /// The config file it runs from.
    pub config: std::path::PathBuf,
    listeners: Listeners,
    _dir: TempDir,
}

impl SidecarProcess {
    /// Starts the binary with `services` (the YAML of the `services:` list)
    /// and waits until `/ready` answers 200.
    pub async fn start(services: &str) -> SidecarProcess {
        SidecarProcess::start_with(services, "", &[("LOG_LEVEL", "warn")], None).await
    }

    /// Like [`SidecarProcess::start`], with `extra` top-level YAML, `env`
    /// for the process, and its stderr written to `stderr` when given.
    pub async fn start_with(
        services: &str,
        extra: &str,
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> SidecarProcess {
        SidecarProcess::launch(services, ("", None), extra, env, stderr).await
    }

    /// Like [`SidecarProcess::start`], with `keys` added to the outbound
    /// listener's section (as `, max_header_bytes: 8192`).
    pub async fn start_with_outbound(services: &str, keys: &str) -> SidecarProcess {
        let env = [("LOG_LEVEL", "warn")];
        SidecarProcess::launch(services, (keys, None), "", &env, None).await
    }

    /// Like [`SidecarProcess::start_with`], with the inbound listener on a
    /// free port, at [`SidecarProcess::inbound`]; `inbound` holds its
    /// section's keys less `bind`, as `app: "http://127.0.0.1:8080"`.
    pub async fn start_with_inbound(
        services: &str,
        inbound: &str,
        extra: &str,
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> SidecarProcess {
        SidecarProcess::launch(services, ("", Some(inbound)), extra, env, stderr).await
    }

    /// Starts the binary; `listeners` holds the outbound listener's extra
    /// keys and the inbound listener's section, if it has one.
    async fn launch(
        services: &str,
        (outbound_keys, inbound): (&str, Option<&str>),
        extra: &str,
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> SidecarProcess {
        let inbound = inbound.map(|section| (loopback_port(), section.to_string()));
        let (outbound, admin) = (loopback_port(), loopback_port());
        let dir = TempDir::new();
        let config = dir.path.join("sidecar.yaml");
        let listeners = Listeners {
            outbound,
            outbound_keys: outbound_keys.to_string(),
            admin,
            inbound: inbound.clone(),
        };
        std::fs::write(&config, listeners.config(services, extra)).expect("write config");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"));
        command
            .args(["run", "--config"])
            .arg(&config)
            .envs(env.iter().copied());
        if let Some(path) = stderr {
            command.stderr(std::fs::File::create(path).expect("create the log file"));
        }
        let child = OwnedChild::new(command.spawn().expect("start outrigger"));
        let process = SidecarProcess {
            child,
            outbound,
            admin,
            inbound: inbound.map(|(addr, _)| addr),
            listeners,
            config,
            _dir: dir,
        };
        let ready = format!("http://{admin}/ready");
        eventually("the sidecar process is ready", || async {
            status_of(&ready).await == Some(200)
        })
        .await;
        process
    }

    /// Peak resident memory of the process so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        self.memory("VmHWM")
    }

    /// Resident memory of the process now, in bytes (VmRSS).
    pub fn rss(&self) -> u64 {
        self.memory("VmRSS")
    }

    /// A size field of `/proc/<pid>/status`, in bytes.
    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// Descriptors the process has open now (entries of `/proc/<pid>/fd`).
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// Rewrites its config file (same listeners) with `services` and `extra`.
    pub fn rewrite_config(&self, services: &str, extra: &str) {
        swap_in(&self.config, &self.listeners.config(services, extra));
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal named `name` (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        self.child.signal(name);
    }
}

/// Where a [`SidecarProcess`] listens, and its inbound section's other keys.
struct Listeners {
    outbound: SocketAddr,
    /// More keys of the outbound listener's section, after its `bind`.
    outbound_keys: String,
    admin: SocketAddr,
    inbound: Option<(SocketAddr, String)>,
}

impl Listeners {
    /// A whole config file with these listeners, `extra` and `services`.
    fn config(&self, services: &str, extra: &str) -> String {
        let Listeners {
            outbound,
            outbound_keys,
            admin,
            inbound,
        } = self;
        let inbound = inbound
            .as_ref()
            .map_or_else(String::new, |(addr, section)| {
                let keys = section.trim().trim_start_matches('{').trim_end_matches('}');
                format!(", inbound: {{ bind: \"{addr}\", {keys} }}")
            });
        format!(
            "listeners: {{ outbound: {{ bind: \"{outbound}\"{outbound_keys} }}, admin: {{ bind: \"{admin}\" }}{inbound} }}\n{extra}\nservices:\n{services}"
        )
    }
}
