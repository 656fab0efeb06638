//! Secrets stay secret: the JWT secret, API keys, the Redis password and
//! the admin token are never shown by `GET /config` nor written to the log,
//! even at debug level while they are being used.

mod support;

use support::client::{client, get_text};
use support::files::TempDir;
use support::ports::closed_port;
use support::process::SidecarProcess;
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from, JWT_OR_API_KEY};

const JWT_SECRET: &str = "jwt-secret-0f9a8b7c";
const API_KEY: &str = "api-key-5e4d3c2b";
const REDIS_PASSWORD: &str = "redis-pw-1a2b3c4d";
const ADMIN_TOKEN: &str = "admin-token-9z8y7x";

fn assert_no_secret(text: &str, where_: &str) {
    for secret in [JWT_SECRET, API_KEY, REDIS_PASSWORD, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "{where_} shows {secret}:\n{text}");
    }
}

#[actix_rt::test]
async fn get_config_redacts_every_secret() {
    let app = Replica::start().await;
    let yaml = format!(
        "{}
inbound:
{JWT_OR_API_KEY}
redis: {{ url: \"redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0\" }}
",
        listeners_with_inbound(app.endpoint()),
        closed_port()
    );
    let keys = format!("ci:{API_KEY}:deploy");
    let sidecar = sidecar_from(
        &yaml,
        &[
            ("JWT_SECRET", JWT_SECRET),
            ("OUTRIGGER_API_KEYS", &keys),
            ("OUTRIGGER_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    let shown = get_text(&format!("http://{}/config", sidecar.admin_addr())).await;
    assert_no_secret(&shown, "GET /config");
    assert!(
        shown.matches("<redacted>").count() >= 4,
        "each secret is marked redacted: {shown}"
    );
}

#[actix_rt::test]
async fn the_log_never_holds_the_admin_token_or_the_redis_password() {
    let upstream = Replica::start().await;
    let dir = TempDir::new();
    let log = dir.path.join("stderr.log");
    let redis = format!(
        "redis: {{ url: \"redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0\" }}",
        closed_port()
    );
    let process = SidecarProcess::start_with(
        &format!(
            "  - {{ name: api, endpoints: [\"{}\"] }}",
            upstream.endpoint()
        ),
        &redis,
        &[
            ("LOG_LEVEL", "debug"),
            ("OUTRIGGER_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
        Some(&log),
    )
    .await;
    let admin = format!("http://{}", process.admin);
    let reset = client()
        .post(format!("{admin}/circuit-breakers/reset"))
        .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(reset.status().as_u16(), 200);
    let api = client()
        .get(format!("http://{}/api/a", process.outbound))
        .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send()
        .await
        .expect("outbound answers");
    assert_eq!(api.status().as_u16(), 200);
    assert_no_secret(&get_text(&format!("{admin}/config")).await, "GET /config");
    drop(process);
    let written = std::fs::read_to_string(&log).expect("the log");
    assert!(
        written.contains("circuit breakers reset"),
        "the debug log was written: {written}"
    );
    assert_no_secret(&written, "the log");
}
