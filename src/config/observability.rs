//! The observability keys: `tracing` (W3C trace context sampling, OTLP
//! export), `access_log` (which requests get an access log line) and
//! `log_summary_interval` (how often repeated warnings are summarised).

use std::time::Duration;

use serde::Serialize;
use serde_norway::Value;

use super::call_tls::{read_call_url, CallTls};
use super::reader::{FromYaml, Problems, Table};

/// How requests are traced and logged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservabilityConfig {
    /// Trace context handling.
    pub tracing: TracingConfig,
    /// Which requests get an access log line at info.
    pub access_log: AccessLog,
    /// How often the warnings of a kind after its first are summarised
    /// in one line (default 10s).
    #[serde(serialize_with = "super::as_duration")]
    pub log_summary_interval: Duration,
}

/// W3C trace context settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingConfig {
    /// Share of requests without a `traceparent` whose new trace is marked
    /// sampled, from 0 to 1 (default 0.01). A caller's sampled flag is kept.
    pub sample_rate: f64,
    /// Where sampled spans are posted as OTLP/HTTP JSON, e.g.
    /// `http://127.0.0.1:4318/v1/traces` (default none: no export).
    pub otlp_endpoint: Option<String>,
    /// How an `https://` endpoint is verified: `otlp_ca_file`, or the system's roots.
    #[serde(rename = "otlp_ca_file")]
    pub otlp_tls: CallTls,
}

/// Which requests get an access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    /// Every request.
    All,
    /// None.
    Off,
    /// Answers with status 400 or above, and requests whose trace is sampled (default).
    Errors,
}

impl FromYaml for AccessLog {
    const EXPECTED: &'static str = "true, false or errors";
    fn from_yaml(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(true) => Some(Self::All),
            Value::Bool(false) => Some(Self::Off),
            Value::String(s) if s == "errors" => Some(Self::Errors),
            _ => None,
        }
    }
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            tracing: TracingConfig {
                sample_rate: 0.01,
                otlp_endpoint: None,
                otlp_tls: CallTls::default(),
            },
            access_log: AccessLog::Errors,
            log_summary_interval: Duration::from_secs(10),
        }
    }
}

/// Reads `tracing`, `access_log` and `log_summary_interval` from the
/// top-level table; all are set up at start, so a reload keeps their
/// running values.
pub fn read_observability(top: &mut Table, problems: &mut Problems) -> ObservabilityConfig {
    let defaults = ObservabilityConfig::default();
    let tracing = top.section_restart("tracing", &defaults.tracing, problems, read_tracing);
    let access_log = top.get_restart_or("access_log", defaults.access_log, problems);
    let log_summary_interval = top.get_restart_or(
        "log_summary_interval",
        defaults.log_summary_interval,
        problems,
    );
    super::positive(
        log_summary_interval,
        &top.path_of("log_summary_interval"),
        problems,
    );
    ObservabilityConfig {
        tracing,
        access_log,
        log_summary_interval,
    }
}

fn read_tracing(t: &mut Table, base: &TracingConfig, problems: &mut Problems) -> TracingConfig {
    let sample_rate = t.get_or("sample_rate", base.sample_rate, problems);
    if !(0.0..=1.0).contains(&sample_rate) {
        problems.add(
            &t.path_of("sample_rate"),
            format!("must be between 0 and 1, got {sample_rate}"),
        );
    }
    let otlp_endpoint: Option<String> = t
        .get("otlp_endpoint", problems)
        .or_else(|| base.otlp_endpoint.clone());
    let otlp_tls = read_call_url(
        t,
        otlp_endpoint.as_deref(),
        ("otlp_endpoint", "otlp_ca_file"),
        "http://127.0.0.1:4318/v1/traces",
        problems,
    );
    TracingConfig {
        sample_rate,
        otlp_endpoint,
        otlp_tls,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{AccessLog, Config};

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        let text = format!("services: [{{name: api, endpoints: [\"127.0.0.1:9000\"]}}]\n{text}");
        Config::from_yaml(&text, &|_| None)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_log_errors_and_sample_one_trace_in_a_hundred() {
        let config = parse("").expect("valid");
        assert_eq!(config.observability.access_log, AccessLog::Errors);
        assert_eq!(config.observability.tracing.sample_rate, 0.01);
        assert_eq!(
            config.observability.log_summary_interval,
            std::time::Duration::from_secs(10)
        );
    }

    #[test]
    fn every_access_log_mode_and_a_sample_rate_are_read() {
        for (text, mode) in [
            ("true", AccessLog::All),
            ("false", AccessLog::Off),
            ("errors", AccessLog::Errors),
        ] {
            let config = parse(&format!("access_log: {text}")).expect("valid");
            assert_eq!(config.observability.access_log, mode);
        }
        let config = parse(
            "tracing: { sample_rate: 0.5, otlp_endpoint: \"http://127.0.0.1:4318/v1/traces\" }",
        )
        .expect("valid");
        assert_eq!(config.observability.tracing.sample_rate, 0.5);
        assert_eq!(
            config.observability.tracing.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_path() {
        assert_eq!(
            parse(
                "access_log: sometimes\nlog_summary_interval: 0s\ntracing: { sample_rate: 2, otlp_endpoint: x, colour: 1 }"
            )
            .err(),
            Some(vec![
                "tracing.sample_rate: must be between 0 and 1, got 2".to_string(),
                "tracing.otlp_endpoint: expected an http:// or https:// URL like \"http://127.0.0.1:4318/v1/traces\", got \"x\""
                    .to_string(),
                "tracing.colour: unknown key".to_string(),
                "access_log: expected true, false or errors, got \"sometimes\"".to_string(),
                "log_summary_interval: must be longer than 0s".to_string(),
            ])
        );
    }
}
