//! What every proxy worker (outbound, inbound) keeps to receive a request
//! and record its answer: the listener's limits, its tracer, where the
//! answer is counted, logged and exported, and how far the sidecar's stop
//! has got (an answer while draining closes its connection; a request
//! dropped unanswered once the shutdown grace ran out is a cut one).

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::HeaderValue;
use actix_web::http::{ConnectionType, StatusCode, Version};
use actix_web::web::Payload;
use actix_web::{HttpRequest, HttpResponse};
use log::warn;
use prometheus::{IntCounter, IntGauge};

use super::body::BodyLimit;
use super::head::check_head;
use super::{LimitedPayload, Stopping};
use crate::config::{format_duration, AccessLog, ListenerLimits, ObservabilityConfig};
use crate::error::ProxyError;
use crate::http::access::Answering;
use crate::http::grpc;
use crate::http::request_id::{request_id, IdText};
use crate::logging::summary::{self, Topic};
use crate::metrics::{Metrics, RequestSeries};
use crate::otlp::Exporter;
use crate::trace::{Hop, Tracer};

/// One listener's receiving and recording side, cloned into each worker.
#[derive(Clone)]
pub struct Front {
    /// `outbound` or `inbound`: the `listener` label.
    pub listener: &'static str,
    /// The listener's per-client limits.
    pub limits: ListenerLimits,
    /// Decides each request's trace context.
    tracer: Tracer,
    metrics: Arc<Metrics>,
    in_progress: IntGauge,
    cut: IntCounter,
    stopping: Arc<Stopping>,
    access_log: AccessLog,
    spans: Option<Exporter>,
}

impl Front {
    /// The front of `listener` with its `limits`, recording in `metrics`
    /// as `observability` says, exporting spans to `spans`, and stopping
    /// as `stopping` says.
    pub fn new(
        listener: &'static str,
        limits: ListenerLimits,
        metrics: Arc<Metrics>,
        observability: &ObservabilityConfig,
        spans: Option<Exporter>,
        stopping: Arc<Stopping>,
    ) -> Front {
        Front {
            listener,
            limits,
            tracer: Tracer {
                sample_rate: observability.tracing.sample_rate,
            },
            in_progress: metrics
                .http_requests_in_progress
                .with_label_values(&[listener]),
            cut: metrics.requests_cut.with_label_values(&[listener]),
            metrics,
            stopping,
            access_log: observability.access_log,
            spans,
        }
    }

    /// The metrics every listener records in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The sidecar's stop, as this listener sees it.
    pub fn stopping(&self) -> &Arc<Stopping> {
        &self.stopping
    }

    /// `req` arrived: it gets its request id (the caller's `x-request-id`,
    /// or a new one) and this hop's trace context, is told a gRPC call or
    /// not, and counts as in progress until its [`Arrival`] is answered or
    /// dropped.
    pub fn arrive(&self, req: &HttpRequest) -> Arrival<'_> {
        let started = Instant::now();
        let request_id = request_id(req);
        self.in_progress.inc();
        let hop = self.tracer.hop(req.headers());
        Arrival {
            front: self,
            started,
            request_id,
            hop,
            grpc: grpc::is_grpc(req.headers()),
            answered: false,
        }
    }
}

/// A request between its arrival and its answer: when it arrived, its
/// request id and trace hop, and its place in `http_requests_in_progress`.
/// Dropped unanswered (its handler was dropped: the client left, or the
/// listener's shutdown grace ran out), it still leaves that gauge; a cut by
/// the stop is logged with the request id and counted in
/// `requests_cut_total`, since its client gets no answer at all.
pub struct Arrival<'a> {
    front: &'a Front,
    started: Instant,
    request_id: HeaderValue,
    hop: Hop,
    /// A gRPC call: answered as gRPC callers read answers.
    grpc: bool,
    answered: bool,
}

impl Arrival<'_> {
    /// The request's id, as `x-request-id` carries it.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The request's id as log lines and error bodies show it.
    pub fn id(&self) -> IdText<'_> {
        IdText(&self.request_id)
    }

    /// This hop's trace context, sent on to the upstream.
    pub fn hop(&self) -> &Hop {
        &self.hop
    }

    /// When the request arrived.
    pub fn arrived(&self) -> Instant {
        self.started
    }

    /// Whether the request is a gRPC call (`content-type: application/grpc*`).
    pub fn grpc(&self) -> bool {
        self.grpc
    }

    /// What `max_body_bytes` bounds in `req`: each message of a gRPC call
    /// over HTTP/2, else the whole body.
    fn body_limit(&self, req: &HttpRequest) -> BodyLimit {
        if self.grpc && req.version() == Version::HTTP_2 {
            BodyLimit::EachMessage
        } else {
            BodyLimit::Whole
        }
    }

    /// Refuses the head of `req` when it breaks the listener's limits or
    /// could be read two ways ([`check_head`]); a `Content-Length` is held
    /// to `max_body_bytes` only where the limit bounds the whole body.
    pub fn check_head(&self, req: &HttpRequest) -> Result<(), ProxyError> {
        check_head(req, &self.front.limits, self.body_limit(req))
    }

    /// The body of `req`, `payload`, under the listener's limits: those of
    /// a gRPC stream for a gRPC call over HTTP/2 (no pause limit,
    /// `max_body_bytes` per message: see [`LimitedPayload::grpc_stream`]),
    /// else those of any request body.
    pub fn body(&self, req: &HttpRequest, payload: Payload) -> LimitedPayload {
        let limits = &self.front.limits;
        match self.body_limit(req) {
            BodyLimit::EachMessage => LimitedPayload::grpc_stream(payload, limits),
            BodyLimit::Whole => LimitedPayload::new(payload, limits),
        }
    }

    /// Our own answer instead of a peer's: `error` as its response (see
    /// [`ProxyError::response`]) for `service`, with this request's id,
    /// or, to a gRPC caller, as a trailers-only gRPC answer
    /// ([`grpc::refusal`]). Every refusal on either listener is answered
    /// here. The first of its reason for the service since the last summary
    /// is logged with its status and request id; the others are counted for
    /// the summary (`logging::summary`), so a burst does not drown the log.
    pub fn refuse(&self, error: &ProxyError, service: Option<&str>) -> HttpResponse {
        let id = self.id();
        let topic = Topic {
            kind: error.reason(),
            listener: self.front.listener,
            service: service.unwrap_or("unknown"),
        };
        if summary::first(topic) {
            warn!(
                "request {id}: {}: {}",
                error.status().as_u16(),
                error.message()
            );
        }
        if self.grpc {
            return grpc::refusal(error);
        }
        error.response(service, id.as_str())
    }

    /// Records `response`, the answer to `req`, in `series` (counters,
    /// access line, span) and ends the request's time in progress. A gRPC
    /// caller's answer is first made one a gRPC client reads
    /// ([`grpc::relayed`]: a replica's HTTP error becomes a trailers-only
    /// answer) and counted by its `grpc-status` (from its trailers, when
    /// its body ends, unless its head carries one). While the sidecar
    /// drains, the answer closes its connection, so a
    /// keep-alive client reconnects (elsewhere, once endpoints follow
    /// `/ready`) before the listener closes instead of sending a request it
    /// would lose then.
    pub fn answer(
        mut self,
        req: &HttpRequest,
        series: &RequestSeries,
        response: &mut HttpResponse,
    ) {
        let front = self.front;
        if self.grpc {
            match grpc::relayed(response) {
                Some(code) => series.grpc().record(code),
                None => grpc::count_at_end(response, series.grpc()),
            }
        }
        let answering = Answering::begin(front.listener, self.started, &self.request_id, &self.hop);
        answering.finish(
            series,
            front.access_log,
            front.spans.as_ref(),
            req,
            response,
        );
        if front.stopping.draining() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
        self.answered = true;
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        let front = self.front;
        if !self.answered && front.stopping.cutting() {
            front.cut.inc();
            warn!(
                "request {}: cut unanswered: the {} listener stopped before it was answered (lifecycle.shutdown_grace {} ran out, or a second stop signal came); its client's connection is closed",
                IdText(&self.request_id),
                front.listener,
                format_duration(front.stopping.grace())
            );
        }
        // Last: a stop waits for this before it exits, so the line above is written.
        front.in_progress.dec();
    }
}
