//! What both listeners record once a request is answered: `x-request-id`
//! on the response, the request counter and latency histogram, and the
//! access log line (target `outrigger::access`, at info, for the requests
//! `access_log` selects) with request id, service, status and duration as
//! structured fields; and the request's span, when sampled and exported.

use std::time::Instant;

use actix_web::http::header::HeaderValue;
use actix_web::{HttpRequest, HttpResponse};

use crate::config::AccessLog;
use crate::metrics::RequestSeries;
use crate::otlp::{Exporter, Span};
use crate::trace::Hop;

use super::request_id::{IdText, REQUEST_ID};

/// The log target of access lines, so `LOG_LEVEL` can set them apart.
pub const TARGET: &str = "outrigger::access";

/// A request being answered, from its arrival to its response.
pub struct Answering<'a> {
    listener: &'static str,
    started: Instant,
    request_id: &'a HeaderValue,
    hop: &'a Hop,
}

impl<'a> Answering<'a> {
    /// A request that arrived at `started` on `listener` (`outbound` or
    /// `inbound`), with its request id and this hop's trace context.
    pub fn begin(
        listener: &'static str,
        started: Instant,
        request_id: &'a HeaderValue,
        hop: &'a Hop,
    ) -> Self {
        Answering {
            listener,
            started,
            request_id,
            hop,
        }
    }

    /// Records the answer: the request id on `response`, the
    /// `http_requests_total` and `http_request_duration_seconds` series of
    /// `series` (its service is `unknown` when none matched, `app`
    /// inbound), and an access line when `mode` selects it; a sampled
    /// request's span goes to `spans` when OTLP export is on.
    pub fn finish(
        &self,
        series: &RequestSeries,
        mode: AccessLog,
        spans: Option<&Exporter>,
        req: &HttpRequest,
        response: &mut HttpResponse,
    ) {
        response
            .headers_mut()
            .insert(REQUEST_ID.clone(), self.request_id.clone());
        let status = response.status();
        let (listener, service) = (self.listener, series.service());
        let duration = self.started.elapsed();
        series.record(req.method(), status, duration);
        let sampled = self.hop.context.sampled();
        let request_id = IdText(self.request_id);
        if let Some(spans) = spans.filter(|_| sampled) {
            let (method, status) = (req.method().as_str(), status.as_u16());
            spans.record(Span::new(
                self.hop,
                listener,
                service,
                method,
                status,
                request_id.as_str(),
                duration,
            ));
        }
        let selected = match mode {
            AccessLog::All => true,
            AccessLog::Off => false,
            AccessLog::Errors => status.as_u16() >= 400 || sampled,
        };
        if !selected || !log::log_enabled!(target: TARGET, log::Level::Info) {
            return;
        }
        log::info!(
            target: TARGET,
            request_id = request_id.as_str(),
            listener = listener,
            service = service,
            status = status.as_u16(),
            duration_ms = duration.as_secs_f64() * 1000.0;
            "{listener} {} {} {}",
            req.method(),
            req.path(),
            status.as_u16()
        );
    }
}
