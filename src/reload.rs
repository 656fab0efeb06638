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
//! An invalid file changes nothing. Keys that need a restart (listener
//! binds, the inbound listener's presence, Redis, discovery, the shared
//! connect timeout, tracing, access log, lifecycle, reload itself) keep
//! their running values, each named in a warning; the rest applies. The
//! config in force is what admin `GET /config` shows.

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
const OUTBOUND_LIMITS: &str = "listeners.outbound client limits (max_header_bytes, max_body_bytes, client_header_timeout, client_write_timeout, keep_alive, max_connections)";
const INBOUND_LIMITS: &str = "listeners.inbound client limits (max_header_bytes, max_body_bytes, client_header_timeout, client_write_timeout, keep_alive, max_connections)";

/// `next` with every key that needs a restart set back to its running
/// value, and the names of those keys that differed.
fn in_force(running: &Config, mut next: Config) -> (Config, Vec<&'static str>) {
    let mut restart = Vec::new();
    let (was, now) = (&running.listeners, &mut next.listeners);
    hold(
        &mut restart,
        "listeners.outbound.bind",
        &was.outbound.bind,
        &mut now.outbound.bind,
    );
    hold(
        &mut restart,
        OUTBOUND_LIMITS,
        &was.outbound.limits,
        &mut now.outbound.limits,
    );
    hold(
        &mut restart,
        "listeners.admin.bind",
        &was.admin,
        &mut now.admin,
    );
    match (&was.inbound, &mut now.inbound) {
        (Some(was_inbound), Some(now_inbound)) => {
            hold(
                &mut restart,
                "listeners.inbound.bind",
                &was_inbound.bind,
                &mut now_inbound.bind,
            );
            hold(
                &mut restart,
                INBOUND_LIMITS,
                &was_inbound.limits,
                &mut now_inbound.limits,
            );
        }
        (None, None) => {}
        (_, now_inbound) => {
            restart.push("listeners.inbound");
            now_inbound.clone_from(&was.inbound);
            next.inbound.clone_from(&running.inbound);
        }
    }
    hold(&mut restart, "workers", &running.workers, &mut next.workers);
    hold(&mut restart, "redis", &running.redis, &mut next.redis);
    let discovery = if running.discovery.source == next.discovery.source {
        "discovery"
    } else {
        "discovery.source"
    };
    hold(
        &mut restart,
        discovery,
        &running.discovery,
        &mut next.discovery,
    );
    let connect_timeout = running.defaults.connect_timeout;
    if hold(
        &mut restart,
        "defaults.connect_timeout",
        &connect_timeout,
        &mut next.defaults.connect_timeout,
    ) {
        for service in &mut next.services {
            service.policy.connect_timeout = connect_timeout;
        }
    }
    let (was, now) = (&running.observability, &mut next.observability);
    hold(&mut restart, "tracing", &was.tracing, &mut now.tracing);
    hold(
        &mut restart,
        "access_log",
        &was.access_log,
        &mut now.access_log,
    );
    hold(
        &mut restart,
        "lifecycle",
        &running.lifecycle,
        &mut next.lifecycle,
    );
    hold(&mut restart, "reload", &running.reload, &mut next.reload);
    (next, restart)
}

/// Sets `next` back to `running` when they differ, naming `key` among the
/// changes that need a restart; says whether it did.
fn hold<T: PartialEq + Clone>(
    restart: &mut Vec<&'static str>,
    key: &'static str,
    running: &T,
    next: &mut T,
) -> bool {
    let changed = running != next;
    if changed {
        restart.push(key);
        next.clone_from(running);
    }
    changed
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
