//! One upstream replica: the actor that owns its circuit breaker and load
//! figures, the [`Endpoint`] it shares with balancers and handlers, and the
//! [`Lease`] a handler holds while it calls the replica.
//!
//! Handlers never wait on this actor: they read the endpoint's published
//! status and report each outcome with `do_send`.

mod batch;
mod status;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use log::{info, warn};
use prometheus::IntCounter;
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use batch::OUTCOME_BATCH;
pub use status::{now_millis, Admission, ReplicaStatus};
// The breaker's types appear in this module's public API, and
// benches/breaker.rs drives the state machine as the actor does.
pub use crate::core::breaker::{
    BreakerParams, BreakerState, BreakerStats, CallResult, CircuitBreaker,
};

use crate::config::{BreakerConfig, GrpcCode, GrpcCodes, Policy};
use crate::core::backoff::Backoff;
use crate::core::breaker::Transition;
use crate::core::ewma::Ewma;
use crate::http::client::UpstreamError;
use crate::metrics::{Metrics, PoolGauges, ReplicaMetrics};
use crate::tls::Origination;

/// How often a draining replica checks whether its last call finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Cooldowns are spread by up to this fraction so replicas do not probe in step.
const COOLDOWN_JITTER: f64 = 0.1;
/// The least latency a failed or throttled answer counts as in the latency
/// average, so `p2c_ewma` steers away from a replica that fails fast.
const FAILURE_PENALTY: Duration = Duration::from_millis(250);

/// A replica as balancers and handlers see it: address, live status, and the
/// way to its actor.
pub struct Endpoint {
    /// The service the replica belongs to.
    pub service: Arc<str>,
    /// `host:port`, as discovery gave it; also the `replica` label.
    pub address: Arc<str>,
    /// Breaker state, load and latency, published by the actor.
    pub status: ReplicaStatus,
    /// Its `upstream_connections`, which the workers' pools count in.
    pub connections: Arc<PoolGauges>,
    /// How it is called over TLS when its source lists it as HTTPS and its
    /// service's `tls` does not cover it; `None`: as the service says.
    pub tls: Option<Arc<Origination>>,
    actor: Addr<Replica>,
}

/// `service/address`, as log lines and answers name a replica.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.address)
    }
}

impl Endpoint {
    /// Asks the replica actor for its breaker report.
    pub async fn inspect(&self) -> Option<BreakerReport> {
        self.actor.send(Inspect).await.ok()
    }

    /// Closes the replica's breaker (admin reset).
    pub fn reset_breaker(&self) {
        self.actor.do_send(ResetBreaker);
    }

    /// Gives the replica actor `policy`'s breaker thresholds and slow start
    /// (a config reload); see [`CircuitBreaker::set_params`] for what
    /// happens to the current state.
    pub fn retune(&self, policy: &Policy) {
        self.actor.do_send(Retune {
            breaker: policy.circuit_breaker.clone(),
            slow_start: policy.slow_start,
        });
    }

    /// Stops picking it up: the actor stops once its in-flight calls finish,
    /// or after `deadline` at the latest.
    pub fn drain(&self, deadline: Duration) {
        self.actor.do_send(Drain { deadline });
    }
}

/// What became of one call to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The replica answered with this status.
    Status(u16),
    /// The replica answered a gRPC request (HTTP 200) with this
    /// `grpc-status`, which `circuit_breaker.grpc_failures` counts as a
    /// `failure` or not.
    Grpc {
        /// The code.
        code: GrpcCode,
        /// Whether it is one of the service's `grpc_failures`.
        failure: bool,
    },
    /// The replica could not be reached or gave no usable answer.
    Error(UpstreamError),
    /// The caller went away first.
    Cancelled,
}

impl Answer {
    /// A replica's answer to a gRPC request with `grpc-status` `code`, a
    /// failure when `failures` (`circuit_breaker.grpc_failures`) names it.
    pub fn grpc(code: GrpcCode, failures: GrpcCodes) -> Answer {
        Answer::Grpc {
            code,
            failure: failures.contains(code),
        }
    }

    /// The latency sample this answer feeds the average: failures and 429s
    /// count as at least 250 ms (`FAILURE_PENALTY`).
    pub fn latency_sample(self, latency: Duration) -> Duration {
        match self {
            Answer::Status(status) if status >= 500 || status == 429 => {
                latency.max(FAILURE_PENALTY)
            }
            Answer::Grpc { failure: true, .. } | Answer::Error(_) => latency.max(FAILURE_PENALTY),
            _ => latency,
        }
    }

    /// How the breaker counts it: 5xx, gRPC failures and errors fail,
    /// other statuses and codes succeed.
    pub fn call_result(self) -> CallResult {
        match self {
            Answer::Status(status) if status >= 500 => CallResult::Failure,
            Answer::Status(_) | Answer::Grpc { failure: false, .. } => CallResult::Success,
            Answer::Grpc { failure: true, .. } => CallResult::Failure,
            Answer::Error(_) => CallResult::Failure,
            Answer::Cancelled => CallResult::Cancelled,
        }
    }
}

/// A handler's claim on one call to a replica. It counts the call in flight
/// until dropped, so a response body that is still streaming keeps counting;
/// a lease dropped without [`Lease::report`] reports the call as cancelled.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    admission: Admission,
    started: Instant,
    /// When the answer's head came, if its outcome comes later (in its
    /// trailers): the latency reported then.
    head_after: Option<Duration>,
    reported: bool,
}

impl Lease {
    fn new(endpoint: &Arc<Endpoint>, admission: Admission) -> Lease {
        Lease {
            endpoint: Arc::clone(endpoint),
            admission,
            started: Instant::now(),
            head_after: None,
            reported: false,
        }
    }

    /// The replica this call goes to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Reports that the answer's body broke off after its head was
    /// reported: the call counts as a failure (`protocol`) after all, and
    /// a half-open probe as a failed one.
    /// It reaches the actor after the head's outcome (a failure sends the batch at once).
    pub fn report_broken_body(&self) {
        let outcome = Outcome {
            answer: Answer::Error(UpstreamError::Protocol),
            latency: self.started.elapsed(),
            probe: self.admission == Admission::Probe,
            after_head: true,
        };
        batch::send(&self.endpoint, outcome);
    }

    /// Notes that the answer's head came now but its outcome comes with
    /// its trailers (a streamed gRPC answer): the [`Lease::report`] made
    /// then counts the time to this head, not the stream's life.
    pub fn head_arrived(&mut self) {
        self.head_after = Some(self.started.elapsed());
    }

    /// Whether the outcome is still to be reported.
    pub fn unreported(&self) -> bool {
        !self.reported
    }

    /// Sends the outcome to the replica actor (batched with the worker's
    /// other outcomes, see [`OUTCOME_BATCH`]); later reports are ignored.
    pub fn report(&mut self, answer: Answer) {
        if self.reported {
            return;
        }
        self.reported = true;
        let outcome = Outcome {
            answer,
            latency: self.head_after.unwrap_or_else(|| self.started.elapsed()),
            probe: self.admission == Admission::Probe,
            after_head: false,
        };
        batch::send(&self.endpoint, outcome);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.report(Answer::Cancelled);
        self.endpoint.status.finish();
    }
}

/// Admits a call to `endpoint` if its breaker allows, returning the lease.
pub fn lease(endpoint: &Arc<Endpoint>) -> Option<Lease> {
    let admission = endpoint.status.try_admit()?;
    Some(Lease::new(endpoint, admission))
}

/// Admits a probe through `endpoint`'s open breaker if none went through in
/// the last `interval` (see [`ReplicaStatus::try_admit_forced`]).
pub fn lease_forced(endpoint: &Arc<Endpoint>, now: u64, interval: Duration) -> Option<Lease> {
    let admission = endpoint.status.try_admit_forced(now, interval)?;
    Some(Lease::new(endpoint, admission))
}

/// The breaker parameters a `circuit_breaker` config asks for, cooldowns
/// spread by a tenth either way so replicas do not probe in step. Config
/// validation refuses a `max_cooldown` shorter than `cooldown`; should one
/// get here anyway, every cooldown is `max_cooldown` (what the doubling
/// capped it to), logged.
pub fn breaker_params(config: &BreakerConfig) -> BreakerParams {
    let cooldown = Backoff::new(config.cooldown, config.max_cooldown, COOLDOWN_JITTER)
        .unwrap_or_else(|err| {
            warn!("circuit_breaker: {err}; every cooldown is max_cooldown");
            Backoff::constant(config.max_cooldown)
        });
    BreakerParams {
        failure_threshold: config.failure_threshold,
        window: config.window,
        success_threshold: config.success_threshold,
        cooldown,
    }
}

/// The actor owning one replica's breaker, latency average and series.
pub struct Replica {
    endpoint: Arc<Endpoint>,
    breaker: CircuitBreaker,
    half_open_probes: u32,
    /// Slow-start span after recovering (zero: off).
    slow_start: Duration,
    ewma: Ewma,
    metrics: Arc<Metrics>,
    series: ReplicaMetrics,
    /// The `upstream_requests_total` series of each status answered so far
    /// (resolved once each; deleted on stop).
    statuses_seen: Vec<(u16, IntCounter)>,
    /// The `upstream_errors_total` series of each kind of error so far.
    errors_seen: Vec<(UpstreamError, IntCounter)>,
    draining: Option<Instant>,
}

impl Replica {
    /// Starts the actor for `address` of `service` (called over TLS with
    /// `tls` when its service's `tls` does not say otherwise) on the current
    /// arbiter and returns the endpoint balancers will pick. With `ramp_now`,
    /// the replica joins an already-serving set and starts with a slow-start
    /// ramp.
    pub fn spawn(
        service: Arc<str>,
        address: &str,
        tls: Option<Arc<Origination>>,
        policy: &Policy,
        ramp_now: bool,
        metrics: Arc<Metrics>,
    ) -> Arc<Endpoint> {
        let breaker = policy.circuit_breaker.clone();
        let series = metrics.replica(&service, address);
        series.healthy.set(1);
        let half_open_probes = breaker.half_open_max_probes;
        let context = Context::new();
        let endpoint = Arc::new(Endpoint {
            service,
            address: Arc::from(address),
            status: ReplicaStatus::new(series.load.clone(), series.rejected.clone()),
            connections: Arc::clone(&series.connections),
            tls,
            actor: context.address(),
        });
        if ramp_now && !policy.slow_start.is_zero() {
            endpoint.status.start_ramp(now_millis());
        }
        context.run(Replica {
            endpoint: Arc::clone(&endpoint),
            breaker: CircuitBreaker::new(
                breaker_params(&breaker),
                SmallRng::from_rng(&mut rand::rng()),
            ),
            half_open_probes,
            slow_start: policy.slow_start,
            ewma: Ewma::default(),
            metrics,
            series,
            statuses_seen: Vec::new(),
            errors_seen: Vec::new(),
            draining: None,
        });
        endpoint
    }

    fn name(&self) -> String {
        self.endpoint.to_string()
    }

    fn count_status(&mut self, status: u16) {
        let (service, replica) = (&*self.endpoint.service, &*self.endpoint.address);
        let family = &self.metrics.upstream_requests;
        series_of(&mut self.statuses_seen, status, || {
            family.with_label_values(&[service, replica, &status.to_string()])
        })
        .inc();
    }

    fn count_answer(&mut self, answer: Answer) {
        let service = &*self.endpoint.service;
        let replica = &*self.endpoint.address;
        match answer {
            Answer::Status(status) => self.count_status(status),
            // A gRPC answer is an HTTP 200 (its code is `grpc_responses_total`'s).
            Answer::Grpc { .. } => self.count_status(200),
            Answer::Error(kind) => {
                let family = &self.metrics.upstream_errors;
                series_of(&mut self.errors_seen, kind, || {
                    family.with_label_values(&[service, replica, kind.as_str()])
                })
                .inc();
            }
            Answer::Cancelled => {}
        }
        match answer.call_result() {
            CallResult::Success => self.series.successes.inc(),
            CallResult::Failure => self.series.failures.inc(),
            CallResult::Cancelled => {}
        }
    }

    /// Counts one answer and feeds it to the latency average and the
    /// breaker; returns the transition it causes, to [`Replica::apply`].
    fn record(&mut self, answer: Answer, latency: Duration, probe: bool) -> Option<Transition> {
        self.count_answer(answer);
        let result = answer.call_result();
        if result != CallResult::Cancelled {
            self.ewma.observe(answer.latency_sample(latency));
            self.endpoint.status.publish_ewma(self.ewma.micros());
        }
        self.breaker.record(result, probe, Instant::now())
    }

    fn apply(&mut self, transition: Transition, ctx: &mut Context<Self>) {
        let Transition { from, to } = transition;
        let permits = if to == BreakerState::HalfOpen {
            self.half_open_probes
        } else {
            0
        };
        self.endpoint.status.publish_state(to, permits);
        self.series.state.set(to as i64);
        self.series
            .healthy
            .set(i64::from(to == BreakerState::Closed));
        self.metrics
            .breaker_transitions
            .with_label_values(&[from.as_str(), to.as_str()])
            .inc();
        if from == BreakerState::HalfOpen
            && to == BreakerState::Closed
            && !self.slow_start.is_zero()
        {
            self.endpoint.status.start_ramp(now_millis());
        }
        match (to, self.breaker.open_until()) {
            (BreakerState::Open, Some(until)) => {
                let wait = until.saturating_duration_since(Instant::now());
                warn!(
                    "circuit breaker {}: {from} -> {to}; rejecting calls for {}ms",
                    self.name(),
                    wait.as_millis()
                );
                ctx.run_later(wait, |replica, ctx| replica.poll_breaker(ctx));
            }
            _ => info!("circuit breaker {}: {from} -> {to}", self.name()),
        }
    }

    fn poll_breaker(&mut self, ctx: &mut Context<Self>) {
        if let Some(transition) = self.breaker.poll(Instant::now()) {
            self.apply(transition, ctx);
        }
    }

    fn check_drained(&mut self, ctx: &mut Context<Self>) {
        let Some(deadline) = self.draining else {
            return;
        };
        let in_flight = self.endpoint.status.in_flight();
        if in_flight == 0 {
            ctx.stop();
        } else if Instant::now() >= deadline {
            warn!(
                "replica {}: drain deadline passed with {in_flight} calls in flight; stopping",
                self.name()
            );
            ctx.stop();
        }
    }
}

/// The series kept for `key` in `seen`, resolved with `resolve` the first time.
fn series_of<K: PartialEq>(
    seen: &mut Vec<(K, IntCounter)>,
    key: K,
    resolve: impl FnOnce() -> IntCounter,
) -> &IntCounter {
    let index = match seen.iter().position(|(k, _)| *k == key) {
        Some(index) => index,
        None => {
            seen.push((key, resolve()));
            seen.len() - 1
        }
    };
    &seen[index].1
}

impl Actor for Replica {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        info!("replica {} added", self.name());
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let statuses: Vec<u16> = self
            .statuses_seen
            .iter()
            .map(|(status, _)| *status)
            .collect();
        let errors: Vec<&str> = self
            .errors_seen
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect();
        self.metrics.forget_replica(
            &self.endpoint.service,
            &self.endpoint.address,
            &statuses,
            &errors,
        );
        info!("replica {} removed", self.name());
    }
}

/// How one call went; reported by the handler's [`Lease`].
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The answer, or why there was none.
    pub answer: Answer,
    /// Time to the response head.
    pub latency: Duration,
    /// Whether the call was a half-open probe.
    pub probe: bool,
    /// The answer's body broke off after its head was reported (in an
    /// earlier outcome, which returned the probe permit): the call counts
    /// as a failure after all.
    pub after_head: bool,
}

/// The outcomes of calls to one replica that a worker finished within one
/// [`OUTCOME_BATCH`], in the order they finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outcomes(pub Vec<Outcome>);

impl Handler<Outcomes> for Replica {
    type Result = ();

    fn handle(&mut self, outcomes: Outcomes, ctx: &mut Context<Self>) {
        for outcome in outcomes.0 {
            let transition = self.record(outcome.answer, outcome.latency, outcome.probe);
            if outcome.probe && !outcome.after_head {
                self.endpoint.status.return_probe_permit();
            }
            if let Some(transition) = transition {
                self.apply(transition, ctx);
            }
        }
    }
}

/// Closes the breaker (admin reset).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResetBreaker;

impl Handler<ResetBreaker> for Replica {
    type Result = ();

    fn handle(&mut self, _: ResetBreaker, ctx: &mut Context<Self>) {
        if let Some(transition) = self.breaker.reset(Instant::now()) {
            self.apply(transition, ctx);
        }
    }
}

/// New breaker thresholds and slow start from a config reload.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retune {
    /// The breaker's new config; its state is kept.
    pub breaker: BreakerConfig,
    /// The new slow-start span, for the next ramp.
    pub slow_start: Duration,
}

impl Handler<Retune> for Replica {
    type Result = ();

    fn handle(&mut self, retune: Retune, _: &mut Context<Self>) {
        self.half_open_probes = retune.breaker.half_open_max_probes;
        self.slow_start = retune.slow_start;
        self.breaker.set_params(breaker_params(&retune.breaker));
        info!("replica {}: new breaker thresholds in force", self.name());
    }
}

/// The replica left discovery: stop once in-flight calls finish.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// Stop at the latest after this long.
    pub deadline: Duration,
}

impl Handler<Drain> for Replica {
    type Result = ();

    fn handle(&mut self, drain: Drain, ctx: &mut Context<Self>) {
        if self.draining.is_some() {
            return;
        }
        info!(
            "replica {} draining: {} calls in flight",
            self.name(),
            self.endpoint.status.in_flight()
        );
        self.draining = Some(Instant::now() + drain.deadline);
        self.check_drained(ctx);
        ctx.run_interval(DRAIN_POLL, |replica, ctx| replica.check_drained(ctx));
    }
}

/// The breaker's figures, as the admin API shows them.
#[derive(Debug, Clone)]
pub struct BreakerReport {
    /// Current state.
    pub state: BreakerState,
    /// Closed: failures in the current window; open or half-open: the
    /// failures that opened it.
    pub failure_count: usize,
    /// Probe successes while half-open.
    pub success_count: u32,
    /// Counters and times.
    pub stats: BreakerStats,
    /// Requests turned away while this breaker refused traffic.
    pub total_rejections: u64,
    /// Failures within `window` that open it, as configured.
    pub failure_threshold: u32,
    /// The window failures are counted in, as configured.
    pub window: Duration,
    /// The first cooldown after closing, as configured.
    pub cooldown: Duration,
    /// The current opening's cooldown (the last one's while half-open),
    /// doubled by each re-open; see [`CircuitBreaker::cooldown`].
    pub current_cooldown: Duration,
    /// When an open breaker's cooldown ends.
    pub cooldown_ends_at: Option<SystemTime>,
}

/// Asks for a [`BreakerReport`].
#[derive(Message)]
#[rtype(result = "BreakerReport")]
pub struct Inspect;

impl Handler<Inspect> for Replica {
    type Result = MessageResult<Inspect>;

    fn handle(&mut self, _: Inspect, _: &mut Context<Self>) -> Self::Result {
        let params = self.breaker.params();
        let now = (Instant::now(), SystemTime::now());
        MessageResult(BreakerReport {
            state: self.breaker.state(),
            failure_count: self.breaker.failure_count(),
            success_count: self.breaker.success_count(),
            stats: self.breaker.stats().clone(),
            total_rejections: self.endpoint.status.rejections(),
            failure_threshold: params.failure_threshold,
            window: params.window,
            cooldown: params.cooldown.delay(0),
            current_cooldown: self.breaker.cooldown(),
            cooldown_ends_at: self
                .breaker
                .open_until()
                .map(|until| now.1 + until.saturating_duration_since(now.0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_throttling_count_as_slow_for_the_latency_average() {
        let fast = Duration::from_millis(2);
        assert_eq!(Answer::Status(200).latency_sample(fast), fast);
        assert_eq!(Answer::Status(404).latency_sample(fast), fast);
        assert_eq!(Answer::Status(503).latency_sample(fast), FAILURE_PENALTY);
        assert_eq!(Answer::Status(429).latency_sample(fast), FAILURE_PENALTY);
        assert_eq!(
            Answer::Error(UpstreamError::Reset).latency_sample(fast),
            FAILURE_PENALTY
        );
        let slow = Duration::from_secs(2);
        assert_eq!(Answer::Status(500).latency_sample(slow), slow);
    }

    #[test]
    fn the_breaker_counts_5xx_and_errors_as_failures() {
        assert_eq!(Answer::Status(499).call_result(), CallResult::Success);
        assert_eq!(Answer::Status(500).call_result(), CallResult::Failure);
        assert_eq!(
            Answer::Error(UpstreamError::Timeout).call_result(),
            CallResult::Failure
        );
        assert_eq!(Answer::Cancelled.call_result(), CallResult::Cancelled);
    }

    #[test]
    fn a_grpc_answer_fails_when_grpc_failures_names_its_code() {
        let failures = Policy::default().circuit_breaker.grpc_failures;
        let judged = |code| Answer::grpc(code, failures);
        assert_eq!(
            judged(GrpcCode::Unavailable).call_result(),
            CallResult::Failure
        );
        assert_eq!(
            judged(GrpcCode::DataLoss).call_result(),
            CallResult::Failure
        );
        assert_eq!(judged(GrpcCode::Ok).call_result(), CallResult::Success);
        assert_eq!(
            judged(GrpcCode::PermissionDenied).call_result(),
            CallResult::Success,
            "the caller's doing, not the replica's"
        );
        let fast = Duration::from_millis(2);
        assert_eq!(
            judged(GrpcCode::Internal).latency_sample(fast),
            FAILURE_PENALTY
        );
        assert_eq!(judged(GrpcCode::NotFound).latency_sample(fast), fast);
    }
}
