//! One Prometheus registry per sidecar and every metric family it records.
//! Labels are bounded: services come from config, replicas from the live set
//! (their series are deleted when the replica goes), methods are normalised,
//! and no raw path or user id ever becomes a label.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use prometheus::{
    core::Collector, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::core::grpc::GrpcCode;

/// Histogram buckets suited to a sidecar: 50µs to 10s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The registry and every family the proxy, replicas and supervisor record into.
pub struct Metrics {
    /// Served at the admin listener's `/metrics`.
    pub registry: Registry,
    /// Requests answered, by listener, service, method and status.
    pub http_requests: IntCounterVec,
    /// Time to the response head, by listener and service.
    pub http_request_duration: HistogramVec,
    /// Requests being handled now, by listener.
    pub http_requests_in_progress: IntGaugeVec,
    /// Requests a stopping listener dropped before answering, by listener.
    pub requests_cut: IntCounterVec,
    /// Answers received from replicas, by service, replica and status.
    pub upstream_requests: IntCounterVec,
    /// Replica latency to the response head, by service.
    pub upstream_request_duration: HistogramVec,
    /// Calls to replicas that got no answer, by service, replica and kind.
    pub upstream_errors: IntCounterVec,
    /// Requests in flight per replica.
    pub replica_load: IntGaugeVec,
    /// 1 while a replica's breaker is closed.
    pub replica_healthy: IntGaugeVec,
    /// Breaker state per replica: 0 closed, 1 open, 2 half_open.
    pub breaker_state: IntGaugeVec,
    /// Failures the breakers counted.
    pub breaker_failures: IntCounterVec,
    /// Successes the breakers counted.
    pub breaker_successes: IntCounterVec,
    /// Requests turned away because every breaker of the service refused traffic.
    pub breaker_rejected: IntCounterVec,
    /// Breaker state changes.
    pub breaker_transitions: IntCounterVec,
    /// Retries made, by service and how the retried try went.
    pub retries: IntCounterVec,
    /// Retries refused because the service's retry budget was spent.
    pub retry_budget_exhausted: IntCounterVec,
    /// Requests holding a concurrency slot, by scope and service.
    pub concurrency_in_flight: IntGaugeVec,
    /// Requests turned away with 429 by a concurrency limit.
    pub concurrency_limit_reached: IntCounterVec,
    /// Inbound credential checks by result (`ok`, or why they failed).
    pub jwt_validations: IntCounterVec,
    /// Inbound requests refused by a rate limit, by scope.
    pub rate_limited: IntCounterVec,
    /// Request heads refused before they were parsed, by listener and
    /// reason (`bare_lf`: a head line ended in LF without CR;
    /// `http2_flood`: an HTTP/2 connection closed for a flood;
    /// `http2_header_list`: an HTTP/2 head past the header list limit).
    pub http_heads_refused: IntCounterVec,
    /// HTTP/2 streams the sidecar reset, by listener and error code
    /// (`refused_stream`, `cancel`, `protocol_error`, ...), whether its
    /// dispatcher or the HTTP/2 server reset them.
    pub http2_streams_reset: IntCounterVec,
    /// GET answers served from the cache.
    pub cache_hits: IntCounter,
    /// Cacheable GETs the app had to answer.
    pub cache_misses: IntCounter,
    /// Cache lookups or stores that failed (the request went to the app).
    pub cache_errors: IntCounter,
    /// Redis calls that failed, by operation and node role.
    pub redis_errors: IntCounterVec,
    /// Redis pool connections by state (`idle`, `in_use`) and node role.
    pub redis_pool_connections: IntGaugeVec,
    /// Time each Redis call took, answered or failed, by operation.
    pub redis_command_duration: HistogramVec,
    /// Times the sidecar found a new master through the sentinels (a
    /// failover it followed).
    pub redis_failovers: IntCounter,
    /// Syncs of approximate rate limits with the store, by result (`ok`,
    /// `error`), timed from their start to their answer taken.
    pub rate_limit_sync_duration: HistogramVec,
    /// Pooled keep-alive connections to each replica by state (`idle`,
    /// `in_use`), over every outbound worker.
    pub upstream_connections: IntGaugeVec,
    /// The most idle connections kept per replica, over every outbound
    /// worker; connections in use have no cap of their own.
    pub upstream_connections_idle_max: IntGauge,
    /// Discovery syncs by source and result.
    pub discovery_syncs: IntCounterVec,
    /// Replicas known per service.
    pub discovery_replicas: IntGaugeVec,
    /// Config reloads by result (`ok`, `invalid`, `restart_needed`).
    pub config_reloads: IntCounterVec,
    /// TLS handshakes on the listeners, by listener and result (`ok`,
    /// `no_client_cert`, `unknown_ca`, `expired`, `bad_identity`, `protocol`).
    pub tls_handshakes: IntCounterVec,
    /// When each certificate the sidecar presents expires (Unix seconds),
    /// by the key that names it (`mesh.identity`, `listeners.inbound.tls`).
    pub tls_certificate_expiry: IntGaugeVec,
    /// Re-reads of rotated certificate files by result (`ok`: the new
    /// chain is in use; `error`: it could not be, the old one stays).
    pub tls_certificate_reloads: IntCounterVec,
    /// Answers to gRPC requests (relayed or the sidecar's own), by
    /// listener, service and `grpc-status` code name.
    pub grpc_responses: IntCounterVec,
}

/// How many gRPC status codes there are (OK = 0 ... UNAUTHENTICATED = 16).
const GRPC_CODES: usize = 17;

/// The methods whose `http_requests_total` series are kept once first used.
const COMMON_METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
];
/// The statuses whose `http_requests_total` series are kept once first used.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504,
];

/// `http_requests_total` and `http_request_duration_seconds` of one
/// listener and service. The duration series, and the counter of each
/// common method and status, are resolved the first time they are used and
/// kept (so a series appears only once it counts something); any other
/// pair is looked up in the family each time.
pub struct RequestSeries {
    listener: &'static str,
    service: Arc<str>,
    family: IntCounterVec,
    durations: HistogramVec,
    duration: OnceLock<Histogram>,
    common: Box<[OnceLock<IntCounter>]>,
    grpc: Arc<GrpcSeries>,
}

/// The `grpc_responses_total` series of one listener and service, by code
/// number, each resolved when first counted; shared with the answers whose
/// code comes in their trailers, counted when their body ends.
pub struct GrpcSeries {
    listener: &'static str,
    service: Arc<str>,
    family: IntCounterVec,
    codes: [OnceLock<IntCounter>; GRPC_CODES],
}

impl GrpcSeries {
    /// Counts one answer to a gRPC request with `grpc-status` `code`.
    pub fn record(&self, code: GrpcCode) {
        self.codes[code.number() as usize]
            .get_or_init(|| {
                self.family
                    .with_label_values(&[self.listener, &*self.service, code.name()])
            })
            .inc();
    }
}

impl RequestSeries {
    /// The `service` label.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Counts one answer and the time it took.
    pub fn record(&self, method: &Method, status: StatusCode, duration: Duration) {
        self.duration
            .get_or_init(|| {
                self.durations
                    .with_label_values(&[self.listener, &*self.service])
            })
            .observe(duration.as_secs_f64());
        let method_index = COMMON_METHODS.iter().position(|m| m == method);
        let status_index = COMMON_STATUSES.iter().position(|&s| s == status.as_u16());
        let labels = || {
            [
                self.listener,
                &*self.service,
                method_label(method),
                status.as_str(),
            ]
        };
        match (method_index, status_index) {
            (Some(m), Some(s)) => self.common[m * COMMON_STATUSES.len() + s]
                .get_or_init(|| self.family.with_label_values(&labels()))
                .inc(),
            _ => self.family.with_label_values(&labels()).inc(),
        }
    }

    /// The `grpc_responses_total` series of the same listener and service.
    pub fn grpc(&self) -> &Arc<GrpcSeries> {
        &self.grpc
    }
}

/// The per-service series, resolved once at start.
#[derive(Clone)]
pub struct ServiceMetrics {
    /// `http_requests_total` and `http_request_duration_seconds` at the outbound listener.
    pub requests: Arc<RequestSeries>,
    /// `upstream_request_duration_seconds`.
    pub upstream_latency: prometheus::Histogram,
    /// `retries_total{outcome="success"}`.
    pub retries_succeeded: IntCounter,
    /// `retries_total{outcome="failure"}`.
    pub retries_failed: IntCounter,
    /// `retry_budget_exhausted_total`.
    pub budget_exhausted: IntCounter,
    /// `concurrency_in_flight{scope="service"}`.
    pub in_flight: IntGauge,
    /// `concurrency_limit_reached_total{scope="service"}`.
    pub limit_reached: IntCounter,
}

/// The per-replica series, resolved once when the replica starts.
#[derive(Clone)]
pub struct ReplicaMetrics {
    /// `replica_load`: the replica's in-flight counter itself.
    pub load: IntGauge,
    /// `replica_healthy`.
    pub healthy: IntGauge,
    /// `circuit_breaker_state`.
    pub state: IntGauge,
    /// `circuit_breaker_failures_total`.
    pub failures: IntCounter,
    /// `circuit_breaker_successes_total`.
    pub successes: IntCounter,
    /// `circuit_breaker_rejected_total`.
    pub rejected: IntCounter,
    /// `upstream_connections`, which the workers' pools keep.
    pub connections: Arc<PoolGauges>,
}

/// `upstream_connections` of one replica: its pooled connections in use
/// and idle, which every worker's pool counts in. One per replica, shared,
/// so a pool can tell whether a connection is counted for the replica a
/// request is for.
pub struct PoolGauges {
    /// `state="idle"`: kept for the next request.
    pub idle: IntGauge,
    /// `state="in_use"`: carrying a request or its answer's body.
    pub in_use: IntGauge,
}

impl Metrics {
    /// Creates and registers every family.
    ///
    /// # Panics
    /// Only on a programming error: a family defined twice or with a bad name.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("outrigger");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(opts(name, help), labels))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntGaugeVec::new(opts(name, help), labels))
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help)
                .namespace("outrigger")
                .buckets(LATENCY_BUCKETS.to_vec());
            registered(&registry, HistogramVec::new(opts, labels))
        };
        let plain_counter =
            |name: &str, help: &str| registered(&registry, IntCounter::with_opts(opts(name, help)));
        let plain_gauge =
            |name: &str, help: &str| registered(&registry, IntGauge::with_opts(opts(name, help)));
        let replica = &["service", "replica"];
        Metrics {
            http_requests: counter(
                "http_requests_total",
                "Requests answered by the sidecar.",
                &["listener", "service", "method", "status"],
            ),
            http_request_duration: histogram(
                "http_request_duration_seconds",
                "Time from request to response head.",
                &["listener", "service"],
            ),
            http_requests_in_progress: gauge(
                "http_requests_in_progress",
                "Requests being handled now.",
                &["listener"],
            ),
            requests_cut: counter(
                "requests_cut_total",
                "Requests a stopping listener dropped unanswered (shutdown_grace ran out, or a second stop signal).",
                &["listener"],
            ),
            upstream_requests: counter(
                "upstream_requests_total",
                "Answers received from replicas.",
                &["service", "replica", "status"],
            ),
            upstream_request_duration: histogram(
                "upstream_request_duration_seconds",
                "Replica latency to the response head.",
                &["service"],
            ),
            upstream_errors: counter(
                "upstream_errors_total",
                "Calls to replicas that got no answer.",
                &["service", "replica", "kind"],
            ),
            replica_load: gauge("replica_load", "Requests in flight per replica.", replica),
            replica_healthy: gauge(
                "replica_healthy",
                "1 while the replica's breaker is closed.",
                replica,
            ),
            breaker_state: gauge(
                "circuit_breaker_state",
                "Breaker state: 0 closed, 1 open, 2 half_open.",
                replica,
            ),
            breaker_failures: counter(
                "circuit_breaker_failures_total",
                "Failed calls counted by the breakers.",
                replica,
            ),
            breaker_successes: counter(
                "circuit_breaker_successes_total",
                "Successful calls counted by the breakers.",
                replica,
            ),
            breaker_rejected: counter(
                "circuit_breaker_rejected_total",
                "Requests turned away because every breaker of the service refused traffic.",
                replica,
            ),
            breaker_transitions: counter(
                "circuit_breaker_transitions_total",
                "Breaker state changes.",
                &["from", "to"],
            ),
            retries: counter(
                "retries_total",
                "Retries made, by how the retried try went.",
                &["service", "outcome"],
            ),
            retry_budget_exhausted: counter(
                "retry_budget_exhausted_total",
                "Retries refused because the retry budget was spent.",
                &["service"],
            ),
            concurrency_in_flight: gauge(
                "concurrency_in_flight",
                "Requests holding a concurrency slot.",
                &["scope", "service"],
            ),
            concurrency_limit_reached: counter(
                "concurrency_limit_reached_total",
                "Requests turned away with 429 by a concurrency limit.",
                &["scope", "service"],
            ),
            jwt_validations: counter(
                "jwt_validations_total",
                "Inbound credential checks by result.",
                &["result"],
            ),
            rate_limited: counter(
                "rate_limited_total",
                "Inbound requests refused by a rate limit.",
                &["scope"],
            ),
            http_heads_refused: counter(
                "http_heads_refused_total",
                "Request heads refused before they were parsed (400, connection closed; 431 for an HTTP/2 header list past its limit), and HTTP/2 connections closed for a flood.",
                &["listener", "reason"],
            ),
            http2_streams_reset: counter(
                "http2_streams_reset_total",
                "HTTP/2 streams the sidecar reset (RST_STREAM), by error code: refused_stream for a stream past the limit, cancel for a client that granted no window for client_write_timeout, and others.",
                &["listener", "reason"],
            ),
            redis_errors: counter(
                "redis_errors_total",
                "Redis calls that failed, by the role of the node they were for.",
                &["op", "role"],
            ),
            cache_hits: plain_counter("cache_hits_total", "GET answers served from the cache."),
            cache_misses: plain_counter(
                "cache_misses_total",
                "Cacheable GETs the app had to answer.",
            ),
            cache_errors: plain_counter(
                "cache_errors_total",
                "Cache lookups or stores that failed; the request went to the app.",
            ),
            redis_pool_connections: gauge(
                "redis_pool_connections",
                "Redis pool connections by state and the role of the node they reach.",
                &["state", "role"],
            ),
            redis_command_duration: histogram(
                "redis_command_duration_seconds",
                "Time a Redis call took, answered or failed (bounded by redis.timeout).",
                &["op"],
            ),
            redis_failovers: plain_counter(
                "redis_failovers_total",
                "Times the sentinels named a new master and the sidecar moved to it.",
            ),
            rate_limit_sync_duration: histogram(
                "rate_limit_sync_duration_seconds",
                "Syncs of approximate rate limits with the store, from their start to their answer taken.",
                &["result"],
            ),
            upstream_connections: gauge(
                "upstream_connections",
                "Pooled keep-alive connections to each replica by state (idle, in_use), over every worker.",
                &["service", "replica", "state"],
            ),
            upstream_connections_idle_max: plain_gauge(
                "upstream_connections_idle_max",
                "Most idle connections kept per replica, over every worker (in use: no cap of their own).",
            ),
            discovery_syncs: counter(
                "discovery_syncs_total",
                "Discovery syncs by source and result.",
                &["source", "result"],
            ),
            discovery_replicas: gauge(
                "discovery_replicas",
                "Replicas known per service.",
                &["service"],
            ),
            config_reloads: counter(
                "config_reloads_total",
                "Config reloads by result: ok, invalid (rejected), restart_needed (applied but for keys that need a restart).",
                &["result"],
            ),
            tls_handshakes: counter(
                "tls_handshakes_total",
                "TLS handshakes on the listeners by result: ok, no_client_cert, unknown_ca, expired, bad_identity, protocol.",
                &["listener", "result"],
            ),
            tls_certificate_expiry: gauge(
                "tls_certificate_expiry_timestamp_seconds",
                "When each certificate the sidecar presents expires, in Unix seconds, by the key that names it.",
                &["name"],
            ),
            tls_certificate_reloads: counter(
                "tls_certificate_reloads_total",
                "Re-reads of rotated certificate files by result: ok (the new chain is in use), error (unusable: the old chain stays).",
                &["result"],
            ),
            grpc_responses: counter(
                "grpc_responses_total",
                "Answers to gRPC requests (relayed or the sidecar's own) by grpc-status code name.",
                &["listener", "service", "code"],
            ),
            registry,
        }
    }

    /// The request series of `service` at `listener` (`outbound`, `inbound`).
    pub fn requests(&self, listener: &'static str, service: &str) -> RequestSeries {
        let service: Arc<str> = Arc::from(service);
        RequestSeries {
            listener,
            service: Arc::clone(&service),
            family: self.http_requests.clone(),
            durations: self.http_request_duration.clone(),
            duration: OnceLock::new(),
            common: (0..COMMON_METHODS.len() * COMMON_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            grpc: Arc::new(GrpcSeries {
                listener,
                service,
                family: self.grpc_responses.clone(),
                codes: std::array::from_fn(|_| OnceLock::new()),
            }),
        }
    }

    /// Resolves the series of one service's outbound side.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        ServiceMetrics {
            requests: Arc::new(self.requests("outbound", service)),
            upstream_latency: self.upstream_request_duration.with_label_values(&[service]),
            retries_succeeded: self.retries.with_label_values(&[service, "success"]),
            retries_failed: self.retries.with_label_values(&[service, "failure"]),
            budget_exhausted: self.retry_budget_exhausted.with_label_values(&[service]),
            in_flight: self
                .concurrency_in_flight
                .with_label_values(&["service", service]),
            limit_reached: self
                .concurrency_limit_reached
                .with_label_values(&["service", service]),
        }
    }

    /// Resolves the series of one replica.
    pub fn replica(&self, service: &str, replica: &str) -> ReplicaMetrics {
        let labels = [service, replica];
        ReplicaMetrics {
            load: self.replica_load.with_label_values(&labels),
            healthy: self.replica_healthy.with_label_values(&labels),
            state: self.breaker_state.with_label_values(&labels),
            failures: self.breaker_failures.with_label_values(&labels),
            successes: self.breaker_successes.with_label_values(&labels),
            rejected: self.breaker_rejected.with_label_values(&labels),
            connections: Arc::new(PoolGauges {
                idle: self
                    .upstream_connections
                    .with_label_values(&[service, replica, "idle"]),
                in_use: self
                    .upstream_connections
                    .with_label_values(&[service, replica, "in_use"]),
            }),
        }
    }

    /// Deletes every series of a replica that left, so labels stay bounded;
    /// `statuses` and `error_kinds` are the label values it recorded.
    pub fn forget_replica(
        &self,
        service: &str,
        replica: &str,
        statuses: &[u16],
        error_kinds: &[&str],
    ) {
        let labels = [service, replica];
        for family in [
            &self.replica_load,
            &self.replica_healthy,
            &self.breaker_state,
        ] {
            let _ = family.remove_label_values(&labels);
        }
        for family in [
            &self.breaker_failures,
            &self.breaker_successes,
            &self.breaker_rejected,
        ] {
            let _ = family.remove_label_values(&labels);
        }
        for state in ["idle", "in_use"] {
            let _ = self
                .upstream_connections
                .remove_label_values(&[service, replica, state]);
        }
        for status in statuses {
            let status = status.to_string();
            let _ = self
                .upstream_requests
                .remove_label_values(&[service, replica, &status]);
        }
        for kind in error_kinds {
            let _ = self
                .upstream_errors
                .remove_label_values(&[service, replica, kind]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A method as a label value: the standard ones by name, anything else `OTHER`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// `family`, registered in `registry`.
///
/// # Panics
/// Only on a programming error: a bad definition, or two families of one name.
fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    family: prometheus::Result<C>,
) -> C {
    let family = family.expect("valid metric definition");
    registry
        .register(Box::new(family.clone()))
        .expect("unique metric name");
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_that_leaves_takes_its_series_with_it() {
        let metrics = Metrics::new();
        let replica = metrics.replica("api", "127.0.0.1:1");
        replica.load.inc();
        replica.connections.idle.inc();
        metrics
            .upstream_requests
            .with_label_values(&["api", "127.0.0.1:1", "200"])
            .inc();
        metrics
            .upstream_requests
            .with_label_values(&["api", "127.0.0.1:2", "200"])
            .inc();
        metrics
            .upstream_errors
            .with_label_values(&["api", "127.0.0.1:1", "connect"])
            .inc();
        metrics.forget_replica("api", "127.0.0.1:1", &[200], &["connect"]);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&metrics.registry.gather())
            .expect("encodes");
        assert!(!text.contains("127.0.0.1:1"), "{text}");
        assert!(text.contains("127.0.0.1:2"));
    }

    #[test]
    fn request_series_count_common_and_unusual_answers_under_their_labels() {
        let metrics = Metrics::new();
        let series = metrics.requests("outbound", "api");
        let text = || {
            prometheus::TextEncoder::new()
                .encode_to_string(&metrics.registry.gather())
                .expect("encodes")
        };
        assert!(!text().contains("service=\"api\""), "no series before use");
        let took = Duration::from_millis(2);
        series.record(&Method::GET, StatusCode::OK, took);
        series.record(&Method::GET, StatusCode::OK, took);
        let teapot = StatusCode::from_u16(418).expect("status");
        series.record(&Method::OPTIONS, teapot, took);
        let count = |method: &str, status: &str| {
            metrics
                .http_requests
                .with_label_values(&["outbound", "api", method, status])
                .get()
        };
        assert_eq!((count("GET", "200"), count("OPTIONS", "418")), (2, 1));
        let duration = metrics
            .http_request_duration
            .with_label_values(&["outbound", "api"]);
        assert_eq!(duration.get_sample_count(), 3);
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let custom = Method::from_bytes(b"BREW").expect("valid token");
        assert_eq!(method_label(&custom), "OTHER");
    }
}
