//! Environment overrides for the common knobs, as the gateways users come
//! from named them. They apply to `defaults` (and so to every service that
//! does not set the key itself), to `discovery` and to the worker count.

use std::time::Duration;

use super::reader::{parse_duration, Problems};
use super::{Discovery, Env, Policy};

/// Applies every override variable that `env` finds; a bad value is a problem
/// reported under the variable's name.
pub fn apply(
    policy: &mut Policy,
    discovery: &mut Discovery,
    env: Env<'_>,
    problems: &mut Problems,
) {
    let breaker = &mut policy.circuit_breaker;
    if let Some(n) = count(env, "CIRCUIT_BREAKER_FAILURE_THRESHOLD", problems) {
        breaker.failure_threshold = n;
    }
    if let Some(n) = count(env, "CIRCUIT_BREAKER_SUCCESS_THRESHOLD", problems) {
        breaker.success_threshold = n;
    }
    if let Some(d) = seconds(env, "CIRCUIT_BREAKER_TIMEOUT_SECONDS", problems) {
        breaker.cooldown = d;
        breaker.max_cooldown = breaker.max_cooldown.max(d);
    }
    if let Some(d) = seconds(env, "REQUEST_TIMEOUT", problems) {
        policy.timeout = d;
    }
    if let Some(d) = seconds(env, "SERVICE_REFRESH_INTERVAL", problems) {
        discovery.refresh = d;
    }
}

/// `OUTRIGGER_WORKERS`: the listeners' worker count, over the file's `workers`.
pub fn workers(env: Env<'_>, problems: &mut Problems) -> Option<u32> {
    count(env, "OUTRIGGER_WORKERS", problems)
}

fn count(env: Env<'_>, name: &str, problems: &mut Problems) -> Option<u32> {
    let text = env(name)?;
    match text.trim().parse::<u32>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            problems.add(
                name,
                format!("expected a whole number of at least 1, got \"{text}\""),
            );
            None
        }
    }
}

/// A number of seconds ("30"), or a duration ("30s", "500ms").
fn seconds(env: Env<'_>, name: &str, problems: &mut Problems) -> Option<Duration> {
    let text = env(name)?;
    let parsed = match text.trim().parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => parse_duration(&text),
    };
    match parsed {
        Some(d) if !d.is_zero() => Some(d),
        _ => {
            problems.add(
                name,
                format!("expected seconds (\"30\") or a duration (\"30s\"), got \"{text}\""),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::time::Duration;

    const FILE: &str = "services: [{name: api, endpoints: [\"127.0.0.1:9000\"], circuit_breaker: {failure_threshold: 9}}]";

    fn load(vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        crate::config::tests::load(FILE, vars)
    }

    #[test]
    fn overrides_reach_defaults_and_the_services_that_inherit_them() {
        let config = load(&[
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"),
            ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "4"),
            ("CIRCUIT_BREAKER_TIMEOUT_SECONDS", "600"),
            ("REQUEST_TIMEOUT", "250ms"),
            ("SERVICE_REFRESH_INTERVAL", "5"),
        ])
        .expect("valid");
        assert_eq!(config.defaults.policy.circuit_breaker.failure_threshold, 3);
        assert_eq!(
            config.defaults.policy.circuit_breaker.cooldown,
            Duration::from_secs(600)
        );
        assert_eq!(
            config.defaults.policy.circuit_breaker.max_cooldown,
            Duration::from_secs(600)
        );
        assert_eq!(config.discovery.refresh, Duration::from_secs(5));
        let api = &config.service("api").expect("api").policy;
        assert_eq!(api.timeout, Duration::from_millis(250));
        assert_eq!(api.circuit_breaker.success_threshold, 4);
        assert_eq!(
            api.circuit_breaker.failure_threshold, 9,
            "the service's own value wins"
        );
    }

    #[test]
    fn a_bad_override_names_the_variable() {
        let errors = load(&[
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "many"),
            ("REQUEST_TIMEOUT", "0"),
        ])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "CIRCUIT_BREAKER_FAILURE_THRESHOLD: expected a whole number of at least 1, got \"many\"",
                "REQUEST_TIMEOUT: expected seconds (\"30\") or a duration (\"30s\"), got \"0\"",
            ]
        );
    }
}
