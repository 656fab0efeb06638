//! The test replica: a real HTTP server on a loopback port that counts
//! what it is sent, answers with a settable status, delay and headers,
//! echoes each request as JSON, and streams bodies; with the helpers that
//! read its echo and list replicas in a config.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::dev::ServerHandle;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::eventually::eventually;

/// One replica: counts its requests, answers with a settable status after a
/// settable delay, echoes what it received as JSON, and streams bodies
/// (`/download/<bytes>`, `/upload`).
pub struct Replica {
    pub addr: SocketAddr,
    state: Arc<ReplicaState>,
    handle: ServerHandle,
}

#[derive(Default)]
struct ReplicaState {
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

impl Replica {
    pub async fn start() -> Replica {
        Replica::start_at("127.0.0.1:0").await
    }

    /// Three replicas, as most balancing and breaker tests want.
    pub async fn three() -> (Replica, Replica, Replica) {
        (
            Replica::start().await,
            Replica::start().await,
            Replica::start().await,
        )
    }

    /// `count` replicas, for tests that treat them alike.
    pub async fn several(count: usize) -> Vec<Replica> {
        let mut replicas = Vec::with_capacity(count);
        for _ in 0..count {
            replicas.push(Replica::start().await);
        }
        replicas
    }

    /// A replica bound to `addr` (any loopback address, port 0 for any).
    pub async fn start_at(addr: &str) -> Replica {
        let state = Arc::new(ReplicaState::default());
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
        .expect("bind a replica");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Replica {
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
        eventually("the stopped replica closed its connections", || async {
            self.state.open.load(Ordering::SeqCst) == 0
        })
        .await;
    }
}

/// Kept with each connection an [`Replica`] accepts; counts it closed
/// when the server drops the connection.
struct OpenConnection(Arc<ReplicaState>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<ReplicaState>,
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

/// The replicas as a YAML flow list's items: `"127.0.0.1:1", "127.0.0.1:2"`.
pub fn endpoints(replicas: &[&Replica]) -> String {
    let list: Vec<String> = replicas
        .iter()
        .map(|u| format!("\"{}\"", u.endpoint()))
        .collect();
    list.join(", ")
}

/// The value of header `name` as a replica echoed it (the first one).
pub fn header_seen(echo: &Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str().map(str::to_string))
}
