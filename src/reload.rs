//! Config hot reload: the [`Reloader`] actor re-reads the config file when
//! it changes (watched with `FileWatch`), on SIGHUP and on admin
//! `POST /reload`, validates it exactly as `outrigger check` does (env
//! overrides included), and puts what can change live in force without
//! dropping a connection or a request in flight:
//!
//! - services added, removed, their endpoints (static source) and their
//!   settings, through the supervisor ([`Reconfigure`]), which keeps the
//!   replica actors (and breaker state) of addresses that stay;
//! - the inbound gate (auth, CORS, rate limits, in-flight caps, cache, the
//!   app's address and timeout), rebuilt part by part and swapped whole.
//!
//! An invalid file changes nothing. Keys that need a restart (those the
//! config reader reads with a `_restart` method, and the inbound listener's
//! presence) keep their running values, each named in a warning; the rest
//! applies. The `HOLDS` table keeps them; a test checks it against the reader.
//! The config in force is what admin `GET /config` shows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;
use log::{error, info, warn};
use serde::Serialize;

use crate::config::{Config, ConfigError, ServiceConfig, SourceKind};
use crate::discovery::{Reconfigure, StaticSource, Supervisor};
use crate::inbound::Gate;
use crate::metrics::Metrics;
use crate::service::LiveServices;
use crate::store::Store;
use crate::watch::FileWatch;

/// Environment lookup for config overrides.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The config file a sidecar runs from, and where its env overrides come from.
#[derive(Clone)]
pub struct ConfigFile {
    path: PathBuf,
    env: EnvLookup,
}

impl ConfigFile {
    /// `path`, with overrides from the process environment (`outrigger run`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ConfigFile::with_env(path, Arc::new(|name: &str| std::env::var(name).ok()))
    }

    /// `path`, with overrides looked up by `env`.
    pub fn with_env(path: impl Into<PathBuf>, env: EnvLookup) -> Self {
        ConfigFile {
            path: path.into(),
            env,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file as `outrigger check` does.
    pub fn load(&self) -> Result<Config, Vec<ConfigError>> {
        Config::load_with(&self.path, &*self.env)
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The watched file changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// Admin `POST /reload`.
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Watch => "file changed",
            Self::Signal => "SIGHUP",
            Self::Admin => "admin POST /reload",
        }
    }
}

/// How a reload ended; the `result` label of `config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// Everything that changed is in force.
    Ok,
    /// The file was rejected; the running config stays.
    Invalid,
    /// In force, except keys that need a restart.
    RestartNeeded,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::RestartNeeded => "restart_needed",
        }
    }
}

/// Services a reload added, removed or changed (endpoints or settings), by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceChanges {
    /// New services.
    pub added: Vec<String>,
    /// Services no longer configured; their replicas drain.
    pub removed: Vec<String>,
    /// Services whose endpoints or settings changed.
    pub changed: Vec<String>,
}

/// What a reload did, as admin `POST /reload` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// How it ended.
    pub result: ReloadResult,
    /// Why the file was rejected, by key path (empty unless `invalid`).
    pub errors: Vec<ConfigError>,
    /// Changed keys that were not applied because they need a restart.
    pub restart_needed: Vec<&'static str>,
    /// What changed among the services.
    pub services: ServiceChanges,
    /// The inbound config sections that changed.
    pub inbound: Vec<&'static str>,
}

impl ReloadReport {
    fn rejected(errors: Vec<ConfigError>) -> Self {
        ReloadReport {
            result: ReloadResult::Invalid,
            errors,
            restart_needed: Vec::new(),
            services: ServiceChanges::default(),
            inbound: Vec::new(),
        }
    }
}

/// Reloads the config file (message): answers once the new config is in
/// force, or rejected.
#[derive(Message)]
#[rtype(result = "ReloadReport")]
pub struct Reload(pub Trigger);

/// The inbound side a reload can change: the gate in force and the store
/// its parts keep their state in.
pub struct InboundSide {
    /// The gate in force, loaded by each inbound request.
    pub gates: Arc<ArcSwap<Gate>>,
    /// The store every gate shares.
    pub store: Arc<dyn Store>,
}

/// The actor that reloads the config: one reload at a time.
pub struct Reloader {
    file: ConfigFile,
    running: Arc<ArcSwap<Config>>,
    live: Arc<LiveServices>,
    supervisor: Addr<Supervisor>,
    inbound: Option<InboundSide>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// A reloader of `file` for the sidecar running `running`.
    pub fn new(
        file: ConfigFile,
        running: Arc<ArcSwap<Config>>,
        live: Arc<LiveServices>,
        supervisor: Addr<Supervisor>,
        inbound: Option<InboundSide>,
        metrics: Arc<Metrics>,
    ) -> Self {
        for result in [
            ReloadResult::Ok,
            ReloadResult::Invalid,
            ReloadResult::RestartNeeded,
        ] {
            metrics.config_reloads.with_label_values(&[result.as_str()]);
        }
        Reloader {
            file,
            running,
            live,
            supervisor,
            inbound,
            metrics,
        }
    }

    /// Validates the file and works out every change, applying none: an
    /// error anywhere leaves the running config untouched.
    fn prepare(&self, trigger: Trigger) -> Result<(Reconfigure, Prepared), Vec<ConfigError>> {
        let next = self.file.load()?;
        let running = self.running.load_full();
        let (next, restart_needed) = in_force(&running, next);
        let mut inbound = Vec::new();
        let mut gate = None;
        if let (Some(side), Some(listener), Some(config)) =
            (&self.inbound, &next.listeners.inbound, &next.inbound)
        {
            let current = side.gates.load();
            inbound = current.changed_sections(config);
            let app_moved = running.listeners.inbound.as_ref() != Some(listener);
            if !inbound.is_empty() || app_moved {
                let built = Gate::build(
                    listener,
                    config,
                    &side.store,
                    &self.metrics,
                    Some(&**current),
                );
                gate = Some(built.map_err(|err| vec![err])?);
            }
            if app_moved {
                inbound.push("listeners.inbound");
            }
        }
        let services = service_changes(&running.services, &next.services);
        let names_moved = running.services.len() != next.services.len()
            || !services.added.is_empty()
            || !services.removed.is_empty();
        let is_static = next.discovery.source == SourceKind::Static;
        let endpoints_moved = is_static && !services.changed.is_empty();
        let change = Reconfigure {
            revision: self.live.load().revise(&next.services, &self.metrics),
            snapshot: (is_static && (names_moved || endpoints_moved))
                .then(|| StaticSource::new(&next.services).snapshot().clone()),
            new_source: (names_moved || endpoints_moved).then(|| next.clone()),
        };
        let unchanged = *running == next;
        let result = if restart_needed.is_empty() {
            ReloadResult::Ok
        } else {
            ReloadResult::RestartNeeded
        };
        let prepared = Prepared {
            trigger,
            config: next,
            unchanged,
            gate,
            report: ReloadReport {
                result,
                errors: Vec::new(),
                restart_needed,
                services,
                inbound,
            },
        };
        Ok((change, prepared))
    }

    fn count(&self, result: ReloadResult) {
        self.metrics
            .config_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    fn reject(&self, trigger: Trigger, errors: Vec<ConfigError>) -> ReloadReport {
        let report = ReloadReport::rejected(errors);
        let path = self.file.path().display();
        for err in &report.errors {
            error!("config reload ({}): {path}: {err}", trigger.as_str());
        }
        error!(
            "config reload ({}): {path} rejected with {} problem(s); the running config stays in force",
            trigger.as_str(),
            report.errors.len()
        );
        self.count(ReloadResult::Invalid);
        report
    }

    /// Puts a prepared reload in force, once the supervisor has applied
    /// its part.
    fn commit(&self, prepared: Prepared) -> ReloadReport {
        let Prepared {
            trigger,
            config,
            unchanged,
            gate,
            report,
        } = prepared;
        if let (Some(side), Some(gate)) = (&self.inbound, gate) {
            let gate = Arc::new(gate);
            let replaced = side.gates.swap(Arc::clone(&gate));
            replaced.retire_replaced(&gate);
        }
        self.running.store(Arc::new(config));
        let how = trigger.as_str();
        for key in &report.restart_needed {
            warn!("config reload ({how}): {key} changed but needs a restart; the running value stays until then");
        }
        let services = &report.services;
        if unchanged {
            info!("config reload ({how}): no change");
        } else {
            info!(
                "config reload ({how}): in force; services: {} added {:?}, {} removed {:?}, {} changed {:?}; inbound: {}",
                services.added.len(),
                services.added,
                services.removed.len(),
                services.removed,
                services.changed.len(),
                services.changed,
                if report.inbound.is_empty() {
                    "unchanged".to_string()
                } else {
                    report.inbound.join(", ")
                }
            );
        }
        self.count(report.result);
        report
    }
}

/// A reload worked out, not yet in force.
struct Prepared {
    trigger: Trigger,
    /// The config that will be in force.
    config: Config,
    unchanged: bool,
    gate: Option<Gate>,
    report: ReloadReport,
}

impl Actor for Reloader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let reload = self.running.load().reload.clone();
        if !reload.watch {
            return;
        }
        let mut watch = FileWatch::new(self.file.path().to_path_buf(), None);
        // The version read at start is the one running.
        watch.due();
        info!(
            "watching {} for config changes every {}ms",
            self.file.path().display(),
            reload.interval.as_millis()
        );
        ctx.run_interval(reload.interval, move |_, ctx| {
            if watch.due() {
                ctx.notify(Reload(Trigger::Watch));
            }
        });
    }
}

impl Handler<Reload> for Reloader {
    type Result = AtomicResponse<Self, ReloadReport>;

    fn handle(&mut self, Reload(trigger): Reload, _: &mut Context<Self>) -> Self::Result {
        let (change, prepared) = match self.prepare(trigger) {
            Ok(prepared) => prepared,
            Err(errors) => {
                let report = self.reject(trigger, errors);
                return AtomicResponse::new(Box::pin(fut::ready(report)));
            }
        };
        let applied = self.supervisor.send(change);
        AtomicResponse::new(Box::pin(applied.into_actor(self).map(
            move |sent, reloader, _| match sent {
                Ok(()) => reloader.commit(prepared),
                Err(err) => {
                    let problem = ConfigError {
                        path: "(sidecar)".to_string(),
                        message: format!("the supervisor did not take the new services: {err}"),
                        position: None,
                    };
                    reloader.reject(trigger, vec![problem])
                }
            },
        )))
    }
}

/// The listeners' client limits are fixed when their servers are built.
const OUTBOUND_LIMITS: &str = "listeners.outbound client limits (max_header_bytes, max_body_bytes, client_header_timeout, client_body_timeout, client_write_timeout, keep_alive, max_connections)";
const INBOUND_LIMITS: &str = "listeners.inbound client limits (max_header_bytes, max_body_bytes, client_header_timeout, client_body_timeout, client_write_timeout, keep_alive, max_connections)";

/// One part of the config a reload keeps at its running value.
struct Hold {
    /// The restart-only keys it keeps, as the config reader names them (a
    /// section stands for every key under it); a test checks that these
    /// are exactly the keys the reader reads with a `_restart` method.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "read by the test that checks it against the reader"
        )
    )]
    keys: &'static [&'static str],
    /// Sets the part of `next` back to `running`'s when they differ, and
    /// then says what to report.
    keep: fn(running: &Config, next: &mut Config) -> Option<&'static str>,
}

/// What a reload keeps, in the order the report names it.
const HOLDS: &[Hold] = &[
    Hold {
        keys: &["listeners.outbound.bind"],
        keep: |was, now| {
            let (was, now) = (&was.listeners.outbound, &mut now.listeners.outbound);
            hold("listeners.outbound.bind", &was.bind, &mut now.bind)
        },
    },
    Hold {
        keys: LIMIT_KEYS[0],
        keep: |was, now| {
            let (was, now) = (&was.listeners.outbound, &mut now.listeners.outbound);
            hold(OUTBOUND_LIMITS, &was.limits, &mut now.limits)
        },
    },
    Hold {
        keys: &["listeners.admin.bind"],
        keep: |was, now| {
            hold(
                "listeners.admin.bind",
                &was.listeners.admin,
                &mut now.listeners.admin,
            )
        },
    },
    Hold {
        keys: &["listeners.inbound.bind"],
        keep: |was, now| match (&was.listeners.inbound, &mut now.listeners.inbound) {
            (Some(was), Some(now)) => hold("listeners.inbound.bind", &was.bind, &mut now.bind),
            _ => None,
        },
    },
    Hold {
        keys: LIMIT_KEYS[1],
        keep: |was, now| match (&was.listeners.inbound, &mut now.listeners.inbound) {
            (Some(was), Some(now)) => hold(INBOUND_LIMITS, &was.limits, &mut now.limits),
            _ => None,
        },
    },
    // Whether the inbound listener runs at all: a presence, not a key.
    Hold {
        keys: &[],
        keep: |was, now| {
            if was.listeners.inbound.is_some() == now.listeners.inbound.is_some() {
                return None;
            }
            now.listeners.inbound.clone_from(&was.listeners.inbound);
            now.inbound.clone_from(&was.inbound);
            Some("listeners.inbound")
        },
    },
    Hold {
        keys: &["workers"],
        keep: |was, now| hold("workers", &was.workers, &mut now.workers),
    },
    Hold {
        keys: &["redis"],
        keep: |was, now| hold("redis", &was.redis, &mut now.redis),
    },
    Hold {
        keys: &["discovery"],
        keep: |was, now| {
            let key = if was.discovery.source == now.discovery.source {
                "discovery"
            } else {
                "discovery.source"
            };
            hold(key, &was.discovery, &mut now.discovery)
        },
    },
    Hold {
        keys: &["defaults.connect_timeout"],
        keep: |was, now| {
            let running = was.defaults.connect_timeout;
            let key = hold(
                "defaults.connect_timeout",
                &running,
                &mut now.defaults.connect_timeout,
            )?;
            for service in &mut now.services {
                service.policy.connect_timeout = running;
            }
            Some(key)
        },
    },
    Hold {
        keys: &["tracing"],
        keep: |was, now| {
            let (was, now) = (&was.observability, &mut now.observability);
            hold("tracing", &was.tracing, &mut now.tracing)
        },
    },
    Hold {
        keys: &["access_log"],
        keep: |was, now| {
            let (was, now) = (&was.observability, &mut now.observability);
            hold("access_log", &was.access_log, &mut now.access_log)
        },
    },
    Hold {
        keys: &["lifecycle"],
        keep: |was, now| hold("lifecycle", &was.lifecycle, &mut now.lifecycle),
    },
    Hold {
        keys: &["reload"],
        keep: |was, now| hold("reload", &was.reload, &mut now.reload),
    },
];

/// The client limit keys of the outbound and the inbound listener.
const LIMIT_KEYS: [&[&str]; 2] = [
    &[
        "listeners.outbound.max_header_bytes",
        "listeners.outbound.max_body_bytes",
        "listeners.outbound.client_header_timeout",
        "listeners.outbound.client_body_timeout",
        "listeners.outbound.client_write_timeout",
        "listeners.outbound.keep_alive",
        "listeners.outbound.max_connections",
    ],
    &[
        "listeners.inbound.max_header_bytes",
        "listeners.inbound.max_body_bytes",
        "listeners.inbound.client_header_timeout",
        "listeners.inbound.client_body_timeout",
        "listeners.inbound.client_write_timeout",
        "listeners.inbound.keep_alive",
        "listeners.inbound.max_connections",
    ],
];

/// `next` with every key that needs a restart set back to its running
/// value, and the names of those keys that differed.
fn in_force(running: &Config, mut next: Config) -> (Config, Vec<&'static str>) {
    let restart = HOLDS
        .iter()
        .filter_map(|part| (part.keep)(running, &mut next))
        .collect();
    (next, restart)
}

/// Sets `next` back to `running` when they differ, and then names `key`
/// among the changes that need a restart.
fn hold<T: PartialEq + Clone>(
    key: &'static str,
    running: &T,
    next: &mut T,
) -> Option<&'static str> {
    if running == next {
        return None;
    }
    next.clone_from(running);
    Some(key)
}

/// Which services `next` adds, removes or changes compared with `running`.
fn service_changes(running: &[ServiceConfig], next: &[ServiceConfig]) -> ServiceChanges {
    let find = |list: &[ServiceConfig], name: &str| list.iter().position(|s| s.name == name);
    let mut changes = ServiceChanges::default();
    for service in next {
        match find(running, &service.name) {
            None => changes.added.push(service.name.clone()),
            Some(at) if running[at] != *service => changes.changed.push(service.name.clone()),
            Some(_) => {}
        }
    }
    changes.removed = running
        .iter()
        .filter(|s| find(next, &s.name).is_none())
        .map(|s| s.name.clone())
        .collect();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{accepted_keys, ReloadClass};

    #[test]
    fn reload_holds_back_exactly_the_keys_the_reader_reads_at_start() {
        let accepted = accepted_keys();
        let holds = |key: &str| {
            HOLDS
                .iter()
                .flat_map(|part| part.keys)
                .filter(|held| {
                    key == **held
                        || key
                            .strip_prefix(**held)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
                .count()
        };
        let mut disagree = Vec::new();
        for key in &accepted.keys {
            match (accepted.reload_class(key), holds(key)) {
                (ReloadClass::Restart, 1) | (ReloadClass::Live, 0) => {}
                (ReloadClass::Restart, 0) => disagree.push(format!(
                    "{key} is read at start but no Hold keeps it: a reload would report it applied"
                )),
                (ReloadClass::Live, _) => disagree.push(format!(
                    "{key} is read as live but a Hold keeps it: read it with a _restart method or drop it from HOLDS"
                )),
                (ReloadClass::Restart, times) => {
                    disagree.push(format!("{key} is kept by {times} Holds: one is enough"))
                }
            }
        }
        for key in HOLDS.iter().flat_map(|part| part.keys) {
            if !accepted.keys.contains(*key) {
                disagree.push(format!(
                    "HOLDS keeps {key}, which the reader does not accept"
                ));
            }
        }
        assert!(disagree.is_empty(), "{}", disagree.join("\n"));
    }

    fn config(text: &str) -> Config {
        Config::from_yaml(text, &|_| None).expect("valid")
    }

    const BASE: &str = "
listeners: { outbound: { bind: \"127.0.0.1:15001\" } }
services:
  - { name: api, endpoints: [\"127.0.0.1:9000\"] }
  - { name: web, endpoints: [\"127.0.0.1:9001\"] }
";

    #[test]
    fn restart_only_keys_keep_their_running_values_and_are_named() {
        let running = config(BASE);
        let next = config(
            "
listeners: { outbound: { bind: \"127.0.0.1:25001\" }, admin: { bind: \"127.0.0.1:25090\" } }
discovery: { refresh: 5s }
defaults: { connect_timeout: 2s, timeout: 9s }
lifecycle: { drain_delay: 0s }
services:
  - { name: api, endpoints: [\"127.0.0.1:9000\"] }
  - { name: web, endpoints: [\"127.0.0.1:9001\"] }
",
        );
        let (in_force, restart) = in_force(&running, next);
        assert_eq!(
            restart,
            vec![
                "listeners.outbound.bind",
                "listeners.admin.bind",
                "discovery",
                "defaults.connect_timeout",
                "lifecycle"
            ]
        );
        assert_eq!(in_force.listeners, running.listeners);
        assert_eq!(in_force.discovery, running.discovery);
        assert_eq!(in_force.lifecycle, running.lifecycle);
        let api = in_force.service("api").expect("api");
        assert_eq!(api.policy.connect_timeout, running.defaults.connect_timeout);
        assert_eq!(api.policy.timeout.as_secs(), 9, "the rest applies");
    }

    #[test]
    fn a_changed_client_limit_is_kept_and_named_among_the_limits() {
        let running = config(BASE);
        let next = config(&BASE.replace(
            "bind: \"127.0.0.1:15001\"",
            "bind: \"127.0.0.1:15001\", client_body_timeout: 3s",
        ));
        let (in_force, restart) = in_force(&running, next);
        assert_eq!(restart, vec![OUTBOUND_LIMITS]);
        assert!(OUTBOUND_LIMITS.contains("client_body_timeout"));
        assert_eq!(in_force, running);
    }

    #[test]
    fn turning_the_inbound_listener_on_needs_a_restart() {
        let running = config(BASE);
        let next = config(
            "
listeners:
  outbound: { bind: \"127.0.0.1:15001\" }
  inbound: { app: \"http://127.0.0.1:8080\" }
inbound: { rate_limit: { roles: { anonymous: 5 } } }
services:
  - { name: api, endpoints: [\"127.0.0.1:9000\"] }
  - { name: web, endpoints: [\"127.0.0.1:9001\"] }
",
        );
        let (in_force, restart) = in_force(&running, next);
        assert_eq!(restart, vec!["listeners.inbound"]);
        assert_eq!(in_force, running);
    }

    #[test]
    fn services_are_told_apart_by_name() {
        let running = config(BASE).services;
        let next = config(
            "
services:
  - { name: api, endpoints: [\"127.0.0.1:9000\"], timeout: 1s }
  - { name: new, endpoints: [\"127.0.0.1:9002\"] }
",
        )
        .services;
        assert_eq!(
            service_changes(&running, &next),
            ServiceChanges {
                added: vec!["new".to_string()],
                removed: vec!["web".to_string()],
                changed: vec!["api".to_string()],
            }
        );
        assert_eq!(
            service_changes(&running, &running),
            ServiceChanges::default()
        );
    }
}
