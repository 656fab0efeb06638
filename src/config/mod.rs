//! The sidecar's configuration: types, defaults, validation by key path, and
//! environment overrides. `Config::from_yaml` is the only way in, so every
//! config the sidecar runs with has passed the same checks as `outrigger check`.

mod call_tls;
mod discovery;
mod env;
mod inbound;
mod keys;
mod listener;
mod locate;
mod mesh;
mod observability;
mod reader;
mod redis;
mod routes;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_http::Version;
use serde::{Serialize, Serializer};
use serde_norway::Value;

pub use crate::core::grpc::{GrpcCode, GrpcCodes};

pub use call_tls::CallTls;
pub use discovery::{
    Discovery, DnsDiscovery, FileDiscovery, KubernetesDiscovery, RegistryDiscovery, SourceKind,
};
pub use env::{INBOUND_TLS_MODE, MESH_IDENTITY_DIR};
pub use inbound::usable_name;
pub use inbound::LimitMode;
pub use inbound::{
    AccessRule, ApiKey, ApiKeysConfig, AuthConfig, CacheConfig, CacheRoute, CorsConfig,
    IdentityRule, InboundConcurrency, InboundConfig, InboundListener, InboundTarget, JwtConfig,
    JwtKeys, OnRedisError, RateLimitConfig, RouteLimit, Satisfy, WebSocketToken,
};
pub use keys::accepted as accepted_keys;
pub use listener::{ListenerLimits, PARSER_HEAD_LIMIT};
pub use mesh::IDENTITY_FILE_NAMES;
pub use mesh::{IdentityConfig, ListenerTls, MeshConfig, TlsMode};
pub use observability::{AccessLog, ObservabilityConfig, TracingConfig};
pub(crate) use reader::{config_words, FromYaml, Problems, Table, OFF};
pub use reader::{
    format_duration, parse_duration, ConfigError, KeyLog, Position, ReloadClass, SecretEnv,
};
pub use redis::{RedisConfig, RedisTopology, Secret, SentinelConfig};
pub use routes::{Backend, PathMatch, PathPattern, RouteConfig, RouteMatch, RouteTo};
pub use tls::{endpoint_address, ServiceTls, TlsScope};

/// How the config reader looks up an environment variable (overrides and
/// secrets): the process environment for `run`, a table in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Everything the sidecar needs to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Where the sidecar listens.
    pub listeners: Listeners,
    /// Where replicas come from.
    pub discovery: Discovery,
    /// The policy every service starts from, and what only `defaults` sets.
    pub defaults: Defaults,
    /// The services apps may call.
    pub services: Vec<ServiceConfig>,
    /// Routes tried in order before the `Host` and `/<service>/` rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Who may call the app through the inbound listener; `Some` exactly
    /// when `listeners.inbound` is set.
    pub inbound: Option<InboundConfig>,
    /// This pod's mesh identity and the port meshed calls go to.
    pub mesh: MeshConfig,
    /// Shared Redis; without it, in-process stores are used.
    pub redis: Option<RedisConfig>,
    /// How the sidecar stops.
    pub lifecycle: Lifecycle,
    /// Whether the config file is watched and re-applied when it changes.
    pub reload: ReloadConfig,
    /// Worker threads of the outbound listener, and as many again for the
    /// inbound one (default: the CPUs this process may use, cgroup quota
    /// included; env `OUTRIGGER_WORKERS`). The admin listener has one.
    pub workers: u32,
    /// Tracing and access log settings (`tracing`, `access_log`).
    #[serde(flatten)]
    pub observability: ObservabilityConfig,
    /// The YAML document this was read from, before env overrides: a
    /// reload holds each restart-only key at its value here.
    #[serde(skip)]
    pub document: Arc<Value>,
}

/// How the sidecar stops on SIGTERM (or admin `POST /shutdown`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lifecycle {
    /// After the signal, `/ready` answers 503 but the listeners keep
    /// serving this long, so endpoint controllers and callers stop sending
    /// first (default 5s; 0s stops at once).
    #[serde(serialize_with = "as_duration")]
    pub drain_delay: Duration,
    /// Then the listeners stop accepting and in-flight requests get this
    /// long to finish before they are cut (default 25s, below the pod's 30s).
    #[serde(serialize_with = "as_duration")]
    pub shutdown_grace: Duration,
}

/// Watching the config file: a change (a ConfigMap update, an edit) is
/// validated and applied to the running sidecar, as on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadConfig {
    /// Watch the file (default true); SIGHUP and admin `POST /reload` work either way.
    pub watch: bool,
    /// How often the file's metadata is checked (default 1s); a change is
    /// applied once it has held still for one interval.
    #[serde(serialize_with = "as_duration")]
    pub interval: Duration,
}

/// A config read by [`Config::check_file`], with what it warned about.
#[derive(Debug)]
pub struct Checked {
    /// The config, or every problem with its key path. With
    /// [`SecretEnv::Optional`], a missing secret is a stand-in, so the
    /// config is for showing, never for running.
    pub outcome: Result<Config, Vec<ConfigError>>,
    /// What would stop the sidecar where the file was checked but may be
    /// set where it runs (a secret's environment variable), with key paths;
    /// always empty with [`SecretEnv::Required`].
    pub warnings: Vec<ConfigError>,
}

/// The sidecar's listening sockets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listeners {
    /// Apps send outbound calls here.
    pub outbound: OutboundListener,
    /// Probes, metrics and the admin API (default `0.0.0.0:15090`).
    pub admin: SocketAddr,
    /// A token that lets callers off this host use the admin endpoints that
    /// change state (`Authorization: Bearer <token>`), from the
    /// `OUTRIGGER_ADMIN_TOKEN` environment variable; never shown.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "inbound::redacted"
    )]
    pub admin_token: Option<String>,
    /// Callers from outside the pod reach the app here (optional).
    pub inbound: Option<InboundListener>,
}

/// The outbound listener: where apps on this host send their calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundListener {
    /// Where apps connect (default `127.0.0.1:15001`).
    pub bind: SocketAddr,
    /// Per-client bounds (`max_header_bytes`, `max_body_bytes`, ...).
    #[serde(flatten)]
    pub limits: ListenerLimits,
}

/// How calls to one service are made: timeouts, balancing, breaker, retries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Bound on the whole request, retries included; past it the app gets 504 (default 3s).
    #[serde(serialize_with = "as_duration")]
    pub timeout: Duration,
    /// Bound on one try at one replica, `None` (written `off`) for none
    /// beyond what is left of `timeout` (the default): a fixed per-try
    /// bound fails every call to an endpoint slower than it, however
    /// healthy. A timed-out try is retried only under this bound.
    #[serde(serialize_with = "as_optional_duration")]
    pub per_try_timeout: Option<Duration>,
    /// How a replica is chosen (default `least_load`).
    pub load_balancer: LoadBalancer,
    /// The breaker guarding each replica.
    pub circuit_breaker: BreakerConfig,
    /// Which failed tries are tried again, how fast, and within what budget.
    pub retry: RetryConfig,
    /// Requests in flight to the service at once, over all workers.
    pub concurrency: ConcurrencyConfig,
    /// A replica that joined or just recovered gets a share ramping up over
    /// this long (default 10s; 0s turns slow start off).
    #[serde(serialize_with = "as_duration")]
    pub slow_start: Duration,
    /// At most this percentage of a service's replicas are cut off by their
    /// breakers while another still serves; beyond it, open breakers admit
    /// a probe now and then. A service with no replica closed gets none
    /// (default 50).
    pub max_ejection_percent: u32,
    /// Requests slower than this are logged at warn (default 1s).
    #[serde(serialize_with = "as_duration")]
    pub slow_request_threshold: Duration,
    /// Call the replicas over mutual TLS with the mesh identity, on
    /// `mesh.inbound_port` (default false).
    pub mesh: bool,
}

/// Replica selection strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Fewest in-flight requests among admitted replicas, ties at random.
    LeastLoad,
    /// Two random admitted replicas; the one with the lower latency x load wins.
    P2cEwma,
    /// Each admitted replica in turn.
    RoundRobin,
}

config_words!(LoadBalancer {
    LeastLoad => "least_load",
    P2cEwma => "p2c_ewma",
    RoundRobin => "round_robin",
});

/// The HTTP version a service's replicas are called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaProtocol {
    /// The caller's: a request that arrived over HTTP/2 goes out over
    /// HTTP/2, an HTTP/1 one over HTTP/1.1.
    Auto,
    /// HTTP/1.1 whatever the caller spoke.
    Http1,
    /// HTTP/2 whatever the caller spoke: prior knowledge in plain text,
    /// `h2` by ALPN over TLS.
    Http2,
}

config_words!(ReplicaProtocol {
    Auto => "auto",
    Http1 => "http1",
    Http2 => "http2",
});

impl ReplicaProtocol {
    /// Whether a request the caller sent over `version` goes out over
    /// HTTP/2.
    pub fn calls_http2(self, version: Version) -> bool {
        match self {
            ReplicaProtocol::Http1 => false,
            ReplicaProtocol::Http2 => true,
            ReplicaProtocol::Auto => version == Version::HTTP_2,
        }
    }
}

/// Circuit breaker settings for each replica.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerConfig {
    /// Failures within `window` that open the breaker (default 5).
    pub failure_threshold: u32,
    /// The sliding window failures are counted in (default 10s).
    #[serde(serialize_with = "as_duration")]
    pub window: Duration,
    /// How long an open breaker rejects before probing; doubles on each re-open (default 30s).
    #[serde(serialize_with = "as_duration")]
    pub cooldown: Duration,
    /// The ceiling for the doubled cooldown (default 5m).
    #[serde(serialize_with = "as_duration")]
    pub max_cooldown: Duration,
    /// Probe successes in half-open that close the breaker (default 2).
    pub success_threshold: u32,
    /// Probes admitted at once while half-open (default 1).
    pub half_open_max_probes: u32,
    /// The `grpc-status` codes that count as a failed call to a gRPC
    /// request (default `unavailable, internal, unknown,
    /// deadline_exceeded, data_loss`); other codes succeed.
    #[serde(serialize_with = "as_grpc_codes")]
    pub grpc_failures: GrpcCodes,
}

/// What may be retried, how often and how fast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryConfig {
    /// Total tries, the first included (default 3).
    pub attempts: u32,
    /// Delay before the first retry; doubles per retry (default 50ms).
    #[serde(serialize_with = "as_duration")]
    pub base_delay: Duration,
    /// Ceiling for the delay (default 2s).
    #[serde(serialize_with = "as_duration")]
    pub max_delay: Duration,
    /// Random spread of each delay, as a fraction (default 0.25).
    pub jitter: f64,
    /// Conditions that are retried: `connect_error`, `timeout`, a 5xx
    /// status, or (for a gRPC request) a gRPC code by its lower-case name.
    pub on: Vec<RetryOn>,
    /// Retries may add at most this percentage of the service's traffic (default 20).
    pub budget_percent: u32,
    /// Retries always allowed per second, so a quiet service can still retry (default 5).
    pub budget_min_per_second: u32,
    /// Retry POST and PATCH too (default false: only idempotent methods).
    pub non_idempotent: bool,
    /// Request bodies up to this many bytes (with a Content-Length) are kept
    /// so they can be sent again; larger or chunked bodies are streamed and
    /// tried once (default 65536).
    pub replay_buffer_bytes: u32,
}

/// One retry condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// The replica refused or dropped the connection.
    ConnectError,
    /// A try ran out of time.
    Timeout,
    /// The replica answered with this status.
    Status(u16),
    /// The replica answered a gRPC request with this `grpc-status`, before
    /// anything was relayed (a trailers-only answer).
    Grpc(GrpcCode),
}

impl FromYaml for RetryOn {
    const EXPECTED: &'static str =
        "connect_error, timeout, a 5xx status or a gRPC code name such as unavailable";
    fn from_yaml(value: &Value) -> Option<Self> {
        match value {
            Value::String(s) if s == "connect_error" => Some(Self::ConnectError),
            Value::String(s) if s == "timeout" => Some(Self::Timeout),
            Value::String(s) => GrpcCode::from_config_word(s).map(Self::Grpc),
            Value::Number(n) => n
                .as_u64()
                .filter(|code| (500..600).contains(code))
                .map(|code| Self::Status(code as u16)),
            _ => None,
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::ConnectError => serializer.serialize_str("connect_error"),
            Self::Timeout => serializer.serialize_str("timeout"),
            Self::Status(code) => serializer.serialize_u16(*code),
            Self::Grpc(code) => serializer.serialize_str(code.config_word()),
        }
    }
}

impl FromYaml for GrpcCode {
    const EXPECTED: &'static str =
        "a gRPC code name in lower case (ok, cancelled, unknown, ..., unavailable, data_loss, unauthenticated)";
    fn from_yaml(value: &Value) -> Option<Self> {
        GrpcCode::from_config_word(value.as_str()?)
    }
}

/// A set of gRPC codes as a config file writes it: a list of lower-case names.
fn as_grpc_codes<S: Serializer>(codes: &GrpcCodes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(codes.iter().map(GrpcCode::config_word))
}

/// Concurrency limit of one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConcurrencyConfig {
    /// Requests in flight to the service at once, over all workers (default 100).
    pub max_in_flight: u32,
}

/// One service apps may call, and its replicas.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    /// The name apps use: `/<name>/...`, `Host: <name>` or `http://<name>/...`.
    pub name: String,
    /// `host:port` of each replica (static discovery), `https://host:port`
    /// for one called over TLS.
    pub endpoints: Vec<String>,
    /// Drop `/<name>` from the path before forwarding (default true).
    pub strip_prefix: bool,
    /// How its replicas are called over TLS (`tls:`, or the endpoints
    /// written `https://`); `None`: plain text.
    #[serde(skip_serializing_if = "tls::unwritten")]
    pub tls: Option<ServiceTls>,
    /// The SPIFFE ID a meshed service's replicas must present; `None`:
    /// any ID of the mesh's trust domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The HTTP version its replicas are called with (default `auto`).
    pub protocol: ReplicaProtocol,
    /// This service's policy: `defaults` with this service's overrides.
    #[serde(flatten)]
    pub policy: Policy,
}

fn as_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

/// A bound that may be off, as a config file writes it: "1s" or `off`.
fn as_optional_duration<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => as_duration(duration, serializer),
        None => serializer.serialize_str(OFF),
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            drain_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: Duration::from_secs(1),
        }
    }
}

/// The `defaults` section: the policy every service starts from, and the
/// one key a service cannot set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Defaults {
    /// The policy keys, each one a service may override.
    #[serde(flatten)]
    pub policy: Policy,
    /// Bound on opening a TCP connection to a replica (default 500ms): set
    /// here only, since every service shares the connection pool built at
    /// start, whose connects it bounds.
    #[serde(serialize_with = "as_duration")]
    pub connect_timeout: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            policy: Policy::default(),
            connect_timeout: Duration::from_millis(500),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            timeout: Duration::from_secs(3),
            per_try_timeout: None,
            load_balancer: LoadBalancer::LeastLoad,
            circuit_breaker: BreakerConfig {
                failure_threshold: 5,
                window: Duration::from_secs(10),
                cooldown: Duration::from_secs(30),
                max_cooldown: Duration::from_secs(300),
                success_threshold: 2,
                half_open_max_probes: 1,
                grpc_failures: [
                    GrpcCode::Unavailable,
                    GrpcCode::Internal,
                    GrpcCode::Unknown,
                    GrpcCode::DeadlineExceeded,
                    GrpcCode::DataLoss,
                ]
                .into_iter()
                .collect(),
            },
            retry: RetryConfig {
                attempts: 3,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(2),
                jitter: 0.25,
                on: vec![
                    RetryOn::ConnectError,
                    RetryOn::Timeout,
                    RetryOn::Status(502),
                    RetryOn::Status(503),
                    RetryOn::Status(504),
                    RetryOn::Grpc(GrpcCode::Unavailable),
                ],
                budget_percent: 20,
                budget_min_per_second: 5,
                non_idempotent: false,
                replay_buffer_bytes: 64 * 1024,
            },
            concurrency: ConcurrencyConfig { max_in_flight: 100 },
            slow_start: Duration::from_secs(10),
            max_ejection_percent: 50,
            slow_request_threshold: Duration::from_secs(1),
            mesh: false,
        }
    }
}

impl Config {
    /// Reads and validates a config file, with environment overrides from the process.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::load_with(path, &|name| std::env::var(name).ok())
    }

    /// Reads and validates a config file; `env` looks up override variables.
    pub fn load_with(path: &Path, env: Env<'_>) -> Result<Config, Vec<ConfigError>> {
        Config::check_file(path, env, SecretEnv::Required).outcome
    }

    /// Parses and validates config text; `env` looks up override variables.
    /// Each error carries its position in `text` where the text shows one.
    pub fn from_yaml(text: &str, env: Env<'_>) -> Result<Config, Vec<ConfigError>> {
        Config::read(text, env, SecretEnv::Required).outcome
    }

    /// Reads and validates a parsed YAML document as `run` does; `env`
    /// looks up override variables. Errors name key paths but no positions.
    pub fn from_document(root: Value, env: Env<'_>) -> Result<Config, Vec<ConfigError>> {
        Config::read_document(root, env, SecretEnv::Required).outcome
    }

    /// Reads and validates a config file as `outrigger check` does: with
    /// [`SecretEnv::Optional`], a secret variable that is not set is a
    /// warning, and the config read is for showing, not for running.
    pub fn check_file(path: &Path, env: Env<'_>, secrets: SecretEnv) -> Checked {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::read(&text, env, secrets),
            Err(err) => Checked {
                outcome: Err(vec![ConfigError {
                    path: path.display().to_string(),
                    message: format!("cannot read the config file: {err}"),
                    position: None,
                }]),
                warnings: Vec::new(),
            },
        }
    }

    /// Parses `text` and reads it, placing each error and warning in it.
    fn read(text: &str, env: Env<'_>, secrets: SecretEnv) -> Checked {
        let root: Value = match serde_norway::from_str(text) {
            Ok(root) => root,
            Err(err) => {
                let error = ConfigError {
                    path: "(file)".to_string(),
                    message: format!("not valid YAML: {err}"),
                    position: err.location().map(|at| Position {
                        line: at.line(),
                        column: at.column(),
                    }),
                };
                return Checked {
                    outcome: Err(vec![error]),
                    warnings: Vec::new(),
                };
            }
        };
        let mut checked = Config::read_document(root, env, secrets);
        let locator = locate::Locator::new(text);
        locator.place(&mut checked.warnings);
        if let Err(errors) = &mut checked.outcome {
            locator.place(errors);
        }
        checked
    }

    /// Reads `root`; the config keeps it as its [`Config::document`].
    fn read_document(root: Value, env: Env<'_>, secrets: SecretEnv) -> Checked {
        let mut problems = Problems::with_secrets(secrets);
        let config = read_config(&root, env, &mut problems);
        let (errors, warnings) = problems.into_errors_and_warnings();
        let outcome = match config {
            Some(mut config) if errors.is_empty() => {
                config.document = Arc::new(root);
                Ok(config)
            }
            _ => Err(errors),
        };
        Checked { outcome, warnings }
    }

    /// The service named `name`, if configured.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

fn read_config(root: &Value, env: Env<'_>, problems: &mut Problems) -> Option<Config> {
    let mut top = Table::open(root, "", problems)?;
    let listeners = read_listeners(top.raw("listeners"), problems).map(|mut listeners| {
        listeners.admin_token = env("OUTRIGGER_ADMIN_TOKEN").filter(|token| !token.is_empty());
        listeners
    });
    let discovery = discovery::read(top.raw_restart("discovery"), problems);
    let mut defaults = top.section("defaults", &Defaults::default(), problems, read_defaults);
    let mut discovery = discovery?;
    env::apply(&mut defaults.policy, &mut discovery, env, problems);
    let mut mesh = top.section_restart("mesh", &MeshConfig::default(), problems, mesh::read_mesh);
    if !written(root, &["mesh", "identity"]) {
        mesh.identity = env::mesh_identity(env, problems);
    }
    let inbound_tls_mode = env::inbound_tls_mode(env, problems);
    let services = read_services(
        top.raw("services"),
        &defaults.policy,
        discovery.source,
        &mesh,
        problems,
    );
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let routes = routes::read_routes(&mut top, &names, problems);
    let inbound = top.section("inbound", &None, problems, |t, _, problems| {
        Some(inbound::read_inbound(t, env, problems))
    });
    let redis = match top.raw_restart("redis") {
        Some(value) => Table::open(value, "redis", problems).and_then(|mut t| {
            let redis = redis::read_redis(&mut t, env, problems);
            t.finish(problems);
            redis
        }),
        None => env("REDIS_URL").map(RedisConfig::standalone),
    };
    let observability = observability::read_observability(&mut top, problems);
    let workers = top.get_restart("workers", problems);
    if let Some(count) = workers {
        at_least_one(count, "workers", problems);
    }
    let workers = env::workers(env, problems)
        .or(workers)
        .unwrap_or_else(default_workers);
    let lifecycle = top.section_restart(
        "lifecycle",
        &Lifecycle::default(),
        problems,
        |t, base, problems| {
            let grace = t.get_or("shutdown_grace", base.shutdown_grace, problems);
            positive(grace, &t.path_of("shutdown_grace"), problems);
            Lifecycle {
                drain_delay: t.get_or("drain_delay", base.drain_delay, problems),
                shutdown_grace: grace,
            }
        },
    );
    let reload = top.section_restart(
        "reload",
        &ReloadConfig::default(),
        problems,
        |t, base, problems| {
            let interval = t.get_or("interval", base.interval, problems);
            positive(interval, &t.path_of("interval"), problems);
            ReloadConfig {
                watch: t.get_or("watch", base.watch, problems),
                interval,
            }
        },
    );
    top.finish(problems);
    let mut listeners = listeners?;
    if let Some(inbound) = &mut listeners.inbound {
        if let Some(mode) = inbound_tls_mode {
            if !written(root, &["listeners", "inbound", "tls", "mode"]) {
                inbound.tls.mode = mode;
            }
        }
        mesh::terminate(&mut inbound.tls, &mesh, "listeners.inbound.tls", problems);
    }
    let inbound = match (&listeners.inbound, inbound) {
        (Some(_), inbound) => Some(inbound.unwrap_or_default()),
        (None, Some(_))
            if root
                .get("listeners")
                .and_then(|l| l.get("inbound"))
                .is_none() =>
        {
            problems.add("inbound", "needs listeners.inbound (the app to forward to)");
            None
        }
        (None, _) => None,
    };
    Some(Config {
        listeners,
        discovery,
        defaults,
        services,
        routes,
        inbound,
        mesh,
        redis,
        lifecycle,
        reload,
        workers,
        observability,
        document: Arc::default(),
    })
}

/// One worker per CPU this process may use: `available_parallelism` counts
/// the affinity mask and a cgroup CPU quota, so a pod limited to 1 CPU gets 1.
fn default_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// True when the document writes the key at `path` (an environment
/// override fills in only what the file leaves out).
fn written(root: &Value, path: &[&str]) -> bool {
    path.iter()
        .try_fold(root, |value, key| value.get(key))
        .is_some()
}

fn read_listeners(value: Option<&Value>, problems: &mut Problems) -> Option<Listeners> {
    let mut table = Table::open(value.unwrap_or(&Value::Null), "listeners", problems)?;
    let outbound = read_section(&mut table, "outbound", problems, |t, problems| {
        let bind = listener::read_bind(t, "127.0.0.1:15001", problems);
        let limits = listener::read_limits(t, problems);
        Some(OutboundListener {
            bind: bind?,
            limits,
        })
    });
    let admin = read_section(&mut table, "admin", problems, |t, problems| {
        listener::read_bind(t, "0.0.0.0:15090", problems)
    });
    let inbound = table.section("inbound", &None, problems, inbound::read_listener);
    table.finish(problems);
    Some(Listeners {
        outbound: outbound?,
        admin: admin?,
        admin_token: None,
        inbound,
    })
}

/// Reads the mapping under `key` (absent is empty) with `read`.
fn read_section<T>(
    parent: &mut Table,
    key: &str,
    problems: &mut Problems,
    read: impl FnOnce(&mut Table, &mut Problems) -> Option<T>,
) -> Option<T> {
    let path = parent.path_of(key);
    let mut table = Table::open(parent.raw(key).unwrap_or(&Value::Null), &path, problems)?;
    let section = read(&mut table, problems);
    table.finish(problems);
    section
}

/// Reads `defaults`: the policy keys, and `connect_timeout`, which only
/// `defaults` has: the connection pool it bounds is built once at start and
/// shared by every service.
fn read_defaults(table: &mut Table, base: &Defaults, problems: &mut Problems) -> Defaults {
    let connect_timeout = table.get_restart_or("connect_timeout", base.connect_timeout, problems);
    positive(connect_timeout, &table.path_of("connect_timeout"), problems);
    Defaults {
        policy: read_policy_keys(table, &base.policy, problems),
        connect_timeout,
    }
}

/// Reads the policy keys of `table` (shared by `defaults` and each service).
fn read_policy_keys(table: &mut Table, base: &Policy, problems: &mut Problems) -> Policy {
    let policy = Policy {
        timeout: table.get_or("timeout", base.timeout, problems),
        per_try_timeout: table.get_or("per_try_timeout", base.per_try_timeout, problems),
        load_balancer: table.get_or("load_balancer", base.load_balancer, problems),
        circuit_breaker: table.section(
            "circuit_breaker",
            &base.circuit_breaker,
            problems,
            read_breaker,
        ),
        retry: table.section("retry", &base.retry, problems, read_retry),
        concurrency: table.section("concurrency", &base.concurrency, problems, read_concurrency),
        slow_start: table.get_or("slow_start", base.slow_start, problems),
        max_ejection_percent: table.get_or(
            "max_ejection_percent",
            base.max_ejection_percent,
            problems,
        ),
        slow_request_threshold: table.get_or(
            "slow_request_threshold",
            base.slow_request_threshold,
            problems,
        ),
        mesh: table.get_or("mesh", base.mesh, problems),
    };
    if policy.max_ejection_percent > 100 {
        problems.add(
            &table.path_of("max_ejection_percent"),
            "must be between 0 and 100",
        );
    }
    positive(policy.timeout, &table.path_of("timeout"), problems);
    if policy.per_try_timeout == Some(Duration::ZERO) {
        let message = "must be longer than 0s (write `off` for no bound beyond timeout)";
        problems.add(&table.path_of("per_try_timeout"), message);
    }
    policy
}

fn read_breaker(t: &mut Table, base: &BreakerConfig, problems: &mut Problems) -> BreakerConfig {
    let cooldown: Option<Duration> = t.get("cooldown", problems);
    let max_cooldown: Option<Duration> = t.get("max_cooldown", problems);
    let breaker = BreakerConfig {
        failure_threshold: t.get_or("failure_threshold", base.failure_threshold, problems),
        window: t.get_or("window", base.window, problems),
        cooldown: cooldown.unwrap_or(base.cooldown),
        max_cooldown: max_cooldown.unwrap_or(base.max_cooldown),
        success_threshold: t.get_or("success_threshold", base.success_threshold, problems),
        half_open_max_probes: t.get_or("half_open_max_probes", base.half_open_max_probes, problems),
        grpc_failures: t
            .list::<GrpcCode>("grpc_failures", problems)
            .map_or(base.grpc_failures, |codes| codes.into_iter().collect()),
    };
    for (key, count) in [
        ("failure_threshold", breaker.failure_threshold),
        ("success_threshold", breaker.success_threshold),
        ("half_open_max_probes", breaker.half_open_max_probes),
    ] {
        at_least_one(count, &t.path_of(key), problems);
    }
    positive(breaker.window, &t.path_of("window"), problems);
    positive(breaker.cooldown, &t.path_of("cooldown"), problems);
    if breaker.max_cooldown < breaker.cooldown {
        // Name the key this table wrote: the other one may be inherited.
        let (key, message) = if cooldown.is_some() || max_cooldown.is_none() {
            (
                "cooldown",
                format!(
                    "{} is above max_cooldown ({}{}): the cooldown only grows up to max_cooldown; lower it or raise max_cooldown",
                    format_duration(breaker.cooldown),
                    format_duration(breaker.max_cooldown),
                    if max_cooldown.is_some() { "" } else { ", inherited" },
                ),
            )
        } else {
            (
                "max_cooldown",
                format!(
                    "{} is below cooldown ({}, inherited): the cooldown only grows up to max_cooldown; raise it or lower cooldown",
                    format_duration(breaker.max_cooldown),
                    format_duration(breaker.cooldown),
                ),
            )
        };
        problems.add(&t.path_of(key), message);
    }
    breaker
}

fn read_retry(t: &mut Table, base: &RetryConfig, problems: &mut Problems) -> RetryConfig {
    let retry = RetryConfig {
        attempts: t.get_or("attempts", base.attempts, problems),
        base_delay: t.get_or("base_delay", base.base_delay, problems),
        max_delay: t.get_or("max_delay", base.max_delay, problems),
        jitter: t.get_or("jitter", base.jitter, problems),
        on: t.list("on", problems).unwrap_or_else(|| base.on.clone()),
        budget_percent: t.get_or("budget_percent", base.budget_percent, problems),
        budget_min_per_second: t.get_or(
            "budget_min_per_second",
            base.budget_min_per_second,
            problems,
        ),
        non_idempotent: t.get_or("non_idempotent", base.non_idempotent, problems),
        replay_buffer_bytes: t.get_or("replay_buffer_bytes", base.replay_buffer_bytes, problems),
    };
    at_least_one(retry.attempts, &t.path_of("attempts"), problems);
    if !(0.0..=1.0).contains(&retry.jitter) {
        problems.add(
            &t.path_of("jitter"),
            format!("must be between 0 and 1, got {}", retry.jitter),
        );
    }
    if retry.budget_percent > 100 {
        problems.add(&t.path_of("budget_percent"), "must be between 0 and 100");
    }
    if retry.max_delay < retry.base_delay {
        problems.add(
            &t.path_of("max_delay"),
            "must not be shorter than base_delay",
        );
    }
    retry
}

fn read_concurrency(
    t: &mut Table,
    base: &ConcurrencyConfig,
    problems: &mut Problems,
) -> ConcurrencyConfig {
    let concurrency = ConcurrencyConfig {
        max_in_flight: t.get_or("max_in_flight", base.max_in_flight, problems),
    };
    at_least_one(
        concurrency.max_in_flight,
        &t.path_of("max_in_flight"),
        problems,
    );
    concurrency
}

fn read_services(
    value: Option<&Value>,
    defaults: &Policy,
    source: SourceKind,
    mesh: &MeshConfig,
    problems: &mut Problems,
) -> Vec<ServiceConfig> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            problems.add("services", "expected a list of services");
            return Vec::new();
        }
    };
    let mut services: Vec<ServiceConfig> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("services[{index}]");
        let Some(service) = read_service(item, &path, defaults, source, mesh, problems) else {
            continue;
        };
        if services.iter().any(|s| s.name == service.name) {
            problems.add(
                &format!("{path}.name"),
                format!("\"{}\" is used by another service", service.name),
            );
        }
        services.push(service);
    }
    services
}

fn read_service(
    value: &Value,
    path: &str,
    defaults: &Policy,
    source: SourceKind,
    mesh: &MeshConfig,
    problems: &mut Problems,
) -> Option<ServiceConfig> {
    let mut t = Table::open(value, path, problems)?;
    let name: Option<String> = t.get("name", problems);
    match &name {
        None => problems.add(
            &t.path_of("name"),
            "required: the name apps call the service by",
        ),
        Some(name) if !is_service_name(name) => problems.add(
            &t.path_of("name"),
            format!("expected a DNS label (lowercase letters, digits and '-'), got \"{name}\""),
        ),
        Some(_) => {}
    }
    let endpoints: Vec<String> = t.list("endpoints", problems).unwrap_or_default();
    if source == SourceKind::Static && endpoints.is_empty() {
        problems.add(
            &t.path_of("endpoints"),
            "required with discovery.source static: list host:port of each replica",
        );
    } else if source != SourceKind::Static && !endpoints.is_empty() {
        problems.add(
            &t.path_of("endpoints"),
            format!(
                "only read with discovery.source static; replicas come from {}",
                source.as_str()
            ),
        );
    }
    for (index, endpoint) in endpoints.iter().enumerate() {
        if !is_host_port(endpoint_address(endpoint)) {
            problems.add(
                &format!("{}[{index}]", t.path_of("endpoints")),
                format!(
                    "expected host:port like \"10.0.0.7:8080\" or https://host:port, got \"{endpoint}\""
                ),
            );
        }
    }
    let strip_prefix = t.get_or("strip_prefix", true, problems);
    let tls = tls::read_service_tls(&mut t, &endpoints, problems);
    let protocol = t.get_or("protocol", ReplicaProtocol::Auto, problems);
    t.refuse(
        "connect_timeout",
        "set it under defaults: the connection pool is shared by all services",
        problems,
    );
    let policy = read_policy_keys(&mut t, defaults, problems);
    let (identity, mesh_tls) = mesh::read_service_mesh(&mut t, policy.mesh, &tls, mesh, problems);
    t.finish(problems);
    Some(ServiceConfig {
        name: name?,
        endpoints,
        strip_prefix,
        tls: mesh_tls.or(tls),
        identity,
        protocol,
        policy,
    })
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `endpoint` looks like `host:port` with a port from 1 to 65535.
pub(crate) fn is_host_port(endpoint: &str) -> bool {
    match endpoint.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn positive(duration: Duration, path: &str, problems: &mut Problems) {
    if duration.is_zero() {
        problems.add(path, "must be longer than 0s");
    }
}

fn at_least_one(count: u32, path: &str, problems: &mut Problems) {
    if count == 0 {
        problems.add(path, "must be at least 1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Reads `text` with `vars` as the environment; the problems as
    /// `outrigger check` prints them.
    pub(super) fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        Config::from_yaml(text, &env)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    /// The problems `text` has, as `outrigger check` prints them.
    pub(super) fn errors(text: &str) -> Vec<String> {
        match Config::from_yaml(text, &no_env) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_tiny_file_gets_every_default() {
        let config = Config::from_yaml(
            "services: [{name: api, endpoints: [\"127.0.0.1:9000\"]}]",
            &no_env,
        )
        .expect("valid");
        assert_eq!(
            config.listeners.outbound.bind.to_string(),
            "127.0.0.1:15001"
        );
        assert_eq!(config.listeners.outbound.limits, ListenerLimits::default());
        assert_eq!(config.listeners.admin.to_string(), "0.0.0.0:15090");
        assert_eq!(config.discovery.refresh, Duration::from_secs(30));
        let api = config.service("api").expect("api");
        assert!(api.strip_prefix);
        assert_eq!(api.policy, Policy::default());
    }

    #[test]
    fn a_services_protocol_is_auto_unless_it_says_http1_or_http2() {
        let file = |protocol: &str| {
            format!("services: [{{name: api, endpoints: [\"127.0.0.1:9000\"]{protocol}}}]")
        };
        let protocol_of = |text: &str| {
            let config = Config::from_yaml(text, &no_env).expect("valid");
            config.service("api").expect("api").protocol
        };
        assert_eq!(protocol_of(&file("")), ReplicaProtocol::Auto);
        assert_eq!(
            protocol_of(&file(", protocol: http1")),
            ReplicaProtocol::Http1
        );
        assert_eq!(
            protocol_of(&file(", protocol: http2")),
            ReplicaProtocol::Http2
        );
        assert_eq!(
            errors(&file(", protocol: h2c")),
            vec!["services[0].protocol: expected one of auto, http1, http2, got \"h2c\""]
        );
    }

    #[test]
    fn workers_default_to_the_cpus_and_the_file_or_env_sets_them() {
        let file = "services: [{name: api, endpoints: [\"127.0.0.1:9000\"]}]";
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let config = Config::from_yaml(file, &no_env).expect("valid");
        assert_eq!(config.workers, cpus);
        let set = format!("workers: 3\n{file}");
        assert_eq!(Config::from_yaml(&set, &no_env).expect("valid").workers, 3);
        let env = |name: &str| (name == "OUTRIGGER_WORKERS").then(|| "1".to_string());
        let config = Config::from_yaml(&set, &env).expect("valid");
        assert_eq!(config.workers, 1, "the variable wins over the file");
        assert_eq!(
            errors(&format!("workers: 0\n{file}")),
            vec!["workers: must be at least 1"]
        );
        assert_eq!(
            errors(&format!("workers: many\n{file}")),
            vec!["workers: expected a whole number, got \"many\""]
        );
        let bad = |name: &str| (name == "OUTRIGGER_WORKERS").then(|| "0".to_string());
        let Err(problems) = Config::from_yaml(file, &bad) else {
            panic!("OUTRIGGER_WORKERS=0 was accepted");
        };
        assert_eq!(
            problems[0].to_string(),
            "OUTRIGGER_WORKERS: expected a whole number of at least 1, got \"0\""
        );
    }

    #[test]
    fn a_service_overrides_only_what_it_sets() {
        let text = "
defaults:
  timeout: 2s
  circuit_breaker: { failure_threshold: 7 }
services:
  - name: api
    endpoints: [\"127.0.0.1:9000\"]
    timeout: 500ms
    circuit_breaker: { cooldown: 1s }
";
        let config = Config::from_yaml(text, &no_env).expect("valid");
        let policy = &config.service("api").expect("api").policy;
        assert_eq!(policy.timeout, Duration::from_millis(500));
        assert_eq!(policy.circuit_breaker.failure_threshold, 7);
        assert_eq!(policy.circuit_breaker.cooldown, Duration::from_secs(1));
        assert_eq!(config.defaults.policy.timeout, Duration::from_secs(2));
    }

    #[test]
    fn per_try_timeout_is_off_unless_set_and_a_service_can_turn_it_off() {
        let text = "
defaults: { per_try_timeout: 800ms }
services:
  - { name: api, endpoints: [\"127.0.0.1:9000\"] }
  - { name: reports, endpoints: [\"127.0.0.1:9001\"], per_try_timeout: off }
";
        let config = Config::from_yaml(text, &no_env).expect("valid");
        let per_try = |name: &str| config.service(name).expect(name).policy.per_try_timeout;
        assert_eq!(per_try("api"), Some(Duration::from_millis(800)));
        assert_eq!(per_try("reports"), None);
        assert_eq!(Policy::default().per_try_timeout, None);
        let shown = serde_json::to_value(&config).expect("serializable");
        assert_eq!(shown["services"][1]["per_try_timeout"], "off");
        assert_eq!(
            errors("defaults: { per_try_timeout: never }"),
            vec![
                "defaults.per_try_timeout: expected a duration like \"1s\", or off, got \"never\""
            ]
        );
        assert_eq!(
            errors("defaults: { per_try_timeout: 0s }"),
            vec!["defaults.per_try_timeout: must be longer than 0s (write `off` for no bound beyond timeout)"]
        );
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let text = "
listeners: { outbound: { bind: nowhere } }
defaults: { load_balancer: fastest, retry: { jitter: 2 } }
services:
  - name: api
    endpoints: [\"127.0.0.1:9000\", \"bad\"]
    circuit_breaker: { cooldown: thirty }
    colour: blue
";
        assert_eq!(
            errors(text),
            vec![
                "listeners.outbound.bind: expected an address like \"127.0.0.1:15001\", got \"nowhere\"",
                "defaults.load_balancer: expected one of least_load, p2c_ewma, round_robin, got \"fastest\"",
                "defaults.retry.jitter: must be between 0 and 1, got 2",
                "services[0].endpoints[1]: expected host:port like \"10.0.0.7:8080\" or https://host:port, got \"bad\"",
                "services[0].circuit_breaker.cooldown: expected a duration like \"30s\", got \"thirty\"",
                "services[0].colour: unknown key",
            ]
        );
    }

    #[test]
    fn services_need_a_unique_dns_name_and_endpoints() {
        let text = "
services:
  - { name: api, endpoints: [\"a:1\"] }
  - { name: api, endpoints: [\"b:1\"] }
  - { name: Bad_Name, endpoints: [] }
  - { endpoints: [\"c:1\"], connect_timeout: 1s }
";
        assert_eq!(
            errors(text),
            vec![
                "services[1].name: \"api\" is used by another service",
                "services[2].name: expected a DNS label (lowercase letters, digits and '-'), got \"Bad_Name\"",
                "services[2].endpoints: required with discovery.source static: list host:port of each replica",
                "services[3].name: required: the name apps call the service by",
                "services[3].connect_timeout: set it under defaults: the connection pool is shared by all services",
            ]
        );
    }

    #[test]
    fn limits_must_make_sense() {
        let text = "
discovery: { source: consul, refresh: 0s }
defaults:
  timeout: 0s
  circuit_breaker: { failure_threshold: 0, cooldown: 10m, max_cooldown: 1m }
  retry: { attempts: 0, on: [timeout, 404], budget_percent: 150 }
  concurrency: { max_in_flight: 0 }
";
        assert_eq!(
            errors(text),
            vec![
                "discovery.source: expected one of static, file, registry, dns, kubernetes, got \"consul\"",
                "discovery.refresh: must be longer than 0s",
                "defaults.circuit_breaker.failure_threshold: must be at least 1",
                "defaults.circuit_breaker.cooldown: 10m is above max_cooldown (1m): the cooldown only grows up to max_cooldown; lower it or raise max_cooldown",
                "defaults.retry.on[1]: expected connect_error, timeout, a 5xx status or a gRPC code name such as unavailable, got 404",
                "defaults.retry.attempts: must be at least 1",
                "defaults.retry.budget_percent: must be between 0 and 100",
                "defaults.concurrency.max_in_flight: must be at least 1",
                "defaults.timeout: must be longer than 0s",
            ]
        );
    }

    #[test]
    fn grpc_code_names_are_read_in_lower_case_and_a_bad_one_is_named() {
        let config = Config::from_yaml(
            "defaults:
  circuit_breaker: { grpc_failures: [unavailable, resource_exhausted] }
  retry: { on: [connect_error, 503, deadline_exceeded] }
",
            &no_env,
        )
        .expect("valid");
        let policy = &config.defaults.policy;
        let failures: Vec<GrpcCode> = policy.circuit_breaker.grpc_failures.iter().collect();
        assert_eq!(
            failures,
            [GrpcCode::ResourceExhausted, GrpcCode::Unavailable]
        );
        assert!(policy
            .retry
            .on
            .contains(&RetryOn::Grpc(GrpcCode::DeadlineExceeded)));
        assert!(Policy::default()
            .retry
            .on
            .contains(&RetryOn::Grpc(GrpcCode::Unavailable)));
        let text = "defaults: { circuit_breaker: { grpc_failures: [UNAVAILABLE] }, retry: { on: [unavaliable] } }";
        assert_eq!(
            errors(text),
            vec![
                "defaults.circuit_breaker.grpc_failures[0]: expected a gRPC code name in lower case (ok, cancelled, unknown, ..., unavailable, data_loss, unauthenticated), got \"UNAVAILABLE\"",
                "defaults.retry.on[0]: expected connect_error, timeout, a 5xx status or a gRPC code name such as unavailable, got \"unavaliable\"",
            ]
        );
    }

    #[test]
    fn a_cooldown_above_max_cooldown_names_the_key_the_table_wrote() {
        let service = |breaker: &str| {
            format!(
                "defaults: {{ circuit_breaker: {{ cooldown: 2m, max_cooldown: 4m }} }}
services: [{{ name: a, endpoints: [\"127.0.0.1:1\"], circuit_breaker: {breaker} }}]"
            )
        };
        assert_eq!(
            errors(&service("{ cooldown: 10m }")),
            vec!["services[0].circuit_breaker.cooldown: 10m is above max_cooldown (4m, inherited): the cooldown only grows up to max_cooldown; lower it or raise max_cooldown"]
        );
        assert_eq!(
            errors(&service("{ max_cooldown: 1m }")),
            vec!["services[0].circuit_breaker.max_cooldown: 1m is below cooldown (2m, inherited): the cooldown only grows up to max_cooldown; raise it or lower cooldown"]
        );
        assert!(
            errors(&service("{ cooldown: 4m }")).is_empty(),
            "equal is fine"
        );
    }

    #[test]
    fn a_missing_secret_is_a_warning_only_when_secrets_are_optional() {
        let text = "listeners: { inbound: { app: \"http://127.0.0.1:8080\" } }
inbound: { auth: { jwt: { secret_env: HS_KEY }, api_keys: {} } }";
        let wanted = [
            "inbound.auth.jwt.secret_env: the environment variable HS_KEY holding the HMAC secret is not set",
            "inbound.auth.api_keys.keys_env: the environment variable OUTRIGGER_API_KEYS holding the API keys is not set, and there is no keys_file: no key would be accepted",
        ];
        let read = |secrets| Config::read(text, &no_env, secrets);
        let shown = |errors: Vec<ConfigError>| -> Vec<String> {
            errors.iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            shown(read(SecretEnv::Required).outcome.unwrap_err()),
            wanted
        );
        let checked = read(SecretEnv::Optional);
        assert_eq!(shown(checked.warnings.clone()), wanted);
        assert!(
            checked.warnings.iter().all(|w| w.position.is_some()),
            "warnings are placed in the file"
        );
        let config = checked.outcome.expect("valid without its secrets");
        assert!(config.inbound.is_some_and(|i| i.auth.jwt.is_some()));
    }

    #[test]
    fn reload_watches_every_second_by_default_and_needs_a_positive_interval() {
        let config = Config::from_yaml("services: []", &no_env).expect("valid");
        assert_eq!(config.reload, ReloadConfig::default());
        assert!(config.reload.watch);
        assert_eq!(config.reload.interval, Duration::from_secs(1));
        assert_eq!(
            errors("reload: { watch: sometimes, interval: 0s, every: 1s }"),
            vec![
                "reload.interval: must be longer than 0s",
                "reload.watch: expected true or false, got \"sometimes\"",
                "reload.every: unknown key",
            ]
        );
    }

    #[test]
    fn broken_yaml_and_wrong_shapes_are_reported() {
        assert_eq!(errors("services: [").len(), 1);
        assert_eq!(
            errors("- 1\n- 2"),
            vec!["(file): expected a mapping, got a list"]
        );
        assert_eq!(
            errors("services: 3"),
            vec!["services: expected a list of services"]
        );
    }
}
