//! The outbound listener: apps call it for other services. Each request is
//! routed to a service, a replica is picked by the worker's balancer, the
//! call is forwarded, its outcome reported to the replica, and the answer
//! streamed back.

mod retry;
mod route;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::error::PayloadError;
use actix_web::dev::Server;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse};
use log::{debug, info, warn};

pub use route::{resolve, Route};

use crate::balance::{Balancer, Pick, PickError};
use crate::config::{Config, GrpcCodes, Policy};
use crate::core::breaker::CallResult;
use crate::error::ProxyError;
use crate::http::client::{CallError, Peer};
use crate::http::cut::CallerCut;
use crate::http::forward::{self, HeaderPlan, RequestBody, Target};
use crate::http::grpc;
use crate::http::listener::{self, Arrival, Front};
use crate::http::request_id::IdText;
use crate::http::trailers::Trailers;
use crate::http::tunnel;
use crate::logging::summary::{self, Topic};
use crate::metrics::RequestSeries;
use crate::replica::{Answer, Endpoint, Lease};
use crate::service::{InFlight, LiveServices, Service, Settings};
use crate::tls::Origination;

/// The `listener` label of this listener's metrics and log lines.
pub const LISTENER: &str = "outbound";

/// What one worker needs to proxy: its client and balancer, and the shared table.
struct Worker {
    client: crate::http::client::Client,
    connect_timeout: Duration,
    balancer: Addr<Balancer>,
    table: Arc<LiveServices>,
    front: Front,
    /// The series of requests that named no configured service.
    unknown: RequestSeries,
}

/// The outbound listener's server on `socket`, receiving with `front` and
/// routing by the services in `table`; it runs once awaited or spawned.
pub fn server(
    config: &Config,
    front: Front,
    socket: std::net::TcpListener,
    table: Arc<LiveServices>,
) -> io::Result<Server> {
    let connect_timeout = config.defaults.connect_timeout;
    let idle_max = crate::http::client::MAX_IDLE_PER_REPLICA * config.workers as usize;
    front
        .metrics()
        .upstream_connections_idle_max
        .set(idle_max as i64);
    listener::serve(&front.clone(), socket, config.workers, None, move || {
        let worker = Worker {
            client: crate::http::client::Client::new(connect_timeout),
            connect_timeout,
            balancer: Balancer::new().start(),
            table: Arc::clone(&table),
            unknown: front.metrics().requests(LISTENER, "unknown"),
            front: front.clone(),
        };
        App::new()
            .app_data(web::Data::new(worker))
            .default_service(web::to(proxy))
    })
}

async fn proxy(req: HttpRequest, payload: web::Payload, worker: web::Data<Worker>) -> HttpResponse {
    let arrival = worker.front.arrive(&req);
    let table = worker.table.load();
    // Routed by the path as it is forwarded: `/a/../b/` is refused, not sent to `a`.
    let path = arrival
        .check_head(&req)
        .and_then(|()| listener::normal_path(req.uri().path()));
    let route = path.as_deref().map(|path| {
        resolve(&table, req.head(), path)
            .map(|route| (Arc::clone(route.service), route.path, route.keep_host))
    });
    drop(table);
    let (service, mut response) = match route {
        Err(refused) => (None, arrival.refuse(refused, None)),
        Ok(None) => (None, arrival.refuse(&ProxyError::UnknownService, None)),
        Ok(Some((service, path, keep_host))) => {
            let plan = HeaderPlan {
                keep_host,
                // The app is inside the trust boundary: its forwarding headers pass.
                trust_forwarding: true,
                trace: Some(arrival.hop()),
                ..HeaderPlan::default()
            };
            // Held for the whole request: a guard, not a reference count to bump.
            let settings = service.settings();
            let outgoing = Outgoing {
                service: &service,
                settings: &settings,
                path: &path,
                plan,
                req: &req,
                arrival: &arrival,
            };
            let response = call(&worker, outgoing, payload).await;
            (Some(service), response)
        }
    };
    let series = service
        .as_deref()
        .map_or(&worker.unknown, |s| &*s.metrics.requests);
    arrival.answer(&req, series, &mut response);
    response
}

/// An outbound request as routed: what every try at a replica needs.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    service: &'a Arc<Service>,
    /// The service's settings when the request arrived, kept to its end.
    settings: &'a Settings,
    /// The path to request from the replica.
    path: &'a str,
    plan: HeaderPlan<'a>,
    req: &'a HttpRequest,
    /// The request's id and trace hop; refusals are answered through it.
    arrival: &'a Arrival<'a>,
}

impl Outgoing<'_> {
    /// Our answer instead of a replica's, for this service.
    fn refuse(&self, error: &ProxyError) -> HttpResponse {
        self.arrival.refuse(error, Some(&self.service.name))
    }
}

/// One outbound request: a concurrency slot, then tries at replicas until
/// an answer is final, the retry policy or budget says stop, or time runs out.
async fn call(worker: &Worker, outgoing: Outgoing<'_>, payload: web::Payload) -> HttpResponse {
    let Outgoing {
        service,
        settings,
        path,
        plan,
        req,
        arrival,
    } = outgoing;
    let (id, request_id) = (arrival.id(), arrival.request_id());
    let name = &*service.name;
    let policy = &settings.policy;
    let Some(slot) = service.try_enter(policy.concurrency.max_in_flight) else {
        service.metrics.limit_reached.inc();
        let limit = policy.concurrency.max_in_flight;
        let message =
            format!("{name} already has {limit} requests in flight (concurrency.max_in_flight)");
        return outgoing.refuse(&ProxyError::ConcurrencyLimit(message));
    };
    if forward::upgrade_requested(req.headers()).is_some() {
        // Boxed: the rare upgrade's state would otherwise widen every call's future.
        return Box::pin(tunnel(worker, outgoing, payload, slot)).await;
    }
    let retry = &policy.retry;
    let grpc = arrival.grpc();
    let may_retry = retry.attempts > 1 && retry::method_allows_retry(req.method(), grpc, retry);
    let replay_limit = may_retry.then_some(retry.replay_buffer_bytes);
    let payload = arrival.body(req, payload);
    let mut body = match RequestBody::read(req, payload, replay_limit).await {
        Ok(body) => body,
        Err(error) => return outgoing.refuse(&error.refusal(req)),
    };
    // Timed from here: how long the client takes to send its body is its
    // own (bounded by client_body_timeout), not the replicas'.
    let started = Instant::now();
    let caller = grpc
        .then(|| grpc::caller_deadline(req.headers(), arrival.arrived()))
        .flatten();
    let deadline = Deadline::of(policy, caller, started);
    service.retry_budget.record_request();

    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut previous: Option<Try> = None;
    loop {
        let mut lease = match pick(worker, service, tried.clone()).await {
            Ok(lease) => lease,
            Err(error) => {
                if let Some(previous) = previous {
                    return previous.into_response(slot, outgoing);
                }
                return outgoing.refuse(&error);
            }
        };
        // The previous try's answer is dropped only now that another replica was found.
        drop(previous.take());
        let endpoint = Arc::clone(lease.endpoint());
        let try_started = Instant::now();
        let bound = deadline.try_bound(policy, try_started);
        let origination = origination(settings, &endpoint);
        let budget = deadline.caller_budget(try_started);
        let target = Target {
            address: &endpoint.address,
            origination,
            connections: Some(&endpoint.connections),
            path,
            headers: HeaderPlan {
                grpc_timeout: budget.as_ref(),
                ..plan
            },
            timeout: bound.wait,
            protocol: settings.protocol,
        };
        let result = forward::send(&worker.client, target, req, &mut body, request_id).await;
        let answer = match &result {
            Ok(response) if grpc => grpc_answer(response, policy),
            Ok(response) => Answer::Status(response.status().as_u16()),
            Err(error) => error.kind().map_or(Answer::Cancelled, Answer::Error),
        };
        match &result {
            // Its grpc-status comes in its trailers: reported when its
            // body ends (`Streaming::ended`).
            Ok(response)
                if grpc && answer == Answer::Status(200) && response.trailers().is_some() =>
            {
                lease.head_arrived()
            }
            _ => lease.report(answer),
        }
        let answered = Instant::now();
        if result.is_ok() {
            service
                .metrics
                .upstream_latency
                .observe((answered - try_started).as_secs_f64());
        }
        if !tried.is_empty() {
            match answer.call_result() {
                CallResult::Failure => service.metrics.retries_failed.inc(),
                _ => service.metrics.retries_succeeded.inc(),
            }
        }
        let attempt = Try {
            result,
            lease,
            endpoint,
            bound,
        };
        let tries = tried.len() as u32 + 1;
        let again = may_retry
            && tries < retry.attempts
            && body.replayable()
            && retry::answer_is_retried(answer, attempt.bound.per_try(), retry);
        if !again {
            log_if_slow(policy, &attempt.endpoint, answered - started, id);
            return attempt.into_response(slot, outgoing);
        }
        if !service.retry_budget.try_retry() {
            service.metrics.budget_exhausted.inc();
            let topic = Topic {
                kind: "retry_budget_spent",
                listener: LISTENER,
                service: name,
            };
            if summary::first(topic) {
                warn!("request {id}: {name}: retry budget spent; answering with the last try");
            }
            return attempt.into_response(slot, outgoing);
        }
        let delay = attempt
            .retry_after(retry.max_delay)
            .unwrap_or_else(|| retry::backoff(tries, retry, &mut rand::rng()));
        if Instant::now() + delay >= deadline.at {
            debug!("request {id}: {name}: no time left for another try");
            return attempt.into_response(slot, outgoing);
        }
        info!(
            "request {id}: retrying {name} in {}ms after {answer:?} from {}",
            delay.as_millis(),
            attempt.endpoint.address
        );
        actix_rt::time::sleep(delay).await;
        tried.push(Arc::clone(&attempt.endpoint));
        previous = Some(attempt);
    }
}

/// How long one try may wait for its answer, and the key that says so.
#[derive(Clone, Copy)]
struct TryBound {
    /// The wait: `per_try_timeout` when set, or what is left of `timeout` if less.
    wait: Duration,
    /// The key that bounded the wait, and its configured value.
    key: (&'static str, Duration),
}

impl TryBound {
    /// Whether `per_try_timeout` bounded the try (not what was left of `timeout`).
    fn per_try(&self) -> bool {
        self.key.0 == "per_try_timeout"
    }
}

/// How a call to `endpoint` is made over TLS: as its service's `tls` says
/// (a block, or its static endpoint written `https://`), else as its
/// discovery source listed it; `None`: plain text.
fn origination<'a>(settings: &'a Settings, endpoint: &'a Endpoint) -> Option<&'a Arc<Origination>> {
    settings
        .tls
        .as_ref()
        .and_then(|tls| tls.for_replica(&endpoint.address))
        .or(endpoint.tls.as_ref())
}

/// When a request's time is up: `timeout` after its body was read, or a
/// gRPC caller's own deadline (its `grpc-timeout`) when that comes first.
#[derive(Clone, Copy)]
struct Deadline {
    /// The earlier of the two.
    at: Instant,
    /// The key that set `at`, and its value.
    key: (&'static str, Duration),
    /// The gRPC caller's deadline, which each replica is told.
    caller: Option<Instant>,
}

impl Deadline {
    /// The deadline of a request whose body was read at `started`, under
    /// `policy`, with the gRPC `caller`'s deadline and its `grpc-timeout`.
    fn of(policy: &Policy, caller: Option<(Instant, Duration)>, started: Instant) -> Deadline {
        let by_timeout = Deadline {
            at: started + policy.timeout,
            key: ("timeout", policy.timeout),
            caller: caller.map(|(at, _)| at),
        };
        match caller {
            Some((at, given)) if at < by_timeout.at => Deadline {
                at,
                key: ("grpc-timeout", given),
                ..by_timeout
            },
            _ => by_timeout,
        }
    }

    /// The bound of a try starting `now`: `per_try_timeout` when it is set
    /// and shorter than what is left, else what is left.
    fn try_bound(&self, policy: &Policy, now: Instant) -> TryBound {
        let remaining = self.at.saturating_duration_since(now);
        match policy.per_try_timeout {
            Some(per_try) if per_try < remaining => TryBound {
                wait: per_try,
                key: ("per_try_timeout", per_try),
            },
            _ => TryBound {
                wait: remaining,
                key: self.key,
            },
        }
    }

    /// The `grpc-timeout` a replica called `now` is told: what is left of
    /// the caller's deadline (not of `timeout`, which bounds only the wait
    /// for the answer's head: a stream may outlive it).
    fn caller_budget(&self, now: Instant) -> Option<HeaderValue> {
        self.caller
            .map(|at| grpc::timeout_value(at.saturating_duration_since(now)))
    }
}

/// The outcome of a replica's `response` to a gRPC request: the
/// `grpc-status` of a trailers-only answer (HTTP 200), a failure when
/// `circuit_breaker.grpc_failures` names it; otherwise its HTTP status (an
/// HTTP error, or a 200 whose `grpc-status` comes in the trailers).
fn grpc_answer(response: &forward::UpstreamResponse, policy: &Policy) -> Answer {
    match grpc::status_in(response.headers()) {
        Some(code) if response.status() == StatusCode::OK => {
            Answer::grpc(code, policy.circuit_breaker.grpc_failures)
        }
        _ => Answer::Status(response.status().as_u16()),
    }
}

/// Asks this worker's balancer for a replica, avoiding those in `avoid`.
async fn pick(
    worker: &Worker,
    service: &Arc<Service>,
    avoid: Vec<Arc<Endpoint>>,
) -> Result<Lease, ProxyError> {
    let name = &service.name;
    let pick = Pick {
        service: Arc::clone(service),
        avoid,
    };
    match worker.balancer.send(pick).await {
        Ok(Ok(lease)) => Ok(lease),
        Ok(Err(PickError::NoReplicas)) => Err(ProxyError::NoHealthyReplica(format!(
            "service {name} has no replicas"
        ))),
        Ok(Err(PickError::AllRefused)) => Err(ProxyError::NoHealthyReplica(format!(
            "every replica of {name} has its circuit breaker open"
        ))),
        Err(err) => Err(ProxyError::NoHealthyReplica(format!(
            "the balancer of this worker is gone: {err}"
        ))),
    }
}

/// A protocol upgrade (WebSocket): one try, then bytes relayed both ways.
async fn tunnel(
    worker: &Worker,
    outgoing: Outgoing<'_>,
    payload: web::Payload,
    slot: InFlight,
) -> HttpResponse {
    let mut lease = match pick(worker, outgoing.service, Vec::new()).await {
        Ok(lease) => lease,
        Err(error) => return outgoing.refuse(&error),
    };
    let endpoint = Arc::clone(lease.endpoint());
    let policy = &outgoing.settings.policy;
    let now = Instant::now();
    let bound = Deadline::of(policy, None, now).try_bound(policy, now);
    let tunnel = tunnel::Tunnel {
        address: &endpoint.address,
        origination: origination(outgoing.settings, &endpoint),
        path: outgoing.path,
        query: outgoing.req.uri().query(),
        subprotocols: None,
        headers: outgoing.plan,
        connect_timeout: worker.connect_timeout,
        answer_timeout: bound.wait,
    };
    let arrival = outgoing.arrival;
    match tunnel::open(tunnel, outgoing.req, arrival.request_id()).await {
        Ok(handshake) => {
            lease.report(Answer::Status(handshake.status().as_u16()));
            info!(
                "request {}: {endpoint}: upgrade answered {}",
                arrival.id(),
                handshake.status()
            );
            handshake.into_response(payload, (lease, slot), worker.front.stopping())
        }
        Err(error) => {
            lease.report(error.kind().map_or(Answer::Cancelled, Answer::Error));
            Try {
                result: Err(error),
                lease,
                endpoint,
                bound,
            }
            .into_response(slot, outgoing)
        }
    }
}

/// One try at one replica and what came of it.
struct Try {
    result: Result<forward::UpstreamResponse, CallError>,
    lease: Lease,
    endpoint: Arc<Endpoint>,
    bound: TryBound,
}

impl Try {
    /// The `Retry-After` seconds a replica asked for, capped at `max`.
    fn retry_after(&self, max: Duration) -> Option<Duration> {
        let response = self.result.as_ref().ok()?;
        let value = response.headers().get(RETRY_AFTER)?.to_str().ok();
        retry::retry_after(value, max)
    }

    /// The app's answer: the replica's response streamed back, or ours.
    fn into_response(self, slot: InFlight, outgoing: Outgoing<'_>) -> HttpResponse {
        match self.result {
            Ok(response) => {
                let grpc_failures = outgoing.settings.policy.circuit_breaker.grpc_failures;
                let outcome_in_trailers = if self.lease.unreported() {
                    response.trailers().cloned().map(|t| (t, grpc_failures))
                } else {
                    None
                };
                let streaming = Streaming {
                    lease: self.lease,
                    _slot: slot,
                    request_id: outgoing.arrival.request_id().clone(),
                    outcome_in_trailers,
                };
                forward::respond(response, streaming)
            }
            Err(error) => {
                let peer = Peer {
                    name: &*self.endpoint,
                    bound: self.bound.key,
                };
                outgoing.refuse(&error.refusal(outgoing.req, peer))
            }
        }
    }
}

/// What an outbound answer holds while its body streams: the lease on the
/// replica and the service's concurrency slot; for a gRPC answer whose
/// `grpc-status` comes in its trailers, those trailers and the codes that
/// fail, to report the outcome when the body ends.
struct Streaming {
    lease: Lease,
    _slot: InFlight,
    request_id: HeaderValue,
    outcome_in_trailers: Option<(Trailers, GrpcCodes)>,
}

impl forward::StreamGuard for Streaming {
    fn broke(&mut self, error: &PayloadError) {
        if CallerCut::of(error).is_some() {
            // Cut by the caller's own body (over max_body_bytes, or broken
            // off): the replica did nothing wrong (the call counts as
            // cancelled).
            debug!(
                "request {}: {error} after the answer's head; the stream to {} was reset",
                IdText(&self.request_id),
                self.lease.endpoint()
            );
            return;
        }
        warn!(
            "request {}: {}: the answer broke off mid-body: {error}",
            IdText(&self.request_id),
            self.lease.endpoint()
        );
        self.lease.report_broken_body();
    }

    /// A gRPC answer's outcome is the `grpc-status` of its trailers (an
    /// answer that ended without one counts as the HTTP 200 it had).
    fn ended(&mut self) {
        if let Some((trailers, failures)) = self.outcome_in_trailers.take() {
            let answer = grpc::status_in_trailers(&trailers)
                .map_or(Answer::Status(200), |code| Answer::grpc(code, failures));
            self.lease.report(answer);
        }
    }
}

fn log_if_slow(policy: &Policy, endpoint: &Endpoint, took: Duration, id: IdText<'_>) {
    if took > policy.slow_request_threshold {
        warn!(
            "request {id}: slow: {endpoint} answered after {}ms (slow_request_threshold {}ms)",
            took.as_millis(),
            policy.slow_request_threshold.as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_earlier_of_timeout_and_the_callers_deadline_bounds_a_try() {
        let policy = Policy::default();
        let started = Instant::now();
        let plain = Deadline::of(&policy, None, started);
        let bound = plain.try_bound(&policy, started);
        assert_eq!((bound.wait, bound.key.0), (policy.timeout, "timeout"));
        assert!(
            plain.caller_budget(started).is_none(),
            "no grpc-timeout set"
        );

        let short = Deadline::of(&policy, Some((started + ms(200), ms(200))), started);
        let bound = short.try_bound(&policy, started + ms(50));
        assert_eq!(bound.wait, ms(150));
        assert_eq!(bound.key, ("grpc-timeout", ms(200)));
        let told = short.caller_budget(started + ms(50)).expect("a budget");
        assert_eq!(grpc::timeout_in(&header_map(told)), Some(ms(150)));

        // A longer caller deadline: timeout bounds the wait, the replica
        // is still told the caller's.
        let long = Deadline::of(&policy, Some((started + ms(60_000), ms(60_000))), started);
        let bound = long.try_bound(&policy, started);
        assert_eq!((bound.wait, bound.key.0), (policy.timeout, "timeout"));
        let told = long.caller_budget(started).expect("a budget");
        assert_eq!(grpc::timeout_in(&header_map(told)), Some(ms(60_000)));
    }

    fn header_map(grpc_timeout: HeaderValue) -> actix_web::http::header::HeaderMap {
        let mut headers = actix_web::http::header::HeaderMap::new();
        headers.insert(grpc::GRPC_TIMEOUT.clone(), grpc_timeout);
        headers
    }
}
