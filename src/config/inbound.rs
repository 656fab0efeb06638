//! Config of the inbound side: the listener in front of the app, who may
//! call it (JWT, API keys, exempt paths, role and scope rules), CORS, and
//! the optional Redis that revocations are shared through.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Serialize, Serializer};
use serde_norway::Value;

use super::call_tls::{read_call_url, CallTls};
use super::reader::{config_words, FromYaml, Problems, Table};
use super::{as_duration, positive, Env, ListenerLimits};

/// The inbound listener: where callers from outside the pod arrive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundListener {
    /// Where callers connect (default `0.0.0.0:15006`).
    pub bind: SocketAddr,
    /// Where admitted requests go: the app, or the route table.
    #[serde(flatten)]
    pub target: InboundTarget,
    /// Bound on the app's answer head; past it the caller gets 504 (default 30s).
    #[serde(serialize_with = "as_duration")]
    pub timeout: Duration,
    /// Per-client bounds (`max_header_bytes`, `max_body_bytes`, ...).
    #[serde(flatten)]
    pub limits: ListenerLimits,
    /// Plain text, mutual TLS between sidecars, both, or server TLS.
    pub tls: super::ListenerTls,
}

/// Where the inbound listener sends the requests it admits.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundTarget {
    /// `host:port` of the app on localhost (from `app: "http://127.0.0.1:8080"`).
    App(String),
    /// The sidecar's own outbound listener, whose route table (then `Host`
    /// and `/<service>/`) picks the service (`routes: true`): a gateway.
    Routes,
}

impl Serialize for InboundTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Self::App(authority) => map.serialize_entry("app", authority)?,
            Self::Routes => map.serialize_entry("routes", &true)?,
        }
        map.end()
    }
}

/// Who may call the app, how often, how many at once, and how browsers may.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InboundConfig {
    /// Authentication and authorisation.
    pub auth: AuthConfig,
    /// Cross-origin requests from browsers.
    pub cors: CorsConfig,
    /// Sliding-window limits per role and route; `None` when not configured.
    pub rate_limit: Option<RateLimitConfig>,
    /// In-flight caps; `None` when not configured.
    pub concurrency: Option<InboundConcurrency>,
    /// GET response cache; `None` when not configured.
    pub cache: Option<CacheConfig>,
    /// Peers (proxies in front of the sidecar) whose `X-Forwarded-*`,
    /// `X-Real-IP` and `Forwarded` headers reach the app; from any other
    /// peer they are replaced or dropped (none by default).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Which mesh identities may call which paths: the first rule whose
    /// path prefix matches decides; a path no rule matches is open.
    pub authorization: Vec<IdentityRule>,
}

/// The mesh identities that may call a path prefix (403
/// `forbidden_identity` for any other caller, plain-text ones included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentityRule {
    /// Path prefix the rule covers.
    pub path: String,
    /// The SPIFFE IDs allowed.
    pub identities: Vec<String>,
}

/// The inbound GET response cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheConfig {
    /// Time to live when no route sets one (default 60s; env `CACHE_DEFAULT_TTL`),
    /// capped by the answer's own `max-age`.
    #[serde(serialize_with = "as_duration")]
    pub default_ttl: Duration,
    /// Per-path-prefix time to live.
    pub routes: Vec<CacheRoute>,
    /// Path prefixes never cached.
    pub bypass: Vec<String>,
    /// Larger answers stream through uncached (default 1 MiB).
    pub max_entry_bytes: u32,
    /// What the entries kept in process may take in all; the least recently
    /// used make room (default 16 MiB). Redis bounds itself (`maxmemory`).
    pub max_bytes: u64,
}

/// A time to live for one route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheRoute {
    /// Path prefix.
    pub path: String,
    /// Its time to live.
    #[serde(serialize_with = "as_duration")]
    pub ttl: Duration,
}

/// Sliding-window request limits, keyed by user (or client IP when anonymous).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitConfig {
    /// The window limits count over (default 1m).
    #[serde(serialize_with = "as_duration")]
    pub window: Duration,
    /// Requests per window by role; `anonymous` is for callers without identity.
    /// A caller with several roles gets the largest of their limits.
    pub roles: Vec<(String, u32)>,
    /// Limit for authenticated callers none of whose roles is listed (none by default).
    pub default: Option<u32>,
    /// Per-path-prefix limits that replace the role limit on their routes.
    pub routes: Vec<RouteLimit>,
    /// Peers whose `X-Forwarded-For` is believed when keying anonymous callers.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// What to do when Redis cannot be asked (default `local`).
    pub on_redis_error: OnRedisError,
    /// How the role limits (`roles`, `default`, `anonymous`) are counted
    /// across sidecars (default `exact`).
    pub mode: LimitMode,
    /// How long an `approximate` limit's hits may stay unsent to Redis
    /// (default 100ms).
    #[serde(serialize_with = "as_duration")]
    pub sync_interval: Duration,
}

/// A limit for one route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteLimit {
    /// Path prefix.
    pub path: String,
    /// Requests per window.
    pub limit: u32,
    /// Its own window (default: the rate limit's).
    #[serde(serialize_with = "as_duration")]
    pub window: Duration,
    /// How it is counted across sidecars (default `exact`).
    pub mode: LimitMode,
}

/// How a limit is counted across the sidecars sharing Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Every limited request waits for one atomic Redis call: never over
    /// the limit.
    Exact,
    /// Counted in this process and sent to Redis in the background: no
    /// request waits for Redis, and a key over its limit costs no Redis
    /// call, at the price of a bounded excess (docs/guide/inbound.md).
    Approximate,
}

config_words!(LimitMode {
    Exact => "exact",
    Approximate => "approximate",
});

/// The rate limiter's behaviour while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Count in this process instead (limits become per pod).
    Local,
    /// Let the request through.
    Allow,
    /// Refuse with 429.
    Deny,
}

config_words!(OnRedisError {
    Local => "local",
    Allow => "allow",
    Deny => "deny",
});

/// In-flight caps on the inbound side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundConcurrency {
    /// Requests in flight to the app at once (default 100).
    pub global: u32,
    /// Requests in flight to one path at once (default 10).
    pub per_route: u32,
}

/// Authentication and authorisation of inbound callers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuthConfig {
    /// Bearer JWTs; `None` when not configured.
    pub jwt: Option<JwtConfig>,
    /// API keys for machine callers; `None` when not configured.
    pub api_keys: Option<ApiKeysConfig>,
    /// Paths that pass without credentials: exact, or a prefix ending in `/` or `*`.
    pub exempt: Vec<String>,
    /// Refuse tokens whose `jti` (or whole-token hash) was revoked.
    pub revocation: bool,
    /// `POST` to this path revokes the caller's token once the app answers 2xx.
    pub logout: Option<String>,
    /// Remove `Authorization` before forwarding to the app (default false).
    pub strip_authorization: bool,
    /// A caller with a verified mesh identity needs no JWT or API key
    /// (default false).
    pub exempt_mesh: bool,
    /// Let tokens through when the revocation store cannot be asked
    /// (`revocation_on_error: allow`); by default (`deny`) they are refused with 503.
    pub revocation_on_error_allow: bool,
    /// Per-route role and scope requirements (403 when unmet).
    pub rules: Vec<AccessRule>,
    /// Where a browser's WebSocket handshake, which cannot set
    /// `Authorization`, may carry its JWT; `None` when not configured
    /// (then a handshake authenticates as any request does).
    pub websocket_token: Option<WebSocketToken>,
}

/// Where a WebSocket handshake may carry its bearer JWT instead of
/// `Authorization` (browsers cannot set headers on a WebSocket). Read only
/// on upgrade requests, and taken out before the handshake reaches the app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebSocketToken {
    /// The query parameter holding the token (`?access_token=<jwt>`).
    pub query: Option<String>,
    /// The subprotocol that announces the token in `Sec-WebSocket-Protocol`:
    /// the entry after it is the token (`new WebSocket(url, [protocol, jwt])`).
    pub protocol: Option<String>,
}

/// How bearer tokens are verified.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtConfig {
    /// The accepted algorithms; a token's own `alg` never widens them.
    #[serde(serialize_with = "algorithm_names")]
    pub algorithms: Vec<Algorithm>,
    /// Where the verification keys come from.
    pub keys: JwtKeys,
    /// Accepted `iss` values (empty: not checked).
    pub issuer: Vec<String>,
    /// Accepted `aud` values (empty: not checked).
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 30s).
    #[serde(serialize_with = "as_duration")]
    pub leeway: Duration,
    /// The claim holding the caller's roles: a string or a list (default `roles`, then `role`).
    pub roles_claim: String,
    /// How often a JWKS is fetched again (default 10m).
    #[serde(serialize_with = "as_duration")]
    pub jwks_refresh: Duration,
    /// How an `https://` JWKS URL is verified: `ca_file`, or the system's roots.
    #[serde(rename = "ca_file")]
    pub jwks_tls: CallTls,
}

/// Where JWT verification keys come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtKeys {
    /// An HMAC secret (from `secret_env` or `secret_file`); never shown.
    Secret(#[serde(serialize_with = "redacted")] Vec<u8>),
    /// A PEM public key file (RSA, EC or Ed25519).
    PublicKeyFile(PathBuf),
    /// A JWKS URL, fetched at start and every `jwks_refresh`.
    JwksUrl(String),
}

/// API keys: which header carries them and whose they are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeysConfig {
    /// The header callers send the key in (default `x-api-key`).
    pub header: String,
    /// The known keys.
    pub keys: Vec<ApiKey>,
}

/// One API key and the identity it stands for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    /// The identity (`x-outrigger-user`).
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its OAuth2-style scopes, as a token's `scope` claim would grant.
    pub scopes: Vec<String>,
    /// The key itself; never shown.
    #[serde(serialize_with = "redacted")]
    pub key: String,
}

/// A role or scope requirement for requests matching a path prefix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessRule {
    /// Path prefix the rule covers.
    pub path: String,
    /// Methods it covers (empty: all).
    pub methods: Vec<String>,
    /// The caller needs at least one of these roles (empty: none needed).
    pub roles: Vec<String>,
    /// The caller needs every one of these scopes.
    pub scopes: Vec<String>,
    /// Whether the caller needs both the roles and the scopes (`all`, the
    /// default) or either (`any`: one of the roles, or every scope).
    pub satisfy: Satisfy,
}

/// How an access rule's roles and scopes combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Satisfy {
    /// One of the roles and every scope.
    All,
    /// One of the roles, or every scope: a person by role or a machine by scope.
    Any,
}

config_words!(Satisfy {
    All => "all",
    Any => "any",
});

/// Which browser origins may call the app.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CorsConfig {
    /// Allowed origins, exact (`https://app.example.com`) or `*` (env `CORS_ORIGINS`, comma-separated).
    pub origins: Vec<String>,
    /// How long browsers may cache a preflight answer (default 10m).
    #[serde(serialize_with = "as_duration")]
    pub max_age: Duration,
}

impl FromYaml for Algorithm {
    const EXPECTED: &'static str =
        "one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA";
    fn from_yaml(value: &Value) -> Option<Self> {
        let name = value.as_str()?;
        // PS* exist in the library but are not offered: keep the list to what is tested.
        if name.starts_with("PS") {
            return None;
        }
        Algorithm::from_str(name).ok()
    }
}

fn algorithm_names<S: Serializer>(
    algorithms: &[Algorithm],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
    names.serialize(serializer)
}

pub(super) fn redacted<T, S: Serializer>(_: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("<redacted>")
}

/// Reads `listeners.inbound`.
pub(super) fn read_listener(
    t: &mut Table,
    _: &Option<InboundListener>,
    problems: &mut Problems,
) -> Option<InboundListener> {
    let bind = super::listener::read_bind(t, "0.0.0.0:15006", problems);
    let app: Option<String> = t.get("app", problems);
    let routes = t.get_or("routes", false, problems);
    let target = match (app, routes) {
        (Some(_), true) => {
            problems.add(
                &t.path_of("routes"),
                "set app or routes: true, not both: with routes the route table picks the service",
            );
            None
        }
        (None, true) => Some(InboundTarget::Routes),
        (None, false) => {
            problems.add(
                &t.path_of("app"),
                "required: the app's URL on localhost, like \"http://127.0.0.1:8080\" (or routes: true for a gateway)",
            );
            None
        }
        (Some(url), false) => match url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
        {
            Some(authority) if !authority.is_empty() && !authority.contains('/') => {
                Some(InboundTarget::App(authority.to_string()))
            }
            _ => {
                problems.add(
                    &t.path_of("app"),
                    format!("expected http://host:port, got \"{url}\""),
                );
                None
            }
        },
    };
    let timeout = t.get_or("timeout", Duration::from_secs(30), problems);
    positive(timeout, &t.path_of("timeout"), problems);
    let limits = super::listener::read_limits(t, problems);
    let tls = t.section_restart(
        "tls",
        &super::ListenerTls::default(),
        problems,
        super::mesh::read_listener_tls,
    );
    Some(InboundListener {
        bind: bind?,
        target: target?,
        timeout,
        limits,
        tls,
    })
}

/// Reads the `inbound` section; `env` looks up secret and key variables.
pub(super) fn read_inbound(t: &mut Table, env: Env<'_>, problems: &mut Problems) -> InboundConfig {
    let auth = t.section(
        "auth",
        &AuthConfig::default(),
        problems,
        |t, _, problems| read_auth(t, env, problems),
    );
    let mut cors = t.section(
        "cors",
        &CorsConfig::default(),
        problems,
        |t, _, problems| read_cors(t, problems),
    );
    if let Some(origins) = env("CORS_ORIGINS") {
        cors.origins = origins
            .split(',')
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
    }
    let rate_limit = t.section("rate_limit", &None, problems, |t, _, problems| {
        Some(read_rate_limit(t, problems))
    });
    let concurrency = t.section("concurrency", &None, problems, |t, _, problems| {
        let global = t.get_or("global", 100, problems);
        let per_route = t.get_or("per_route", 10, problems);
        Some(InboundConcurrency { global, per_route })
    });
    let cache = t.section("cache", &None, problems, |t, _, problems| {
        Some(read_cache(t, env, problems))
    });
    InboundConfig {
        auth,
        cors,
        rate_limit,
        concurrency,
        cache,
        trusted_proxies: read_ips(t, "trusted_proxies", problems),
        authorization: t.tables("authorization", problems, read_identity_rule),
    }
}

/// Reads one `inbound.authorization` rule: a path prefix and SPIFFE IDs.
fn read_identity_rule(t: &mut Table, problems: &mut Problems) -> Option<IdentityRule> {
    let path: Option<String> = t.get("path", problems);
    match &path {
        None => problems.add(
            &t.path_of("path"),
            "required: the path prefix the rule covers",
        ),
        Some(prefix) if !prefix.starts_with('/') => problems.add(
            &t.path_of("path"),
            format!("expected a path prefix starting with /, got \"{prefix}\""),
        ),
        Some(_) => {}
    }
    let identities: Vec<String> = t.list("identities", problems).unwrap_or_default();
    for (index, id) in identities.iter().enumerate() {
        if !crate::tls::is_spiffe_id(id) {
            problems.add(
                &format!("{}[{index}]", t.path_of("identities")),
                format!("expected a SPIFFE ID like \"spiffe://cluster.local/ns/shop/sa/frontend\", got \"{id}\""),
            );
        }
    }
    Some(IdentityRule {
        path: path?,
        identities,
    })
}

/// The list of IP addresses at `key` (none when absent); each entry that
/// is not one is a problem at that key.
fn read_ips(t: &mut Table, key: &str, problems: &mut Problems) -> Vec<std::net::IpAddr> {
    t.list::<String>(key, problems)
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| match ip.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.add(&t.path_of(key), format!("\"{ip}\" is not an IP address"));
                None
            }
        })
        .collect()
}

fn read_auth(t: &mut Table, env: Env<'_>, problems: &mut Problems) -> AuthConfig {
    let jwt = t.raw("jwt").map(|value| {
        let path = t.path_of("jwt");
        Table::open(value, &path, problems).and_then(|mut jwt| {
            let config = read_jwt(&mut jwt, env, problems);
            jwt.finish(problems);
            config
        })
    });
    let api_keys = t.raw("api_keys").map(|value| {
        let path = t.path_of("api_keys");
        Table::open(value, &path, problems).map(|mut keys| {
            let config = read_api_keys(&mut keys, env, problems);
            keys.finish(problems);
            config
        })
    });
    let rules = t.tables("rules", problems, read_rule);
    let websocket_token = t.section("websocket_token", &None, problems, |t, _, problems| {
        read_websocket_token(t, problems)
    });
    if websocket_token.is_some() && jwt.is_none() {
        problems.add(
            &t.path_of("websocket_token"),
            "needs inbound.auth.jwt: the token it carries is a bearer JWT",
        );
    }
    AuthConfig {
        jwt: jwt.flatten(),
        api_keys: api_keys.flatten(),
        exempt: t.list("exempt", problems).unwrap_or_default(),
        revocation: t.get_or("revocation", false, problems),
        logout: t.get("logout", problems),
        strip_authorization: t.get_or("strip_authorization", false, problems),
        exempt_mesh: t.get_or("exempt_mesh", false, problems),
        revocation_on_error_allow: match t.get::<String>("revocation_on_error", problems).as_deref()
        {
            None | Some("deny") => false,
            Some("allow") => true,
            Some(other) => {
                problems.add(
                    &t.path_of("revocation_on_error"),
                    format!("expected deny or allow, got \"{other}\""),
                );
                false
            }
        },
        rules,
        websocket_token,
    }
}

/// Reads `inbound.auth.websocket_token`: a query parameter name, a
/// subprotocol name, or both; each must be writable where it goes.
fn read_websocket_token(t: &mut Table, problems: &mut Problems) -> Option<WebSocketToken> {
    let query: Option<String> = t.get("query", problems);
    if let Some(name) = &query {
        let unusable = |c: char| !c.is_ascii_graphic() || matches!(c, '&' | '=' | '#' | '%' | '+');
        if name.is_empty() || name.contains(unusable) {
            problems.add(
                &t.path_of("query"),
                format!("\"{name}\" cannot name a query parameter: use letters, digits, '-', '_' or '.'"),
            );
        }
    }
    let protocol: Option<String> = t.get("protocol", problems);
    if let Some(name) = &protocol {
        if !is_http_token(name) {
            problems.add(
                &t.path_of("protocol"),
                format!("\"{name}\" is not a subprotocol name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~)"),
            );
        }
    }
    if query.is_none() && protocol.is_none() {
        problems.add(
            t.path(),
            "name where browsers carry the token: query (a parameter), protocol (a subprotocol), or both",
        );
    }
    Some(WebSocketToken { query, protocol })
}

/// Whether `text` is an HTTP token (RFC 9110 `tchar`s), as a subprotocol name must be.
fn is_http_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn read_jwt(t: &mut Table, env: Env<'_>, problems: &mut Problems) -> Option<JwtConfig> {
    let algorithms: Vec<Algorithm> = t
        .list("algorithms", problems)
        .unwrap_or_else(|| vec![Algorithm::HS256]);
    if algorithms.is_empty() {
        problems.add(&t.path_of("algorithms"), "list at least one algorithm");
    }
    let hmac = algorithms
        .iter()
        .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    let public = algorithms
        .iter()
        .any(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    if hmac && public {
        problems.add(
            &t.path_of("algorithms"),
            "mix HS* with public-key algorithms and a public key could be used as an HMAC secret: pick one kind",
        );
    }
    let secret_env: Option<String> = t.get("secret_env", problems);
    let secret_file: Option<String> = t.get("secret_file", problems);
    let public_key_file: Option<String> = t.get("public_key_file", problems);
    let jwks_url: Option<String> = t.get("jwks_url", problems);
    let jwks_tls = read_call_url(
        t,
        jwks_url.as_deref(),
        ("jwks_url", "ca_file"),
        "https://idp.example/.well-known/jwks.json",
        problems,
    );
    let keys = if hmac {
        if let Some(file) = secret_file {
            match std::fs::read(&file) {
                Ok(secret) => Some(JwtKeys::Secret(trim_newline(secret))),
                Err(err) => {
                    problems.add(
                        &t.path_of("secret_file"),
                        format!("cannot read {file}: {err}"),
                    );
                    None
                }
            }
        } else {
            let variable = secret_env.unwrap_or_else(|| "JWT_SECRET".to_string());
            match env(&variable) {
                Some(secret) if !secret.is_empty() => Some(JwtKeys::Secret(secret.into_bytes())),
                _ => {
                    let path = t.path_of("secret_env");
                    let message = format!(
                        "the environment variable {variable} holding the HMAC secret is not set"
                    );
                    // An empty secret stands in only where the config is checked, not run.
                    problems
                        .missing_secret(&path, message)
                        .then(|| JwtKeys::Secret(Vec::new()))
                }
            }
        }
    } else {
        match (public_key_file, jwks_url) {
            (Some(file), None) => Some(JwtKeys::PublicKeyFile(PathBuf::from(file))),
            (None, Some(url)) => Some(JwtKeys::JwksUrl(url)),
            _ => {
                problems.add(
                    &t.path_of("public_key_file"),
                    "set exactly one of public_key_file or jwks_url",
                );
                None
            }
        }
    };
    let leeway = t.get_or("leeway", Duration::from_secs(30), problems);
    let jwks_refresh = t.get_or("jwks_refresh", Duration::from_secs(600), problems);
    positive(jwks_refresh, &t.path_of("jwks_refresh"), problems);
    // Read before giving up on missing keys, so these are never "unknown".
    let issuer = one_or_many(t, "issuer", problems);
    let audience = one_or_many(t, "audience", problems);
    let roles_claim = t
        .get("roles_claim", problems)
        .unwrap_or_else(|| "roles".to_string());
    Some(JwtConfig {
        algorithms,
        keys: keys?,
        issuer,
        audience,
        leeway,
        roles_claim,
        jwks_refresh,
        jwks_tls,
    })
}

fn read_api_keys(t: &mut Table, env: Env<'_>, problems: &mut Problems) -> ApiKeysConfig {
    let header: String = t
        .get("header", problems)
        .unwrap_or_else(|| "x-api-key".to_string());
    let mut keys = Vec::new();
    let mut add = |source: &str, text: &str, problems: &mut Problems| {
        for (index, entry) in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            match parse_api_key(entry) {
                Some(key) => keys.push(key),
                None => problems.add(
                    source,
                    format!(
                        "entry {index} is not name:key, name:key:role1|role2 or \
                         name:key:role1|role2:scope1|scope2 (names, roles and scopes \
                         may not hold control characters)"
                    ),
                ),
            }
        }
    };
    let keys_file: Option<String> = t.get("keys_file", problems);
    if let Some(file) = &keys_file {
        match std::fs::read_to_string(file) {
            Ok(text) => add(&t.path_of("keys_file"), &text, problems),
            Err(err) => problems.add(
                &t.path_of("keys_file"),
                format!("cannot read {file}: {err}"),
            ),
        }
    }
    let variable: String = t
        .get("keys_env", problems)
        .unwrap_or_else(|| "OUTRIGGER_API_KEYS".to_string());
    match env(&variable) {
        Some(text) => add(&variable, &text, problems),
        None if keys_file.is_none() => {
            problems.missing_secret(
                &t.path_of("keys_env"),
                format!(
                    "the environment variable {variable} holding the API keys is not set, \
                     and there is no keys_file: no key would be accepted"
                ),
            );
        }
        None => {}
    }
    ApiKeysConfig { header, keys }
}

/// Whether `name` can stand for a caller (a subject, an API key's name, a
/// role or a scope): not empty, no control characters, and no whitespace
/// at either end. Names key the cache and the rate limits and reach the
/// app in `x-outrigger-*` headers, where surrounding whitespace is stripped
/// and control characters cannot go: such a name would be read as another.
pub fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(char::is_control)
        && !name.starts_with(char::is_whitespace)
        && !name.ends_with(char::is_whitespace)
}

/// `name:key`, `name:key:role1|role2` or `name:key:role1|role2:scope1|scope2`
/// (an empty roles field for scopes alone); the name, each role and each
/// scope must be a [`usable_name`], since they are the caller's identity,
/// and a scope holds no whitespace, as in a token's `scope` claim.
fn parse_api_key(entry: &str) -> Option<ApiKey> {
    let mut parts = entry.splitn(4, ':');
    let (name, key) = (parts.next()?.trim(), parts.next()?.trim());
    if !usable_name(name) || key.is_empty() {
        return None;
    }
    let names = |field: Option<&str>| -> Option<Vec<String>> {
        let names: Vec<String> = field
            .unwrap_or_default()
            .split('|')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        names.iter().all(|n| usable_name(n)).then_some(names)
    };
    let roles = names(parts.next())?;
    let scopes = names(parts.next())?;
    if scopes
        .iter()
        .any(|scope| scope.contains(char::is_whitespace))
    {
        return None;
    }
    Some(ApiKey {
        name: name.to_string(),
        roles,
        scopes,
        key: key.to_string(),
    })
}

fn read_rule(t: &mut Table, problems: &mut Problems) -> Option<AccessRule> {
    let path: Option<String> = t.get("path", problems);
    if path.is_none() {
        problems.add(
            &t.path_of("path"),
            "required: the path prefix the rule covers",
        );
    }
    let methods = t
        .list::<String>("methods", problems)
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    let roles = t.list("roles", problems).unwrap_or_default();
    let scopes = t.list("scopes", problems).unwrap_or_default();
    let satisfy = t.get_or("satisfy", Satisfy::All, problems);
    Some(AccessRule {
        path: path?,
        methods,
        roles,
        scopes,
        satisfy,
    })
}

fn read_rate_limit(t: &mut Table, problems: &mut Problems) -> RateLimitConfig {
    let window = t.get_or("window", Duration::from_secs(60), problems);
    positive(window, &t.path_of("window"), problems);
    let mut roles = Vec::new();
    match t.raw("roles") {
        None => {}
        Some(Value::Mapping(map)) => {
            for (role, limit) in map {
                let role = role.as_str().unwrap_or_default().to_string();
                match u32::from_yaml(limit) {
                    Some(limit) => roles.push((role, limit)),
                    None => problems.add(
                        &format!("{}.{role}", t.path_of("roles")),
                        "expected a whole number of requests per window",
                    ),
                }
            }
        }
        Some(_) => problems.add(&t.path_of("roles"), "expected a mapping of role: limit"),
    }
    let routes = t.tables("routes", problems, |route, problems| {
        let prefix: Option<String> = route.get("path", problems);
        let limit: Option<u32> = route.get("limit", problems);
        let own_window = route.get_or("window", window, problems);
        let mode = route.get_or("mode", LimitMode::Exact, problems);
        if prefix.is_none() || limit.is_none() {
            problems.add(route.path(), "each route needs path and limit");
        }
        Some(RouteLimit {
            path: prefix?,
            limit: limit?,
            window: own_window,
            mode,
        })
    });
    let trusted_proxies = read_ips(t, "trusted_proxies", problems);
    let sync_interval = t.get_or("sync_interval", Duration::from_millis(100), problems);
    positive(sync_interval, &t.path_of("sync_interval"), problems);
    RateLimitConfig {
        window,
        roles,
        default: t.get("default", problems),
        routes,
        trusted_proxies,
        on_redis_error: t.get_or("on_redis_error", OnRedisError::Local, problems),
        mode: t.get_or("mode", LimitMode::Exact, problems),
        sync_interval,
    }
}

fn read_cache(t: &mut Table, env: Env<'_>, problems: &mut Problems) -> CacheConfig {
    let mut default_ttl = t.get_or("default_ttl", Duration::from_secs(60), problems);
    if let Some(text) = env("CACHE_DEFAULT_TTL") {
        match text
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .or_else(|| super::parse_duration(&text))
        {
            Some(ttl) => default_ttl = ttl,
            None => problems.add(
                "CACHE_DEFAULT_TTL",
                format!("expected seconds or a duration, got \"{text}\""),
            ),
        }
    }
    let routes = t.tables("routes", problems, |route, problems| {
        let prefix: Option<String> = route.get("path", problems);
        let ttl: Option<Duration> = route.get("ttl", problems);
        if prefix.is_none() || ttl.is_none() {
            problems.add(route.path(), "each route needs path and ttl");
        }
        Some(CacheRoute {
            path: prefix?,
            ttl: ttl?,
        })
    });
    let max_entry_bytes: u32 = t.get_or("max_entry_bytes", 1 << 20, problems);
    let max_bytes: u64 = t.get_or("max_bytes", 16 << 20, problems);
    if u64::from(max_entry_bytes) > max_bytes {
        problems.add(
            &t.path_of("max_bytes"),
            format!(
                "must be at least max_entry_bytes ({max_entry_bytes}), got {max_bytes}: no answer could be kept"
            ),
        );
    }
    CacheConfig {
        default_ttl,
        routes,
        bypass: t.list("bypass", problems).unwrap_or_default(),
        max_entry_bytes,
        max_bytes,
    }
}

fn read_cors(t: &mut Table, problems: &mut Problems) -> CorsConfig {
    CorsConfig {
        origins: t.list("origins", problems).unwrap_or_default(),
        max_age: t.get_or("max_age", Duration::from_secs(600), problems),
    }
}

/// A string or a list of strings.
fn one_or_many(t: &mut Table, key: &str, problems: &mut Problems) -> Vec<String> {
    match t.raw(key) {
        None => Vec::new(),
        Some(Value::String(one)) => vec![one.clone()],
        Some(_) => t.list(key, problems).unwrap_or_default(),
    }
}

fn trim_newline(mut secret: Vec<u8>) -> Vec<u8> {
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::{usable_name, LimitMode};
    use crate::config::tests::load;
    use std::time::Duration;

    const LISTENER: &str = "listeners: { inbound: { app: \"http://127.0.0.1:8080\" } }\n";

    #[test]
    fn a_full_inbound_section_reads_with_env_secrets() {
        let text = format!(
            "{LISTENER}inbound:
  auth:
    jwt: {{ algorithms: [HS256], issuer: me, audience: [a, b], leeway: 5s }}
    api_keys: {{ header: x-key }}
    exempt: [/health, /auth/*]
    revocation: true
    logout: /auth/logout
    rules: [{{ path: /admin, methods: [get], roles: [admin] }}]
  cors: {{ origins: [\"https://a.example\"] }}"
        );
        let config = load(
            &text,
            &[
                ("JWT_SECRET", "s3cret"),
                ("OUTRIGGER_API_KEYS", "ci:k1:deploy|read, bot:k2"),
            ],
        )
        .expect("valid");
        let inbound = config.inbound.expect("inbound");
        let jwt = inbound.auth.jwt.expect("jwt");
        assert_eq!(jwt.audience, vec!["a", "b"]);
        assert_eq!(jwt.issuer, vec!["me"]);
        let keys = inbound.auth.api_keys.expect("keys");
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(keys.keys[0].roles, vec!["deploy", "read"]);
        assert_eq!(inbound.auth.rules[0].methods, vec!["GET"]);
        let shown = serde_json::to_string(&jwt.keys).expect("json");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn inbound_mistakes_are_reported_by_path() {
        let text = "listeners: { inbound: { app: \"ftp://x\" } }
inbound:
  auth:
    jwt: { algorithms: [HS256, RS256, none] }
    rules: [{ roles: [a] }]";
        assert_eq!(
            load(text, &[]).unwrap_err(),
            vec![
                "listeners.inbound.app: expected http://host:port, got \"ftp://x\"",
                "inbound.auth.jwt.algorithms[2]: expected one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA, got \"none\"",
                "inbound.auth.jwt.algorithms: mix HS* with public-key algorithms and a public key could be used as an HMAC secret: pick one kind",
                "inbound.auth.jwt.secret_env: the environment variable JWT_SECRET holding the HMAC secret is not set",
                "inbound.auth.rules[0].path: required: the path prefix the rule covers",
            ]
        );
    }

    #[test]
    fn limits_are_exact_unless_a_rule_says_approximate() {
        let text = format!(
            "{LISTENER}inbound:
  rate_limit:
    roles: {{ viewer: 50 }}
    mode: approximate
    sync_interval: 250ms
    routes: [{{ path: /login, limit: 5 }}, {{ path: /search, limit: 1000, mode: approximate }}]"
        );
        let config = load(&text, &[]).expect("valid");
        let limits = config.inbound.and_then(|i| i.rate_limit).expect("limits");
        assert_eq!(
            (limits.mode, limits.sync_interval),
            (LimitMode::Approximate, Duration::from_millis(250))
        );
        let modes: Vec<_> = limits.routes.iter().map(|r| r.mode).collect();
        assert_eq!(modes, [LimitMode::Exact, LimitMode::Approximate]);
        let text = format!(
            "{LISTENER}inbound: {{ rate_limit: {{ sync_interval: 0s, routes: [{{ path: /a, limit: 1, mode: roughly }}] }} }}"
        );
        assert_eq!(
            load(&text, &[]).unwrap_err(),
            vec![
                "inbound.rate_limit.routes[0].mode: expected one of exact, approximate, got \"roughly\"",
                "inbound.rate_limit.sync_interval: must be longer than 0s",
            ]
        );
    }

    #[test]
    fn trusted_proxies_are_ip_addresses() {
        let text = "listeners: { inbound: { app: \"http://127.0.0.1:8080\" } }
inbound: { trusted_proxies: [10.0.0.1, \"::1\", ingress.local] }";
        assert_eq!(
            load(text, &[]).unwrap_err(),
            vec!["inbound.trusted_proxies: \"ingress.local\" is not an IP address"]
        );
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_and_an_entry_must_fit_the_bound() {
        let config = load(&format!("{LISTENER}inbound: {{ cache: {{}} }}"), &[]).expect("valid");
        let cache = config.inbound.and_then(|i| i.cache).expect("cache");
        assert_eq!(
            (cache.max_entry_bytes, cache.max_bytes),
            (1 << 20, 16 << 20)
        );
        let text =
            format!("{LISTENER}inbound: {{ cache: {{ max_entry_bytes: 2048, max_bytes: 1024 }} }}");
        assert_eq!(
            load(&text, &[]).unwrap_err(),
            vec!["inbound.cache.max_bytes: must be at least max_entry_bytes (2048), got 1024: no answer could be kept"]
        );
    }

    #[test]
    fn keys_after_a_failed_one_are_still_known() {
        let text = format!(
            "{LISTENER}inbound:\n  auth:\n    jwt: {{ issuer: me, audience: you, roles_claim: groups }}
redis: {{ url: \"redis://file:6379/0\", pool_size: 4 }}"
        );
        assert_eq!(
            load(&text, &[("REDIS_URL", "redis://env:6379/0")]).unwrap_err(),
            vec!["inbound.auth.jwt.secret_env: the environment variable JWT_SECRET holding the HMAC secret is not set"],
            "no unknown-key errors for issuer, audience, roles_claim or redis.url"
        );
        let config = load(
            &text,
            &[("REDIS_URL", "redis://env:6379/0"), ("JWT_SECRET", "s")],
        )
        .expect("valid");
        let redis = config.redis.expect("redis");
        assert_eq!(
            (redis.topology, redis.pool_size),
            (
                crate::config::RedisTopology::Standalone {
                    url: "redis://env:6379/0".to_string()
                },
                4
            )
        );
    }

    #[test]
    fn api_key_names_roles_and_scopes_with_control_characters_are_refused() {
        let text = format!("{LISTENER}inbound: {{ auth: {{ api_keys: {{}} }} }}");
        let keys = "ok:k0, c\u{1}i:k1, bot:k2:ro\u{7f}le, etl:k3::sc\u{0}ope, ci:k4::a b";
        let refused = |entry: usize| {
            format!(
                "OUTRIGGER_API_KEYS: entry {entry} is not name:key, name:key:role1|role2 or \
                 name:key:role1|role2:scope1|scope2 (names, roles and scopes may not hold \
                 control characters)"
            )
        };
        assert_eq!(
            load(&text, &[("OUTRIGGER_API_KEYS", keys)]).unwrap_err(),
            (1..=4).map(refused).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_api_key_may_carry_scopes_after_its_roles() {
        let key = super::parse_api_key("etl:k3::reports:read|admin:write").expect("valid");
        assert_eq!((key.name.as_str(), key.key.as_str()), ("etl", "k3"));
        assert!(key.roles.is_empty());
        assert_eq!(key.scopes, ["reports:read", "admin:write"]);
        let key = super::parse_api_key("ana:k4:analyst|viewer").expect("valid");
        assert_eq!((key.roles.len(), key.scopes.len()), (2, 0));
    }

    #[test]
    fn websocket_token_places_are_checked_by_key_path() {
        let text = format!(
            "{LISTENER}inbound:\n  auth:\n    jwt: {{}}\n    websocket_token: {{ query: access_token, protocol: access_token }}"
        );
        let config = load(&text, &[("JWT_SECRET", "s")]).expect("valid");
        let token = config
            .inbound
            .and_then(|i| i.auth.websocket_token)
            .expect("set");
        assert_eq!(
            (token.query.as_deref(), token.protocol.as_deref()),
            (Some("access_token"), Some("access_token"))
        );
        let text = format!(
            "{LISTENER}inbound:\n  auth:\n    websocket_token: {{ query: \"a&b\", protocol: \"bearer token\" }}"
        );
        assert_eq!(
            load(&text, &[]).unwrap_err(),
            vec![
                "inbound.auth.websocket_token.query: \"a&b\" cannot name a query parameter: use letters, digits, '-', '_' or '.'",
                "inbound.auth.websocket_token.protocol: \"bearer token\" is not a subprotocol name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~)",
                "inbound.auth.websocket_token: needs inbound.auth.jwt: the token it carries is a bearer JWT",
            ]
        );
        let text = format!("{LISTENER}inbound:\n  auth:\n    jwt: {{}}\n    websocket_token: {{}}");
        assert_eq!(
            load(&text, &[("JWT_SECRET", "s")]).unwrap_err(),
            vec!["inbound.auth.websocket_token: name where browsers carry the token: query (a parameter), protocol (a subprotocol), or both"]
        );
    }

    #[test]
    fn an_inbound_section_needs_the_listener() {
        let errors = load("inbound: { auth: { exempt: [/x] } }", &[]).unwrap_err();
        assert_eq!(
            errors,
            vec!["inbound: needs listeners.inbound (the app to forward to)"]
        );
    }

    #[test]
    fn usable_names_have_no_control_characters_or_surrounding_whitespace() {
        for usable in ["ana", "ana maria", "auth0|5f7c", "José"] {
            assert!(usable_name(usable), "{usable:?}");
        }
        for unusable in [
            "", " ana", "ana\t", "a\u{0}b", "a\nb", "a\u{7f}", "a\u{85}b",
        ] {
            assert!(!usable_name(unusable), "{unusable:?}");
        }
    }
}
