//! Property tests over what comes from outside the process: config files,
//! bearer tokens, request targets and Kubernetes YAML. Whatever they hold,
//! nothing panics and every refusal says why. Case counts are set here for
//! CI (seconds); `PROPTEST_CASES=1000000 cargo test --test fuzz` runs longer.

use std::sync::OnceLock;
use std::time::Duration;

use actix_http::RequestHead;
use actix_web::http::header::{HeaderValue, HOST};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use outrigger::config::usable_name;
use outrigger::config::{CallTls, Config, JwtConfig, JwtKeys};
use outrigger::inbound::Verifier;
use outrigger::metrics::Metrics;
use outrigger::outbound::resolve;
use outrigger::service::ServiceTable;
use outrigger::tools::inject::{inject, MeshCerts, Options};
use proptest::prelude::*;
use serde_norway::{Mapping, Number, Value};

/// `cases` unless `PROPTEST_CASES` asks for another count.
fn cases(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text: a few arbitrary characters. (Regex strategies cost ~1 ms a
/// case unoptimised; these stay cheap enough for 10,000 cases in seconds.)
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

/// Text made of `pieces`, up to `max` of them.
fn pieces(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pieces), 0..max).prop_map(|parts| parts.concat())
}

/// Pieces of the strings configs hold: durations, addresses, URLs, names.
const WORDS: &[&str] = &[
    "0",
    "1",
    "30",
    "99999999999999999999",
    "-",
    "5",
    ".",
    "ms",
    "s",
    "m",
    "h",
    "us",
    "d",
    "127.0.0.1",
    ":",
    "8080",
    "0.0.0.0",
    "[::1]",
    "http://",
    "https://",
    "redis://",
    "/",
    "api",
    "static",
    "file",
    "registry",
    "dns",
    "kubernetes",
    "HS256",
    "RS256",
    "none",
    "round_robin",
    "p2c_ewma",
    "deny",
    "allow",
    "connect_error",
    "timeout",
    " ",
    "%",
    "\u{0}",
    "é",
    "*",
];

/// Keys inside arbitrary mappings: known ones and others.
const MAP_KEYS: &[&str] = &[
    "name",
    "endpoints",
    "path",
    "limit",
    "ttl",
    "bind",
    "app",
    "url",
    "source",
    "timeout",
    "admin",
    "roles",
    "routes",
    "x",
    "",
    "on",
    "rules",
    "scopes",
];

/// Any YAML value, a few levels deep, with the scalars configs get wrong.
fn yaml_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(Number::from(n))),
        any::<u64>().prop_map(|n| Value::Number(Number::from(n))),
        any::<f64>().prop_map(|n| Value::Number(Number::from(n))),
        text().prop_map(Value::String),
        pieces(WORDS, 5).prop_map(Value::String),
    ];
    scalar.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((prop::sample::select(MAP_KEYS), inner), 0..4).prop_map(
                |entries| {
                    let mut map = Mapping::new();
                    for (key, value) in entries {
                        map.insert(Value::String(key.to_string()), value);
                    }
                    Value::Mapping(map)
                }
            ),
        ]
    })
}

/// Known key paths (`services.0.retry.on`: a number is a list index).
const KEYS: &[&str] = &[
    "listeners",
    "listeners.outbound.bind",
    "listeners.admin.bind",
    "listeners.inbound.bind",
    "listeners.inbound.app",
    "listeners.inbound.timeout",
    "redis",
    "redis.url",
    "redis.pool_size",
    "redis.timeout",
    "discovery",
    "discovery.source",
    "discovery.refresh",
    "discovery.file.path",
    "discovery.registry.url",
    "discovery.registry.deregister_on_trip",
    "discovery.dns.suffix",
    "discovery.dns.port",
    "discovery.dns.srv",
    "discovery.dns.nameservers",
    "discovery.kubernetes.namespace",
    "defaults",
    "defaults.timeout",
    "defaults.per_try_timeout",
    "defaults.connect_timeout",
    "defaults.load_balancer",
    "defaults.circuit_breaker",
    "defaults.circuit_breaker.failure_threshold",
    "defaults.circuit_breaker.window",
    "defaults.circuit_breaker.cooldown",
    "defaults.circuit_breaker.max_cooldown",
    "defaults.circuit_breaker.success_threshold",
    "defaults.circuit_breaker.half_open_max_probes",
    "defaults.retry.attempts",
    "defaults.retry.base_delay",
    "defaults.retry.max_delay",
    "defaults.retry.jitter",
    "defaults.retry.on",
    "defaults.retry.budget_percent",
    "defaults.retry.budget_min_per_second",
    "defaults.retry.non_idempotent",
    "defaults.retry.replay_buffer_bytes",
    "defaults.concurrency.max_in_flight",
    "defaults.slow_start",
    "defaults.max_ejection_percent",
    "defaults.slow_request_threshold",
    "services",
    "services.0",
    "services.0.name",
    "services.0.endpoints",
    "services.0.endpoints.0",
    "services.0.strip_prefix",
    "services.0.timeout",
    "services.0.retry.on",
    "services.0.circuit_breaker.cooldown",
    "services.1",
    "services.1.name",
    "inbound",
    "inbound.auth.jwt.algorithms",
    "inbound.auth.jwt.secret_env",
    "inbound.auth.jwt.issuer",
    "inbound.auth.jwt.audience",
    "inbound.auth.jwt.leeway",
    "inbound.auth.jwt.jwks_url",
    "inbound.auth.jwt.roles_claim",
    "inbound.auth.api_keys.header",
    "inbound.auth.api_keys.keys_env",
    "inbound.auth.exempt",
    "inbound.auth.revocation",
    "inbound.auth.strip_authorization",
    "inbound.auth.rules",
    "inbound.cors.origins",
    "inbound.rate_limit.window",
    "inbound.rate_limit.roles",
    "inbound.rate_limit.roles.admin",
    "inbound.rate_limit.default",
    "inbound.rate_limit.routes",
    "inbound.rate_limit.routes.0.limit",
    "inbound.rate_limit.trusted_proxies",
    "inbound.rate_limit.on_redis_error",
    "inbound.concurrency.global",
    "inbound.concurrency.per_route",
    "inbound.cache.default_ttl",
    "inbound.cache.routes",
    "inbound.cache.routes.0.ttl",
    "inbound.cache.bypass",
    "inbound.cache.max_entry_bytes",
    "lifecycle.drain_delay",
    "lifecycle.shutdown_grace",
    "tracing.sample_rate",
    "tracing.otlp_endpoint",
    "access_log",
];

/// Pieces of YAML syntax and of config words.
const YAML_PIECES: &[&str] = &[
    "services",
    "listeners",
    "defaults",
    "inbound",
    "discovery",
    "name",
    "endpoints",
    "timeout",
    "retry",
    "on",
    ":",
    " ",
    "  ",
    "\n",
    "\n  ",
    "\t",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "&a",
    "*a",
    "!!str",
    "!tag",
    "|",
    ">",
    "%",
    "@",
    "`",
    "---",
    "...",
    "?",
    "1",
    "30s",
    "-1",
    "0.5",
    "1e9",
    "null",
    "~",
    "true",
    "no",
    "127.0.0.1:80",
    "\\",
    "\u{0}",
    "\u{feff}",
    "é",
    "<<: *a",
];

/// A valid config with an inbound side, to put one bad value into.
const BASE: &str = "listeners:
  outbound: { bind: \"127.0.0.1:15001\" }
  inbound: { bind: \"127.0.0.1:15006\", app: \"http://127.0.0.1:8080\" }
inbound:
  auth:
    api_keys: { header: x-api-key }
  rate_limit:
    roles: { admin: 10 }
    routes: [{ path: /login, limit: 5 }]
  cache:
    routes: [{ path: /me, ttl: 5s }]
services:
  - { name: api, endpoints: [\"127.0.0.1:9000\"] }
  - { name: web, endpoints: [\"127.0.0.1:9001\"] }
";

/// Sets `path` in `root` to `value`, making the mappings and list slots on
/// the way.
fn set(root: &mut Value, path: &str, value: Value) {
    let mut here = root;
    for segment in path.split('.') {
        here = match segment.parse::<usize>() {
            Ok(index) => {
                if !here.is_sequence() {
                    *here = Value::Sequence(Vec::new());
                }
                let Value::Sequence(list) = here else {
                    unreachable!()
                };
                while list.len() <= index {
                    list.push(Value::Mapping(Mapping::new()));
                }
                &mut list[index]
            }
            Err(_) => {
                if !here.is_mapping() {
                    *here = Value::Mapping(Mapping::new());
                }
                let Value::Mapping(map) = here else {
                    unreachable!()
                };
                map.entry(Value::String(segment.to_string()))
                    .or_insert(Value::Null)
            }
        };
    }
    *here = value;
}

/// Reads `text` as a config and checks every error names where and what.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    let env = |name: &str| (name == "OUTRIGGER_API_KEYS").then(|| "ana:k:admin".to_string());
    if let Err(errors) = Config::from_yaml(text, &env) {
        prop_assert!(!errors.is_empty(), "refused without a reason");
        for error in errors {
            prop_assert!(!error.path.trim().is_empty(), "no key path: {error:?}");
            prop_assert!(!error.message.trim().is_empty(), "no message: {error:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn any_value_at_a_known_key_is_read_or_refused_by_key_path(
        key in prop::sample::select(KEYS),
        value in yaml_value(),
        second in prop::option::of((prop::sample::select(KEYS), yaml_value())),
    ) {
        static ROOT: OnceLock<Value> = OnceLock::new();
        let mut root = ROOT
            .get_or_init(|| serde_norway::from_str(BASE).expect("the base parses"))
            .clone();
        set(&mut root, key, value);
        if let Some((key, value)) = second {
            set(&mut root, key, value);
        }
        let text = serde_norway::to_string(&root).expect("YAML prints");
        check_config(&text)?;
    }

    #[test]
    fn any_yaml_ish_text_is_read_or_refused_by_key_path(text in pieces(YAML_PIECES, 60)) {
        check_config(&text)?;
    }
}

fn verifier() -> Verifier {
    Verifier::new(JwtConfig {
        algorithms: vec![Algorithm::HS256, Algorithm::HS384],
        keys: JwtKeys::Secret(b"fuzz-secret".to_vec()),
        issuer: vec!["outrigger.fuzz".to_string()],
        audience: Vec::new(),
        leeway: Duration::from_secs(30),
        roles_claim: "roles".to_string(),
        jwks_refresh: Duration::from_secs(600),
        jwks_tls: CallTls::default(),
    })
    .expect("a verifier")
}

/// Names that mean something in a JWT header or claims, and one that does not.
const CLAIM_NAMES: &[&str] = &[
    "alg", "kid", "typ", "crit", "sub", "exp", "nbf", "iat", "iss", "aud", "jti", "roles", "role",
    "scope", "scp", "x",
];

/// Strings that mean something in a JWT.
const CLAIM_WORDS: &[&str] = &[
    "HS256",
    "HS384",
    "RS256",
    "none",
    "NONE",
    "EdDSA",
    "outrigger.fuzz",
    "admin",
    "",
    "a b",
];

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let scalar = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        text().prop_map(J::String),
        prop::sample::select(CLAIM_WORDS).prop_map(J::from),
    ];
    scalar.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            prop::collection::vec((prop::sample::select(CLAIM_NAMES), inner), 0..6).prop_map(
                |entries| {
                    J::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    )
                }
            ),
        ]
    })
}

/// A token segment: base64url of JSON, of random bytes, or random text.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|json| URL_SAFE_NO_PAD.encode(json.to_string())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| URL_SAFE_NO_PAD.encode(bytes)),
        pieces(&["A", "z", "0", "_", "-", "=", "+", "/", ".", "eyJ"], 40),
        text(),
    ]
}

proptest! {
    #![proptest_config(cases(3_000))]

    #[test]
    fn any_token_is_refused_with_a_reason(
        segments in prop::collection::vec(segment(), 0..5),
        separator in prop::sample::select(vec![".", "..", " ", ""]),
    ) {
        let token = segments.join(separator);
        let verdict = verifier().verify(&token);
        prop_assert!(verdict.is_err(), "{token:?} passed unsigned");
        if let Err(rejection) = verdict {
            prop_assert!(!rejection.label().is_empty());
        }
    }

    #[test]
    fn any_signed_claims_are_accepted_or_refused_with_a_reason(
        claims in prop::collection::vec((prop::sample::select(CLAIM_NAMES), json_value()), 0..8),
        exp in prop::option::of(prop_oneof![
            Just(jsonwebtoken::get_current_timestamp() + 600),
            any::<u64>(),
        ]),
        alg in prop::sample::select(vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
        kid in prop::option::of(text()),
    ) {
        let mut header = Header::new(alg);
        header.kid = kid;
        let mut claims: serde_json::Map<String, serde_json::Value> =
            claims.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Some(exp) = exp {
            claims.insert("exp".to_string(), exp.into());
        }
        let token = encode(&header, &claims, &EncodingKey::from_secret(b"fuzz-secret"))
            .expect("signs");
        match verifier().verify(&token) {
            Ok(accepted) => {
                prop_assert!(alg != Algorithm::HS512, "an unpinned algorithm passed");
                prop_assert!(accepted.expires_at > 0, "accepted without exp: {claims:?}");
                prop_assert!(
                    usable_name(&accepted.subject),
                    "accepted without a usable subject: {claims:?}"
                );
            }
            Err(rejection) => prop_assert!(!rejection.label().is_empty()),
        }
    }
}

/// Three services and a route naming any of them by a segment, built once.
fn table() -> &'static ServiceTable {
    static TABLE: OnceLock<ServiceTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = Config::from_yaml(
            "services:
  - { name: budgeting, endpoints: [\"127.0.0.1:1\"] }
  - { name: raw, endpoints: [\"127.0.0.1:2\"], strip_prefix: false }
  - { name: a-b, endpoints: [\"127.0.0.1:3\"] }
routes:
  - { match: { path_prefix: \"/internal/{service}/\" }, service: \"{service}\", rewrite_prefix: / }",
            &|_| None,
        )
        .expect("valid");
        ServiceTable::new(&config.services, &config.routes, &Metrics::new())
    })
}

/// Pieces of host names and paths near the configured ones.
const TARGET_PIECES: &[&str] = &[
    "budgeting",
    "raw",
    "a-b",
    "internal",
    "Budgeting",
    "RAW",
    "x",
    ".",
    "default",
    "svc",
    "cluster",
    "local",
    "SVC",
    ":",
    "80",
    "8080",
    "x1",
    "[",
    "]",
    "::1",
    "/",
    "//",
    "%2e",
    "..",
    "?",
    "=",
    "&",
    "#",
    " ",
    "é",
    "\u{0}",
];

/// A host name or path: pieces of configured ones, or any text.
fn target_part() -> impl Strategy<Value = String> {
    prop_oneof![pieces(TARGET_PIECES, 8), text()]
}

proptest! {
    #![proptest_config(cases(5_000))]

    #[test]
    fn any_request_target_routes_to_a_configured_service_or_none(
        authority in prop::option::of(target_part()),
        host in prop::option::of(target_part()),
        path in target_part(),
    ) {
        let table = table();
        let names: Vec<String> = table.iter().map(|s| s.name.to_string()).collect();
        // What the listener sees: a target that parses, a Host that is a header value.
        let mut head = RequestHead::default();
        let target = match &authority {
            Some(authority) => format!("http://{authority}/"),
            None => "/".to_string(),
        };
        let Ok(uri) = target.parse() else {
            return Ok(());
        };
        head.uri = uri;
        if let Some(value) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            head.headers.insert(HOST, value);
        }
        if let Some(route) = resolve(table, &head, &path) {
            prop_assert!(names.contains(&route.service.name.to_string()));
            prop_assert!(
                route.path == "/" || path.ends_with(&*route.path),
                "{:?} from {path:?}",
                route.path
            );
        }
    }
}

fn options(legacy: bool, retarget_service: bool) -> Options {
    Options {
        image: "outrigger:fuzz".to_string(),
        config_map: "outrigger-config".to_string(),
        service_account: None,
        legacy,
        proxy_env: true,
        retarget_service,
        // Half the cases mount the mesh identity as well.
        mesh: legacy,
        mesh_certs: MeshCerts::Csi,
    }
}

/// Kubernetes-shaped documents with arbitrary values where workloads keep
/// their pods and containers.
fn manifest() -> impl Strategy<Value = String> {
    let kinds = prop::sample::select(vec![
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
        "Pod",
        "List",
        "Service",
    ]);
    let spots = prop::sample::select(vec![
        "spec",
        "spec.template",
        "spec.template.spec",
        "spec.template.spec.containers",
        "spec.template.spec.containers.0",
        "spec.template.spec.containers.0.name",
        "spec.template.spec.containers.0.env",
        "spec.template.spec.initContainers",
        "spec.template.spec.volumes",
        "spec.template.metadata.annotations",
        "spec.containers",
        "spec.containers.0.ports",
        "spec.jobTemplate.spec.template.spec",
        "items",
        "items.0",
        "items.0.spec.containers",
        "metadata",
        "metadata.name",
    ]);
    (
        kinds,
        prop::collection::vec((spots, yaml_value()), 0..3),
        1usize..3,
    )
        .prop_map(|(kind, values, documents)| {
            let mut root: Value = serde_norway::from_str(&format!(
                "apiVersion: apps/v1
kind: {kind}
metadata: {{ name: web }}
spec:
  template:
    spec:
      containers: [{{ name: app, image: app:1 }}]
  containers: [{{ name: app, image: app:1 }}]"
            ))
            .expect("the base parses");
            for (spot, value) in values {
                set(&mut root, spot, value);
            }
            let one = serde_norway::to_string(&root).expect("YAML prints");
            vec![one; documents].join("---\n")
        })
}

proptest! {
    #![proptest_config(cases(3_000))]

    #[test]
    fn any_manifest_is_injected_once_or_refused_clearly(
        text in prop_oneof![manifest(), pieces(YAML_PIECES, 40)],
        legacy in any::<bool>(),
        retarget in any::<bool>(),
    ) {
        let options = options(legacy, retarget);
        match inject(&text, &options) {
            Ok(injected) => {
                let again = inject(&injected.yaml, &options).map(|again| again.yaml);
                prop_assert_eq!(again, Ok(injected.yaml), "injecting twice is a no-op");
            }
            Err(error) => {
                prop_assert!(error.document >= 1, "{error}");
                prop_assert!(!error.message.trim().is_empty(), "{error}");
            }
        }
    }
}
