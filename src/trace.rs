//! W3C trace context for one hop: parse the caller's `traceparent`, keep its
//! trace id and sampled flag with a new parent (span) id for this hop, or
//! start a trace sampled per `tracing.sample_rate`; and fresh request ids.
//! Pure and allocation-light: ids come from a per-thread fast generator.

use std::cell::RefCell;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The W3C `traceparent` header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C `tracestate` header.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const TRACEPARENT_LEN: usize = 55;
/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: trace id, parent id and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace this request belongs to; never all zeros.
    pub trace_id: [u8; 16],
    /// The span that sent it; never all zeros.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` when it is not valid W3C
    /// (unknown versions are read by their version-00 prefix, as the
    /// recommendation asks).
    pub fn parse(value: &[u8]) -> Option<TraceContext> {
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        let exact = value.len() == TRACEPARENT_LEN;
        if version == 0xff || (version == 0 && !exact) || (!exact && value[55] != b'-') {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        hex_into(&value[3..35], &mut trace_id)?;
        hex_into(&value[36..52], &mut parent_id)?;
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The version-00 header value.
    pub fn to_header(&self) -> HeaderValue {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[0..3].copy_from_slice(b"00-");
        hex_encode(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_encode(&self.parent_id, &mut out[36..52]);
        out[52] = b'-';
        hex_encode(&[self.flags], &mut out[53..55]);
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// `bytes` as lowercase hex digits.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_encode(bytes, &mut out);
    out.iter().map(|&b| char::from(b)).collect()
}

/// Decides the trace context of each request at one listener.
#[derive(Debug, Clone, Copy)]
pub struct Tracer {
    /// Share of new traces marked sampled, 0 to 1.
    pub sample_rate: f64,
}

/// This hop's trace context and whether it continues the caller's trace.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The context sent on: the caller's trace id and flags with a new parent id.
    pub context: TraceContext,
    /// `traceparent` as sent to the upstream.
    pub traceparent: HeaderValue,
    /// The caller's span id; `None` when a new trace was started (no or an
    /// invalid `traceparent`), in which case the caller's `tracestate` is
    /// not passed on.
    pub caller_parent: Option<[u8; 8]>,
}

impl Hop {
    /// Whether this hop continues the caller's trace.
    pub fn continued(&self) -> bool {
        self.caller_parent.is_some()
    }
}

impl Tracer {
    /// The hop for a request with `headers`.
    pub fn hop(&self, headers: &HeaderMap) -> Hop {
        with_id_source(|rng| self.hop_with(rng, headers))
    }

    fn hop_with(&self, rng: &mut SmallRng, headers: &HeaderMap) -> Hop {
        let parent_id = nonzero(|| rng.random::<u64>().to_le_bytes());
        let caller = headers
            .get(&TRACEPARENT)
            .and_then(|v| TraceContext::parse(v.as_bytes()));
        let (context, caller_parent) = match caller {
            Some(caller) => (
                TraceContext {
                    parent_id,
                    ..caller
                },
                Some(caller.parent_id),
            ),
            None => {
                let sampled = self.sample_rate > 0.0 && rng.random::<f64>() < self.sample_rate;
                let context = TraceContext {
                    trace_id: nonzero(|| rng.random::<u128>().to_le_bytes()),
                    parent_id,
                    flags: if sampled { SAMPLED } else { 0 },
                };
                (context, None)
            }
        };
        Hop {
            traceparent: context.to_header(),
            context,
            caller_parent,
        }
    }
}

thread_local! {
    /// This thread's source of request, trace and span ids: a small fast
    /// generator seeded from the operating system. Ids must be unique, not
    /// secret, and the standard thread generator (a stream cipher) cost
    /// about 400 instructions a request more.
    static ID_SOURCE: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

fn with_id_source<T>(draw: impl FnOnce(&mut SmallRng) -> T) -> T {
    ID_SOURCE.with(|rng| draw(&mut rng.borrow_mut()))
}

/// A new request id: a UUID v4 from this thread's id source.
pub fn new_request_id() -> HeaderValue {
    let bytes = with_id_source(|rng| rng.random::<u128>().to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Draws until the id is not all zeros (which W3C reserves as invalid).
fn nonzero<const N: usize>(mut draw: impl FnMut() -> [u8; N]) -> [u8; N] {
    loop {
        let id = draw();
        if id != [0; N] {
            return id;
        }
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

fn hex_encode(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(traceparent: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            TRACEPARENT.clone(),
            HeaderValue::from_str(traceparent).expect("header"),
        );
        map
    }

    #[test]
    fn the_spec_example_parses_and_formats_back() {
        let context = TraceContext::parse(EXAMPLE.as_bytes()).expect("valid");
        assert!(context.sampled());
        assert_eq!(hex(&context.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.to_header(), EXAMPLE);
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_known_prefix() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceContext::parse(later.as_bytes()).is_some());
    }

    #[test]
    fn a_hop_keeps_the_trace_and_flags_with_a_new_parent() {
        let tracer = Tracer { sample_rate: 0.0 };
        let hop = tracer.hop(&headers(EXAMPLE));
        let caller = TraceContext::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(hop.caller_parent, Some(caller.parent_id));
        assert_eq!(hop.context.trace_id, caller.trace_id);
        assert_eq!(hop.context.flags, caller.flags);
        assert_ne!(hop.context.parent_id, caller.parent_id);
        assert_eq!(
            TraceContext::parse(hop.traceparent.as_bytes()),
            Some(hop.context)
        );
    }

    #[test]
    fn without_a_valid_traceparent_a_trace_starts_sampled_per_rate() {
        for (rate, sampled) in [(0.0, false), (1.0, true)] {
            let hop = Tracer { sample_rate: rate }.hop(&headers("garbage"));
            assert!(!hop.continued());
            assert_eq!(hop.context.sampled(), sampled);
            assert!(TraceContext::parse(hop.traceparent.as_bytes()).is_some());
        }
        let half = Tracer { sample_rate: 0.5 };
        let sampled = (0..1000)
            .filter(|_| half.hop(&HeaderMap::new()).context.sampled())
            .count();
        assert!((350..650).contains(&sampled), "{sampled}");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let uuid = uuid::Uuid::parse_str(id.to_str().expect("ascii")).expect("uuid");
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(new_request_id(), id);
    }
}
