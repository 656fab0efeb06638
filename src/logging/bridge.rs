//! The log lines of the libraries that write with `tracing` rather than
//! `log` (h2, hickory's resolver, kube's client): their events reach the
//! process logger, filtered by `LOG_LEVEL` like every other line; their
//! spans, which only label and time work for a tracing subscriber, are
//! never made.
//!
//! Installed as `tracing`'s global dispatcher. Without one, `tracing` falls
//! back to `log` by itself, but it makes every span to do so: `h2` opens
//! several for each frame it reads or writes, and each is checked against
//! the log level as it is made, entered, left and dropped, 13% of the
//! instructions of a request proxied over HTTP/2, for lines that only a
//! trace level would show. With the bridge the events above the log's
//! level stop at their call site (the bridge tells `tracing` that level),
//! and the spans at theirs.

use std::fmt::{self, Write};

use log::{Level, LevelFilter, Log, Metadata as LogMetadata, Record};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter as TracingLevelFilter;
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// Passes `tracing` events to a [`log::Log`] (see the module doc).
pub struct LogBridge<L> {
    logger: L,
    /// The most verbose level `logger` takes (for the process logger,
    /// `log::max_level`); whoever changes it calls
    /// `tracing::callsite::rebuild_interest_cache` after.
    max_level: fn() -> LevelFilter,
}

impl<L: Log> LogBridge<L> {
    /// A bridge to `logger`, which takes no line more verbose than
    /// `max_level()`.
    pub fn new(logger: L, max_level: fn() -> LevelFilter) -> LogBridge<L> {
        LogBridge { logger, max_level }
    }
}

/// The `log` level of a `tracing` event.
fn level_of(metadata: &Metadata<'_>) -> Level {
    match *metadata.level() {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        tracing::Level::DEBUG => Level::Debug,
        tracing::Level::TRACE => Level::Trace,
    }
}

/// The `tracing` filter of a `log` one.
fn tracing_filter(filter: LevelFilter) -> TracingLevelFilter {
    match filter {
        LevelFilter::Off => TracingLevelFilter::OFF,
        LevelFilter::Error => TracingLevelFilter::ERROR,
        LevelFilter::Warn => TracingLevelFilter::WARN,
        LevelFilter::Info => TracingLevelFilter::INFO,
        LevelFilter::Debug => TracingLevelFilter::DEBUG,
        LevelFilter::Trace => TracingLevelFilter::TRACE,
    }
}

impl<L: Log + 'static> Subscriber for LogBridge<L> {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_span() {
            Interest::never()
        } else {
            // Asked at each event: the log's filters change at runtime.
            Interest::sometimes()
        }
    }

    fn max_level_hint(&self) -> Option<TracingLevelFilter> {
        Some(tracing_filter((self.max_level)()))
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let level = level_of(metadata);
        metadata.is_event()
            && level <= (self.max_level)()
            && self.logger.enabled(
                &LogMetadata::builder()
                    .level(level)
                    .target(metadata.target())
                    .build(),
            )
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Never called: no span is enabled.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &SpanRecord<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut line = Line::default();
        event.record(&mut line);
        self.logger.log(
            &Record::builder()
                .level(level_of(metadata))
                .target(metadata.target())
                .module_path(metadata.module_path())
                .file(metadata.file())
                .line(metadata.line())
                .args(format_args!("{}", line.0))
                .build(),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event's message followed by its other fields as ` name=value`.
#[derive(Default)]
struct Line(String);

impl Line {
    fn add(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if field.name() == "message" {
            let fields = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value}{fields}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, format_args!("{value}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The lines a logger took, as `LEVEL target: message`; it takes none
    /// for the target `quiet`.
    #[derive(Clone, Default)]
    struct Taken(Arc<Mutex<Vec<String>>>);

    impl Log for Taken {
        fn enabled(&self, metadata: &LogMetadata<'_>) -> bool {
            metadata.target() != "quiet"
        }

        fn log(&self, record: &Record<'_>) {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            self.0.lock().expect("not poisoned").push(line);
        }

        fn flush(&self) {}
    }

    #[test]
    fn events_up_to_the_level_reach_the_logger_and_spans_are_never_made() {
        let taken = Taken::default();
        let bridge = LogBridge::new(taken.clone(), || LevelFilter::Debug);
        tracing::subscriber::with_default(bridge, || {
            tracing::info!(target: "h2::codec", stream = 3, kind = "DATA", "a frame came");
            tracing::debug!(target: "h2::proto", "connection error");
            tracing::trace!(target: "h2::proto", "too verbose");
            tracing::warn!(target: "quiet", "filtered by the logger");
            let span = tracing::info_span!("poll", stream = 3);
            assert!(span.is_disabled(), "no span is made");
        });
        let taken = taken.0.lock().expect("not poisoned").clone();
        assert_eq!(
            taken,
            [
                "INFO h2::codec: a frame came stream=3 kind=DATA",
                "DEBUG h2::proto: connection error",
            ]
        );
    }
}
