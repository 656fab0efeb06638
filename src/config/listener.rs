//! What every proxy listener (outbound, inbound) bounds for each client:
//! request head and body sizes, how long a client may take to send its head
//! or pause in its body, how long it may leave its answer untaken, how
//! long an idle connection is kept, and how many connections a worker
//! holds. Read from the listener's own section (`listeners.<name>.*`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::reader::{Problems, Table};
use super::{as_duration, positive};

/// The request head buffer of the HTTP parser: a head that does not fit is
/// answered 431 by the parser itself, before `max_header_bytes` is checked.
pub const PARSER_HEAD_LIMIT: u32 = 128 * 1024;

/// The smallest `max_header_bytes` accepted: below it ordinary browser
/// requests (cookies, tokens) would be refused.
const MIN_HEADER_BYTES: u32 = 1024;

/// Per-client bounds of one proxy listener.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ListenerLimits {
    /// Request line plus headers, in bytes; a larger head is answered 431
    /// (default 65536, at most 131072: the parser's own head buffer).
    pub max_header_bytes: u32,
    /// Request body, in bytes; a larger body is answered 413 (default: no
    /// limit). Counted as the body streams, never buffered.
    pub max_body_bytes: Option<u64>,
    /// Time a client has to send a complete request head, from connecting
    /// (the first head) or from the head's first byte (later heads on a
    /// kept-alive connection), else the connection is closed (default 10s).
    #[serde(serialize_with = "as_duration")]
    pub client_header_timeout: Duration,
    /// Longest wait for the next bytes of a request body once it has
    /// started: a pause between reads, not a bound on the whole upload, so
    /// a slow upload that keeps sending is never cut; past it the client
    /// gets 408 and the replica is not blamed (default 10s).
    #[serde(serialize_with = "as_duration")]
    pub client_body_timeout: Duration,
    /// How long a client may take no byte of its answer while the sidecar
    /// has some to send, else the connection is closed (default 30s). Each
    /// byte taken restarts it: a slow reader that keeps reading is never cut.
    #[serde(serialize_with = "as_duration")]
    pub client_write_timeout: Duration,
    /// How long an idle keep-alive connection is kept between requests
    /// (default 5s; 0s closes each connection after its answer).
    #[serde(serialize_with = "as_duration")]
    pub keep_alive: Duration,
    /// Open connections one worker thread holds at once; more wait in the
    /// accept backlog (default 10000; the listener holds workers times this).
    pub max_connections: u32,
    /// Streams of one HTTP/2 connection open at once (advertised in its
    /// SETTINGS; a stream past them is refused) and that may wait for their
    /// answer at once; a stream past those is answered 429 at once, before
    /// any work (default 250).
    pub http2_max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 64 * 1024,
            max_body_bytes: None,
            client_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(10),
            client_write_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_connections: 10_000,
            http2_max_concurrent_streams: 250,
        }
    }
}

/// Reads the limit keys of a listener's section; each is fixed when the
/// listener's server is built, so a reload keeps its running value.
pub(super) fn read_limits(t: &mut Table, problems: &mut Problems) -> ListenerLimits {
    let base = ListenerLimits::default();
    let limits = ListenerLimits {
        max_header_bytes: t.get_restart_or("max_header_bytes", base.max_header_bytes, problems),
        max_body_bytes: t
            .get_restart("max_body_bytes", problems)
            .or(base.max_body_bytes),
        client_header_timeout: t.get_restart_or(
            "client_header_timeout",
            base.client_header_timeout,
            problems,
        ),
        client_body_timeout: t.get_restart_or(
            "client_body_timeout",
            base.client_body_timeout,
            problems,
        ),
        client_write_timeout: t.get_restart_or(
            "client_write_timeout",
            base.client_write_timeout,
            problems,
        ),
        keep_alive: t.get_restart_or("keep_alive", base.keep_alive, problems),
        max_connections: t.get_restart_or("max_connections", base.max_connections, problems),
        http2_max_concurrent_streams: t.get_restart_or(
            "http2_max_concurrent_streams",
            base.http2_max_concurrent_streams,
            problems,
        ),
    };
    if !(MIN_HEADER_BYTES..=PARSER_HEAD_LIMIT).contains(&limits.max_header_bytes) {
        problems.add(
            &t.path_of("max_header_bytes"),
            format!(
                "must be between {MIN_HEADER_BYTES} and {PARSER_HEAD_LIMIT} (the parser's head buffer), got {}",
                limits.max_header_bytes
            ),
        );
    }
    if limits.max_body_bytes == Some(0) {
        problems.add(
            &t.path_of("max_body_bytes"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    positive(
        limits.client_header_timeout,
        &t.path_of("client_header_timeout"),
        problems,
    );
    positive(
        limits.client_body_timeout,
        &t.path_of("client_body_timeout"),
        problems,
    );
    positive(
        limits.client_write_timeout,
        &t.path_of("client_write_timeout"),
        problems,
    );
    if limits.max_connections == 0 {
        problems.add(&t.path_of("max_connections"), "must be at least 1");
    }
    if limits.http2_max_concurrent_streams == 0 {
        problems.add(
            &t.path_of("http2_max_concurrent_streams"),
            "must be at least 1",
        );
    }
    limits
}

/// Reads `bind` of a listener's section, `default` when absent; bound at
/// start, so a reload keeps its running value.
pub(super) fn read_bind(
    t: &mut Table,
    default: &str,
    problems: &mut Problems,
) -> Option<SocketAddr> {
    let bind: String = t
        .get_restart("bind", problems)
        .unwrap_or_else(|| default.to_string());
    match bind.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.add(
                &t.path_of("bind"),
                format!("expected an address like \"{default}\", got \"{bind}\""),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load;

    #[test]
    fn each_proxy_listener_reads_its_own_limits() {
        let config = load(
            "listeners:
  outbound: { bind: \"127.0.0.1:15001\", max_body_bytes: 1048576, keep_alive: 0s }
  inbound:
    app: \"http://127.0.0.1:8080\"
    max_header_bytes: 16384
    client_header_timeout: 3s
    client_body_timeout: 2s
    client_write_timeout: 2m
    max_connections: 500
    http2_max_concurrent_streams: 64
",
            &[],
        )
        .expect("valid");
        let outbound = config.listeners.outbound.limits;
        assert_eq!(outbound.max_body_bytes, Some(1_048_576));
        assert_eq!(outbound.keep_alive, Duration::ZERO);
        assert_eq!(outbound.max_header_bytes, 65_536);
        let inbound = config.listeners.inbound.expect("inbound").limits;
        assert_eq!(inbound.max_header_bytes, 16_384);
        assert_eq!(inbound.client_header_timeout, Duration::from_secs(3));
        assert_eq!(inbound.client_body_timeout, Duration::from_secs(2));
        assert_eq!(outbound.client_body_timeout, Duration::from_secs(10));
        assert_eq!(inbound.client_write_timeout, Duration::from_secs(120));
        assert_eq!(outbound.client_write_timeout, Duration::from_secs(30));
        assert_eq!(inbound.max_connections, 500);
        assert_eq!(inbound.max_body_bytes, None);
        assert_eq!(inbound.http2_max_concurrent_streams, 64);
        assert_eq!(outbound.http2_max_concurrent_streams, 250);
    }

    #[test]
    fn bad_limits_are_reported_by_key_path() {
        let errors = load(
            "listeners:
  outbound: { max_header_bytes: 200000, max_body_bytes: 0, client_header_timeout: 0s, client_body_timeout: 0s }
  inbound: { app: \"http://127.0.0.1:8080\", max_connections: 0, keep_alive: forever, max_body_bytes: lots, client_write_timeout: 0s, http2_max_concurrent_streams: 0 }
  admin: { bind: here }
",
            &[],
        )
        .expect_err("invalid");
        assert_eq!(
            errors,
            vec![
                "listeners.outbound.max_header_bytes: must be between 1024 and 131072 (the parser's head buffer), got 200000",
                "listeners.outbound.max_body_bytes: must be at least 1 (leave it out for no limit)",
                "listeners.outbound.client_header_timeout: must be longer than 0s",
                "listeners.outbound.client_body_timeout: must be longer than 0s",
                "listeners.admin.bind: expected an address like \"0.0.0.0:15090\", got \"here\"",
                "listeners.inbound.max_body_bytes: expected a whole number, got \"lots\"",
                "listeners.inbound.keep_alive: expected a duration like \"30s\", got \"forever\"",
                "listeners.inbound.client_write_timeout: must be longer than 0s",
                "listeners.inbound.max_connections: must be at least 1",
                "listeners.inbound.http2_max_concurrent_streams: must be at least 1",
            ]
        );
    }

    #[test]
    fn the_admin_token_comes_from_the_environment_and_is_never_shown() {
        let config = load("", &[("OUTRIGGER_ADMIN_TOKEN", "t0ps3cret")]).expect("valid");
        assert_eq!(config.listeners.admin_token.as_deref(), Some("t0ps3cret"));
        let shown = serde_json::to_string(&config).expect("json");
        assert!(!shown.contains("t0ps3cret"), "{shown}");
        assert!(shown.contains("\"admin_token\":\"<redacted>\""), "{shown}");
        let config = load("", &[]).expect("valid");
        let shown = serde_json::to_string(&config.listeners).expect("json");
        assert!(!shown.contains("admin_token"), "{shown}");
    }
}
