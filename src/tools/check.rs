//! `outrigger check`: validates a config file and prints every problem with
//! its key path, or a summary written in the config's own words.
//!
//! CI runs `check` where the runtime secrets are not, so by default a
//! secret's environment variable that is not set is a warning (exit 0);
//! `--strict-env` makes it the error it is for `run`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{
    format_duration, Config, ConfigError, InboundConfig, InboundTarget, RouteConfig, RouteTo,
    SecretEnv, SourceKind, TlsMode,
};
use crate::tls::expired;
use crate::tls::rotation::Rotating;

/// Checks the config at `path`; with `strict_env`, a missing secret
/// variable is an error. Exit 0 with a summary on stdout, or 1 with every
/// problem on stderr; warnings go to stderr either way.
pub(crate) fn check(path: &Path, strict_env: bool) -> ExitCode {
    let secrets = if strict_env {
        SecretEnv::Required
    } else {
        SecretEnv::Optional
    };
    let checked = Config::check_file(path, &|name| std::env::var(name).ok(), secrets);
    let outcome = checked
        .outcome
        .and_then(|config| match expired_certificates(&config) {
            expired if expired.is_empty() => Ok(config),
            expired => Err(expired),
        })
        .map_err(|errors| report(path, &errors, Severity::Error));
    if !checked.warnings.is_empty() {
        report(path, &checked.warnings, Severity::Warning);
    }
    match outcome {
        Ok(config) => {
            // Not print!: it panics when the reader of a pipe has gone.
            let _ = std::io::stdout()
                .lock()
                .write_all(summary(path, &config).as_bytes());
            ExitCode::SUCCESS
        }
        Err(()) => ExitCode::FAILURE,
    }
}

/// The certificates the sidecar would present that have expired, each
/// under its `cert_file` key with the file and when it expired. `run`
/// starts with one (not ready, waiting for a rotation); a check before a
/// deploy refuses it.
fn expired_certificates(config: &Config) -> Vec<ConfigError> {
    let mesh = config
        .mesh
        .loaded_identity()
        .map(|identity| Arc::clone(identity) as Arc<dyn Rotating>);
    let edge = config
        .listeners
        .inbound
        .as_ref()
        .and_then(|inbound| inbound.tls.termination.as_ref()?.edge_certificate())
        .map(|certificate| Arc::clone(certificate) as Arc<dyn Rotating>);
    mesh.into_iter()
        .chain(edge)
        .filter_map(|certificate| {
            let (_, not_after) = certificate.in_use();
            let cert_file = certificate.watched_files()[0];
            Some(ConfigError {
                path: format!("{}.cert_file", certificate.name()),
                message: expired(cert_file, not_after)?,
                position: None,
            })
        })
        .collect()
}

/// Whether a reported item stops the config from being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// It does: the file is refused.
    Error,
    /// It does not where it is checked; it would where it runs, unless set there.
    Warning,
}

/// Prints a count, then one line per item as `FILE:LINE:COLUMN: path: problem`
/// (`FILE: path: problem` when the text does not place it; `warning: `
/// before the path for a warning), the form editors jump from.
pub(crate) fn report(path: &Path, items: &[ConfigError], severity: Severity) {
    let mut stderr = std::io::stderr().lock();
    let file = path.display();
    let (noun, tag) = match severity {
        Severity::Error => ("problem(s)", ""),
        Severity::Warning => ("warning(s)", "warning: "),
    };
    let _ = writeln!(stderr, "{file}: {} {noun}", items.len());
    for item in items {
        let _ = match item.position {
            Some(at) => writeln!(stderr, "{file}:{at}: {tag}{item}"),
            None => writeln!(stderr, "{file}: {tag}{item}"),
        };
    }
    if severity == Severity::Warning {
        let _ = writeln!(
            stderr,
            "{file}: set these where the sidecar runs; `check --strict-env` makes them errors"
        );
    }
}

/// What the config sets up, in the words and spellings a config file uses.
pub(crate) fn summary(path: &Path, config: &Config) -> String {
    let mut out = String::new();
    let listeners = &config.listeners;
    let _ = writeln!(out, "{}: ok", path.display());
    let inbound = match &listeners.inbound {
        Some(inbound) => {
            let tls = match inbound.tls.mode {
                TlsMode::Off => String::new(),
                mode => format!(", tls {}", mode.as_str()),
            };
            match &inbound.target {
                InboundTarget::App(app) => format!(", inbound {} (app {app}{tls})", inbound.bind),
                InboundTarget::Routes => format!(", inbound {} (routes{tls})", inbound.bind),
            }
        }
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  listeners: outbound {}{inbound}, admin {}",
        listeners.outbound.bind, listeners.admin
    );
    if let Some(inbound) = &config.inbound {
        let _ = writeln!(out, "  inbound: {}", inbound_parts(inbound));
    }
    let source = config.discovery.source;
    let _ = writeln!(
        out,
        "  discovery: {}, refresh {}",
        source.as_str(),
        format_duration(config.discovery.refresh)
    );
    for service in &config.services {
        let endpoints = match (source, service.endpoints.len()) {
            (SourceKind::Static, 1) => "1 endpoint".to_string(),
            (SourceKind::Static, count) => format!("{count} endpoints"),
            (other, _) => format!("endpoints from {}", other.as_str()),
        };
        let _ = writeln!(
            out,
            "  service {}: {endpoints}, timeout {}, {}",
            service.name,
            format_duration(service.policy.timeout),
            service.policy.load_balancer.as_str()
        );
    }
    for (index, route) in config.routes.iter().enumerate() {
        let _ = writeln!(out, "  routes[{index}]: {}", route_line(route));
    }
    out
}

/// One route in the config's words: `path_prefix /api/v1/auth/ GET, POST
/// -> auth, rewrite_prefix /`.
fn route_line(route: &RouteConfig) -> String {
    let matches = &route.matches;
    let kind = if matches.path.is_exact() {
        "path"
    } else {
        "path_prefix"
    };
    let mut line = format!("{kind} {}", matches.path.as_str());
    if !matches.methods.is_empty() {
        let _ = write!(line, " {}", matches.methods.join(", "));
    }
    for (name, value) in &matches.headers {
        let _ = write!(line, " {name}: {value}");
    }
    let to = match &route.to {
        RouteTo::Service(name) => name.clone(),
        RouteTo::FromPath => "{service}".to_string(),
        RouteTo::Backends(backends) => {
            let shares: Vec<String> = backends
                .iter()
                .map(|b| format!("{} {}", b.service, b.weight))
                .collect();
            shares.join(", ")
        }
    };
    let _ = write!(line, " -> {to}");
    if let Some(prefix) = &route.rewrite_prefix {
        let _ = write!(line, ", rewrite_prefix {prefix}");
    }
    line
}

/// The inbound sections in force, by their keys: `auth.jwt, auth.api_keys,
/// auth.rules (2), rate_limit, cache`; `none` when the section is empty.
fn inbound_parts(inbound: &InboundConfig) -> String {
    let auth = &inbound.auth;
    let rules = (!auth.rules.is_empty()).then(|| format!("auth.rules ({})", auth.rules.len()));
    let parts: Vec<String> = [
        auth.jwt.as_ref().map(|_| "auth.jwt".to_string()),
        auth.api_keys.as_ref().map(|_| "auth.api_keys".to_string()),
        rules,
        auth.revocation.then(|| "auth.revocation".to_string()),
        inbound
            .rate_limit
            .as_ref()
            .map(|_| "rate_limit".to_string()),
        inbound
            .concurrency
            .as_ref()
            .map(|_| "concurrency".to_string()),
        inbound.cache.as_ref().map(|_| "cache".to_string()),
        (!inbound.cors.origins.is_empty()).then(|| "cors".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}
