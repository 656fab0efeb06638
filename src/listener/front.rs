//! What every proxy worker (outbound, inbound) keeps to receive a request
//! and record its answer: the listener's limits, its tracer, and where the
//! answer is counted, logged and exported.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse};
use prometheus::IntGauge;

use crate::access::Answering;
use crate::config::{AccessLog, ListenerLimits, ObservabilityConfig};
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
    access_log: AccessLog,
    spans: Option<Exporter>,
}

impl Front {
    /// The front of `listener` with its `limits`, recording in `metrics`
    /// as `observability` says and exporting spans to `spans`.
    pub fn new(
        listener: &'static str,
        limits: ListenerLimits,
        metrics: Arc<Metrics>,
        observability: &ObservabilityConfig,
        spans: Option<Exporter>,
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
            metrics,
            access_log: observability.access_log,
            spans,
        }
    }

    /// The metrics every listener records in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A request arrived: it counts as in progress until [`Front::answered`].
    pub fn arrived(&self) {
        self.in_progress.inc();
    }

    /// Records the answer to `req` in `series` (counters, access line,
    /// span) and ends its time in progress.
    pub fn answered(
        &self,
        answering: &Answering,
        req: &HttpRequest,
        series: &RequestSeries,
        response: &mut HttpResponse,
    ) {
        answering.finish(series, self.access_log, self.spans.as_ref(), req, response);
        self.in_progress.dec();
    }
}
