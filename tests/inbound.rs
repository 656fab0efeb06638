//! The inbound listener: callers are authenticated (JWTs signed here with
//! real keys, API keys), authorised by role, told to the app by header, and
//! refused with a reason when they may not pass; headers a CGI-style app
//! would read as the sidecar's own, or as a proxy's, do not reach it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::apps::WsgiApp;
use support::client::{client, get_text};
use support::eventually::eventually;
use support::files::TempDir;
use support::keys::{ed25519_jwk, key_pair, KeyPair};
use support::metrics::metric;
use support::redis::RedisServer;
use support::replica::{header_seen, Replica};
use support::sidecar::{listeners_with_inbound, sidecar_from};

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({"sub": "ana", "exp": now() + 600, "iss": "issuer", "aud": "front", "roles": ["buyer"], "jti": format!("j-{}", now())})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).expect("signs")
}

fn config(app: &Replica, inbound: &str, extra: &str) -> String {
    format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{}\", timeout: 500ms }}
inbound:
{inbound}
{extra}",
        app.endpoint()
    )
}

/// Sends `GET path` to the sidecar's inbound listener with `headers`; returns status and JSON.
async fn call(
    sidecar: &outrigger::Sidecar,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let addr = sidecar.inbound_addr().expect("inbound listener");
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client().request(method, format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = request.send().await.expect("an answer");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (response.status().as_u16(), body)
}

#[actix_web::test]
async fn valid_tokens_of_each_family_reach_the_app_as_their_caller() {
    let app = Replica::start().await;
    let dir = TempDir::new();
    let (rsa, ec) = (key_pair(&dir, "rsa"), key_pair(&dir, "ec"));
    let cases: [(Algorithm, String, EncodingKey); 3] = [
        (
            Algorithm::HS256,
            "jwt: { algorithms: [HS256], issuer: issuer, audience: front }".to_string(),
            EncodingKey::from_secret(b"s3cret"),
        ),
        (
            Algorithm::RS256,
            format!(
                "jwt: {{ algorithms: [RS256], public_key_file: \"{}\" }}",
                rsa.public_path.display()
            ),
            EncodingKey::from_rsa_pem(&rsa.private_pem).expect("rsa key"),
        ),
        (
            Algorithm::ES256,
            format!(
                "jwt: {{ algorithms: [ES256], public_key_file: \"{}\" }}",
                ec.public_path.display()
            ),
            EncodingKey::from_ec_pem(&ec.private_pem).expect("ec key"),
        ),
    ];
    for (alg, jwt, key) in cases {
        let sidecar = sidecar_from(
            &config(&app, &format!("  auth: {{ {jwt} }}"), ""),
            &[("JWT_SECRET", "s3cret")],
        )
        .await;
        let token = format!("Bearer {}", sign(alg, &key, &claims(), None));
        let (status, echo) = call(
            &sidecar,
            "GET",
            "/orders",
            &[("authorization", &token), ("x-outrigger-user", "admin")],
        )
        .await;
        assert_eq!(status, 200, "{alg:?}: {echo}");
        assert_eq!(
            header_seen(&echo, "x-outrigger-user").as_deref(),
            Some("ana"),
            "{alg:?}: the caller's own header is replaced"
        );
        assert_eq!(
            header_seen(&echo, "x-outrigger-auth").as_deref(),
            Some("jwt")
        );
        assert_eq!(
            header_seen(&echo, "x-outrigger-roles").as_deref(),
            Some("buyer")
        );
        assert!(
            header_seen(&echo, "authorization").is_some(),
            "kept unless strip_authorization"
        );
    }
}

#[actix_web::test]
async fn bad_tokens_are_refused_each_with_its_reason() {
    let app = Replica::start().await;
    let dir = TempDir::new();
    let (rsa, other) = (key_pair(&dir, "rsa"), key_pair(&dir, "rsa-other"));
    let inbound = format!(
        "  auth:
    jwt: {{ algorithms: [RS256], public_key_file: \"{}\", issuer: issuer, audience: [front, mobile] }}
    revocation: true",
        rsa.public_path.display()
    );
    let sidecar = sidecar_from(&config(&app, &inbound, ""), &[]).await;
    let key = EncodingKey::from_rsa_pem(&rsa.private_pem).expect("key");
    let rs = |claims: &Value| sign(Algorithm::RS256, &key, claims, None);
    let with = |field: &str, value: Value| {
        let mut claims = claims();
        claims[field] = value;
        claims
    };
    let valid = rs(&claims());
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    let key_confusion = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa.public_pem),
        &claims(),
        None,
    );
    let other_key = EncodingKey::from_rsa_pem(&other.private_pem).expect("key");
    let revoked = rs(&with("jti", json!("to-revoke")));
    let mut revoke = client()
        .post(format!("http://{}/tokens/revoke", sidecar.admin_addr()))
        .send_json(&json!({"token": revoked}))
        .await
        .expect("admin answers");
    assert_eq!(revoke.status().as_u16(), 200, "{:?}", revoke.body().await);

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some(alg_none)),
        ("bad_signature", Some(key_confusion)),
        ("expired", Some(rs(&with("exp", json!(now() - 3600))))),
        ("not_yet_valid", Some(rs(&with("nbf", json!(now() + 3600))))),
        ("bad_issuer", Some(rs(&with("iss", json!("someone-else"))))),
        ("bad_audience", Some(rs(&with("aud", json!("desktop"))))),
        (
            "bad_signature",
            Some(sign(Algorithm::RS256, &other_key, &claims(), None)),
        ),
        ("malformed", Some(valid[..valid.len() - 1].to_string())),
        ("malformed", Some("x".repeat(32 * 1024))),
        ("revoked", Some(revoked)),
    ];
    for (reason, token) in &cases {
        let authorization = token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let (status, body) = call(&sidecar, "GET", "/orders", &headers).await;
        assert_eq!(status, 401, "{reason}: {body}");
        assert_eq!(
            body["error"].as_str(),
            Some(format!("token refused: {reason}").as_str()),
            "{body}"
        );
        assert!(body["request_id"].is_string());
    }
    let (status, _) = call(
        &sidecar,
        "GET",
        "/orders",
        &[("authorization", &format!("Bearer {valid}"))],
    )
    .await;
    assert_eq!(status, 200, "the valid token still passes");
    assert_eq!(app.hits(), 1, "no refused request reached the app");
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    for (reason, count) in [
        ("missing", 1.0),
        ("malformed", 3.0),
        ("bad_signature", 2.0),
        ("expired", 1.0),
        ("revoked", 1.0),
        ("ok", 1.0),
    ] {
        let series = format!("outrigger_jwt_validations_total{{result=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), Some(count), "{series}");
    }
}

/// Signs each of `claims` with PyJWT, in one python3 run: `alg` with `key`
/// (an HMAC secret or a private PEM). JWS-level signing, so PyJWT's own
/// claim checks do not stop the malformed claims these tests need.
fn pyjwt(alg: &str, key: &[u8], claims: &[Value]) -> Vec<String> {
    use std::io::Write;
    const SIGN: &str = "import json, sys, jwt
job = json.load(sys.stdin)
for claims in job['claims']:
    print(jwt.PyJWS().encode(json.dumps(claims).encode(), job['key'], algorithm=job['alg']))";
    let job = json!({"alg": alg, "key": String::from_utf8_lossy(key), "claims": claims});
    let mut python = std::process::Command::new("python3")
        .args(["-W", "ignore", "-c", SIGN])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.to_string().as_bytes())
        .expect("write the job");
    let output = python.wait_with_output().expect("python3 output");
    assert!(
        output.status.success(),
        "PyJWT signs (pip install pyjwt cryptography)"
    );
    let tokens: Vec<String> = String::from_utf8(output.stdout)
        .expect("tokens")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(tokens.len(), claims.len(), "a token for each set of claims");
    tokens
}

/// `claims()` with `edits` applied: a null value removes the claim.
fn claims_with(edits: &[(&str, Value)]) -> Value {
    let mut claims = claims();
    for (name, value) in edits {
        match value {
            Value::Null => {
                claims.as_object_mut().expect("object").remove(*name);
            }
            value => claims[*name] = value.clone(),
        }
    }
    claims
}

#[actix_web::test]
async fn a_configured_issuer_and_audience_are_required_of_pyjwt_tokens() {
    let app = Replica::start().await;
    let dir = TempDir::new();
    let (rsa, ec) = (key_pair(&dir, "rsa"), key_pair(&dir, "ec"));
    let families = [
        (
            "HS256",
            "secret_env: JWT_SECRET".to_string(),
            b"s3cret".to_vec(),
        ),
        (
            "RS256",
            format!("public_key_file: \"{}\"", rsa.public_path.display()),
            rsa.private_pem.clone(),
        ),
        (
            "ES256",
            format!("public_key_file: \"{}\"", ec.public_path.display()),
            ec.private_pem.clone(),
        ),
    ];
    let cases = [
        ("bad_issuer", claims_with(&[("iss", Value::Null)])),
        ("bad_issuer", claims_with(&[("iss", json!(["issuer"]))])),
        (
            "bad_issuer",
            claims_with(&[("iss", json!(["issuer", "x"]))]),
        ),
        ("bad_issuer", claims_with(&[("iss", json!(7))])),
        ("bad_issuer", claims_with(&[("iss", json!(""))])),
        ("bad_audience", claims_with(&[("aud", Value::Null)])),
        ("bad_audience", claims_with(&[("aud", json!(7))])),
        ("bad_audience", claims_with(&[("aud", json!([]))])),
    ];
    for (alg, key_config, key) in &families {
        let inbound = format!(
            "  auth: {{ jwt: {{ algorithms: [{alg}], {key_config}, issuer: issuer, audience: front }} }}"
        );
        let sidecar = sidecar_from(&config(&app, &inbound, ""), &[("JWT_SECRET", "s3cret")]).await;
        let mut all: Vec<Value> = cases.iter().map(|(_, claims)| claims.clone()).collect();
        all.push(claims());
        let tokens = pyjwt(alg, key, &all);
        for ((reason, claims), token) in cases.iter().zip(&tokens) {
            let token = format!("Bearer {token}");
            let (status, body) =
                call(&sidecar, "GET", "/orders", &[("authorization", &token)]).await;
            assert_eq!(status, 401, "{alg} {claims}: {body}");
            assert_eq!(
                body["error"].as_str(),
                Some(format!("token refused: {reason}").as_str()),
                "{alg} {claims}"
            );
        }
        let token = format!("Bearer {}", tokens[cases.len()]);
        let (status, body) = call(&sidecar, "GET", "/orders", &[("authorization", &token)]).await;
        assert_eq!(status, 200, "{alg}: the complete token passes: {body}");
    }
    assert_eq!(
        app.hits(),
        families.len(),
        "no refused token reached the app"
    );
}

#[actix_web::test]
async fn tokens_without_a_usable_subject_or_with_unusable_roles_are_refused_not_pooled() {
    let app = Replica::start().await;
    let dir = TempDir::new();
    let rsa = key_pair(&dir, "rsa");
    let inbound = format!(
        "  auth: {{ jwt: {{ algorithms: [RS256], public_key_file: \"{}\" }} }}
  cache: {{ default_ttl: 60s }}
  rate_limit: {{ window: 1m, default: 2 }}",
        rsa.public_path.display()
    );
    let sidecar = sidecar_from(&config(&app, &inbound, ""), &[]).await;
    let get = |token: &str| {
        let token = format!("Bearer {token}");
        let sidecar = &sidecar;
        async move {
            let addr = sidecar.inbound_addr().expect("inbound listener");
            let mut response = client()
                .get(format!("http://{addr}/profile"))
                .insert_header(("authorization", token))
                .send()
                .await
                .expect("an answer");
            let cache = support::client::x_cache(&response);
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (response.status().as_u16(), cache, body)
        }
    };
    let unusable = [
        ("bad_subject", claims_with(&[("sub", json!(""))])),
        ("bad_subject", claims_with(&[("sub", json!(42))])),
        // The verifying library cannot read a list where it expects a string.
        ("malformed", claims_with(&[("sub", json!(["ana"]))])),
        ("bad_subject", claims_with(&[("sub", json!("ana\u{1}"))])),
        (
            "bad_subject",
            claims_with(&[("sub", json!("ana\nx-outrigger-roles: admin"))]),
        ),
        ("bad_subject", claims_with(&[("sub", json!("ana\u{85}"))])),
        ("bad_subject", claims_with(&[("sub", json!(" ana"))])),
        (
            "bad_roles",
            claims_with(&[("roles", json!(["buyer\u{7f}"]))]),
        ),
        (
            "bad_roles",
            claims_with(&[("roles", json!(["buyer,admin"]))]),
        ),
        ("bad_roles", claims_with(&[("roles", json!([7]))])),
        (
            "bad_roles",
            claims_with(&[("roles", json!({"admin": true}))]),
        ),
        ("bad_scopes", claims_with(&[("scp", json!(["read write"]))])),
        (
            "bad_scopes",
            claims_with(&[("scope", json!("read \u{1}write"))]),
        ),
    ];
    let subjectless = ["alice", "bob", "bob"];
    let mut all: Vec<Value> = subjectless
        .iter()
        .map(|name| claims_with(&[("sub", Value::Null), ("name", json!(name))]))
        .collect();
    all.extend(unusable.iter().map(|(_, claims)| claims.clone()));
    all.push(claims_with(&[("sub", json!("ana"))]));
    all.push(claims_with(&[("sub", json!("bea"))]));
    let tokens = pyjwt("RS256", &rsa.private_pem, &all);
    let (subjectless_tokens, rest) = tokens.split_at(subjectless.len());
    let (unusable_tokens, usable_tokens) = rest.split_at(unusable.len());
    // Two callers whose tokens name no subject: before, both were "" and
    // the second was served the first's cached answer, then shared its
    // rate-limit bucket.
    for (name, token) in subjectless.iter().zip(subjectless_tokens) {
        let (status, cache, body) = get(token).await;
        assert_eq!(
            (status, cache.as_deref(), body["error"].as_str()),
            (401, None, Some("token refused: bad_subject")),
            "{name}: {body}"
        );
    }
    for ((reason, claims), token) in unusable.iter().zip(unusable_tokens) {
        let (status, _, body) = get(token).await;
        assert_eq!(status, 401, "{claims}: {body}");
        assert_eq!(
            body["error"].as_str(),
            Some(format!("token refused: {reason}").as_str()),
            "{claims}"
        );
    }
    assert_eq!(app.hits(), 0, "no refused token reached the app");
    let (status, cache, body) = get(&usable_tokens[0]).await;
    assert_eq!((status, cache.as_deref()), (200, Some("MISS")), "{body}");
    assert_eq!(
        header_seen(&body, "x-outrigger-user").as_deref(),
        Some("ana")
    );
    let (status, cache, _) = get(&usable_tokens[1]).await;
    assert_eq!(
        (status, cache.as_deref()),
        (200, Some("MISS")),
        "bea is not served ana's answer"
    );
    let metrics = get_text(&format!("http://{}/metrics", sidecar.admin_addr())).await;
    for (reason, count) in [
        ("bad_subject", 9.0),
        ("bad_roles", 4.0),
        ("bad_scopes", 2.0),
    ] {
        let series = format!("outrigger_jwt_validations_total{{result=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), Some(count), "{series}");
    }
}

/// A JWKS server whose document the test can change or break.
struct Jwks {
    document: Arc<Mutex<(u16, String)>>,
    fetches: Arc<Mutex<usize>>,
    url: String,
}

impl Jwks {
    async fn start(document: Value) -> Jwks {
        let state = Arc::new(Mutex::new((200u16, document.to_string())));
        let fetches = Arc::new(Mutex::new(0usize));
        let (served, counted) = (Arc::clone(&state), Arc::clone(&fetches));
        let server = HttpServer::new(move || {
            let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
            App::new().route(
                "/jwks.json",
                web::get().to(move || {
                    let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                    async move {
                        *counted.lock().expect("lock") += 1;
                        let (status, body) = served.lock().expect("lock").clone();
                        HttpResponse::build(
                            actix_web::http::StatusCode::from_u16(status).expect("status"),
                        )
                        .content_type("application/json")
                        .body(body)
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind");
        let url = format!("http://{}/jwks.json", server.addrs()[0]);
        actix_rt::spawn(server.run());
        Jwks {
            document: state,
            fetches,
            url,
        }
    }

    fn serve(&self, status: u16, document: Value) {
        *self.document.lock().expect("lock") = (status, document.to_string());
    }

    fn fetches(&self) -> usize {
        *self.fetches.lock().expect("lock")
    }
}

#[actix_web::test]
async fn rotated_jwks_keys_are_picked_up_and_kept_through_an_outage() {
    let app = Replica::start().await;
    let dir = TempDir::new();
    let (first, second) = (key_pair(&dir, "ed25519"), key_pair(&dir, "ed25519-next"));
    let jwks = Jwks::start(json!({"keys": [ed25519_jwk("k1", &first)]})).await;
    let inbound = format!(
        "  auth:\n    jwt: {{ algorithms: [EdDSA], jwks_url: \"{}\", jwks_refresh: 1s }}",
        jwks.url
    );
    let sidecar = sidecar_from(&config(&app, &inbound, ""), &[]).await;
    let bearer = |pair: &KeyPair, kid: &str| {
        let key = EncodingKey::from_ed_pem(&pair.private_pem).expect("key");
        format!(
            "Bearer {}",
            sign(Algorithm::EdDSA, &key, &claims(), Some(kid))
        )
    };
    eventually("the first JWKS is fetched", || async {
        call(
            &sidecar,
            "GET",
            "/a",
            &[("authorization", &bearer(&first, "k1"))],
        )
        .await
        .0 == 200
    })
    .await;

    jwks.serve(
        200,
        json!({"keys": [ed25519_jwk("k1", &first), ed25519_jwk("k2", &second)]}),
    );
    let (status, body) = call(
        &sidecar,
        "GET",
        "/a",
        &[("authorization", &bearer(&second, "k2"))],
    )
    .await;
    assert_eq!(status, 200, "a new kid is fetched at once: {body}");
    let (status, body) = call(
        &sidecar,
        "GET",
        "/a",
        &[("authorization", &bearer(&second, "k9"))],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap_or_default()),
        (401, "token refused: unknown_kid")
    );

    jwks.serve(500, json!({}));
    let failed_before = jwks.fetches();
    eventually("a refresh fails against the broken JWKS server", || async {
        jwks.fetches() > failed_before
    })
    .await;
    let (status, _) = call(
        &sidecar,
        "GET",
        "/a",
        &[("authorization", &bearer(&second, "k2"))],
    )
    .await;
    assert_eq!(status, 200, "the last good keys stay in use");
}

#[actix_web::test]
async fn logout_revokes_the_token_on_every_sidecar_sharing_redis() {
    let redis = RedisServer::start().await;
    let app = Replica::start().await;
    let inbound = "  auth:
    jwt: { algorithms: [HS256] }
    exempt: [/auth/login]
    revocation: true
    logout: /auth/logout";
    let extra = format!("redis: {{ url: \"{}\", timeout: 500ms }}", redis.url());
    let env = [("JWT_SECRET", "shared-secret")];
    let one = sidecar_from(&config(&app, inbound, &extra), &env).await;
    let two = sidecar_from(&config(&app, inbound, &extra), &env).await;
    let token = format!(
        "Bearer {}",
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"shared-secret"),
            &claims(),
            None
        )
    );
    let auth = [("authorization", token.as_str())];

    assert_eq!(
        call(&one, "POST", "/auth/login", &[]).await.0,
        200,
        "login is exempt"
    );
    assert_eq!(call(&one, "GET", "/orders", &auth).await.0, 200);
    assert_eq!(call(&two, "GET", "/orders", &auth).await.0, 200);
    assert_eq!(call(&one, "POST", "/auth/logout", &auth).await.0, 200);
    let (status, body) = call(&one, "GET", "/orders", &auth).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token refused: revoked"))
    );
    assert_eq!(
        call(&two, "GET", "/orders", &auth).await.0,
        401,
        "the other sidecar sees the revocation"
    );
}

#[actix_web::test]
async fn api_keys_identify_callers_and_role_rules_apply() {
    let app = Replica::start().await;
    let inbound = "  auth:
    api_keys: { header: x-api-key }
    rules: [{ path: /deploy, methods: [POST], roles: [deploy] }]";
    let env = [("OUTRIGGER_API_KEYS", "ci:k-ci-123:deploy, bot:k-bot-456")];
    let sidecar = sidecar_from(&config(&app, inbound, ""), &env).await;
    let (status, echo) = call(
        &sidecar,
        "POST",
        "/deploy/web",
        &[("x-api-key", "k-ci-123")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        header_seen(&echo, "x-outrigger-user").as_deref(),
        Some("ci")
    );
    assert_eq!(
        header_seen(&echo, "x-outrigger-auth").as_deref(),
        Some("api_key")
    );
    assert_eq!(
        call(
            &sidecar,
            "POST",
            "/deploy/web",
            &[("x-api-key", "k-ci-124")]
        )
        .await
        .0,
        401
    );
    let (status, body) = call(
        &sidecar,
        "POST",
        "/deploy/web",
        &[("x-api-key", "k-bot-456")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        call(
            &sidecar,
            "GET",
            "/deploy/web",
            &[("x-api-key", "k-bot-456")]
        )
        .await
        .0,
        200,
        "the rule covers POST only"
    );
}

#[actix_web::test]
async fn exempt_paths_cors_and_the_app_timeout() {
    let app = Replica::start().await;
    let inbound = "  auth:
    jwt: { algorithms: [HS256] }
    exempt: [/health]
  cors: { origins: [\"https://app.example\"] }";
    let sidecar = sidecar_from(&config(&app, inbound, ""), &[("JWT_SECRET", "s")]).await;
    let (status, echo) = call(&sidecar, "GET", "/health", &[]).await;
    assert_eq!(
        (status, header_seen(&echo, "x-outrigger-auth").as_deref()),
        (200, Some("exempt"))
    );
    assert_eq!(call(&sidecar, "GET", "/orders", &[]).await.0, 401);

    let addr = sidecar.inbound_addr().expect("inbound");
    let preflight = |origin: &'static str| {
        client()
            .request(
                actix_web::http::Method::OPTIONS,
                format!("http://{addr}/orders"),
            )
            .insert_header(("origin", origin))
            .insert_header(("access-control-request-method", "PUT"))
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("answer");
    assert_eq!(allowed.status().as_u16(), 204);
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    let mut other = preflight("https://evil.example").await.expect("answer");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Refused like every other refusal: reason token, and the request id in the body.
    assert_eq!(other.status().as_u16(), 403);
    assert_eq!(
        other
            .headers()
            .get("x-outrigger")
            .and_then(|v| v.to_str().ok()),
        Some("forbidden")
    );
    let refusal: serde_json::Value = other.json().await.expect("json body");
    let request_id = other
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id");
    assert_eq!(refusal["request_id"], request_id);
    assert_eq!(refusal["service"], "app");
    let simple = client()
        .get(format!("http://{addr}/health"))
        .insert_header(("origin", "https://app.example"))
        .send()
        .await
        .expect("answer");
    assert!(simple
        .headers()
        .get("access-control-allow-origin")
        .is_some());

    app.delay(Duration::from_secs(2));
    let (status, body) = call(&sidecar, "GET", "/health", &[]).await;
    assert_eq!(status, 504, "{body}");
}

#[actix_web::test]
async fn scope_rules_and_strip_authorization_apply() {
    let app = Replica::start().await;
    let inbound = "  auth:
    jwt: { algorithms: [HS256] }
    strip_authorization: true
    rules: [{ path: /reports, scopes: [reports:read] }]";
    let sidecar = sidecar_from(&config(&app, inbound, ""), &[("JWT_SECRET", "s")]).await;
    let key = EncodingKey::from_secret(b"s");
    let with_scope = |scope: &str| {
        let mut claims = claims();
        claims["scope"] = json!(scope);
        format!("Bearer {}", sign(Algorithm::HS256, &key, &claims, None))
    };
    let (status, echo) = call(
        &sidecar,
        "GET",
        "/reports/q1",
        &[("authorization", &with_scope("reports:read other"))],
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(
        header_seen(&echo, "authorization"),
        None,
        "the token is not passed to the app"
    );
    assert_eq!(
        header_seen(&echo, "x-outrigger-scopes").as_deref(),
        Some("reports:read other")
    );
    let (status, body) = call(
        &sidecar,
        "GET",
        "/reports/q1",
        &[("authorization", &with_scope("other"))],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "/reports needs the scope reports:read");
}

#[actix_web::test]
async fn an_api_key_with_scopes_passes_a_rule_that_takes_a_role_or_its_scopes() {
    let app = Replica::start().await;
    let inbound = "  auth:
    api_keys: { header: x-api-key }
    rules:
      - { path: /reports, roles: [analyst], scopes: [reports:read], satisfy: any }
      - { path: /admin, roles: [admin], scopes: [admin:write] }";
    let keys = "etl:k-etl::reports:read|admin:write,ana:k-ana:analyst";
    let sidecar = sidecar_from(&config(&app, inbound, ""), &[("OUTRIGGER_API_KEYS", keys)]).await;
    let (status, echo) = call(&sidecar, "GET", "/reports/q1", &[("x-api-key", "k-etl")]).await;
    assert_eq!(status, 200, "a machine by its scope: {echo}");
    assert_eq!(
        header_seen(&echo, "x-outrigger-scopes").as_deref(),
        Some("reports:read admin:write")
    );
    let (status, echo) = call(&sidecar, "GET", "/reports/q1", &[("x-api-key", "k-ana")]).await;
    assert_eq!(status, 200, "a person by role: {echo}");
    let (status, body) = call(&sidecar, "GET", "/admin/x", &[("x-api-key", "k-etl")]).await;
    assert_eq!(status, 403, "without satisfy: any, both are needed: {body}");
    assert_eq!(body["error"], "/admin needs one of the roles admin");
}

#[actix_web::test]
async fn a_revocation_check_redis_cannot_answer_refuses_unless_allowed() {
    let mut redis = RedisServer::start().await;
    let app = Replica::start().await;
    let extra = format!("redis: {{ url: \"{}\", timeout: 200ms }}", redis.url());
    let auth = |on_error: &str| {
        format!("  auth:\n    jwt: {{ algorithms: [HS256] }}\n    revocation: true\n    revocation_on_error: {on_error}")
    };
    let env = [("JWT_SECRET", "s")];
    let strict = sidecar_from(&config(&app, &auth("deny"), &extra), &env).await;
    let lenient = sidecar_from(&config(&app, &auth("allow"), &extra), &env).await;
    let token = format!(
        "Bearer {}",
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"s"),
            &claims(),
            None
        )
    );
    let bearer = [("authorization", token.as_str())];
    assert_eq!(call(&strict, "GET", "/orders", &bearer).await.0, 200);
    redis.kill();
    let (status, body) = call(&strict, "GET", "/orders", &bearer).await;
    assert_eq!(
        status, 503,
        "a revoked token must never pass because Redis is down: {body}"
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("revocation store")),
        "{body}"
    );
    assert_eq!(
        call(&lenient, "GET", "/orders", &bearer).await.0,
        200,
        "revocation_on_error: allow"
    );
}

/// A sidecar in front of `app` (a WSGI app) that lets `/public` in
/// unauthenticated and wants an HS256 token (secret `s`) elsewhere;
/// `trusted` is the YAML list of `inbound.trusted_proxies`.
async fn before_wsgi(app: &WsgiApp, trusted: &str) -> outrigger::Sidecar {
    let yaml = format!(
        "{}
inbound:
  auth:
    exempt: [/public]
    jwt: {{ algorithms: [HS256], issuer: issuer, audience: front }}
  trusted_proxies: {trusted}
",
        listeners_with_inbound(app.endpoint())
    );
    sidecar_from(&yaml, &[("JWT_SECRET", "s")]).await
}

/// Sends `GET path` with `headers` (each appended, so a name may repeat) to
/// the inbound listener: the status, the `x-outrigger` reason and the JSON
/// (for the WSGI app's answer, the `environ` it saw).
async fn wsgi_call(
    sidecar: &outrigger::Sidecar,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let addr = sidecar.inbound_addr().expect("inbound listener");
    let mut request = client().get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.append_header((*name, *value));
    }
    let mut response = request.send().await.expect("an answer");
    let reason = response
        .headers()
        .get("x-outrigger")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (response.status().as_u16(), reason, body)
}

#[actix_web::test]
async fn underscore_spellings_of_the_sidecars_headers_never_reach_a_wsgi_app() {
    let app = WsgiApp::start();
    let sidecar = before_wsgi(&app, "[]").await;
    let (status, _, environ) = wsgi_call(&sidecar, "/public/x", &[]).await;
    assert_eq!(status, 200, "the app answers: {environ}");
    for name in [
        "x_outrigger_user",
        "x_outrigger_roles",
        "x_forwarded_for",
        "x_real_ip",
    ] {
        let (status, reason, environ) = wsgi_call(&sidecar, "/public/x", &[(name, "admin")]).await;
        assert_eq!(status, 400, "{name} reached the app as: {environ}");
        assert_eq!(reason.as_deref(), Some("bad_request"), "{name}");
    }
}

#[actix_web::test]
async fn forwarding_headers_reach_the_app_only_from_trusted_proxies() {
    let app = WsgiApp::start();
    let spoofed = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bank.example"),
        ("x-real-ip", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9;proto=https"),
    ];
    let untrusted = before_wsgi(&app, "[10.9.9.9]").await;
    let (status, _, environ) = wsgi_call(&untrusted, "/public/x", &spoofed).await;
    assert_eq!(status, 200, "{environ}");
    assert_eq!(environ["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{environ}");
    assert_eq!(
        environ["HTTP_X_OUTRIGGER_CLIENT_IP"], "127.0.0.1",
        "{environ}"
    );
    assert_eq!(environ["HTTP_X_FORWARDED_PROTO"], "http", "{environ}");
    for gone in ["HTTP_X_FORWARDED_HOST", "HTTP_X_REAL_IP", "HTTP_FORWARDED"] {
        assert!(
            environ.get(gone).is_none(),
            "{gone} reached the app: {environ}"
        );
    }
    let trusted = before_wsgi(&app, "[127.0.0.1]").await;
    let (status, _, environ) = wsgi_call(&trusted, "/public/x", &spoofed).await;
    assert_eq!(status, 200, "{environ}");
    assert_eq!(
        environ["HTTP_X_OUTRIGGER_CLIENT_IP"], "203.0.113.9",
        "the address before the trusted proxy, in a header of its own: {environ}"
    );
    assert_eq!(
        environ["HTTP_X_FORWARDED_FOR"], "203.0.113.9, 127.0.0.1",
        "{environ}"
    );
    assert_eq!(environ["HTTP_X_FORWARDED_PROTO"], "https", "{environ}");
    assert_eq!(
        environ["HTTP_X_FORWARDED_HOST"], "bank.example",
        "{environ}"
    );
    assert_eq!(environ["HTTP_X_REAL_IP"], "203.0.113.9", "{environ}");
    assert_eq!(
        environ["HTTP_FORWARDED"], "for=203.0.113.9;proto=https",
        "{environ}"
    );
}

#[actix_web::test]
async fn two_authorization_headers_are_refused_before_the_app() {
    let app = WsgiApp::start();
    let sidecar = before_wsgi(&app, "[]").await;
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"s"),
        &claims(),
        None,
    );
    let bearer = format!("Bearer {token}");
    let (status, _, environ) = wsgi_call(&sidecar, "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "one valid token passes: {environ}");
    for path in ["/orders", "/public/x"] {
        let (status, reason, environ) = wsgi_call(
            &sidecar,
            path,
            &[
                ("authorization", &bearer),
                ("authorization", "Bearer forged"),
            ],
        )
        .await;
        assert_eq!(status, 400, "{path}: the app saw {environ}");
        assert_eq!(reason.as_deref(), Some("bad_request"), "{path}");
    }
}
