//! Optional OTLP/HTTP export (JSON encoding) of one span per proxied
//! request whose trace is sampled. Handlers hand spans to a bounded queue
//! without waiting (a full queue drops them and the drop is counted); a
//! thread of its own batches them and posts them to `tracing.otlp_endpoint`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::tls::call_client;
use crate::trace::{hex, Hop};

/// Spans waiting for export; beyond this, new ones are dropped.
const QUEUE: usize = 4096;
/// Spans per request to the collector at most.
const MAX_BATCH: usize = 512;
/// Pause between exports, so spans arriving meanwhile share one request.
const INTERVAL: Duration = Duration::from_millis(200);
/// Bound on one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// One proxied request as a span.
pub struct Span {
    /// Trace id, span id (this hop's) and the caller's span id, if any.
    ids: ([u8; 16], [u8; 8], Option<[u8; 8]>),
    listener: &'static str,
    service: String,
    method: String,
    status: u16,
    request_id: String,
    start: SystemTime,
    duration: Duration,
}

impl Span {
    /// The span of a request answered with `status` after `duration`.
    pub fn new(
        hop: &Hop,
        listener: &'static str,
        service: &str,
        method: &str,
        status: u16,
        request_id: &str,
        duration: Duration,
    ) -> Span {
        Span {
            ids: (
                hop.context.trace_id,
                hop.context.parent_id,
                hop.caller_parent,
            ),
            listener,
            service: service.to_string(),
            method: method.to_string(),
            status,
            request_id: request_id.to_string(),
            start: SystemTime::now() - duration,
            duration,
        }
    }

    fn to_json(&self) -> Value {
        let start = self
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let end = start + self.duration;
        let (trace_id, span_id, parent) = self.ids;
        let text = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
        json!({
            "traceId": hex(&trace_id),
            "spanId": hex(&span_id),
            "parentSpanId": parent.map(|p| hex(&p)).unwrap_or_default(),
            "name": format!("{} {}", self.listener, self.service),
            // SERVER for the inbound side, CLIENT for calls the app makes.
            "kind": if self.listener == "inbound" { 2 } else { 3 },
            "startTimeUnixNano": start.as_nanos().to_string(),
            "endTimeUnixNano": end.as_nanos().to_string(),
            "attributes": [
                text("http.request.method", &self.method),
                {"key": "http.response.status_code", "value": {"intValue": self.status.to_string()}},
                text("outrigger.listener", self.listener),
                text("outrigger.service", &self.service),
                text("outrigger.request_id", &self.request_id),
            ],
            "status": {"code": if self.status >= 500 { 2 } else { 0 }},
        })
    }
}

/// The handlers' side of the export queue; cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the export thread posting to `endpoint` (an `https://` one
    /// spoken with `tls`); it ends once every `Exporter` is dropped and the
    /// last spans are sent.
    pub fn start(endpoint: String, tls: Option<Arc<ClientConfig>>) -> Exporter {
        let (queue, spans) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let arbiter = actix_rt::Arbiter::new();
        // The awc client is !Send: it is made on the export thread itself.
        arbiter.spawn_fn(move || {
            actix_rt::spawn(async move {
                let client = call_client(EXPORT_TIMEOUT, tls.as_ref());
                run(spans, client, endpoint, counter).await;
                actix_rt::Arbiter::current().stop();
            });
        });
        Exporter { queue, dropped }
    }

    /// Queues `span` without waiting; a full queue drops it.
    pub fn record(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(
    mut spans: mpsc::Receiver<Span>,
    client: awc::Client,
    endpoint: String,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while spans.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let body = json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "outrigger"}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "outrigger", "version": env!("CARGO_PKG_VERSION")},
                "spans": batch.drain(..).map(|s| s.to_json()).collect::<Vec<_>>(),
            }],
        }]});
        match client.post(&endpoint).send_json(&body).await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => log::warn!("otlp: {endpoint} answered {}", response.status()),
            Err(err) => log::warn!("otlp: cannot export to {endpoint}: {err}"),
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            log::warn!("otlp: {lost} spans dropped: the export queue was full");
        }
        actix_rt::time::sleep(INTERVAL).await;
    }
}
