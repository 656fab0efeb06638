//! What every proxy worker (outbound, inbound) keeps to receive a request
//! and record its answer: the listener's limits, its tracer, where the
//! answer is counted, logged and exported, and how far the sidecar's stop
//! has got (an answer while draining closes its connection; a request
//! dropped unanswered once the shutdown grace ran out is a cut one).

use std::sync::Arc;

use actix_web::http::header::HeaderValue;
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use log::warn;
use prometheus::{IntCounter, IntGauge};

use super::Stopping;
use crate::config::{format_duration, AccessLog, ListenerLimits, ObservabilityConfig};
use crate::http::access::Answering;
use crate::http::request_id::IdText;
use crate::metrics::{Metrics, RequestSeries};
use crate::otlp::Exporter;
use crate::trace::Tracer;

/// One listener's receiving and recording side, cloned into each worker.
#[derive(Clone)]
pub struct Front {
    /// `outbound` or `inbound`: the `listener` label.
    pub listener: &'static str,
    /// The listener's per-client limits.
    pub limits: ListenerLimits,
    /// Decides each request's trace context.
    pub tracer: Tracer,
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
    pub fn stopping(&self) -> &Stopping {
        &self.stopping
    }

    /// The request known by `request_id` arrived: it counts as in progress
    /// until its [`InProgress`] is answered or dropped.
    pub fn arrived<'a>(&'a self, request_id: &'a HeaderValue) -> InProgress<'a> {
        self.in_progress.inc();
        InProgress {
            front: self,
            request_id,
            answered: false,
        }
    }

    /// Records the answer to `req` in `series` (counters, access line,
    /// span) and ends its time in progress. While the sidecar drains, the
    /// answer closes its connection, so a keep-alive client reconnects
    /// (elsewhere, once endpoints follow `/ready`) before the listener
    /// closes instead of sending a request it would lose then.
    pub fn answered(
        &self,
        mut progress: InProgress<'_>,
        answering: &Answering,
        req: &HttpRequest,
        series: &RequestSeries,
        response: &mut HttpResponse,
    ) {
        answering.finish(series, self.access_log, self.spans.as_ref(), req, response);
        if self.stopping.draining() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
        progress.answered = true;
    }
}

/// A request between its arrival and its answer. Dropped unanswered (its
/// handler was dropped: the client left, or the listener's shutdown grace
/// ran out), it still leaves `http_requests_in_progress`; a cut by the stop
/// is logged with the request id and counted in `requests_cut_total`, since
/// its client gets no answer at all.
pub struct InProgress<'a> {
    front: &'a Front,
    request_id: &'a HeaderValue,
    answered: bool,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let front = self.front;
        if !self.answered && front.stopping.cutting() {
            front.cut.inc();
            warn!(
                "request {}: cut unanswered: the {} listener stopped before it was answered (lifecycle.shutdown_grace {} ran out, or a second stop signal came); its client's connection is closed",
                IdText(self.request_id),
                front.listener,
                format_duration(front.stopping.grace())
            );
        }
        // Last: a stop waits for this before it exits, so the line above is written.
        front.in_progress.dec();
    }
}
