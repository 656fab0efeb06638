//! Config hot reload: a rewritten config file moves a service to new
//! endpoints and changes an inbound rate limit under load without failing a
//! request; an invalid edit changes nothing and is reported by key path;
//! SIGHUP reloads the real binary; a key that needs a restart is reported
//! and kept while the rest applies.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::client::{get_json, get_text, post_json, status_and_header, status_of, Load};
use support::eventually::eventually;
use support::files::{swap_in, TempDir};
use support::metrics::metric;
use support::process::SidecarProcess;
use support::replica::Replica;
use support::sidecar::{listeners_with_inbound, sidecar_from_file};

/// A config on ephemeral ports with `api` at `endpoints`, the inbound
/// listener in front of `app` with a limit of `limit` per minute on
/// `/limited`, and `extra` top-level YAML.
fn config(app: &Replica, endpoints: &[&Replica], limit: u32, extra: &str) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|u| format!("\"{}\"", u.endpoint()))
        .collect();
    format!(
        "{}
inbound:
  rate_limit: {{ window: 1m, routes: [{{ path: /limited, limit: {limit} }}] }}
services:
  - {{ name: api, endpoints: [{}] }}
{extra}",
        listeners_with_inbound(app.endpoint()),
        endpoints.join(", ")
    )
}

/// `config_reloads_total{result}` as the sidecar at `admin` counts it.
async fn reloads(admin: &str, result: &str) -> f64 {
    let metrics = get_text(&format!("{admin}/metrics")).await;
    let series = format!("outrigger_config_reloads_total{{result=\"{result}\"}}");
    metric(&metrics, &series).unwrap_or(0.0)
}

/// Status and `X-RateLimit-Limit` of a GET to `url`.
async fn limited(url: &str) -> (u16, Option<String>) {
    status_and_header(url, "x-ratelimit-limit").await
}

#[actix_web::test]
async fn a_rewritten_config_moves_traffic_and_changes_a_limit_without_failing_a_request() {
    let (app, leaving, joining) = Replica::three().await;
    leaving.delay(Duration::from_millis(30));
    let dir = TempDir::new();
    let path = dir.path.join("sidecar.yaml");
    let watch = "reload: { interval: 100ms }";
    std::fs::write(&path, config(&app, &[&leaving], 1000, watch)).expect("write");
    let sidecar = sidecar_from_file(&path).await;
    let admin = format!("http://{}", sidecar.admin_addr());
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let inbound = format!(
        "http://{}/limited",
        sidecar.inbound_addr().expect("inbound")
    );
    for _ in 0..3 {
        assert_eq!(limited(&inbound).await, (200, Some("1000".to_string())));
    }

    let load = Load::start(&url, 4);
    eventually("the first replica is under load", || async {
        leaving.hits() >= 20
    })
    .await;
    swap_in(&path, &config(&app, &[&joining], 2, watch));
    eventually("the new replica gets traffic", || async {
        joining.hits() > 0
    })
    .await;
    let (status, limit) = limited(&inbound).await;
    assert_eq!(
        (status, limit.as_deref()),
        (429, Some("2")),
        "3 requests in the window are over the new limit of 2"
    );
    eventually("the removed replica drains and stops", || async {
        !get_text(&format!("{admin}/metrics"))
            .await
            .contains(&leaving.endpoint())
    })
    .await;
    let (leaving_hits, joining_hits) = (leaving.hits(), joining.hits());
    eventually("more load reaches the new replica", || async {
        joining.hits() >= joining_hits + 200
    })
    .await;
    let answers = load.stop().await;
    // At least 20 before the swap and 200 after it reached a replica.
    assert!(answers.len() >= 220, "{} requests", answers.len());
    for status in &answers {
        assert_eq!(status, &Ok(200), "every request under load succeeds");
    }
    assert_eq!(leaving.hits(), leaving_hits, "the removed replica got none");

    assert_eq!(reloads(&admin, "ok").await, 1.0);
    let (_, running) = get_json(&format!("{admin}/config")).await;
    assert_eq!(
        running["services"][0]["endpoints"],
        serde_json::json!([joining.endpoint()])
    );
    assert_eq!(running["inbound"]["rate_limit"]["routes"][0]["limit"], 2);
}

/// A sidecar started in this process from a config file that is not
/// watched (reloads are asked for with `POST /reload`): `api` at one
/// replica, the inbound listener in front of an app.
struct Manual {
    app: Replica,
    replica: Replica,
    path: std::path::PathBuf,
    sidecar: outrigger::Sidecar,
    admin: String,
    url: String,
    _dir: TempDir,
}

impl Manual {
    async fn start(extra: &str) -> Manual {
        let (app, replica) = (Replica::start().await, Replica::start().await);
        let dir = TempDir::new();
        let path = dir.path.join("sidecar.yaml");
        let text = config(
            &app,
            &[&replica],
            1000,
            &format!("reload: {{ watch: false }}\n{extra}"),
        );
        std::fs::write(&path, text).expect("write");
        let sidecar = sidecar_from_file(&path).await;
        let admin = format!("http://{}", sidecar.admin_addr());
        let url = format!("http://{}/api/x", sidecar.outbound_addr());
        Manual {
            app,
            replica,
            path,
            sidecar,
            admin,
            url,
            _dir: dir,
        }
    }

    /// The config it started with, but for `extra`.
    fn config(&self, extra: &str) -> String {
        config(
            &self.app,
            &[&self.replica],
            1000,
            &format!("reload: {{ watch: false }}\n{extra}"),
        )
    }

    /// Writes `text` to the config file and asks for a reload.
    async fn reload(&self, text: &str) -> (u16, Value) {
        swap_in(&self.path, text);
        post_json(&format!("{}/reload", self.admin)).await
    }
}

#[actix_web::test]
async fn an_invalid_edit_is_rejected_by_key_path_and_the_old_config_stays() {
    let sidecar = Manual::start("").await;
    let (admin, replica) = (&sidecar.admin, &sidecar.replica);
    let broken = sidecar
        .config("")
        .replace(&replica.endpoint(), "nowhere")
        .replace("window: 1m", "window: soon");
    let (status, report) = sidecar.reload(&broken).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["result"], "invalid");
    let errors: Vec<String> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or("?").to_string();
            format!("{}: {}", text("path"), text("message"))
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            "services[0].endpoints[0]: expected host:port like \"10.0.0.7:8080\" or https://host:port, got \"nowhere\"",
            "inbound.rate_limit.window: expected a duration like \"30s\", got \"soon\"",
        ]
    );
    assert_eq!(reloads(admin, "invalid").await, 1.0);
    assert_eq!(reloads(admin, "ok").await, 0.0);

    let hits = replica.hits();
    assert_eq!(
        status_of(&sidecar.url).await,
        Some(200),
        "still routed as before"
    );
    assert_eq!(replica.hits(), hits + 1);
    let (_, running) = get_json(&format!("{admin}/config")).await;
    assert_eq!(
        running["services"][0]["endpoints"],
        serde_json::json!([replica.endpoint()])
    );
}

#[actix_web::test]
async fn a_key_that_needs_a_restart_is_reported_and_kept_while_the_rest_applies() {
    let sidecar = Manual::start("").await;
    let (admin, url) = (&sidecar.admin, &sidecar.url);
    let echoed_path = |echo: Value| echo["path"].as_str().map(str::to_string);
    assert_eq!(echoed_path(get_json(url).await.1).as_deref(), Some("/x"));

    let edited = sidecar
        .config("")
        .replace(
            "admin: { bind: \"127.0.0.1:0\" }",
            "admin: { bind: \"127.0.0.1:1\" }",
        )
        .replace("name: api,", "name: api, strip_prefix: false,");
    let (status, report) = sidecar.reload(&edited).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["result"], "restart_needed");
    assert_eq!(
        report["restart_needed"],
        serde_json::json!(["listeners.admin.bind"])
    );
    assert_eq!(report["services"]["changed"], serde_json::json!(["api"]));
    assert_eq!(reloads(admin, "restart_needed").await, 1.0);

    assert_eq!(
        echoed_path(get_json(url).await.1).as_deref(),
        Some("/api/x"),
        "strip_prefix: false is in force"
    );
    let (_, running) = get_json(&format!("{admin}/config")).await;
    assert_eq!(
        running["listeners"]["admin"], "127.0.0.1:0",
        "the bind stays"
    );
    assert_eq!(running["services"][0]["strip_prefix"], false);
}

#[actix_web::test]
async fn new_breaker_thresholds_apply_to_a_replica_that_stays_and_keep_its_state() {
    let sidecar = Manual::start("defaults: { retry: { attempts: 1 } }").await;
    let (admin, url) = (&sidecar.admin, &sidecar.url);
    for _ in 0..3 {
        assert_eq!(status_of(url).await, Some(200));
    }

    let strict = sidecar
        .config("defaults: { retry: { attempts: 1 }, circuit_breaker: { failure_threshold: 1 } }");
    let (status, report) = sidecar.reload(&strict).await;
    assert_eq!(
        (status, &report["services"]["changed"]),
        (200, &serde_json::json!(["api"]))
    );
    sidecar.replica.answer_with(503);
    assert_eq!(status_of(url).await, Some(503));
    let key = format!("api/{}", sidecar.replica.endpoint());
    // The same replica actor counts on: it sees the successes from before
    // the reload (a worker may hold them for up to the outcome batch) and
    // the failure after it.
    eventually(
        "one failure opens the breaker of the same actor",
        || async {
            let (_, breakers) = get_json(&format!("{admin}/circuit-breakers")).await;
            let breaker = &breakers["circuit_breakers"][&key];
            breaker["state"] == "open" && breaker["total_calls"] == 4
        },
    )
    .await;
}

#[actix_web::test]
async fn sighup_reloads_the_running_binary() {
    let (first, second) = (Replica::start().await, Replica::start().await);
    let services = |replica: &Replica| {
        format!(
            "  - {{ name: api, endpoints: [\"{}\"] }}",
            replica.endpoint()
        )
    };
    let extra = "reload: { watch: false }";
    let sidecar =
        SidecarProcess::start_with(&services(&first), extra, &[("LOG_LEVEL", "warn")], None).await;
    let url = format!("http://{}/api/x", sidecar.outbound);
    let admin = format!("http://{}", sidecar.admin);
    assert_eq!(status_of(&url).await, Some(200));
    assert_eq!(first.hits(), 1);

    sidecar.rewrite_config(&services(&second), extra);
    sidecar.signal("HUP");
    eventually("the reload is counted", || async {
        reloads(&admin, "ok").await == 1.0
    })
    .await;
    assert_eq!(status_of(&url).await, Some(200));
    assert_eq!(
        (first.hits(), second.hits()),
        (1, 1),
        "the new endpoint serves"
    );
    assert_eq!(
        status_of(&format!("{admin}/live")).await,
        Some(200),
        "SIGHUP does not stop the sidecar"
    );
}

#[actix_web::test]
async fn reload_is_refused_without_a_config_file() {
    let replica = Replica::start().await;
    let sidecar = support::sidecar::sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        replica.endpoint()
    ))
    .await;
    let (status, body) = post_json(&format!("http://{}/reload", sidecar.admin_addr())).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("config file")));
}

#[actix_web::test]
async fn a_reload_changes_a_route_and_turns_the_inbound_listener_into_a_gateway() {
    let route = |rewrite: &str| {
        format!("routes: [{{ match: {{ path_prefix: /v1/ }}, service: api, rewrite_prefix: {rewrite} }}]")
    };
    let sidecar = Manual::start(&route("/old/")).await;
    let replica = &sidecar.replica;
    let routed = format!("http://{}/v1/x", sidecar.sidecar.outbound_addr());
    let echoed_path = |echo: Value| echo["path"].as_str().map(str::to_string);
    assert_eq!(
        echoed_path(get_json(&routed).await.1).as_deref(),
        Some("/old/x")
    );

    let (status, report) = sidecar.reload(&sidecar.config(&route("/new/"))).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (&report["result"], &report["routes"]),
        (&"ok".into(), &true.into())
    );
    assert_eq!(
        echoed_path(get_json(&routed).await.1).as_deref(),
        Some("/new/x")
    );

    // The inbound listener, in front of the app until now, sends to the routes instead.
    let inbound = format!(
        "http://{}/v1/y",
        sidecar.sidecar.inbound_addr().expect("inbound")
    );
    let hits = replica.hits();
    assert_eq!(
        echoed_path(get_json(&inbound).await.1).as_deref(),
        Some("/v1/y"),
        "the app answers"
    );
    assert_eq!(replica.hits(), hits);
    let gateway = sidecar.config(&route("/new/")).replace(
        &format!("app: \"http://{}\"", sidecar.app.endpoint()),
        "routes: true",
    );
    let (status, report) = sidecar.reload(&gateway).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["inbound"], serde_json::json!(["listeners.inbound"]));
    assert_eq!(
        echoed_path(get_json(&inbound).await.1).as_deref(),
        Some("/new/y")
    );
    assert_eq!(
        replica.hits(),
        hits + 1,
        "through the route to api's replica"
    );
}
