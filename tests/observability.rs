//! Observability: after a scripted scenario every counter has its value,
//! the exposition passes `promtool`, a real Prometheus scrapes it and runs
//! every dashboard query; trace context and request ids reach the upstream,
//! the response and the JSON log; a request slower than its threshold is
//! logged at warn with its id, a fast one is not; a burst of refusals is
//! logged once and then summarised with its count; the connection-pool
//! gauges follow a call and leave with their replica; sampled spans reach an
//! OTLP collector; admin `GET /` names the sidecar; labels stay bounded
//! under random traffic; the lines of libraries that log with `tracing`
//! follow the log filters.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outrigger::trace::TraceContext;
use rand::Rng;
use serde_json::Value;
use support::child::OwnedChild;
use support::client::{client, get_json, get_text, status_of};
use support::eventually::eventually;
use support::files::{swap_in, TempDir};
use support::metrics::metric;
use support::ports::closed_port;
use support::process::SidecarProcess;
use support::redis::RedisServer;
use support::replica::{header_seen, Replica};
use support::sidecar::{sidecar_from, sidecar_from_file};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The sidecar and replicas of the scripted scenario.
struct Scenario {
    sidecar: outrigger::Sidecar,
    ok: Replica,
    failing: Replica,
    _slow: Replica,
    _app: Replica,
    _redis: RedisServer,
    dead: String,
}

impl Scenario {
    async fn start() -> Scenario {
        let (ok, failing, slow, app) = (
            Replica::start().await,
            Replica::start().await,
            Replica::start().await,
            Replica::start().await,
        );
        failing.answer_with(503);
        slow.delay(Duration::from_millis(800));
        let dead = format!("127.0.0.1:{}", closed_port());
        let redis = RedisServer::start().await;
        let yaml = format!(
            "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{app}\", timeout: 2s }}
inbound:
  auth:
    jwt: {{ algorithms: [HS256] }}
    exempt: [/open, /cached, /limited]
  rate_limit: {{ routes: [{{ path: /limited, limit: 1 }}] }}
  cache: {{ default_ttl: 60s, bypass: [/open] }}
redis: {{ url: \"{redis}\", timeout: 500ms }}
services:
  - {{ name: api, endpoints: [\"{ok}\"] }}
  - name: flaky
    endpoints: [\"{failing}\"]
    retry: {{ attempts: 1 }}
    max_ejection_percent: 100
    circuit_breaker: {{ failure_threshold: 2, cooldown: 1m }}
  - {{ name: retried, endpoints: [\"{failing}\", \"{ok}\"], load_balancer: round_robin }}
  - {{ name: limited, endpoints: [\"{slow}\"], concurrency: {{ max_in_flight: 1 }} }}
  - {{ name: gone, endpoints: [\"{dead}\"], retry: {{ attempts: 1 }} }}
",
            app = app.endpoint(),
            ok = ok.endpoint(),
            failing = failing.endpoint(),
            slow = slow.endpoint(),
            redis = redis.url(),
        );
        let sidecar = sidecar_from(&yaml, &[("JWT_SECRET", "s3cret")]).await;
        Scenario {
            sidecar,
            ok,
            failing,
            _slow: slow,
            _app: app,
            _redis: redis,
            dead,
        }
    }

    fn outbound(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.outbound_addr())
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.admin_addr())
    }

    /// Some 200s, a 503 replica tripping its breaker, a retry, a 429, a
    /// connect failure and a bad JWT.
    async fn play(&self) {
        for _ in 0..3 {
            assert_eq!(status_of(&self.outbound("/api/x")).await, Some(200));
        }
        for _ in 0..2 {
            assert_eq!(status_of(&self.outbound("/flaky/x")).await, Some(503));
        }
        let state = format!(
            "outrigger_circuit_breaker_state{{replica=\"{}\",service=\"flaky\"}}",
            self.failing.endpoint()
        );
        eventually("the flaky replica's breaker opens", || async {
            metric(&get_text(&self.admin("/metrics")).await, &state) == Some(1.0)
        })
        .await;
        let (status, body) = get_json(&self.outbound("/flaky/x")).await;
        assert_eq!((status, body["error"].is_string()), (503, true), "{body}");
        // round_robin starts at the first endpoint: the 503 one, then the retry.
        assert_eq!(status_of(&self.outbound("/retried/x")).await, Some(200));
        let slow_call = actix_rt::spawn(status_of(self.outbound("/limited/x").leak()));
        eventually("the slow call holds the only slot", || async {
            metric(
                &get_text(&self.admin("/metrics")).await,
                "outrigger_concurrency_in_flight{scope=\"service\",service=\"limited\"}",
            ) == Some(1.0)
        })
        .await;
        assert_eq!(status_of(&self.outbound("/limited/x")).await, Some(429));
        assert_eq!(slow_call.await.expect("joins"), Some(200));
        assert_eq!(status_of(&self.outbound("/gone/x")).await, Some(502));
        // A gRPC call for no service gets a trailers-only UNIMPLEMENTED.
        let unimplemented = client()
            .post(self.outbound("/outrigger.test.Missing/Call"))
            .insert_header(("content-type", "application/grpc"))
            .send_body(&b"\0\0\0\0\0"[..])
            .await
            .expect("an answer");
        let code = unimplemented.headers().get("grpc-status");
        assert_eq!(code.map(|v| v.as_bytes()), Some(&b"12"[..]));
        let inbound = self.sidecar.inbound_addr().expect("inbound listener");
        let refused = client()
            .get(format!("http://{inbound}/orders"))
            .insert_header(("authorization", "Bearer not-a-jwt"))
            .send()
            .await
            .expect("an answer");
        assert_eq!(refused.status().as_u16(), 401);
        for expected in ["MISS", "HIT"] {
            let answer = client()
                .get(format!("http://{inbound}/cached"))
                .send()
                .await
                .expect("an answer");
            let cache = answer
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok());
            assert_eq!(cache, Some(expected));
        }
        for expected in [200, 429] {
            let answer = client()
                .get(format!("http://{inbound}/limited"))
                .send()
                .await
                .expect("an answer");
            assert_eq!(answer.status().as_u16(), expected);
        }
    }
}

#[actix_web::test]
async fn after_a_scripted_scenario_every_counter_has_its_value_and_promtool_passes() {
    let scenario = Scenario::start().await;
    scenario.play().await;
    let text = get_text(&scenario.admin("/metrics")).await;
    let (ok, failing, dead) = (
        scenario.ok.endpoint(),
        scenario.failing.endpoint(),
        scenario.dead.clone(),
    );
    let http = |listener: &str, service: &str, status: u16| {
        format!("outrigger_http_requests_total{{listener=\"{listener}\",method=\"GET\",service=\"{service}\",status=\"{status}\"}}")
    };
    let upstream = |service: &str, replica: &str, status: u16| {
        format!("outrigger_upstream_requests_total{{replica=\"{replica}\",service=\"{service}\",status=\"{status}\"}}")
    };
    let expected = [
        (http("outbound", "api", 200), 3.0),
        (http("outbound", "flaky", 503), 3.0),
        (http("outbound", "retried", 200), 1.0),
        (http("outbound", "limited", 200), 1.0),
        (http("outbound", "limited", 429), 1.0),
        (http("outbound", "gone", 502), 1.0),
        (http("inbound", "app", 401), 1.0),
        ("outrigger_grpc_responses_total{code=\"UNIMPLEMENTED\",listener=\"outbound\",service=\"unknown\"}".to_string(), 1.0),
        (upstream("api", &ok, 200), 3.0),
        (upstream("flaky", &failing, 503), 2.0),
        (upstream("retried", &failing, 503), 1.0),
        (upstream("retried", &ok, 200), 1.0),
        (format!("outrigger_upstream_errors_total{{kind=\"connect\",replica=\"{dead}\",service=\"gone\"}}"), 1.0),
        (format!("outrigger_circuit_breaker_state{{replica=\"{failing}\",service=\"flaky\"}}"), 1.0),
        (format!("outrigger_circuit_breaker_failures_total{{replica=\"{failing}\",service=\"flaky\"}}"), 2.0),
        (format!("outrigger_replica_healthy{{replica=\"{failing}\",service=\"flaky\"}}"), 0.0),
        (format!("outrigger_replica_healthy{{replica=\"{ok}\",service=\"api\"}}"), 1.0),
        ("outrigger_circuit_breaker_transitions_total{from=\"closed\",to=\"open\"}".to_string(), 1.0),
        ("outrigger_retries_total{outcome=\"success\",service=\"retried\"}".to_string(), 1.0),
        ("outrigger_retries_total{outcome=\"failure\",service=\"retried\"}".to_string(), 0.0),
        ("outrigger_retry_budget_exhausted_total{service=\"retried\"}".to_string(), 0.0),
        ("outrigger_concurrency_limit_reached_total{scope=\"service\",service=\"limited\"}".to_string(), 1.0),
                ("outrigger_jwt_validations_total{result=\"malformed\"}".to_string(), 1.0),
        ("outrigger_cache_hits_total".to_string(), 1.0),
        ("outrigger_cache_misses_total".to_string(), 2.0),
        ("outrigger_rate_limited_total{scope=\"route\"}".to_string(), 1.0),
        ("outrigger_redis_errors_total{op=\"cache_get\",role=\"standalone\"}".to_string(), 0.0),
        ("outrigger_http_requests_in_progress{listener=\"outbound\"}".to_string(), 0.0),
        ("outrigger_discovery_replicas{service=\"retried\"}".to_string(), 2.0),
        ("outrigger_http_request_duration_seconds_count{listener=\"outbound\",service=\"api\"}".to_string(), 3.0),
    ];
    for (series, value) in expected {
        assert_eq!(metric(&text, &series), Some(value), "{series}\n{text}");
    }
    let buckets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("outrigger_http_request_duration_seconds_bucket{listener=\"outbound\",service=\"api\""))
        .collect();
    assert!(
        buckets
            .first()
            .is_some_and(|b| b.contains("le=\"0.00005\"")),
        "{buckets:?}"
    );
    assert!(
        buckets.iter().any(|b| b.contains("le=\"10\"")),
        "{buckets:?}"
    );
    promtool_check(&text);

    let (status, about) = get_json(&scenario.admin("/")).await;
    assert_eq!(status, 200);
    assert_eq!(about["service"], "outrigger");
    assert_eq!(about["version"], env!("CARGO_PKG_VERSION"));
    assert!(about["uptime_seconds"].is_u64(), "{about}");
    assert!(
        about["links"]
            .as_array()
            .is_some_and(|l| l.contains(&"/metrics".into())),
        "{about}"
    );
}

/// `promtool check metrics` on `text`: exit 0 means no parse or lint problem.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/test.sh installs the prometheus package)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool ends");
    assert!(
        output.status.success(),
        "promtool check metrics: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Prometheus server on a free loopback port scraping `target` every
/// second, with its storage in a temp dir; killed when dropped.
struct Prometheus {
    _child: OwnedChild,
    url: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = TempDir::new();
        let config = dir.path.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
scrape_configs:
  - job_name: outrigger
    static_configs: [{{ targets: [\"{target}\"] }}]
"
            ),
        )
        .expect("write prometheus.yml");
        let port = closed_port();
        let log = std::fs::File::create(dir.path.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (scripts/test.sh installs the prometheus package)");
        Prometheus {
            _child: OwnedChild::new(child),
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Runs an instant query; the whole API answer, or null while
    /// Prometheus is not listening yet.
    async fn query(&self, expr: &str) -> Value {
        let request = client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .expect("encodes");
        match request.send().await {
            Ok(mut response) => response.json().limit(16 << 20).await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Polls `expr` until it has a result (30 s deadline: Prometheus needs
    /// a few seconds to start and scrape).
    async fn first_result(&self, expr: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.query(expr).await;
            if let Some(result) = answer["data"]["result"]
                .as_array()
                .filter(|r| !r.is_empty())
            {
                return result.clone();
            }
            assert!(Instant::now() < deadline, "no result for {expr}: {answer}");
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Every PromQL expression in the dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/dashboards/outrigger.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(queries.len() >= 13, "{queries:?}");
    queries
}

/// The `outrigger_*` metric names an expression refers to.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("outrigger_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

#[actix_web::test]
async fn prometheus_scrapes_the_tripped_breaker_and_runs_every_dashboard_query() {
    let scenario = Scenario::start().await;
    scenario.play().await;
    let prometheus = Prometheus::start(scenario.sidecar.admin_addr());
    let open = prometheus
        .first_result("outrigger_circuit_breaker_state == 1")
        .await;
    assert_eq!(open.len(), 1, "only the tripped replica: {open:?}");
    assert_eq!(open[0]["metric"]["service"], "flaky");
    assert_eq!(
        open[0]["metric"]["replica"],
        scenario.failing.endpoint().as_str()
    );
    assert_eq!(open[0]["value"][1], "1");

    let names = prometheus
        .first_result("count by (__name__) ({__name__=~\"outrigger_.+\"})")
        .await;
    let exported: HashSet<String> = names
        .iter()
        .filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_string))
        .collect();
    for expr in dashboard_queries() {
        let answer = prometheus.query(&expr).await;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        for name in metric_names(&expr) {
            assert!(
                exported.contains(name),
                "{expr}: {name} is not exported; have {exported:?}"
            );
        }
    }
}

#[actix_web::test]
async fn trace_context_and_request_ids_cross_both_listeners() {
    let scenario = Scenario::start().await;
    let inbound = scenario.sidecar.inbound_addr().expect("inbound");
    for url in [
        scenario.outbound("/api/x"),
        format!("http://{inbound}/open"),
    ] {
        let mut response = client()
            .get(&url)
            .insert_header(("traceparent", TRACEPARENT))
            .insert_header(("tracestate", "congo=t61rcWkgMzE"))
            .insert_header(("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"))
            .insert_header(("x-request-id", "req-trace-1"))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status().as_u16(), 200, "{url}");
        assert_eq!(
            response.headers().get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"req-trace-1"[..])
        );
        let echo: Value = response.json().await.expect("echo");
        let seen = |name: &str| header_seen(&echo, name);
        let sent = TraceContext::parse(TRACEPARENT.as_bytes()).expect("valid");
        let got = TraceContext::parse(seen("traceparent").expect("traceparent").as_bytes())
            .expect("a valid traceparent upstream");
        assert_eq!(got.trace_id, sent.trace_id, "{url}: same trace");
        assert_ne!(
            got.parent_id, sent.parent_id,
            "{url}: a new parent id for this hop"
        );
        assert!(got.sampled());
        assert_eq!(seen("tracestate").as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(
            seen("b3").as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        );
        assert_eq!(seen("x-request-id").as_deref(), Some("req-trace-1"));

        let mut response = client().get(&url).send().await.expect("an answer");
        let id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .expect("a request id in the response");
        let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 4);
        let echo: Value = response.json().await.expect("echo");
        assert_eq!(header_seen(&echo, "x-request-id"), Some(id));
        let fresh = header_seen(&echo, "traceparent").expect("a fresh traceparent");
        let fresh = TraceContext::parse(fresh.as_bytes()).expect("valid");
        assert_ne!(fresh.trace_id, sent.trace_id);
    }
}

/// Every line of a JSON log so far, each parsed (a line that is not JSON fails the test).
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read the log")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// The binary in front of one replica (service `api`), with `extra` in
/// its config and `env`, logging to the file at `log`.
async fn logging_to(
    log: &std::path::Path,
    extra: &str,
    env: &[(&str, &str)],
) -> (Replica, SidecarProcess) {
    let upstream = Replica::start().await;
    let services = format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    );
    let process = SidecarProcess::start_with(&services, extra, env, Some(log)).await;
    (upstream, process)
}

#[actix_web::test]
async fn json_logs_carry_the_request_id_and_the_level_changes_at_runtime() {
    let dir = TempDir::new();
    let log_path = dir.path.join("sidecar.log");
    let env = [("LOG_FORMAT", "json"), ("LOG_LEVEL", "info")];
    let (_upstream, process) = logging_to(&log_path, "access_log: true", &env).await;
    let call = |id: &'static str| {
        let url = format!("http://{}/api/x", process.outbound);
        async move {
            let mut response = client()
                .get(url)
                .insert_header(("x-request-id", id))
                .send()
                .await
                .expect("an answer");
            let echoed = response.headers().get("x-request-id").cloned();
            let echo: Value = response.json().await.expect("echo");
            assert_eq!(echoed.as_ref().map(|v| v.as_bytes()), Some(id.as_bytes()));
            assert_eq!(header_seen(&echo, "x-request-id").as_deref(), Some(id));
        }
    };
    let lines = || json_lines(&log_path);
    call("req-json-1").await;
    eventually("the access line is logged", || async {
        lines().iter().any(|l| l["request_id"] == "req-json-1")
    })
    .await;
    let access = lines()
        .into_iter()
        .find(|l| l["request_id"] == "req-json-1")
        .expect("the line");
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["target"], "outrigger::access");
    assert_eq!(access["service"], "api");
    assert_eq!(access["status"], 200);
    assert!(
        access["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{access}"
    );
    assert!(
        access["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{access}"
    );
    assert_eq!(access["message"], "outbound GET /api/x 200");

    let admin = format!("http://{}/log-level", process.admin);
    let put = |body: &'static str| {
        let admin = admin.clone();
        async move {
            client()
                .put(admin)
                .send_body(body)
                .await
                .expect("an answer")
                .status()
                .as_u16()
        }
    };
    assert_eq!(put("loud").await, 400);
    assert_eq!(put("warn").await, 200);
    let (_, current) = get_json(&admin).await;
    assert_eq!(current["filters"], "warn");
    call("req-json-2").await;
    assert_eq!(put("info").await, 200);
    call("req-json-3").await;
    eventually("logging at info again", || async {
        lines().iter().any(|l| l["request_id"] == "req-json-3")
    })
    .await;
    assert!(
        !lines().iter().any(|l| l["request_id"] == "req-json-2"),
        "nothing at info while the level was warn"
    );
    assert!(lines()
        .iter()
        .any(|l| l["message"] == "admin: log filters set to warn"));
    drop(process);
    assert!(lines().len() >= 4, "every line parsed as JSON");
}

/// A connection that opens with the HTTP/2 preface and then sends a
/// CONTINUATION frame that follows no HEADERS, a protocol error the `h2`
/// library closes it for; waits until it is closed.
async fn http2_protocol_error(to: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut io = tokio::net::TcpStream::connect(to).await.expect("connect");
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS, then CONTINUATION with END_HEADERS on stream 1.
    bytes.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    bytes.extend([0, 0, 0, 0x9, 0x4, 0, 0, 0, 1]);
    io.write_all(&bytes).await.expect("write");
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut received));
    assert!(closed.await.is_ok(), "the connection was not closed");
}

#[actix_web::test]
async fn the_http2_library_s_own_lines_follow_the_log_filters_as_they_change() {
    let dir = TempDir::new();
    let log_path = dir.path.join("sidecar.log");
    let (_upstream, process) = logging_to(&log_path, "", &[("LOG_LEVEL", "info")]).await;
    // h2 logs with `tracing`, at debug: "connection error PROTOCOL_ERROR --
    // received unexpected CONTINUATION frame".
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let said = || {
        log()
            .matches("received unexpected CONTINUATION frame")
            .count()
    };
    let admin = format!("http://{}/log-level", process.admin);
    let set_filters = |filters: &'static str| {
        let admin = admin.clone();
        async move {
            let put = client()
                .put(admin)
                .send_body(filters)
                .await
                .expect("an answer");
            assert_eq!(put.status().as_u16(), 200, "{filters}");
        }
    };
    http2_protocol_error(process.outbound).await;
    set_filters("info,h2=debug").await;
    http2_protocol_error(process.outbound).await;
    eventually(
        "h2's debug line is logged once the filters take it",
        || async { said() >= 1 },
    )
    .await;
    assert_eq!(said(), 1, "h2's debug line was logged at info");

    // With every level open to h2 and to the lines `tracing` writes for
    // spans: h2's trace events come, and not one span line (the sidecar's
    // dispatcher makes no span; without it, `tracing` would log each span
    // h2 opens as it is made, entered, left and dropped).
    set_filters("info,h2=trace,tracing::span=trace").await;
    http2_protocol_error(process.outbound).await;
    eventually("h2's trace lines are logged", || async {
        log().contains("TRACE h2::")
    })
    .await;
    assert!(
        !log().contains(" tracing::span"),
        "span lines were logged:\n{}",
        log()
    );
}

/// How many refusals of `reason` the warnings account for: each logged in
/// full (`429: ...`) is one, each summary line says how many more.
fn refusals_logged(warnings: &[Value], full: &str, summary: &str) -> usize {
    warnings
        .iter()
        .filter_map(|line| line["message"].as_str())
        .map(|message| {
            if message.contains(full) {
                1
            } else if let Some(rest) = message.strip_prefix(summary) {
                let more = rest.split(' ').next().unwrap_or_default();
                more.parse()
                    .unwrap_or_else(|_| panic!("no count: {message}"))
            } else {
                0
            }
        })
        .sum()
}

#[actix_web::test]
async fn a_burst_of_refusals_is_logged_once_then_summarised_with_its_count() {
    const REFUSED: usize = 500;
    let app = Replica::start().await;
    let dir = TempDir::new();
    let log = dir.path.join("sidecar.log");
    let sidecar = SidecarProcess::start_with_inbound(
        "  []",
        &format!("app: \"http://{}\"", app.endpoint()),
        "log_summary_interval: 2s\ninbound: { rate_limit: { window: 1m, roles: { anonymous: 2 } } }",
        &[("LOG_LEVEL", "warn"), ("LOG_FORMAT", "json")],
        Some(&log),
    )
    .await;
    let url = format!("http://{}/reports", sidecar.inbound.expect("inbound"));
    for _ in 0..2 {
        assert_eq!(status_of(&url).await, Some(200));
    }
    // One caller's burst, 50 at a time: every one over the limit.
    for _ in 0..REFUSED / 50 {
        let statuses = futures_util::future::join_all((0..50).map(|_| status_of(&url))).await;
        assert!(statuses.iter().all(|s| *s == Some(429)), "{statuses:?}");
    }
    let warnings = || -> Vec<Value> {
        json_lines(&log)
            .into_iter()
            .filter(|line| line["level"] == "WARN")
            .collect()
    };
    let (full, summary) = ("429: rate limit of 2", "rate_limited: ");
    eventually("each refusal is logged or counted in a summary", || async {
        refusals_logged(&warnings(), full, summary) == REFUSED
    })
    .await;
    let warnings = warnings();
    assert!(
        warnings.len() < 10,
        "{} warnings for one burst: {warnings:#?}",
        warnings.len()
    );
    assert!(
        warnings
            .iter()
            .any(|line| line["message"].as_str().is_some_and(
                |m| m.starts_with(summary) && m.contains("for app on the inbound listener")
            )),
        "{warnings:#?}"
    );
}

#[actix_web::test]
async fn pool_gauges_follow_a_call_and_leave_with_their_replica() {
    let (slow, staying) = (Replica::start().await, Replica::start().await);
    slow.delay(Duration::from_millis(600));
    let dir = TempDir::new();
    let path = dir.path.join("sidecar.yaml");
    let file = |endpoints: &[&Replica]| {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|r| format!("\"{}\"", r.endpoint()))
            .collect();
        format!(
            "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}
workers: 2
reload: {{ interval: 100ms }}
services:
  - {{ name: api, endpoints: [{}], load_balancer: round_robin, slow_start: 0s }}",
            endpoints.join(", ")
        )
    };
    std::fs::write(&path, file(&[&slow])).expect("write");
    let sidecar = sidecar_from_file(&path).await;
    let metrics = format!("http://{}/metrics", sidecar.admin_addr());
    let gauge = |state: &'static str| {
        let metrics = metrics.clone();
        let series = format!(
            "outrigger_upstream_connections{{replica=\"{}\",service=\"api\",state=\"{state}\"}}",
            slow.endpoint()
        );
        async move { metric(&get_text(&metrics).await, &series) }
    };
    let exposition = get_text(&metrics).await;
    assert_eq!(
        metric(&exposition, "outrigger_upstream_connections_idle_max"),
        Some(512.0),
        "256 idle connections per replica on each of 2 workers"
    );

    let url = format!("http://{}/api/report", sidecar.outbound_addr());
    let call = actix_rt::spawn(async move { status_of(&url).await });
    eventually("the slow call's connection is in use", || async {
        gauge("in_use").await == Some(1.0)
    })
    .await;
    assert_eq!(gauge("idle").await, Some(0.0));
    assert_eq!(call.await.expect("the call ran"), Some(200));
    eventually("its connection is idle once answered", || async {
        gauge("idle").await == Some(1.0) && gauge("in_use").await == Some(0.0)
    })
    .await;

    swap_in(&path, &file(&[&staying]));
    eventually("the removed replica's series are gone", || async {
        gauge("idle").await.is_none() && gauge("in_use").await.is_none()
    })
    .await;
}

#[actix_web::test]
async fn a_request_slower_than_the_threshold_is_logged_at_warn_with_its_id() {
    let upstream = Replica::start().await;
    let dir = TempDir::new();
    let log_path = dir.path.join("sidecar.log");
    let process = SidecarProcess::start_with(
        &format!(
            "  - {{ name: api, endpoints: [\"{}\"], slow_request_threshold: 300ms }}",
            upstream.endpoint()
        ),
        "",
        &[("LOG_FORMAT", "json"), ("LOG_LEVEL", "warn")],
        Some(&log_path),
    )
    .await;
    let call = |id: &'static str| {
        let url = format!("http://{}/api/x", process.outbound);
        async move {
            let response = client()
                .get(url)
                .insert_header(("x-request-id", id))
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status(), 200, "{id}");
        }
    };
    call("req-fast").await;
    upstream.delay(Duration::from_millis(600));
    call("req-slow").await;
    eventually("the slow request is logged", || async {
        json_lines(&log_path)
            .iter()
            .any(|l| l["request_id"] == "req-slow")
    })
    .await;
    let lines = json_lines(&log_path);
    let slow = lines
        .iter()
        .find(|l| l["request_id"] == "req-slow")
        .expect("the line");
    assert_eq!(slow["level"], "WARN", "{slow}");
    let message = slow["message"].as_str().unwrap_or_default();
    let took = message
        .strip_prefix(&format!(
            "request req-slow: slow: api/{} answered after ",
            upstream.endpoint()
        ))
        .and_then(|rest| rest.strip_suffix("ms (slow_request_threshold 300ms)"))
        .and_then(|ms| ms.parse::<u64>().ok());
    assert!(took.is_some_and(|ms| ms >= 600), "{message}");
    assert!(
        !lines.iter().any(|l| l["request_id"] == "req-fast"),
        "a request under the threshold logs nothing at warn: {lines:?}"
    );
}

#[actix_web::test]
async fn random_paths_and_user_ids_do_not_grow_the_series() {
    let upstream = Replica::start().await;
    let sidecar = support::sidecar::sidecar(&format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    ))
    .await;
    let (outbound, admin) = (sidecar.outbound_addr(), sidecar.admin_addr());
    let series = || async move {
        get_text(&format!("http://{admin}/metrics"))
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("outrigger_admin"))
            .count()
    };
    let random_call = move |n: u32| async move {
        let (path, user) = {
            let mut rng = rand::rng();
            let segment: u64 = rng.random();
            let path = if n.is_multiple_of(2) {
                format!("/api/users/{segment:x}/orders?page={n}")
            } else {
                format!("/{segment:x}/nowhere")
            };
            (path, format!("user-{}", rng.random::<u32>()))
        };
        let response = client()
            .get(format!("http://{outbound}{path}"))
            .insert_header(("x-user-id", user))
            .send()
            .await
            .expect("an answer");
        assert!(matches!(response.status().as_u16(), 200 | 404));
    };
    random_call(0).await;
    random_call(1).await;
    // Outcomes reach the replica's series within a batch interval of the answer.
    let first = format!(
        "outrigger_upstream_requests_total{{replica=\"{}\",service=\"api\",status=\"200\"}}",
        upstream.endpoint()
    );
    eventually("the first call is counted at its replica", || async {
        metric(&get_text(&format!("http://{admin}/metrics")).await, &first) == Some(1.0)
    })
    .await;
    let before = series().await;
    for batch in 0..100u32 {
        let calls = (0..100).map(|i| random_call(batch * 100 + i));
        futures_util::future::join_all(calls).await;
    }
    let text = get_text(&format!("http://{admin}/metrics")).await;
    assert_eq!(series().await, before, "{text}");
    assert_eq!(
        metric(&text, "outrigger_http_requests_total{listener=\"outbound\",method=\"GET\",service=\"unknown\",status=\"404\"}"),
        Some(5001.0)
    );
}

/// An OTLP/HTTP collector on a loopback port that keeps every JSON body posted to it.
struct Collector {
    addr: SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Collector {
    fn start() -> Collector {
        use actix_web::{web, App, HttpResponse, HttpServer};
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = web::Data::from(std::sync::Arc::clone(&bodies));
        let server = HttpServer::new(move || {
            App::new().app_data(kept.clone()).route(
                "/v1/traces",
                web::post().to(
                    |body: web::Json<Value>, kept: web::Data<std::sync::Mutex<Vec<Value>>>| async move {
                        kept.lock().expect("lock").push(body.into_inner());
                        HttpResponse::Ok().json(serde_json::json!({}))
                    },
                ),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the collector");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Collector {
            addr,
            bodies,
            handle,
        }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().expect("lock");
        bodies
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

#[actix_web::test]
async fn sampled_requests_are_exported_as_otlp_spans() {
    let collector = Collector::start();
    let upstream = Replica::start().await;
    let yaml = format!(
        "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}
tracing: {{ sample_rate: 0.0, otlp_endpoint: \"http://{}/v1/traces\" }}
services: [{{ name: api, endpoints: [\"{}\"] }}]",
        collector.addr,
        upstream.endpoint()
    );
    let sidecar = sidecar_from(&yaml, &[]).await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let unsampled = TRACEPARENT.replace("-01", "-00");
    for (traceparent, id) in [
        (TRACEPARENT, "req-otlp-1"),
        (unsampled.as_str(), "req-otlp-unsampled"),
    ] {
        let mut response = client()
            .get(&url)
            .insert_header(("traceparent", traceparent))
            .insert_header(("x-request-id", id))
            .send()
            .await
            .expect("an answer");
        let echo: Value = response.json().await.expect("echo");
        if traceparent == TRACEPARENT {
            let sent = header_seen(&echo, "traceparent").expect("traceparent");
            let sent = TraceContext::parse(sent.as_bytes()).expect("valid");
            eventually("the span reaches the collector", || async {
                !collector.spans().is_empty()
            })
            .await;
            let span = &collector.spans()[0];
            assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(
                span["parentSpanId"], "00f067aa0ba902b7",
                "the caller's span"
            );
            assert_eq!(
                span["spanId"],
                outrigger::trace::hex(&sent.parent_id),
                "the span the upstream sees as its parent"
            );
            assert_eq!(span["name"], "outbound api");
            let attributes = span["attributes"].to_string();
            assert!(attributes.contains("req-otlp-1"), "{attributes}");
            assert!(attributes.contains("\"intValue\":\"200\""), "{attributes}");
        }
    }
    // Spans leave in order, so once a later sampled one arrived, the
    // unsampled request would have been exported before it.
    client()
        .get(&url)
        .insert_header(("traceparent", TRACEPARENT))
        .send()
        .await
        .expect("an answer");
    eventually("the next sampled span arrives", || async {
        collector.spans().len() >= 2
    })
    .await;
    let spans = Value::from(collector.spans()).to_string();
    assert!(!spans.contains("req-otlp-unsampled"), "{spans}");
    collector.handle.stop(false).await;
}
