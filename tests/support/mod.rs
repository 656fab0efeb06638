//! Test harness: real upstream HTTP servers on ephemeral ports, the sidecar
//! started in-process or as the real binary, and `eventually` to poll with a
//! deadline instead of sleeping.
#![allow(dead_code)] // each test file uses its own part of the harness

pub mod faults;
pub mod keep_alive;
pub mod registry;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::dev::ServerHandle;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use outrigger::config::Config;
use outrigger::Sidecar;
use serde_json::{json, Value};

/// One replica: counts its requests, answers with a settable status after a
/// settable delay, echoes what it received as JSON, and streams bodies
/// (`/download/<bytes>`, `/upload`).
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    handle: ServerHandle,
}

#[derive(Default)]
struct UpstreamState {
    hits: AtomicUsize,
    /// TCP connections accepted so far.
    connections: AtomicUsize,
    /// TCP connections open now.
    open: AtomicUsize,
    in_flight: AtomicUsize,
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// `Retry-After` seconds sent with each answer; 0 for none.
    retry_after: AtomicU64,
    /// Extra headers sent with each answer.
    headers: std::sync::Mutex<Vec<(String, String)>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_at("127.0.0.1:0").await
    }

    /// An upstream bound to `addr` (any loopback address, port 0 for any).
    pub async fn start_at(addr: &str) -> Upstream {
        let state = Arc::new(UpstreamState::default());
        state.status.store(200, Ordering::SeqCst);
        let shared = web::Data::from(Arc::clone(&state));
        let counted = Arc::clone(&state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .default_service(web::to(answer))
        })
        .on_connect(move |_, extensions| {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            counted.open.fetch_add(1, Ordering::SeqCst);
            extensions.insert(OpenConnection(Arc::clone(&counted)));
        })
        .workers(1)
        .disable_signals()
        .bind(addr)
        .expect("bind an upstream");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Upstream {
            addr,
            state,
            handle,
        }
    }

    /// `host:port`, as a config endpoint.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Answer every later request with `status`.
    pub fn answer_with(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Send `name: value` with every later answer.
    pub fn answer_header(&self, name: &str, value: &str) {
        if let Ok(mut headers) = self.state.headers.lock() {
            headers.push((name.to_string(), value.to_string()));
        }
    }

    /// Send `Retry-After: <seconds>` with every later answer.
    pub fn ask_to_retry_after(&self, seconds: u64) {
        self.state.retry_after.store(seconds, Ordering::SeqCst);
    }

    /// Wait this long before answering each later request.
    pub fn delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops the server and waits until every connection it accepted is
    /// closed, so no pooled connection to it can still be answered.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
        eventually("the stopped upstream closed its connections", || async {
            self.state.open.load(Ordering::SeqCst) == 0
        })
        .await;
    }
}

/// Kept with each connection an [`Upstream`] accepts; counts it closed
/// when the server drops the connection.
struct OpenConnection(Arc<UpstreamState>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<UpstreamState>,
) -> HttpResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        // The replica is slow on purpose: this is the server under test's input.
        actix_rt::time::sleep(Duration::from_millis(delay)).await;
    }
    let path = req.path().to_string();
    let response = if let Some(size) = path.strip_prefix("/download/") {
        let size: u64 = size.parse().unwrap_or(0);
        HttpResponse::Ok().body(SizedStream::new(size, download(size)))
    } else {
        let mut received = 0usize;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => received += chunk.len(),
                Err(_) => break,
            }
        }
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        let status = state.status.load(Ordering::SeqCst);
        let mut response = HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status).expect("valid status"),
        );
        let retry_after = state.retry_after.load(Ordering::SeqCst);
        if retry_after > 0 {
            response.insert_header(("retry-after", retry_after.to_string()));
        }
        if let Ok(headers) = state.headers.lock() {
            for (name, value) in headers.iter() {
                response.insert_header((name.as_str(), value.as_str()));
            }
        }
        response.json(json!({
            "method": req.method().as_str(),
            "path": path,
            "query": req.query_string(),
            "headers": headers,
            "body_bytes": received,
        }))
    };
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// `size` bytes in 64 KiB chunks, made as they are sent.
fn download(size: u64) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK) as usize;
        Ok(chunk.slice(0..len))
    }))
}

/// The upstreams as a YAML flow list's items: `"127.0.0.1:1", "127.0.0.1:2"`.
pub fn endpoints(upstreams: &[&Upstream]) -> String {
    let list: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.endpoint()))
        .collect();
    list.join(", ")
}

/// Replaces a file the way a ConfigMap update does: a new file moved in place.
pub fn swap_in(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// A config for an in-process sidecar on ephemeral ports; `services` is the
/// YAML of the `services:` list.
pub fn config(services: &str) -> Config {
    config_with("", services)
}

/// Like [`config`], with more top-level YAML (a `discovery:` block) first.
pub fn config_with(top: &str, services: &str) -> Config {
    let text = format!(
        "listeners: {{ outbound: {{ bind: \"127.0.0.1:0\" }}, admin: {{ bind: \"127.0.0.1:0\" }} }}\n{top}\nservices:\n{services}"
    );
    Config::from_yaml(&text, &|_| None)
        .unwrap_or_else(|errors| panic!("bad test config: {errors:?}"))
}

/// The `listeners:` block of an in-process sidecar on ephemeral ports with
/// the inbound listener in front of the app at `app` (`host:port`).
pub fn listeners_with_inbound(app: impl std::fmt::Display) -> String {
    format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{app}\" }}"
    )
}

/// Starts a sidecar in this process and waits until it is ready.
pub async fn sidecar(services: &str) -> Sidecar {
    sidecar_with("", services).await
}

/// Like [`sidecar`], with more top-level YAML (a `discovery:` block).
pub async fn sidecar_with(top: &str, services: &str) -> Sidecar {
    ready(Sidecar::start(config_with(top, services)).await).await
}

/// The sidecar that started, once `/ready` answers 200.
async fn ready(started: std::io::Result<Sidecar>) -> Sidecar {
    let sidecar = started.expect("sidecar starts");
    let ready = format!("http://{}/ready", sidecar.admin_addr());
    eventually("the sidecar is ready", || async {
        status_of(&ready).await == Some(200)
    })
    .await;
    sidecar
}

/// A client for tests, with a generous timeout.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// GETs `url` and returns its status, or `None` when there was no answer.
pub async fn status_of(url: &str) -> Option<u16> {
    client()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// GETs `url` `count` times; each answer must be 200.
pub async fn send_ok(url: &str, count: usize) {
    for _ in 0..count {
        assert_eq!(status_of(url).await, Some(200));
    }
}

/// GETs `url` and returns status and JSON body.
pub async fn get_json(url: &str) -> (u16, Value) {
    let mut response = client().get(url).send().await.expect("an answer");
    let body = response.body().limit(16 << 20).await.expect("a body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (response.status().as_u16(), json)
}

/// POSTs to `url` with no body and returns status and JSON body.
pub async fn post_json(url: &str) -> (u16, Value) {
    let mut response = client().post(url).send().await.expect("an answer");
    let body = response.body().limit(16 << 20).await.expect("a body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (response.status().as_u16(), json)
}

/// Starts a sidecar in this process from the config file at `path` (no
/// environment overrides), reloadable, and waits until it is ready.
pub async fn sidecar_from_file(path: &std::path::Path) -> Sidecar {
    let file = outrigger::reload::ConfigFile::with_env(path, Arc::new(|_: &str| None));
    let config = file
        .load()
        .unwrap_or_else(|errors| panic!("bad test config: {errors:?}"));
    ready(Sidecar::start_from(config, file).await).await
}

/// GETs `url` and returns the body as text.
pub async fn get_text(url: &str) -> String {
    let mut response = client().get(url).send().await.expect("an answer");
    let body = response.body().limit(16 << 20).await.expect("a body");
    String::from_utf8_lossy(&body).into_owned()
}

/// `discovery_syncs_total{source,result}` as the sidecar at `admin` (a base URL) counts it.
pub async fn discovery_syncs(admin: &str, source: &str, result: &str) -> f64 {
    let metrics = get_text(&format!("{admin}/metrics")).await;
    let series =
        format!("outrigger_discovery_syncs_total{{result=\"{result}\",source=\"{source}\"}}");
    metric(&metrics, &series).unwrap_or(0.0)
}

/// The replicas `/services` lists for the first service.
pub async fn first_service_replicas(admin: &str) -> Vec<Value> {
    let (_, services) = get_json(&format!("{admin}/services")).await;
    services["services"][0]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// After a failed discovery read: still ready, `url` still answers, and
/// `service` still has `replicas` replicas.
pub async fn assert_last_set_kept(admin: &str, url: &str, service: &str, replicas: usize) {
    assert_eq!(status_of(&format!("{admin}/ready")).await, Some(200));
    assert_eq!(status_of(url).await, Some(200), "the last good set is kept");
    let metrics = get_text(&format!("{admin}/metrics")).await;
    let series = format!("outrigger_discovery_replicas{{service=\"{service}\"}}");
    assert_eq!(metric(&metrics, &series), Some(replicas as f64));
}

/// The value of header `name` as an upstream echoed it (the first one).
pub fn header_seen(echo: &Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str().map(str::to_string))
}

/// The `X-Cache` header of an answer, when it has one.
pub fn x_cache<S>(response: &awc::ClientResponse<S>) -> Option<String> {
    response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Clients sending GETs to one URL back to back, until stopped.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<actix_rt::task::JoinHandle<Vec<Result<u16, String>>>>,
}

impl Load {
    /// Starts `clients` clients on `url`.
    pub fn start(url: &str, clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop) = (url.to_string(), Arc::clone(&stop));
                actix_rt::spawn(async move {
                    let client = client();
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                        statuses.push(status.map_err(|err| err.to_string()));
                    }
                    statuses
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients and returns each answer's status, or the error.
    pub async fn stop(self) -> Vec<Result<u16, String>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut answers = Vec::new();
        for task in self.tasks {
            answers.extend(task.await.expect("load task"));
        }
        answers
    }
}

/// Polls `check` every 20 ms until it holds; fails the test after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The value of one series in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The sum of every series of metric `name` whose labels include all of
/// `labels` (`[("kind", "timeout")]`), in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let labelled = series.is_empty() || series.starts_with('{');
            let matches = labels
                .iter()
                .all(|(key, value)| series.contains(&format!("{key}=\"{value}\"")));
            (labelled && matches).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Sends raw bytes as one HTTP/1.1 exchange (the request should say
/// `Connection: close`) and returns the whole answer as text.
pub fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether a raw answer stops short of the `Content-Length` its head
/// declares: an answer cut after its head left. A client that ends a body
/// at the close (as awc does) would read it as whole.
pub fn raw_cut_short(answer: &str) -> bool {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    raw_header(head, "content-length")
        .and_then(|length| length.parse::<usize>().ok())
        .is_some_and(|length| body.len() < length)
}

/// The value of header `name` (lower case) in a raw answer's head.
pub fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The JSON body of a raw answer.
pub fn raw_json(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// The real `outrigger` binary, running `run` with a config file on free
/// ports; killed when dropped.
pub struct SidecarProcess {
    pub child: std::process::Child,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// The inbound listener, when it was started with one.
    pub inbound: Option<SocketAddr>,
    /// The config file it runs from.
    pub config: std::path::PathBuf,
    listeners: Listeners,
    _dir: TempDir,
}

impl SidecarProcess {
    /// Starts the binary with `services` (the YAML of the `services:` list)
    /// and waits until `/ready` answers 200.
    pub async fn start(services: &str) -> SidecarProcess {
        SidecarProcess::start_with(services, "", &[("LOG_LEVEL", "warn")], None).await
    }

    /// Like [`SidecarProcess::start`], with `extra` top-level YAML, `env`
    /// for the process, and its stderr written to `stderr` when given.
    pub async fn start_with(
        services: &str,
        extra: &str,
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> SidecarProcess {
        SidecarProcess::launch(services, None, extra, env, stderr).await
    }

    /// Like [`SidecarProcess::start_with`], with the inbound listener on a
    /// free port, at [`SidecarProcess::inbound`]; `inbound` holds its
    /// section's keys less `bind`, as `app: "http://127.0.0.1:8080"`.
    pub async fn start_with_inbound(
        services: &str,
        inbound: &str,
        extra: &str,
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> SidecarProcess {
        SidecarProcess::launch(services, Some(inbound), extra, env, stderr).await
    }

    async fn launch(
        services: &str,
        inbound: Option<&str>,
        extra: &str,
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> SidecarProcess {
        let inbound = inbound.map(|section| (loopback_port(), section.to_string()));
        let (outbound, admin) = (loopback_port(), loopback_port());
        let dir = TempDir::new();
        let config = dir.path.join("sidecar.yaml");
        let listeners = Listeners {
            outbound,
            admin,
            inbound: inbound.clone(),
        };
        std::fs::write(&config, listeners.config(services, extra)).expect("write config");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"));
        command
            .args(["run", "--config"])
            .arg(&config)
            .envs(env.iter().copied());
        if let Some(path) = stderr {
            command.stderr(std::fs::File::create(path).expect("create the log file"));
        }
        let child = command.spawn().expect("start outrigger");
        let process = SidecarProcess {
            child,
            outbound,
            admin,
            inbound: inbound.map(|(addr, _)| addr),
            listeners,
            config,
            _dir: dir,
        };
        let ready = format!("http://{admin}/ready");
        eventually("the sidecar process is ready", || async {
            status_of(&ready).await == Some(200)
        })
        .await;
        process
    }

    /// Peak resident memory of the process so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        self.memory("VmHWM")
    }

    /// Resident memory of the process now, in bytes (VmRSS).
    pub fn rss(&self) -> u64 {
        self.memory("VmRSS")
    }

    /// A size field of `/proc/<pid>/status`, in bytes.
    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// Descriptors the process has open now (entries of `/proc/<pid>/fd`).
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// Rewrites its config file (same listeners) with `services` and `extra`.
    pub fn rewrite_config(&self, services: &str, extra: &str) {
        swap_in(&self.config, &self.listeners.config(services, extra));
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal named `name` (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }
}

/// Where a [`SidecarProcess`] listens, and its inbound section's other keys.
struct Listeners {
    outbound: SocketAddr,
    admin: SocketAddr,
    inbound: Option<(SocketAddr, String)>,
}

impl Listeners {
    /// A whole config file with these listeners, `extra` and `services`.
    fn config(&self, services: &str, extra: &str) -> String {
        let Listeners {
            outbound,
            admin,
            inbound,
        } = self;
        let inbound = inbound
            .as_ref()
            .map_or_else(String::new, |(addr, section)| {
                let keys = section.trim().trim_start_matches('{').trim_end_matches('}');
                format!(", inbound: {{ bind: \"{addr}\", {keys} }}")
            });
        format!(
            "listeners: {{ outbound: {{ bind: \"{outbound}\" }}, admin: {{ bind: \"{admin}\" }}{inbound} }}\n{extra}\nservices:\n{services}"
        )
    }
}

/// A loopback address nothing listens on (see [`closed_port`]).
fn loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], closed_port()))
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends the signal `name` (`TERM`, `STOP`...) to a child process.
fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// A scratch directory removed when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "outrigger-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Starts a sidecar in this process from a whole config (listeners given
/// as 127.0.0.1:0), with `env` as its environment, and waits until ready.
pub async fn sidecar_from(yaml: &str, env: &[(&str, &str)]) -> Sidecar {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let config = Config::from_yaml(yaml, &lookup)
        .unwrap_or_else(|errors| panic!("bad test config: {errors:?}"));
    ready(Sidecar::start(config).await).await
}

/// A key pair made by openssl for one algorithm family.
pub struct KeyPair {
    /// PEM of the private key (PKCS#8).
    pub private_pem: Vec<u8>,
    /// PEM of the public key.
    pub public_pem: Vec<u8>,
    /// Where the public PEM was written, for `public_key_file`.
    pub public_path: std::path::PathBuf,
    /// The raw public key (for an Ed25519 JWK's `x`), when asked for.
    pub raw_public: Vec<u8>,
}

/// Makes a key pair with openssl: `kind` is `rsa`, `ec` (P-256) or
/// `ed25519`, optionally with a `-suffix` to tell pairs apart.
pub fn key_pair(dir: &TempDir, kind: &str) -> KeyPair {
    let private = dir.path.join(format!("{kind}-private.pem"));
    let public = dir.path.join(format!("{kind}-public.pem"));
    let mut generate = std::process::Command::new("openssl");
    generate.arg("genpkey");
    match kind.split('-').next() {
        Some("rsa") => generate.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        Some("ec") => generate.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        _ => generate.args(["-algorithm", "ED25519"]),
    };
    let generated = generate
        .arg("-out")
        .arg(&private)
        .output()
        .expect("run openssl");
    assert!(generated.status.success(), "openssl genpkey {kind}");
    let exported = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .expect("run openssl");
    assert!(exported.status.success(), "openssl pkey -pubout");
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&public)
        .output()
        .expect("run openssl");
    let raw_public = der.stdout[der.stdout.len().saturating_sub(32)..].to_vec();
    KeyPair {
        private_pem: std::fs::read(&private).expect("private pem"),
        public_pem: std::fs::read(&public).expect("public pem"),
        public_path: public,
        raw_public,
    }
}

/// A private `redis-server` on a free loopback port, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: std::process::Child,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_on(closed_port()).await
    }

    /// Kills the server (its data goes with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server (SIGSTOP): its connections stay open and nothing
    /// on them is answered, like a Redis stalled by a fork or a full disk.
    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }

    /// Starts a fresh server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        *self = RedisServer::start_on(self.port).await;
    }

    async fn start_on(port: u16) -> RedisServer {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test.sh installs it)");
        let server = RedisServer { port, child };
        eventually("redis-server answers PING", || async { server.ping() }).await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private nginx (the Debian package's binary) serving `server` (the
/// body of one `server { }` block, without its `listen`) on a free
/// loopback port: a real server that normalises paths, as an app or a
/// front server behind the sidecar does. One process, in the foreground,
/// with every file in a temp dir; killed when dropped.
pub struct Nginx {
    pub port: u16,
    child: std::process::Child,
    _dir: TempDir,
}

impl Nginx {
    pub async fn start(server: &str) -> Nginx {
        let dir = TempDir::new();
        let port = closed_port();
        let root = dir.path.display();
        let conf = format!(
            "daemon off;
master_process off;
pid {root}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port};
    {server}
  }}
}}
"
        );
        let path = dir.path.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let binary = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|bin| std::path::Path::new(bin).exists())
            .unwrap_or("nginx");
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&dir.path)
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start nginx (scripts/test.sh installs it)");
        let nginx = Nginx {
            port,
            child,
            _dir: dir,
        };
        eventually("nginx accepts connections", || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        nginx
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WSGI app on python3's stdlib server (`wsgiref`), as CGI-style apps
/// read requests: every header as `HTTP_<NAME>`, `-` and `_` both read as
/// `_`. It answers each request with the JSON of the `HTTP_*` variables,
/// `PATH_INFO` and `REMOTE_ADDR` of its `environ`; killed when dropped.
pub struct WsgiApp {
    pub port: u16,
    child: std::process::Child,
}

const WSGI_APP: &str = r#"
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    seen = {k: v for k, v in environ.items()
            if k.startswith("HTTP_") or k in ("PATH_INFO", "REMOTE_ADDR")}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]

server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
"#;

impl WsgiApp {
    pub fn start() -> WsgiApp {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-c", WSGI_APP])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the WSGI app prints its port");
        let port = line.trim().parse().expect("a port number");
        WsgiApp { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for WsgiApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
