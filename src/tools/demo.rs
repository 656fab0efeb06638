//! `outrigger demo`: three local replicas (one flaky, one slow), a demo app,
//! and the whole sidecar in front of them on free loopback ports, with the
//! curl commands to try; `--once` runs that tour against itself instead.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};

use crate::config::Config;
use crate::Sidecar;

/// How long the slow replica takes to answer.
const SLOW_REPLICA_DELAY: Duration = Duration::from_millis(150);
/// The issuer and audience of the demo's tokens.
const TOKEN_PARTY: &str = "outrigger.demo";
/// The user the minted token names.
const DEMO_USER: &str = "demo-user";
/// How long each step of `--once` may take before it counts as failed.
const STEP_DEADLINE: Duration = Duration::from_secs(15);

/// What `outrigger demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The share of requests (0 to 1) the flaky replica answers with 503.
    pub failure_rate: f64,
    /// A Redis URL for the inbound stores; in-process stores without it.
    pub redis: Option<String>,
    /// Run the tour against itself, print each step, and exit.
    pub once: bool,
}

/// How a demo replica behaves.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Steady,
    /// Answers 503 to this share of requests.
    Flaky(f64),
    Slow,
}

/// The demo's servers and the sidecar in front of them.
struct Demo {
    sidecar: Sidecar,
    servers: Vec<ServerHandle>,
    flaky: SocketAddr,
    token: String,
}

/// Runs the demo until SIGINT or SIGTERM (or, with `--once`, through the
/// tour) and returns the exit code.
pub fn run(options: DemoOptions) -> ExitCode {
    let outcome = actix_rt::System::new().block_on(async move {
        let demo = Demo::start(&options).await?;
        let passed = if options.once {
            tour(&demo).await
        } else {
            // Listen before printing: whoever reads the guide may signal at once.
            let mut signals = crate::tools::cli::StopSignals::new()?;
            print_guide(&demo);
            signals.next().await;
            true
        };
        demo.stop().await;
        Ok::<bool, io::Error>(passed)
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("outrigger demo: some steps did not see the expected answer");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("outrigger demo: {err}");
            ExitCode::FAILURE
        }
    }
}

impl Demo {
    async fn start(options: &DemoOptions) -> io::Result<Demo> {
        let mut servers = Vec::new();
        let mut replicas = Vec::new();
        for behaviour in [
            Behaviour::Steady,
            Behaviour::Flaky(options.failure_rate),
            Behaviour::Slow,
        ] {
            let (addr, handle) = serve(move || {
                App::new()
                    .app_data(web::Data::new(behaviour))
                    .default_service(web::to(replica))
            })?;
            servers.push(handle);
            replicas.push(addr);
        }
        let (app, handle) = serve(|| App::new().default_service(web::to(echo_identity)))?;
        servers.push(handle);

        let secret = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let yaml = config_yaml(&replicas, app, options.redis.as_deref());
        let lookup = |name: &str| (name == "JWT_SECRET").then(|| secret.clone());
        let config = Config::from_yaml(&yaml, &lookup).map_err(|errors| {
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            io::Error::other(format!(
                "the demo config is invalid: {}",
                problems.join("; ")
            ))
        })?;
        let sidecar = Sidecar::start(config).await?;
        let token = mint_token(&secret)?;
        let demo = Demo {
            sidecar,
            servers,
            flaky: replicas[1],
            token,
        };
        let ready = format!("{}/ready", demo.admin());
        if !poll(|| async { get(&ready).await.is_some_and(|a| a.status == 200) }).await {
            demo.stop().await;
            return Err(io::Error::other("the sidecar did not become ready"));
        }
        Ok(demo)
    }

    fn outbound(&self) -> String {
        format!("http://{}", self.sidecar.outbound_addr())
    }

    fn inbound(&self) -> String {
        self.sidecar
            .inbound_addr()
            .map_or_else(String::new, |addr| format!("http://{addr}"))
    }

    fn admin(&self) -> String {
        format!("http://{}", self.sidecar.admin_addr())
    }

    async fn stop(self) {
        self.sidecar.stop(std::future::pending()).await;
        for server in self.servers {
            server.stop(true).await;
        }
    }
}

/// Starts one single-worker actix-web server on a free loopback port.
fn serve<F, T>(factory: F) -> io::Result<(SocketAddr, ServerHandle)>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    let server = HttpServer::new(factory)
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| io::Error::other("a demo server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((addr, handle))
}

/// A demo replica: says who it is, after its delay or with its failures.
async fn replica(req: HttpRequest, behaviour: web::Data<Behaviour>) -> HttpResponse {
    let name = match **behaviour {
        Behaviour::Flaky(rate) if rand::random::<f64>() < rate => {
            return HttpResponse::ServiceUnavailable()
                .json(json!({"replica": "flaky", "error": "failing on purpose"}));
        }
        Behaviour::Flaky(_) => "flaky",
        Behaviour::Slow => {
            actix_rt::time::sleep(SLOW_REPLICA_DELAY).await;
            "slow"
        }
        Behaviour::Steady => "steady",
    };
    HttpResponse::Ok().json(json!({"replica": name, "path": req.path()}))
}

/// The inbound demo app: echoes the identity headers the sidecar added.
async fn echo_identity(req: HttpRequest) -> HttpResponse {
    let identity: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-outrigger-"))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), Value::String(value))
        })
        .collect();
    HttpResponse::Ok().json(json!({"app": "demo", "path": req.path(), "identity": identity}))
}

/// The sidecar's config: service `demo` on the replicas with a breaker that
/// opens after 3 failures, and the inbound side in front of `app`.
fn config_yaml(replicas: &[SocketAddr], app: SocketAddr, redis: Option<&str>) -> String {
    let endpoints: Vec<String> = replicas.iter().map(|r| format!("\"{r}\"")).collect();
    let redis = redis.map_or_else(String::new, |url| format!("redis: {{ url: \"{url}\" }}\n"));
    format!(
        "listeners:
  outbound: {{ bind: \"127.0.0.1:0\" }}
  admin: {{ bind: \"127.0.0.1:0\" }}
  inbound: {{ bind: \"127.0.0.1:0\", app: \"http://{app}\" }}
lifecycle: {{ drain_delay: 0s }}
defaults:
  slow_start: 0s
  circuit_breaker: {{ failure_threshold: 3, window: 30s, cooldown: 30s }}
services:
  - name: demo
    endpoints: [{endpoints}]
inbound:
  auth:
    jwt: {{ algorithms: [HS256], issuer: {TOKEN_PARTY}, audience: {TOKEN_PARTY} }}
    exempt: [\"/public/*\", \"/limited\"]
  rate_limit:
    window: 1m
    routes: [{{ path: /limited, limit: 3 }}]
  cache:
    default_ttl: 30s
    bypass: [/limited]
{redis}",
        endpoints = endpoints.join(", ")
    )
}

/// Signs an hour-long HS256 token for [`DEMO_USER`] with the viewer role.
fn mint_token(secret: &str) -> io::Result<String> {
    let claims = json!({
        "sub": DEMO_USER,
        "roles": ["viewer"],
        "iss": TOKEN_PARTY,
        "aud": TOKEN_PARTY,
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|err| io::Error::other(format!("cannot sign the demo token: {err}")))
}

/// Prints the ports and the curl commands of the tour.
fn print_guide(demo: &Demo) {
    let (out, inb, admin) = (demo.outbound(), demo.inbound(), demo.admin());
    println!("Outrigger demo is running (Ctrl-C stops it).");
    println!("  outbound {out}   inbound {inb}   admin {admin}");
    println!(
        "  service `demo`: steady, flaky ({}) and slow replicas",
        demo.flaky
    );
    println!();
    println!("1. A routed call (the app's outbound request to service `demo`):");
    println!("   curl -s {out}/demo/hello");
    println!("2. The flaky replica's breaker opens after 3 failures (retries hide them):");
    println!("   for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' {out}/demo/hello; done; echo");
    println!("   curl -s {admin}/circuit-breakers");
    println!("3. A cached GET: the second answer says X-Cache: HIT:");
    println!("   curl -si {inb}/public/hello | grep -i x-cache");
    println!("   curl -si {inb}/public/hello | grep -i x-cache");
    println!("4. A rate limit of 3 a minute: the 4th call gets 429:");
    println!("   for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' {inb}/limited; done; echo");
    println!("5. A JWT-protected call; the app echoes the identity the sidecar vouches for:");
    println!("   TOKEN={}", demo.token);
    println!("   curl -s -H \"Authorization: Bearer $TOKEN\" {inb}/whoami");
    println!("6. The same call without the token gets 401:");
    println!("   curl -si {inb}/whoami | head -1");
}

/// Runs every step of the tour through the sidecar; true when all passed.
async fn tour(demo: &Demo) -> bool {
    let results = [
        ("routed call", routed_call(demo).await),
        (
            "breaker opens on the flaky replica",
            breaker_opens(demo).await,
        ),
        ("cached GET shows X-Cache", cached_get(demo).await),
        ("rate limit answers 429", rate_limited(demo).await),
        ("JWT call with the minted token", with_token(demo).await),
        (
            "JWT call without a token gets 401",
            without_token(demo).await,
        ),
    ];
    let mut passed = true;
    for (number, (name, result)) in results.iter().enumerate() {
        match result {
            Ok(detail) => println!("step {}: {name}: ok ({detail})", number + 1),
            Err(detail) => {
                passed = false;
                println!("step {}: {name}: FAILED ({detail})", number + 1);
            }
        }
    }
    passed
}

/// What one step saw, or why it failed.
type StepResult = Result<String, String>;

async fn routed_call(demo: &Demo) -> StepResult {
    let answer = fetch(&format!("{}/demo/hello", demo.outbound()), None).await?;
    expect_status(&answer, 200)?;
    Ok(format!(
        "200 from the {} replica",
        answer.json_str("replica")
    ))
}

async fn breaker_opens(demo: &Demo) -> StepResult {
    let url = format!("{}/demo/hello", demo.outbound());
    let breakers = format!("{}/circuit-breakers", demo.admin());
    let key = format!("demo/{}", demo.flaky);
    let mut calls = 0;
    let opened = poll(|| {
        calls += 1;
        let (url, breakers, key) = (&url, &breakers, &key);
        async move {
            let _ = get(url).await;
            get(breakers)
                .await
                .is_some_and(|answer| answer.json["circuit_breakers"][key]["state"] == "open")
        }
    })
    .await;
    if opened {
        Ok(format!("{key} open after {calls} calls"))
    } else {
        Err(format!("{key} still not open after {calls} calls"))
    }
}

async fn cached_get(demo: &Demo) -> StepResult {
    let url = format!("{}/public/hello", demo.inbound());
    let first = fetch(&url, None).await?;
    let second = fetch(&url, None).await?;
    let seen = (first.cache.as_deref(), second.cache.as_deref());
    if seen == (Some("MISS"), Some("HIT")) {
        Ok("MISS, then HIT".to_string())
    } else {
        Err(format!("X-Cache was {seen:?}, expected MISS then HIT"))
    }
}

async fn rate_limited(demo: &Demo) -> StepResult {
    let url = format!("{}/limited", demo.inbound());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(fetch(&url, None).await?.status);
    }
    if statuses == [200, 200, 200, 429] {
        Ok("200 200 200 429".to_string())
    } else {
        Err(format!("statuses {statuses:?}, expected 200 200 200 429"))
    }
}

async fn with_token(demo: &Demo) -> StepResult {
    let url = format!("{}/whoami", demo.inbound());
    let answer = fetch(&url, Some(&demo.token)).await?;
    expect_status(&answer, 200)?;
    let user = answer.json["identity"]["x-outrigger-user"].clone();
    if user == DEMO_USER {
        Ok(format!("200, the app saw x-outrigger-user: {DEMO_USER}"))
    } else {
        Err(format!("the app saw x-outrigger-user {user}"))
    }
}

async fn without_token(demo: &Demo) -> StepResult {
    let answer = fetch(&format!("{}/whoami", demo.inbound()), None).await?;
    expect_status(&answer, 401)?;
    Ok("401".to_string())
}

/// An answer the tour looks at.
struct Answer {
    status: u16,
    cache: Option<String>,
    json: Value,
}

impl Answer {
    fn json_str(&self, key: &str) -> &str {
        self.json[key].as_str().unwrap_or("?")
    }
}

fn expect_status(answer: &Answer, status: u16) -> Result<(), String> {
    if answer.status == status {
        Ok(())
    } else {
        Err(format!("status {}, expected {status}", answer.status))
    }
}

/// Sends a GET (with a bearer token when given); an error says why none came.
async fn fetch(url: &str, token: Option<&str>) -> Result<Answer, String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.insert_header(("authorization", format!("Bearer {token}")));
    }
    let mut response = request
        .send()
        .await
        .map_err(|err| format!("GET {url}: {err}"))?;
    let body = response
        .body()
        .await
        .map_err(|err| format!("GET {url}: reading the body: {err}"))?;
    Ok(Answer {
        status: response.status().as_u16(),
        cache: response
            .headers()
            .get("x-cache")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// Like [`fetch`], for polling: no answer is `None`.
async fn get(url: &str) -> Option<Answer> {
    fetch(url, None).await.ok()
}

/// Polls `check` every 20 ms until it holds or [`STEP_DEADLINE`] passes.
async fn poll<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + STEP_DEADLINE;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
