//! Log output: readable text by default or one JSON object per line with
//! `LOG_FORMAT=json`, filtered by `LOG_LEVEL` (`info`,
//! `outrigger=debug,actix_server=warn`), and refiltered at runtime (admin
//! `PUT /log-level`) by swapping the whole logger; warnings that repeat
//! are summarised ([`summary`]). The libraries that log with `tracing`
//! log through the same logger (`bridge`).

mod bridge;
pub mod summary;

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use env_logger::fmt::Formatter;
use log::kv::{self, Key, Value, VisitSource, VisitValue};
use log::{Log, Metadata, Record};
use serde_json::{Map, Value as Json};

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `[timestamp LEVEL target] message key=value ...`
    Text,
    /// One JSON object per line: timestamp, level, target, message, and
    /// request_id, service, replica, status, duration_ms where known.
    Json,
}

impl LogFormat {
    /// Reads `LOG_FORMAT` (`json` or `text`); anything else is text.
    pub fn from_env(value: Option<&str>) -> LogFormat {
        match value {
            Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// The installed logger and the filter spec it was built from.
struct Active {
    spec: String,
    logger: env_logger::Logger,
}

/// The process logger: forwards to the active env_logger, which a new
/// filter spec replaces whole.
struct RuntimeLogger {
    format: LogFormat,
    active: ArcSwap<Active>,
}

static LOGGER: OnceLock<&'static RuntimeLogger> = OnceLock::new();

/// Installs the process logger with `spec` as filters; an invalid spec
/// falls back to `info` and says so.
pub fn init(spec: &str, format: LogFormat) {
    let (active, refused) = match build(spec, format) {
        Ok(active) => (active, None),
        Err(message) => (build_unchecked("info", format), Some(message)),
    };
    let logger: &'static RuntimeLogger = Box::leak(Box::new(RuntimeLogger {
        format,
        active: ArcSwap::from_pointee(active),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.active.load().logger.filter());
        let _ = LOGGER.set(logger);
        let bridge = bridge::LogBridge::new(log::logger(), log::max_level);
        let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(bridge));
    }
    if let Some(message) = refused {
        log::warn!("LOG_LEVEL refused ({message}); logging at info");
    }
}

/// The filter spec in force, or `None` when this process did not call [`init`].
pub fn filters() -> Option<String> {
    LOGGER.get().map(|logger| logger.active.load().spec.clone())
}

/// Replaces the filters with `spec`; the error says what is wrong with it.
pub fn set_filters(spec: &str) -> Result<(), String> {
    let logger = LOGGER
        .get()
        .ok_or_else(|| "logging is not managed by this process".to_string())?;
    let active = build(spec, logger.format)?;
    log::set_max_level(active.logger.filter());
    logger.active.store(Arc::new(active));
    // The call sites of the bridge's events cached the old level (they
    // stop at it before asking the bridge): they learn the new one.
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

/// Checks a filter spec: comma-separated `level` or `target=level`. A bare
/// target (which env_logger reads as `target=trace` and everything else
/// off) is refused: a mistyped level would silence the log.
pub fn validate(spec: &str) -> Result<(), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty filter: give a level like info".to_string());
    }
    let is_level = |s: &str| s.parse::<log::LevelFilter>().is_ok();
    let is_target = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-')
    };
    for directive in spec.split(',').map(str::trim) {
        let valid = match directive.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_level(directive),
        };
        if !valid {
            return Err(format!(
                "\"{directive}\" is not a level (off, error, warn, info, debug, trace) or target=level"
            ));
        }
    }
    Ok(())
}

fn build(spec: &str, format: LogFormat) -> Result<Active, String> {
    validate(spec)?;
    Ok(build_unchecked(spec.trim(), format))
}

fn build_unchecked(spec: &str, format: LogFormat) -> Active {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(spec);
    match format {
        LogFormat::Text => builder.format(write_text),
        LogFormat::Json => builder.format(write_json),
    };
    Active {
        spec: spec.to_string(),
        logger: builder.build(),
    }
}

impl Log for RuntimeLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.active.load().logger.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        self.active.load().logger.log(record);
    }

    fn flush(&self) {
        self.active.load().logger.flush();
    }
}

fn write_text(buf: &mut Formatter, record: &Record) -> std::io::Result<()> {
    write!(
        buf,
        "[{} {:<5} {}] {}",
        buf.timestamp_millis(),
        record.level(),
        record.target(),
        record.args()
    )?;
    let mut fields = Fields::default();
    let _ = record.key_values().visit(&mut fields);
    for (key, value) in &fields.0 {
        match value {
            Json::String(text) => write!(buf, " {key}={text}")?,
            other => write!(buf, " {key}={other}")?,
        }
    }
    writeln!(buf)
}

fn write_json(buf: &mut Formatter, record: &Record) -> std::io::Result<()> {
    let message = record.args().to_string();
    let mut line = Map::new();
    line.insert(
        "timestamp".into(),
        buf.timestamp_millis().to_string().into(),
    );
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    let mut fields = Fields::default();
    let _ = record.key_values().visit(&mut fields);
    if !fields.0.contains_key("request_id") {
        if let Some(id) = request_id_in(&message) {
            line.insert("request_id".into(), id.into());
        }
    }
    line.insert("message".into(), message.into());
    line.extend(fields.0);
    serde_json::to_writer(&mut *buf, &line)?;
    writeln!(buf)
}

/// The id in a message of the form `request <id>: ...`, the convention
/// every request-scoped log line follows.
fn request_id_in(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("request ")?;
    let (id, _) = rest.split_once(':')?;
    (!id.is_empty() && !id.contains(' ')).then_some(id)
}

/// A record's key-values as JSON values; absent (`None`) values are left out.
#[derive(Default)]
struct Fields(Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let mut json = JsonValue(None);
        value.visit(&mut json)?;
        if let Some(json) = json.0 {
            self.0.insert(key.as_str().to_string(), json);
        }
        Ok(())
    }
}

struct JsonValue(Option<Json>);

impl<'v> VisitValue<'v> for JsonValue {
    fn visit_any(&mut self, value: Value) -> Result<(), kv::Error> {
        self.0 = Some(Json::String(value.to_string()));
        Ok(())
    }
    fn visit_null(&mut self) -> Result<(), kv::Error> {
        Ok(())
    }
    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        self.0 = Some(value.into());
        Ok(())
    }
    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        self.0 = Some(value.into());
        Ok(())
    }
    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        self.0 = serde_json::Number::from_f64(value).map(Json::Number);
        Ok(())
    }
    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0 = Some(value.into());
        Ok(())
    }
    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        self.0 = Some(value.into());
        Ok(())
    }
}

/// Formats a wall-clock time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, day_secs) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn filter_specs_are_checked() {
        for good in [
            "info",
            "outrigger=debug,actix_server=warn",
            "warn,outrigger::access=info",
            "OFF",
        ] {
            assert_eq!(validate(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "loud",
            "outrigger",
            "outrigger=loud",
            "a b=info",
            "x=info/regex",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_ids_are_found_in_request_lines() {
        assert_eq!(request_id_in("request ab-1: 503: gone"), Some("ab-1"));
        assert_eq!(request_id_in("retrying in 5ms"), None);
        assert_eq!(request_id_in("request with spaces: x"), None);
    }

    #[test]
    fn key_values_become_typed_json_fields() {
        let status: u16 = 503;
        let replica: Option<&str> = None;
        let pairs: [(&str, Value); 4] = [
            ("status", Value::from(status)),
            ("service", Value::from("api")),
            ("duration_ms", Value::from(1.5f64)),
            ("replica", kv::ToValue::to_value(&replica)),
        ];
        let mut fields = Fields::default();
        for (key, value) in pairs {
            fields
                .visit_pair(Key::from_str(key), value)
                .expect("visits");
        }
        assert_eq!(
            Json::Object(fields.0),
            serde_json::json!({"status": 503, "service": "api", "duration_ms": 1.5})
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs: u64, millis: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
        };
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_795_467_845, 123)), "2026-11-23T21:04:05.123Z");
    }
}
