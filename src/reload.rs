//! Config hot reload: the [`Reloader`] actor re-reads the config file when
//! it changes (watched with `FileWatch`), on SIGHUP and on admin
//! `POST /reload`, validates it exactly as `outrigger check` does (env
//! overrides included), and puts what can change live in force without
//! dropping a connection or a request in flight:
//!
//! - services added, removed, their endpoints (static source) and their
//!   settings, through the supervisor ([`Reconfigure`]), which keeps the
//!   replica actors (and breaker state) of addresses that stay;
//! - the route table, swapped with the service table it is part of;
//! - the inbound gate (auth, CORS, rate limits, in-flight caps, cache, the
//!   app's address or the route table, and timeout), rebuilt part by part
//!   and swapped whole.
//!
//! An invalid file changes nothing. Keys that need a restart (those the
//! config reader reads with a `_restart` method, and the inbound listener's
//! presence) keep their running values, each named in a warning; the rest
//! applies. Which keys those are comes from the reader's own tags
//! ([`crate::config::KeyLog::restart`]): the new document gets the running
//! document's values for them before it is read.
//! The config in force is what admin `GET /config` shows.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;
use log::{error, info, warn};
use serde::Serialize;
use serde_norway::{Mapping, Value};

use crate::config::{accepted_keys, Config, ConfigError, Env, ServiceConfig, SourceKind};
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
    pub restart_needed: Vec<String>,
    /// What changed among the services.
    pub services: ServiceChanges,
    /// The inbound config sections that changed.
    pub inbound: Vec<&'static str>,
    /// Whether the route table (`routes:`) changed.
    pub routes: bool,
}

impl ReloadReport {
    fn rejected(errors: Vec<ConfigError>) -> Self {
        ReloadReport {
            result: ReloadResult::Invalid,
            errors,
            restart_needed: Vec::new(),
            services: ServiceChanges::default(),
            inbound: Vec::new(),
            routes: false,
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
    /// The outbound listener's address, where `listeners.inbound.routes`
    /// sends admitted requests.
    pub outbound: SocketAddr,
}

/// The actor that reloads the config: one reload at a time.
pub struct Reloader {
    /// The file it re-reads, and its environment.
    file: ConfigFile,
    /// The config in force, shared with admin `GET /config`.
    running: Arc<ArcSwap<Config>>,
    /// The services in force, revised for the next table.
    live: Arc<LiveServices>,
    /// Applies the services' part of a reload.
    supervisor: Addr<Supervisor>,
    /// The inbound gate and its store, when the inbound listener runs.
    inbound: Option<InboundSide>,
    /// Where reloads are counted.
    metrics: Arc<Metrics>,
    /// The keys a reload holds back: those the config reader tags restart-only.
    restart_keys: BTreeSet<String>,
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
            restart_keys: accepted_keys().restart,
        }
    }

    /// Validates the file and works out every change, applying none: an
    /// error anywhere leaves the running config untouched.
    fn prepare(&self, trigger: Trigger) -> Result<(Reconfigure, Prepared), Vec<ConfigError>> {
        let next = self.file.load()?;
        let running = self.running.load_full();
        let (next, restart_needed) = in_force(&running, next, &self.restart_keys, &*self.file.env)?;
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
                    side.outbound,
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
            revision: self
                .live
                .load()
                .revise(&next.services, &next.routes, &self.metrics),
            snapshot: (is_static && (names_moved || endpoints_moved))
                .then(|| StaticSource::new(&next.services).snapshot().clone()),
            new_source: (names_moved || endpoints_moved).then(|| next.clone()),
        };
        let unchanged = *running == next;
        let routes = running.routes != next.routes;
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
                routes,
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
                "config reload ({how}): in force; services: {} added {:?}, {} removed {:?}, {} changed {:?}; routes: {}; inbound: {}",
                services.added.len(),
                services.added,
                services.removed.len(),
                services.removed,
                services.changed.len(),
                services.changed,
                if report.routes { "changed" } else { "unchanged" },
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

/// `next` as a reload puts it in force: read again, when it changes a
/// restart-only key (`restart`), with the running values of those keys
/// (see [`hold_back`]); and the keys it changed that need a restart.
fn in_force(
    running: &Config,
    next: Config,
    restart: &BTreeSet<String>,
    env: Env<'_>,
) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
    let mut document = Value::clone(&next.document);
    let held = hold_back(&running.document, &mut document, restart);
    if held.is_empty() {
        return Ok((next, held));
    }
    Ok((Config::from_document(document, env)?, held))
}

/// Sets each restart-only key of `next` (a key the config reader reads
/// with a `_restart` method, or one under such a section: `restart`) back
/// to its value in `running`, the document in force, and keeps the inbound
/// listener's presence as it runs; returns the keys that differed, in the
/// order of `restart`. An absent key stays absent, so its default stays in
/// force too.
fn hold_back(running: &Value, next: &mut Value, restart: &BTreeSet<String>) -> Vec<String> {
    let mut held = Vec::new();
    let runs_inbound = |document: &Value| find(document, "listeners.inbound").is_some();
    if runs_inbound(running) != runs_inbound(next) {
        // Whether the listener runs at all: a presence, not a key.
        for section in ["listeners.inbound", "inbound"] {
            put(next, section, find(running, section).cloned());
        }
        held.push("listeners.inbound".to_string());
    }
    for key in restart {
        let was = find(running, key);
        if was != find(next, key) {
            put(next, key, was.cloned());
            held.push(key.clone());
        }
    }
    held
}

/// The value at dotted `path` in `document`, if every step is a mapping that has it.
fn find<'v>(document: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(document, |value, step| value.as_mapping()?.get(step))
}

/// Sets the value at dotted `path` in `document` to `value`, or removes it
/// for `None`; steps that are missing (or not mappings) become mappings.
fn put(document: &mut Value, path: &str, value: Option<Value>) {
    let mut here = document;
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let key = Value::String(step.to_string());
        if value.is_none() && here.get(&key).is_none() {
            return;
        }
        if !here.is_mapping() {
            *here = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = here else {
            return;
        };
        if steps.peek().is_none() {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
            return;
        }
        here = map.entry(key).or_insert(Value::Null);
    }
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

    fn in_force(running: &Config, next: Config) -> (Config, Vec<String>) {
        let restart = accepted_keys().restart;
        super::in_force(running, next, &restart, &|_| None).expect("valid with the running values")
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
                "defaults.connect_timeout",
                "discovery",
                "lifecycle",
                "listeners.admin.bind",
                "listeners.outbound.bind",
            ]
        );
        assert_eq!(in_force.listeners, running.listeners);
        assert_eq!(in_force.discovery, running.discovery);
        assert_eq!(in_force.lifecycle, running.lifecycle);
        let api = in_force.service("api").expect("api");
        assert_eq!(
            in_force.defaults.connect_timeout,
            running.defaults.connect_timeout
        );
        assert_eq!(api.policy.timeout.as_secs(), 9, "the rest applies");
    }

    #[test]
    fn a_changed_client_limit_is_kept_and_named() {
        let running = config(BASE);
        let next = config(&BASE.replace(
            "bind: \"127.0.0.1:15001\"",
            "bind: \"127.0.0.1:15001\", client_body_timeout: 3s",
        ));
        let (in_force, restart) = in_force(&running, next);
        assert_eq!(restart, vec!["listeners.outbound.client_body_timeout"]);
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
    fn every_key_the_reader_tags_restart_only_is_held_back() {
        let restart = accepted_keys().restart;
        assert!(!restart.is_empty());
        let with_inbound = BASE.replace(
            "} }\nservices",
            "}, inbound: { app: \"http://127.0.0.1:8080\" } }\nservices",
        );
        let running = Value::clone(&config(&with_inbound).document);
        assert!(find(&running, "listeners.inbound").is_some());
        for key in &restart {
            assert!(
                !key.contains("[]"),
                "{key}: a key inside a list cannot be held by its path"
            );
            let mut next = running.clone();
            put(&mut next, key, Some(Value::String("changed".to_string())));
            assert_eq!(hold_back(&running, &mut next, &restart), vec![key.clone()]);
            assert_eq!(find(&next, key), find(&running, key), "{key} is set back");
        }
    }

    #[test]
    fn a_live_key_is_not_held_back() {
        let running = config(BASE);
        let next = config(&BASE.replace("9001", "9002"));
        let (in_force, restart) = in_force(&running, next);
        assert!(restart.is_empty());
        let web = in_force.service("web").expect("web");
        assert_eq!(web.endpoints, ["127.0.0.1:9002"]);
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
