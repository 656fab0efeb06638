//! The sidecar's own calls over HTTPS (issue 26, item 2): a JWKS, the
//! registry and the OTLP collector behind nginx with TLS and a certificate
//! from a test CA are reached with the `ca_file` beside their URL; with a
//! CA that did not sign the server's certificate, the JWKS is as good as
//! unreachable (its tokens refused the same way, and nothing else breaks).

mod support;

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::apps::Nginx;
use support::client::{client, post_json, send_ok};
use support::eventually::eventually;
use support::files::{swap_in, TempDir};
use support::keys::{ed25519_jwk, key_pair};
use support::ports::closed_port;
use support::registry::Registry;
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from, sidecar_from_file};
use support::tls::Certificates;

/// The status and `error` of a GET of `/a` on the sidecar's inbound
/// listener with `authorization`.
async fn inbound_call(sidecar: &outrigger::Sidecar, authorization: &str) -> (u16, String) {
    let addr = sidecar.inbound_addr().expect("inbound listener");
    let mut response = client()
        .get(format!("http://{addr}/a"))
        .insert_header(("authorization", authorization))
        .send()
        .await
        .expect("an answer");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let error = body["error"].as_str().unwrap_or_default().to_string();
    (response.status().as_u16(), error)
}

/// An identity provider: nginx with TLS (a certificate from `certificates`'
/// CA for 127.0.0.1) serving a JWKS at `/jwks.json`, and a token it verifies.
struct Idp {
    nginx: Nginx,
    bearer: String,
    _keys: TempDir,
}

impl Idp {
    async fn start(certificates: &Certificates) -> Idp {
        let server = certificates.server("idp", "DNS:idp.test,IP:127.0.0.1");
        let keys = TempDir::new();
        let pair = key_pair(&keys, "ed25519");
        let jwks = json!({"keys": [ed25519_jwk("k1", &pair)]});
        let nginx = Nginx::start_tls(
            &server.cert,
            &server.key,
            &format!(
                "location = /jwks.json {{ default_type application/json; return 200 '{jwks}'; }}"
            ),
        )
        .await;
        let claims = json!({"sub": "ana", "exp": jsonwebtoken::get_current_timestamp() + 600});
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".to_string());
        let key = EncodingKey::from_ed_pem(&pair.private_pem).expect("key");
        let bearer = format!("Bearer {}", encode(&header, &claims, &key).expect("signs"));
        Idp {
            nginx,
            bearer,
            _keys: keys,
        }
    }

    fn jwks_url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks.json", self.nginx.port)
    }
}

#[actix_web::test]
async fn a_jwks_over_https_verifies_tokens_with_its_ca_file_and_is_unreachable_without() {
    let certificates = Certificates::new();
    let idp = Idp::start(&certificates).await;
    let bearer = idp.bearer.clone();
    let app = Replica::start().await;
    let sidecar_for = |url: String, ca: &std::path::Path| {
        let yaml = format!(
            "{}\ninbound:\n  auth:\n    jwt: {{ algorithms: [EdDSA], jwks_url: \"{url}\", ca_file: \"{}\" }}",
            listeners_with_inbound(app.endpoint()),
            ca.display()
        );
        async move { sidecar_from(&yaml, &[]).await }
    };
    let https = idp.jwks_url();
    let trusting = sidecar_for(https.clone(), &certificates.ca()).await;
    eventually("the JWKS is fetched over TLS", || async {
        inbound_call(&trusting, &bearer).await.0 == 200
    })
    .await;

    let untrusting = sidecar_for(https, &certificates.untrusted_ca()).await;
    let unreachable = format!("https://127.0.0.1:{}/jwks.json", closed_port());
    let unreachable = sidecar_for(unreachable, &certificates.ca()).await;
    let refused = inbound_call(&untrusting, &bearer).await;
    assert_eq!(refused.0, 401, "{refused:?}");
    assert_eq!(
        refused,
        inbound_call(&unreachable, &bearer).await,
        "an untrusted JWKS server is refused as an unreachable one"
    );
    assert_eq!(
        inbound_call(&trusting, &bearer).await.0,
        200,
        "the sidecar that trusts it still verifies"
    );
}

/// An OTLP collector for the test: the bodies posted to `/v1/traces`.
struct Collector {
    addr: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Collector {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        let server = HttpServer::new(move || {
            let kept = Arc::clone(&kept);
            App::new().route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let kept = Arc::clone(&kept);
                    async move {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        kept.lock().expect("lock").push(text);
                        HttpResponse::Ok().json(json!({}))
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the collector");
        let addr = server.addrs()[0].to_string();
        actix_rt::spawn(server.run());
        Collector { addr, bodies }
    }

    fn bodies(&self) -> String {
        self.bodies.lock().expect("lock").join("\n")
    }
}

#[actix_web::test]
async fn the_registry_and_the_otlp_collector_are_reached_over_https() {
    let certificates = Certificates::new();
    let server = certificates.server("platform", "IP:127.0.0.1");
    let registry = Registry::start().await;
    let collector = Collector::start();
    // One TLS front for both: what reaches them came over a verified connection.
    let front = Nginx::start_tls(
        &server.cert,
        &server.key,
        &format!(
            "location /v1/traces {{ proxy_pass http://{}; }}\n    location / {{ proxy_pass {}; }}",
            collector.addr, registry.url
        ),
    )
    .await;
    let replica = Replica::start().await;
    registry.register("api-1", "api", &replica);
    let ca = certificates.ca();
    let yaml = format!(
        "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}
discovery:
  source: registry
  refresh: 200ms
  registry: {{ url: \"https://127.0.0.1:{port}\", ca_file: \"{ca}\" }}
tracing: {{ sample_rate: 1.0, otlp_endpoint: \"https://127.0.0.1:{port}/v1/traces\", otlp_ca_file: \"{ca}\" }}
services:
  - name: api",
        port = front.port,
        ca = ca.display()
    );
    let sidecar = sidecar_from(&yaml, &[]).await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    eventually("the registry's replica is listed", || async {
        support::client::status_of(&url).await == Some(200)
    })
    .await;
    send_ok(&url, 4).await;
    eventually("each request is counted back over TLS", || async {
        registry.increments("api-1") == replica.hits() as u64
    })
    .await;
    eventually("the spans reach the collector over TLS", || async {
        collector.bodies().contains("outbound api")
    })
    .await;
}

#[actix_web::test]
async fn a_reload_that_changes_the_jwks_ca_file_is_used_at_once() {
    let certificates = Certificates::new();
    let idp = Idp::start(&certificates).await;
    let app = Replica::start().await;
    let dir = TempDir::new();
    let path = dir.path.join("sidecar.yaml");
    let config = |ca: &std::path::Path| {
        format!(
            "reload: {{ watch: false }}\n{}\ninbound:\n  auth:\n    jwt: {{ algorithms: [EdDSA], jwks_url: \"{}\", ca_file: \"{}\" }}\n",
            listeners_with_inbound(app.endpoint()),
            idp.jwks_url(),
            ca.display()
        )
    };
    std::fs::write(&path, config(&certificates.untrusted_ca())).expect("write");
    let sidecar = sidecar_from_file(&path).await;
    assert_eq!(inbound_call(&sidecar, &idp.bearer).await.0, 401);

    swap_in(&path, &config(&certificates.ca()));
    let (status, report) = post_json(&format!("http://{}/reload", sidecar.admin_addr())).await;
    assert_eq!(status, 200, "{report}");
    eventually("the new CA file verifies the JWKS server", || async {
        inbound_call(&sidecar, &idp.bearer).await.0 == 200
    })
    .await;
}
