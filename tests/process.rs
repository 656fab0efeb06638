//! The `outrigger` binary as users run it: `check`, a start on a taken
//! port, streaming large bodies with bounded memory, its worker threads,
//! a graceful SIGTERM that loses no keep-alive request, and the requests
//! cut when the grace runs out.

mod support;

use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::web::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use support::client::client;
use support::eventually::eventually;
use support::files::TempDir;
use support::keep_alive::{Endpoint, KeepAliveLoad};
use support::process::SidecarProcess;
use support::replica::Replica;

const FIFTY_MIB: u64 = 50 * 1024 * 1024;
/// Far below 50 MiB: a sidecar that buffered a body would blow through it.
const MEMORY_BOUND: u64 = 40 * 1024 * 1024;

/// Writes `text` to `name` in `dir`, runs `outrigger check` on it with
/// `env` (and no `JWT_SECRET` unless given), asserts exit 1, and returns
/// the file's path and stderr.
fn failing_check(dir: &TempDir, name: &str, text: &str, env: &[(&str, &str)]) -> (String, String) {
    let file = dir.path.join(name);
    std::fs::write(&file, text).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["check", "--config"])
        .arg(&file)
        .env_remove("JWT_SECRET")
        .envs(env.iter().copied())
        .output()
        .expect("run check");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (file.display().to_string(), stderr)
}

#[test]
fn check_reports_every_mistake_at_its_line_and_column_by_key_path_and_exits_1() {
    let dir = TempDir::new();
    let (file, stderr) = failing_check(
        &dir,
        "bad.yaml",
        "defaults:
  circuit_breaker: { cooldown: thirty }
services:
  - name: api
    endpoints: [\"127.0.0.1:9000\"]
    load_balancer: fastest
  - name: web
    endpoints: [\"127.0.0.1:9001\"]
    retries: 3
",
        &[],
    );
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("{file}: 3 problem(s)"),
            format!("{file}:2:22: defaults.circuit_breaker.cooldown: expected a duration like \"30s\", got \"thirty\""),
            format!("{file}:6:5: services[0].load_balancer: expected one of least_load, p2c_ewma, round_robin, got \"fastest\""),
            format!("{file}:9:5: services[1].retries: unknown key"),
        ]
    );
}

#[test]
fn check_refuses_a_shadowed_route_and_one_to_an_unknown_service_by_key_path() {
    let dir = TempDir::new();
    let (file, stderr) = failing_check(
        &dir,
        "routes.yaml",
        "services:
  - { name: auth, endpoints: [\"127.0.0.1:9000\"] }
  - { name: catalog, endpoints: [\"127.0.0.1:9001\"] }
routes:
  - match: { path_prefix: \"/api/v1/{service}/\" }
    service: \"{service}\"
  - match: { path_prefix: /api/v1/auth/, methods: [GET] }
    service: auth
  - match: { path: /budget }
    service: budgeting
",
        &[],
    );
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("{file}: 2 problem(s)"),
            format!("{file}:10:5: routes[2].service: no service named \"budgeting\" in services"),
            format!("{file}:7:5: routes[1].match: never matched: routes[0] comes first and matches every request this route does; put the more specific route first"),
        ]
    );
}

#[test]
fn check_places_syntax_errors_and_missing_keys_but_not_environment_problems() {
    let dir = TempDir::new();
    let (file, stderr) = failing_check(
        &dir,
        "broken.yaml",
        "services:\n  - name: api\n    endpoints: [\"a:1\"\n",
        &[],
    );
    let place = format!("{file}:4:1: (file): not valid YAML");
    assert!(stderr.contains(&place), "no {place:?} in:\n{stderr}");

    let inbound = "listeners:\n  inbound: { app: \"http://127.0.0.1:8080\" }\ninbound:\n  auth:\n    jwt: {}\n  cache: {}\n";
    let (file, stderr) = failing_check(&dir, "env.yaml", inbound, &[("CACHE_DEFAULT_TTL", "soon")]);
    for line in [
        format!(
            "{file}:5:5: warning: inbound.auth.jwt.secret_env: the environment variable JWT_SECRET"
        ),
        format!("{file}: CACHE_DEFAULT_TTL: expected seconds or a duration, got \"soon\""),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&line)),
            "no line starting {line:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_the_shipped_config_and_summarises_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/sidecar-config/sidecar.yaml"),
        ])
        .output()
        .expect("run check");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("service budgeting: 2 endpoints"),
        "{stdout}"
    );
}

/// `outrigger check` on `file` with `args` and no `JWT_SECRET`: exit code,
/// stdout and stderr.
fn check_without_secrets(file: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["check", "--config", file])
        .args(args)
        .env_remove("JWT_SECRET")
        .env_remove("OUTRIGGER_API_KEYS")
        .output()
        .expect("run check");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

const API_GATEWAY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/sidecar-config/examples/api-gateway.yaml"
);

#[test]
fn check_warns_of_a_missing_secret_and_strict_env_refuses_it() {
    let secret_env = "inbound.auth.jwt.secret_env: the environment variable JWT_SECRET holding the HMAC secret is not set";

    let (code, stdout, stderr) = check_without_secrets(API_GATEWAY, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with(&format!("{API_GATEWAY}: ok")),
        "{stdout}"
    );
    let warning = format!("{API_GATEWAY}:20:7: warning: {secret_env}");
    assert!(
        stderr.lines().any(|l| l == warning),
        "no {warning:?} in:\n{stderr}"
    );

    let (code, stdout, stderr) = check_without_secrets(API_GATEWAY, &["--strict-env"]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("{API_GATEWAY}: 1 problem(s)"),
            format!("{API_GATEWAY}:20:7: {secret_env}"),
        ]
    );
}

#[test]
fn check_summarises_in_the_configs_own_words_with_the_inbound_listener() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["check", "--config", API_GATEWAY])
        .env("JWT_SECRET", "s3cret")
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{API_GATEWAY}: ok"),
            "  listeners: outbound 127.0.0.1:15001, inbound 0.0.0.0:15006 (app 127.0.0.1:8080), admin 0.0.0.0:15090".to_string(),
            "  inbound: auth.jwt, cache, cors".to_string(),
            "  discovery: static, refresh 30s".to_string(),
            "  service catalog: 1 endpoint, timeout 3s, least_load".to_string(),
        ]
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_taken_port_stops_the_start_with_one_line_naming_the_listener_and_exit_1() {
    let dir = TempDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let port = taken.local_addr().expect("its address").port();
    for listener in ["outbound", "inbound", "admin"] {
        let bind = |name: &str| {
            let port = if name == listener { port } else { 0 };
            format!("{name}: {{ bind: \"127.0.0.1:{port}\", app: \"http://127.0.0.1:1\" }}")
        };
        let config = dir.path.join(format!("{listener}.yaml"));
        let text = format!(
            "listeners: {{ {}, {}, {} }}\nservices: []\n",
            bind("outbound").replace(", app: \"http://127.0.0.1:1\"", ""),
            bind("inbound"),
            bind("admin").replace(", app: \"http://127.0.0.1:1\"", ""),
        );
        std::fs::write(&config, text).expect("write config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_BACKTRACE", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run outrigger");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{listener}: outrigger kept running on a taken port");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("its output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{listener}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{listener}: {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        let expected = format!(
            "outrigger cannot start: cannot listen on 127.0.0.1:{port} ({listener} listener): "
        );
        assert!(
            lines.len() == 1 && lines[0].contains(&expected),
            "{listener}: one line naming the listener, the address and the cause: {stderr}"
        );
        assert!(lines[0].contains("in use"), "{listener}: {stderr}");
    }
}

#[actix_web::test]
async fn fifty_mib_up_and_down_stream_through_with_bounded_memory() {
    let upstream = Replica::start().await;
    let sidecar = SidecarProcess::start(&format!(
        "  - {{ name: files, endpoints: [\"{}\"], timeout: 30s, per_try_timeout: 30s }}",
        upstream.endpoint()
    ))
    .await;
    let base = format!("http://{}/files", sidecar.outbound);

    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = (FIFTY_MIB / chunk.len() as u64) as usize;
    let body = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let mut upload = client()
        .post(format!("{base}/upload"))
        .send_body(SizedStream::new(FIFTY_MIB, body))
        .await
        .expect("upload answered");
    assert_eq!(upload.status().as_u16(), 200);
    let echo: Value = upload.json().await.expect("json");
    assert_eq!(echo["body_bytes"].as_u64(), Some(FIFTY_MIB));

    let mut download = client()
        .get(format!("{base}/download/{FIFTY_MIB}"))
        .send()
        .await
        .expect("download answered");
    assert_eq!(download.status().as_u16(), 200);
    let mut received = 0u64;
    while let Some(chunk) = download.next().await {
        received += chunk.expect("body chunk").len() as u64;
    }
    assert_eq!(received, FIFTY_MIB);

    let peak = sidecar.peak_rss();
    eprintln!("sidecar peak RSS: {} KiB", peak >> 10);
    assert!(peak < MEMORY_BOUND, "sidecar peak RSS {} MiB", peak >> 20);
}

/// Threads of `sidecar` that are actix arbiters (`actix-rt|system:0|arbiter:N`,
/// cut to 15 characters): its listeners' workers.
fn worker_threads(sidecar: &SidecarProcess) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", sidecar.child.id())).expect("tasks");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("actix-rt|system"))
        .count()
}

#[actix_web::test]
async fn workers_sets_the_outbound_threads_and_the_variable_overrides_it() {
    let upstream = Replica::start().await;
    let services = format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    );
    let env = [("LOG_LEVEL", "warn")];
    let three = SidecarProcess::start_with(&services, "workers: 3", &env, None).await;
    assert_eq!(
        worker_threads(&three),
        3 + 1,
        "3 outbound and the admin one"
    );
    let url = format!("http://{}/api/x", three.outbound);
    let status = client().get(url).send().await.expect("answer").status();
    assert_eq!(status.as_u16(), 200);
    let env = [("LOG_LEVEL", "warn"), ("OUTRIGGER_WORKERS", "1")];
    let one = SidecarProcess::start_with(&services, "workers: 3", &env, None).await;
    assert_eq!(worker_threads(&one), 1 + 1);
}

/// Waits up to `within` for the sidecar process to exit, and returns its code.
async fn exit_code(sidecar: &mut SidecarProcess, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = sidecar.child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not exit in {within:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let upstream = Replica::start().await;
    upstream.delay(Duration::from_millis(700));
    let services = format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    );
    let extra = "lifecycle: { drain_delay: 0s, shutdown_grace: 10s }";
    let mut sidecar =
        SidecarProcess::start_with(&services, extra, &[("LOG_LEVEL", "warn")], None).await;
    let url = format!("http://{}/api/slow", sidecar.outbound);
    let request = actix_rt::spawn(async move {
        let mut response = client().get(url).send().await.expect("an answer");
        (
            response.status().as_u16(),
            response.body().await.map(|b| b.len()).unwrap_or(0),
        )
    });
    eventually("the slow request reaches the replica", || async {
        upstream.in_flight() == 1
    })
    .await;
    sidecar.terminate();

    let (status, body_len) = request.await.expect("request task");
    assert_eq!(status, 200, "the request in flight was answered");
    assert!(body_len > 0);
    assert_eq!(
        exit_code(&mut sidecar, Duration::from_secs(15)).await,
        Some(0)
    );
}

#[actix_web::test]
async fn sigterm_under_load_turns_ready_off_at_once_and_loses_no_request() {
    let upstream = Replica::start().await;
    upstream.delay(Duration::from_millis(300));
    let services = format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    );
    let extra = "lifecycle: { drain_delay: 1s, shutdown_grace: 10s }";
    let mut sidecar =
        SidecarProcess::start_with(&services, extra, &[("LOG_LEVEL", "warn")], None).await;
    let url = format!("http://{}/api/x", sidecar.outbound);
    let ready = format!("http://{}/ready", sidecar.admin);
    // 200 requests per second, slow ones among them, until /ready says stop
    // (as an endpoints controller would); SIGTERM comes after 500 ms.
    let mut ticker = actix_rt::time::interval(Duration::from_millis(5));
    let mut requests = Vec::new();
    let started = Instant::now();
    let mut terminated_at = None;
    loop {
        ticker.tick().await;
        if terminated_at.is_none() && started.elapsed() >= Duration::from_millis(500) {
            sidecar.terminate();
            terminated_at = Some(Instant::now());
        }
        if let Some(at) = terminated_at {
            if support::client::status_of(&ready).await == Some(503) {
                assert!(
                    at.elapsed() < Duration::from_millis(500),
                    "/ready turned 503 at once"
                );
                break;
            }
        }
        let url = url.clone();
        requests.push(actix_rt::spawn(async move {
            support::client::status_of(&url).await
        }));
    }
    let sent = requests.len();
    let mut failed = 0;
    for request in requests {
        if request.await.ok().flatten() != Some(200) {
            failed += 1;
        }
    }
    assert!(sent >= 50, "only {sent} requests were sent");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert_eq!(
        exit_code(&mut sidecar, Duration::from_secs(12)).await,
        Some(0)
    );
}

#[actix_web::test]
async fn an_admin_shutdown_from_localhost_stops_the_sidecar() {
    let upstream = Replica::start().await;
    let services = format!(
        "  - {{ name: api, endpoints: [\"{}\"] }}",
        upstream.endpoint()
    );
    let extra = "lifecycle: { drain_delay: 0s }";
    let mut sidecar =
        SidecarProcess::start_with(&services, extra, &[("LOG_LEVEL", "warn")], None).await;
    let answer = client()
        .post(format!("http://{}/shutdown", sidecar.admin))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 202);
    assert_eq!(
        exit_code(&mut sidecar, Duration::from_secs(10)).await,
        Some(0)
    );
}

/// 25 keep-alive clients at each proxy listener, 1,000 requests a second
/// in all, through SIGTERM: during `drain_delay` every answer closes its
/// connection, so each client reconnects elsewhere (the app directly,
/// standing in for another pod, once `/ready` says 503) before the
/// listeners close. No request written is left unanswered, and no client's
/// connection is closed under it by the listeners' close.
#[actix_web::test]
async fn sigterm_under_keep_alive_load_loses_no_request_at_either_listener() {
    const CLIENTS: usize = 25;
    let app = Replica::start().await;
    let services = format!("  - {{ name: api, endpoints: [\"{}\"] }}", app.endpoint());
    let extra = "lifecycle: { drain_delay: 1s, shutdown_grace: 5s }
inbound: { auth: { api_keys: { header: x-api-key } } }";
    let env = [
        ("LOG_LEVEL", "warn"),
        ("OUTRIGGER_API_KEYS", "ana:k-ana:user"),
    ];
    let app_section = format!("app: \"http://{}\"", app.endpoint());
    let mut sidecar =
        SidecarProcess::start_with_inbound(&services, &app_section, extra, &env, None).await;
    let inbound = sidecar.inbound.expect("an inbound listener");
    let get =
        |path: &str, headers: &str| format!("GET {path} HTTP/1.1\r\nhost: pod\r\n{headers}\r\n");
    let elsewhere = Endpoint {
        addr: app.addr,
        request: get("/x", ""),
    };
    let loads = [
        (
            "outbound",
            Endpoint {
                addr: sidecar.outbound,
                request: get("/api/x", ""),
            },
        ),
        (
            "inbound",
            Endpoint {
                addr: inbound,
                request: get("/x", "x-api-key: k-ana\r\n"),
            },
        ),
    ]
    .map(|(name, endpoint)| {
        let every = Duration::from_millis(50);
        let load = KeepAliveLoad::start(endpoint, elsewhere.clone(), CLIENTS, every);
        (name, load)
    });
    eventually("the clients are under way", || async { app.hits() >= 300 }).await;

    sidecar.terminate();
    let ready = format!("http://{}/ready", sidecar.admin);
    eventually("/ready says 503", || async {
        support::client::status_of(&ready).await == Some(503)
    })
    .await;
    for (_, load) in &loads {
        load.take_out_first();
    }
    assert_eq!(
        exit_code(&mut sidecar, Duration::from_secs(10)).await,
        Some(0)
    );
    for (name, load) in loads {
        let tally = load.stop().await;
        eprintln!("{name}: {tally:?}");
        assert!(
            tally.answered >= 100 && tally.answered_elsewhere >= 100,
            "{name}: {tally:?}"
        );
        assert!(tally.lost.is_empty(), "{name}: requests lost: {tally:?}");
        assert_eq!(
            (tally.closed_idle, tally.refused),
            (0, 0),
            "{name}: connections the listener's close cut under clients still using them: {tally:?}"
        );
        assert!(
            tally.closing >= CLIENTS,
            "{name}: every client left on an answer that said Connection: close: {tally:?}"
        );
    }
}

/// Requests still at the app when `shutdown_grace` runs out are cut: each
/// is logged with its request id and counted, at both listeners.
#[actix_web::test]
async fn requests_cut_when_the_grace_runs_out_are_logged_by_id_and_counted() {
    let app = Replica::start().await;
    app.delay(Duration::from_secs(20));
    let services = format!(
        "  - {{ name: api, endpoints: [\"{}\"], timeout: 30s, per_try_timeout: 30s }}",
        app.endpoint()
    );
    let extra = "lifecycle: { drain_delay: 0s, shutdown_grace: 1s }
inbound: { auth: { api_keys: { header: x-api-key } } }";
    let env = [
        ("LOG_LEVEL", "warn"),
        ("OUTRIGGER_API_KEYS", "ana:k-ana:user"),
    ];
    let app_section = format!("app: \"http://{}\"", app.endpoint());
    let dir = TempDir::new();
    let log = dir.path.join("stderr.log");
    let mut sidecar =
        SidecarProcess::start_with_inbound(&services, &app_section, extra, &env, Some(&log)).await;
    let inbound = sidecar.inbound.expect("an inbound listener");
    let calls = [
        (
            format!("http://{}/api/slow", sidecar.outbound),
            "cut-outbound-7",
        ),
        (format!("http://{inbound}/slow"), "cut-inbound-7"),
    ]
    .map(|(url, id)| {
        actix_rt::spawn(async move {
            client()
                .get(url)
                .insert_header(("x-request-id", id))
                .insert_header(("x-api-key", "k-ana"))
                .send()
                .await
                .map(|answer| answer.status().as_u16())
                .map_err(|err| err.to_string())
        })
    });
    eventually("both requests reach the app", || async {
        app.in_flight() == 2
    })
    .await;
    sidecar.terminate();
    assert_eq!(
        exit_code(&mut sidecar, Duration::from_secs(10)).await,
        Some(0)
    );
    for call in calls {
        let answer = call.await.expect("request task");
        assert!(answer.is_err(), "a cut request gets no answer: {answer:?}");
    }
    let stderr = std::fs::read_to_string(&log).expect("the log");
    for (id, listener) in [("cut-outbound-7", "outbound"), ("cut-inbound-7", "inbound")] {
        assert!(
            stderr.lines().any(
                |line| line.contains(&format!("request {id}: cut unanswered"))
                    && line.contains(&format!("the {listener} listener"))
            ),
            "no cut line for {id} in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("2 requests were cut unanswered (outrigger_requests_cut_total)"),
        "no count of the cuts in:\n{stderr}"
    );
}
