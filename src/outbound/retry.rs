//! Retry policy as plain functions: which answers are retried and how long
//! to wait before the next try. (The retry budget that keeps retries from
//! multiplying the load during an outage is each service's, in
//! `crate::core::retry_budget`.)

use std::time::Duration;

use actix_web::http::Method;
use log::warn;
use rand::Rng;

use crate::config::{RetryConfig, RetryOn};
use crate::core::backoff::Backoff;
use crate::http::client::UpstreamError;
use crate::replica::Answer;

/// Whether a request with `method` may be retried under `config`
/// (idempotent methods always; the others only when the service opts in
/// with `non_idempotent: true`, or for a `grpc` call, whose POST is retried
/// on the gRPC codes of `retry.on`: those come before anything was relayed,
/// and a gRPC server answering UNAVAILABLE did not run the call).
pub fn method_allows_retry(method: &Method, grpc: bool, config: &RetryConfig) -> bool {
    config.non_idempotent || grpc || crate::http::client::idempotent(method)
}

/// Whether `answer` is one of the conditions `config` retries. An answer
/// that is not valid HTTP counts as the 502 the caller would get for it. A
/// timeout counts only when `per_try_timeout` bounded the try (`per_try`):
/// a try bounded by what was left of `timeout` used up the request's time.
pub fn answer_is_retried(answer: Answer, per_try: bool, config: &RetryConfig) -> bool {
    let condition = match answer {
        Answer::Status(status) => RetryOn::Status(status),
        Answer::Grpc { code, .. } => RetryOn::Grpc(code),
        Answer::Error(UpstreamError::Connect | UpstreamError::Tls | UpstreamError::Reset) => {
            RetryOn::ConnectError
        }
        Answer::Error(UpstreamError::Timeout) if per_try => RetryOn::Timeout,
        Answer::Error(UpstreamError::Timeout) => return false,
        Answer::Error(UpstreamError::Protocol) => RetryOn::Status(502),
        Answer::Cancelled => return false,
    };
    config.on.contains(&condition)
}

/// The wait before try number `retry` + 1 (`retry` = 1 for the first retry):
/// `min(base_delay * 2^(retry-1), max_delay)`, spread by `jitter` with a
/// sample from `rng`. Config validation refuses a `max_delay` shorter than
/// `base_delay` and a jitter outside [0, 1]; should one get here anyway,
/// the wait is `max_delay`, logged.
pub fn backoff(retry: u32, config: &RetryConfig, rng: &mut impl Rng) -> Duration {
    let backoff =
        Backoff::new(config.base_delay, config.max_delay, config.jitter).unwrap_or_else(|err| {
            warn!("retry: {err}; every retry waits max_delay");
            Backoff::constant(config.max_delay)
        });
    backoff.sample(retry.saturating_sub(1), rng)
}

/// The wait an upstream asked for with `Retry-After: <seconds>`, capped at `max`.
/// (The HTTP-date form is not honoured: a sidecar should not trust clocks.)
pub fn retry_after(value: Option<&str>, max: Duration) -> Option<Duration> {
    let seconds: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(max))
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::config::{GrpcCode, Policy};

    fn config() -> RetryConfig {
        RetryConfig {
            jitter: 0.0,
            ..Policy::default().retry
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let config = config();
        let rng = &mut SmallRng::seed_from_u64(7);
        let delays: Vec<Duration> = (1..=8).map(|n| backoff(n, &config, rng)).collect();
        assert_eq!(
            delays,
            vec![
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000),
                ms(2000)
            ]
        );
        assert_eq!(
            backoff(200, &config, rng),
            ms(2000),
            "huge retry numbers stay at the cap"
        );
    }

    #[test]
    fn jitter_spreads_each_delay_within_its_fraction() {
        let config = RetryConfig {
            jitter: 0.25,
            ..config()
        };
        let rng = &mut SmallRng::seed_from_u64(7);
        for _ in 0..100 {
            let delay = backoff(3, &config, rng);
            assert!(delay >= ms(150) && delay <= ms(250), "{delay:?}");
        }
    }

    #[test]
    fn a_backoff_config_validation_should_have_refused_waits_max_delay() {
        let config = RetryConfig {
            base_delay: ms(3000),
            jitter: 0.25,
            ..config()
        };
        let rng = &mut SmallRng::seed_from_u64(7);
        for retry in [1, 2, 8] {
            assert_eq!(backoff(retry, &config, rng), ms(2000));
        }
    }

    #[test]
    fn only_idempotent_methods_are_retried_unless_opted_in() {
        let config = config();
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(method_allows_retry(&method, false, &config), "{method}");
        }
        for method in [Method::POST, Method::PATCH] {
            assert!(!method_allows_retry(&method, false, &config), "{method}");
        }
        assert!(
            method_allows_retry(&Method::POST, true, &config),
            "a gRPC call is a POST retried on its codes"
        );
        let opted_in = RetryConfig {
            non_idempotent: true,
            ..config
        };
        assert!(method_allows_retry(&Method::POST, false, &opted_in));
    }

    #[test]
    fn only_the_configured_conditions_are_retried() {
        let config = config();
        let retried = |answer| answer_is_retried(answer, true, &config);
        assert!(retried(Answer::Status(503)));
        assert!(retried(Answer::Error(UpstreamError::Connect)));
        assert!(
            retried(Answer::Error(UpstreamError::Reset)),
            "closed before an answer"
        );
        assert!(retried(Answer::Error(UpstreamError::Timeout)));
        assert!(
            retried(Answer::Error(UpstreamError::Protocol)),
            "invalid HTTP is retried as the 502 it becomes"
        );
        assert!(retried(Answer::Grpc {
            code: GrpcCode::Unavailable,
            failure: true
        }));
        assert!(
            !retried(Answer::Grpc {
                code: GrpcCode::Internal,
                failure: true
            }),
            "a failure for the breaker is not retried unless retry.on names it"
        );
        assert!(!retried(Answer::Status(500)));
        assert!(!retried(Answer::Status(200)));
        assert!(!retried(Answer::Cancelled));
        let without_502 = RetryConfig {
            on: vec![RetryOn::ConnectError, RetryOn::Timeout],
            ..config.clone()
        };
        assert!(!answer_is_retried(
            Answer::Error(UpstreamError::Protocol),
            true,
            &without_502
        ));
    }

    #[test]
    fn a_timeout_is_retried_only_under_a_per_try_bound() {
        let config = config();
        let timeout = Answer::Error(UpstreamError::Timeout);
        assert!(answer_is_retried(timeout, true, &config));
        assert!(
            !answer_is_retried(timeout, false, &config),
            "a try bounded by what was left of timeout left no time"
        );
        assert!(
            answer_is_retried(Answer::Status(503), false, &config),
            "other conditions do not depend on the bound"
        );
    }

    #[test]
    fn retry_after_seconds_are_honoured_up_to_the_cap() {
        assert_eq!(retry_after(Some("1"), ms(2000)), Some(ms(1000)));
        assert_eq!(retry_after(Some(" 120 "), ms(2000)), Some(ms(2000)));
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), ms(2000)),
            None
        );
        assert_eq!(retry_after(None, ms(2000)), None);
    }
}
