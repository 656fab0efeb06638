//! Warnings that repeat, logged once and then summarised. The first
//! warning of a [`Topic`] (a refusal's reason, or a store failure, on one
//! listener for one service) is logged in full; those after it are only
//! counted, and every `log_summary_interval` one line per topic says how
//! many more there were. A burst of 500 refusals is two lines, not 500;
//! the access log and the metrics still count each one.
//!
//! Counting costs one atomic add on the topic's entry, which each worker
//! thread finds in its own table (no lock, no allocation); a topic new to
//! the thread is found, or added, in the shared list under its lock. The
//! list holds at most [`MAX_TOPICS`] topics (their parts are fixed tokens,
//! listeners and configured services, never a user or a path); past that,
//! the rest share one entry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use log::warn;

/// What a warning is about: one kind, on one listener, for one service.
#[derive(Debug, Clone, Copy)]
pub struct Topic<'a> {
    /// A fixed token: a refusal's `x-outrigger` reason (`rate_limited`), or
    /// the name of what failed (`cache_bypassed`).
    pub kind: &'static str,
    /// The listener it happened on (`outbound`, `inbound`).
    pub listener: &'static str,
    /// The service: a configured one, `app` on the inbound listener, or
    /// `unknown` before one was found.
    pub service: &'a str,
}

/// Topics counted apart; past it, new ones share [`OVERFLOW`].
const MAX_TOPICS: usize = 256;

/// Summaries come this often unless [`start`] says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One topic's count since the last summary.
struct Entry {
    kind: &'static str,
    listener: &'static str,
    service: Box<str>,
    /// Warnings since the last summary, the first (logged in full) included.
    count: AtomicU64,
}

impl Entry {
    fn new(kind: &'static str, listener: &'static str, service: &str) -> Entry {
        Entry {
            kind,
            listener,
            service: service.into(),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one warning; true for the first since the last summary.
    fn note(&self) -> bool {
        self.count.fetch_add(1, Ordering::Relaxed) == 0
    }
}

/// Every topic's entry, for the summaries.
static ENTRIES: Mutex<Vec<Arc<Entry>>> = Mutex::new(Vec::new());

/// The entry topics past [`MAX_TOPICS`] share.
static OVERFLOW: LazyLock<Arc<Entry>> =
    LazyLock::new(|| Arc::new(Entry::new("other", "any", "other services")));

/// The interval between summaries, in milliseconds.
static INTERVAL_MS: AtomicU64 = AtomicU64::new(DEFAULT_INTERVAL.as_millis() as u64);

/// When the last summary was written.
static LAST_REPORT: Mutex<Option<Instant>> = Mutex::new(None);

/// The entries of `(kind, listener)` by service, on this thread.
type Known = HashMap<(&'static str, &'static str), HashMap<Box<str>, Arc<Entry>>>;

thread_local! {
    /// This thread's entries: found without a lock once seen.
    static KNOWN: RefCell<Known> = RefCell::new(HashMap::new());
}

/// Counts one warning about `topic`: true when it is the first since the
/// last summary, which the caller logs in full; the others it leaves out.
pub fn first(topic: Topic<'_>) -> bool {
    let noted = KNOWN.try_with(|known| {
        let mut known = known.borrow_mut();
        let services = known.entry((topic.kind, topic.listener)).or_default();
        if let Some(entry) = services.get(topic.service) {
            return entry.note();
        }
        let entry = shared(topic);
        let first = entry.note();
        if !Arc::ptr_eq(&entry, &OVERFLOW) {
            services.insert(topic.service.into(), entry);
        }
        first
    });
    // A thread being torn down has no table left: the shared list serves.
    noted.unwrap_or_else(|_| shared(topic).note())
}

/// The shared entry of `topic`, added when new and there is room.
fn shared(topic: Topic<'_>) -> Arc<Entry> {
    let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
    let found = entries.iter().find(|entry| {
        entry.kind == topic.kind
            && entry.listener == topic.listener
            && *entry.service == *topic.service
    });
    if let Some(entry) = found {
        return Arc::clone(entry);
    }
    if entries.len() >= MAX_TOPICS {
        return Arc::clone(&OVERFLOW);
    }
    let entry = Arc::new(Entry::new(topic.kind, topic.listener, topic.service));
    entries.push(Arc::clone(&entry));
    entry
}

/// Starts the thread that writes the summaries every `interval` (one per
/// process: a second call only sets the interval).
pub fn start(interval: Duration) {
    INTERVAL_MS.store(interval.as_millis().max(1) as u64, Ordering::Relaxed);
    LAST_REPORT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(Instant::now);
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let ticking = std::thread::Builder::new()
            .name("log-summary".to_string())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(INTERVAL_MS.load(Ordering::Relaxed)));
                report();
            });
        if let Err(err) = ticking {
            warn!("repeated warnings will not be summarised: no thread for it: {err}");
        }
    });
}

/// Writes one line for each topic with warnings left out since the last
/// summary, and starts counting afresh: the next warning of each topic is
/// logged in full again.
pub fn report() {
    let now = Instant::now();
    let since = LAST_REPORT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(now);
    let period = since.map_or(String::new(), |since| {
        format!(" in the last {:.1}s", (now - since).as_secs_f64())
    });
    let entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
    for entry in entries.iter().chain(std::iter::once(&*OVERFLOW)) {
        let count = entry.count.swap(0, Ordering::Relaxed);
        if count > 1 {
            warn!(
                "{}: {} more for {} on the {} listener{period} after the first, logged in full (the metrics and the access log count each)",
                entry.kind,
                count - 1,
                entry.service,
                entry.listener,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic<'a>(kind: &'static str, service: &'a str) -> Topic<'a> {
        Topic {
            kind,
            listener: "inbound",
            service,
        }
    }

    fn count(kind: &str, service: &str) -> u64 {
        let entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .find(|e| e.kind == kind && &*e.service == service)
            .map_or(0, |e| e.count.load(Ordering::Relaxed))
    }

    // One test: a summary resets every count, so two would race.
    #[test]
    fn only_the_first_of_a_topic_is_logged_until_a_summary_and_each_is_counted() {
        let burst = topic("summary_test_burst", "app");
        assert!(first(burst));
        assert!((1..100).all(|_| !first(burst)));
        assert!(
            first(topic("summary_test_burst", "other")),
            "a service apart"
        );
        let from_another_thread = std::thread::spawn(move || first(burst));
        assert!(
            !from_another_thread.join().expect("the thread ran"),
            "threads share the count"
        );
        assert_eq!(count("summary_test_burst", "app"), 101);
        report();
        assert_eq!(count("summary_test_burst", "app"), 0);
        assert!(first(burst), "the first after a summary is logged again");
    }
}
