//! The two halves of `scripts/soak.sh` that are not the sidecar:
//!
//! - `soak replica --port P`: an upstream replica (GET answers a small JSON,
//!   POST counts its body); `PUT /delay?ms=N` slows every later answer.
//! - `soak load --outbound URL --inbound URL --api-key K --seconds S`: mixed
//!   load (outbound GETs and POSTs, inbound GETs the cache keeps and GETs of
//!   a rate-limited route) from a few clients, with a JSON tally by kind and
//!   status written at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use serde_json::json;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let usage = "usage: soak replica --port P | soak load --outbound URL --inbound URL --api-key K --seconds S [--clients N]";
    match args.first().map(String::as_str) {
        Some("replica") => {
            let port: u16 = flag("--port")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| std::io::Error::other(usage))?;
            actix_rt::System::new().block_on(replica(port))
        }
        Some("load") => {
            let plan = Plan {
                outbound: flag("--outbound").ok_or_else(|| std::io::Error::other(usage))?,
                inbound: flag("--inbound").ok_or_else(|| std::io::Error::other(usage))?,
                api_key: flag("--api-key").ok_or_else(|| std::io::Error::other(usage))?,
                seconds: flag("--seconds")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other(usage))?,
                clients: flag("--clients").and_then(|s| s.parse().ok()).unwrap_or(8),
            };
            let tally = actix_rt::System::new().block_on(load(plan));
            println!("{}", serde_json::to_string_pretty(&tally)?);
            Ok(())
        }
        _ => Err(std::io::Error::other(usage)),
    }
}

/// How slow the replica is now, in milliseconds.
type Delay = web::Data<AtomicU64>;

async fn replica(port: u16) -> std::io::Result<()> {
    let delay: Delay = web::Data::new(AtomicU64::new(0));
    HttpServer::new(move || {
        App::new()
            .app_data(delay.clone())
            .route("/delay", web::put().to(set_delay))
            .default_service(web::to(answer))
    })
    .workers(1)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}

async fn set_delay(query: web::Query<BTreeMap<String, u64>>, delay: Delay) -> HttpResponse {
    let ms = query.get("ms").copied().unwrap_or(0);
    delay.store(ms, Ordering::SeqCst);
    HttpResponse::Ok().json(json!({ "delay_ms": ms }))
}

async fn answer(req: HttpRequest, mut body: web::Payload, delay: Delay) -> HttpResponse {
    let mut received = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        received += chunk.len();
    }
    let ms = delay.load(Ordering::SeqCst);
    if ms > 0 {
        actix_rt::time::sleep(Duration::from_millis(ms)).await;
    }
    HttpResponse::Ok().json(json!({
        "method": req.method().as_str(),
        "path": req.path(),
        "body_bytes": received,
    }))
}

/// What to load and for how long.
struct Plan {
    outbound: String,
    inbound: String,
    api_key: String,
    seconds: u64,
    clients: usize,
}

/// The request kinds, sent in turn by every client: one in ten is for the
/// rate-limited route, so most of its answers are 429s without those
/// drowning the rest.
const KINDS: [&str; 10] = [
    "outbound_get",
    "inbound_cached",
    "outbound_post",
    "outbound_get",
    "inbound_cached",
    "outbound_post",
    "outbound_get",
    "inbound_cached",
    "inbound_cached",
    "inbound_limited",
];

/// Answers by kind, then status (`error` when there was no answer).
type Tally = BTreeMap<&'static str, BTreeMap<String, u64>>;

async fn load(plan: Plan) -> Tally {
    let plan = Arc::new(plan);
    let deadline = Instant::now() + Duration::from_secs(plan.seconds);
    let clients = (0..plan.clients).map(|id| {
        let plan = Arc::clone(&plan);
        actix_rt::spawn(async move {
            let client = awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish();
            let mut tally = Tally::new();
            let mut n = id;
            while Instant::now() < deadline {
                let kind = KINDS[n % KINDS.len()];
                let request = match kind {
                    "outbound_get" => client.get(format!("{}/api/items/{}", plan.outbound, n % 16)),
                    "outbound_post" => client.post(format!("{}/api/orders", plan.outbound)),
                    "inbound_cached" => client
                        .get(format!("{}/items/{}", plan.inbound, n % 8))
                        .insert_header(("x-api-key", plan.api_key.as_str())),
                    _ => client
                        .get(format!("{}/limited", plan.inbound))
                        .insert_header(("x-api-key", plan.api_key.as_str())),
                };
                let sent = if kind == "outbound_post" {
                    request.send_body(r#"{"item": 1, "quantity": 2}"#).await
                } else {
                    request.send().await
                };
                let outcome = match sent {
                    Ok(mut response) => match response.body().limit(1 << 20).await {
                        Ok(_) => response.status().as_u16().to_string(),
                        Err(_) => "cut".to_string(),
                    },
                    Err(_) => "error".to_string(),
                };
                *tally.entry(kind).or_default().entry(outcome).or_default() += 1;
                n += 1;
            }
            tally
        })
    });
    let mut total = Tally::new();
    for client in futures_util::future::join_all(clients).await {
        for (kind, statuses) in client.unwrap_or_default() {
            for (status, count) in statuses {
                *total.entry(kind).or_default().entry(status).or_default() += count;
            }
        }
    }
    total
}
