//! Requests as a test sends them, through awc: statuses, JSON and text
//! bodies, the cache's answer header, and a steady load on one URL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

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

/// GETs `url`: the status and the value of the answer's `header`, if any.
pub async fn status_and_header(url: &str, header: &str) -> (u16, Option<String>) {
    let response = client().get(url).send().await.expect("an answer");
    let value = response
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (response.status().as_u16(), value)
}

/// GETs `url` and returns the body as text.
pub async fn get_text(url: &str) -> String {
    let mut response = client().get(url).send().await.expect("an answer");
    let body = response.body().limit(16 << 20).await.expect("a body");
    String::from_utf8_lossy(&body).into_owned()
}

/// The reason the sidecar gave in an answer's `x-outrigger` header; empty
/// when it gave none (a replica's own answer).
pub fn reason<S>(response: &awc::ClientResponse<S>) -> String {
    response
        .headers()
        .get("x-outrigger")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
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
    stop: Arc<AtomicBool>,
    tasks: Vec<actix_rt::task::JoinHandle<Vec<Result<u16, String>>>>,
}

impl Load {
    /// Starts `clients` clients on `url`.
    pub fn start(url: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
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
