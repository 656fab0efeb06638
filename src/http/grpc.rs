//! What gRPC means for a request and its answer, over HTTP: whether a
//! request is a gRPC call (`content-type: application/grpc` or
//! `application/grpc+<codec>`), the `grpc-status` an answer carries, the
//! caller's `grpc-timeout`, and the answers the sidecar gives gRPC callers:
//! trailers-only (HTTP 200, `grpc-status`, `grpc-message`, no body), since a
//! gRPC client reads no HTTP error status. The codes themselves are
//! [`GrpcCode`]s.

use std::error::Error;
use std::fmt::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use actix_http::error::PayloadError;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::HttpResponse;

use super::cut::CallerCut;
use super::trailers::Trailers;
pub use crate::core::grpc::GrpcCode;
use crate::error::ProxyError;
use crate::metrics::GrpcSeries;

/// The answer's status code, in its headers (trailers-only) or trailers.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The status's message, percent-encoded.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// How long the caller gives the call: 1 to 8 digits and a unit.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The content type of a gRPC message stream (protobuf by default).
const GRPC_CONTENT_TYPE: &[u8] = b"application/grpc";

/// Whether a request with `headers` is a gRPC call: its content type is
/// `application/grpc`, or that followed by `+<codec>` or parameters. One
/// header lookup, so a plain request pays no more.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value.len() >= GRPC_CONTENT_TYPE.len()
        && value[..GRPC_CONTENT_TYPE.len()].eq_ignore_ascii_case(GRPC_CONTENT_TYPE)
        && matches!(value.get(GRPC_CONTENT_TYPE.len()), None | Some(b'+' | b';'))
}

/// The `grpc-status` in `headers`, if any. A number past the codes gRPC
/// defines is read as UNKNOWN, as gRPC clients read it; a value that is
/// no number is no status.
pub fn status_in(headers: &HeaderMap) -> Option<GrpcCode> {
    code_of(headers.get(&GRPC_STATUS)?.as_bytes())
}

/// The `grpc-status` at the end of an answer, in its `trailers` (once its
/// body has ended), if any.
pub fn status_in_trailers(trailers: &Trailers) -> Option<GrpcCode> {
    code_of(trailers.get()?.get(GRPC_STATUS.as_str())?.as_bytes())
}

/// The code a `grpc-status` value names (see [`status_in`]).
fn code_of(value: &[u8]) -> Option<GrpcCode> {
    let number: u32 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(GrpcCode::from_number(number).unwrap_or(GrpcCode::Unknown))
}

/// The code a gRPC client gives an HTTP answer `status` that carries no
/// `grpc-status`: gRPC's published HTTP-to-gRPC table.
pub fn code_for_http_status(status: u16) -> GrpcCode {
    match status {
        400 => GrpcCode::Internal,
        401 => GrpcCode::Unauthenticated,
        403 => GrpcCode::PermissionDenied,
        404 => GrpcCode::Unimplemented,
        429 | 502 | 503 | 504 => GrpcCode::Unavailable,
        _ => GrpcCode::Unknown,
    }
}

/// The code of the sidecar's own answer `error` to a gRPC caller: no
/// replica or a replica failing (503, 502) is UNAVAILABLE, a timeout (504)
/// DEADLINE_EXCEEDED, a rate or concurrency limit (429) and a message over
/// `max_body_bytes` (413) RESOURCE_EXHAUSTED (what a gRPC server answers a
/// message over its receive limit), an unknown service (404)
/// UNIMPLEMENTED, 401 and 403 as the table says; any other status by the
/// table.
pub fn code_for_refusal(error: &ProxyError) -> GrpcCode {
    match error.status().as_u16() {
        504 => GrpcCode::DeadlineExceeded,
        429 | 413 => GrpcCode::ResourceExhausted,
        status => code_for_http_status(status),
    }
}

/// The sidecar's answer `error` to a gRPC caller, trailers-only: HTTP 200,
/// `content-type: application/grpc`, `grpc-status` from
/// [`code_for_refusal`], the error's message as `grpc-message`, the
/// `x-outrigger` reason token, `Retry-After` where the HTTP answer has one,
/// and no body.
pub fn refusal(error: &ProxyError) -> HttpResponse {
    let mut response = trailers_only(code_for_refusal(error), error.message());
    error.mark(&mut response);
    response
}

/// What a gRPC caller gets for a replica's answer `response`: itself when
/// it is a gRPC answer (HTTP 200), else, for an HTTP error the replica gave
/// instead of a gRPC status, a trailers-only answer with the code of the
/// HTTP-to-gRPC table (the replica's body is dropped). Returns the
/// answer's code when its head carries one (a trailers-only answer);
/// `None` means it comes in the trailers.
pub fn relayed(response: &mut HttpResponse) -> Option<GrpcCode> {
    let status = response.status();
    if status == StatusCode::OK {
        return status_in(response.headers());
    }
    if let Some(code) = status_in(response.headers()) {
        return Some(code);
    }
    let code = code_for_http_status(status.as_u16());
    let message = format!("the replica answered HTTP {status} instead of a gRPC status");
    *response = trailers_only(code, &message);
    Some(code)
}

/// Counts `response`, a gRPC answer whose `grpc-status` comes in its
/// trailers, in `series` when its body ends: its code then, or UNKNOWN when
/// it ended without one (what the caller is left with); when it broke off,
/// the code [`broken_off`] tells the caller; CANCELLED when it
/// was dropped before its end (its caller reset the stream). An answer
/// with no trailers to come (not from an HTTP/2 replica) is not counted.
pub fn count_at_end(response: &mut HttpResponse, series: &Arc<GrpcSeries>) {
    let Some(trailers) = response.extensions().get::<Trailers>().cloned() else {
        return;
    };
    let series = Arc::clone(series);
    let answer = std::mem::replace(response, HttpResponse::new(StatusCode::OK));
    *response = answer.map_body(|_, body| {
        BoxBody::new(CountedAtEnd {
            body,
            trailers,
            series,
            counted: false,
        })
    });
}

/// An answer body that counts its gRPC code once it ends, breaks off or
/// is dropped.
struct CountedAtEnd {
    body: BoxBody,
    trailers: Trailers,
    series: Arc<GrpcSeries>,
    counted: bool,
}

impl CountedAtEnd {
    fn count(&mut self, code: GrpcCode) {
        if !self.counted {
            self.counted = true;
            self.series.record(code);
        }
    }
}

impl MessageBody for CountedAtEnd {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let item = ready!(Pin::new(&mut this.body).poll_next(cx));
        match &item {
            None => {
                let code = status_in_trailers(&this.trailers).unwrap_or(GrpcCode::Unknown);
                this.count(code);
            }
            Some(Err(error)) => this.count(code_for_break(error.as_ref())),
            Some(Ok(_)) => {}
        }
        Poll::Ready(item)
    }
}

impl Drop for CountedAtEnd {
    fn drop(&mut self) {
        self.count(GrpcCode::Cancelled);
    }
}

/// A trailers-only gRPC answer: HTTP 200, `grpc-status` `code`, `message`
/// percent-encoded as `grpc-message`, no body.
fn trailers_only(code: GrpcCode, message: &str) -> HttpResponse {
    let mut response = HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/grpc")))
        .finish();
    set_status(response.headers_mut(), code, message);
    response
}

/// Sets `grpc-status` `code` and `grpc-message` `message` (percent-encoded)
/// in `headers`, an answer's head or its trailers.
fn set_status(headers: &mut HeaderMap, code: GrpcCode, message: &str) {
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(code.number()));
    if let Ok(message) = HeaderValue::from_str(&percent_encoded(message)) {
        headers.insert(GRPC_MESSAGE.clone(), message);
    }
}

/// The code of a gRPC answer whose body broke off with `error` after its
/// head went out: when its caller's own body cut it ([`CallerCut`]), 8
/// RESOURCE_EXHAUSTED for a message over `max_body_bytes` (as when the
/// message is refused before the head) and 1 CANCELLED for a body that
/// broke off (the caller reset its stream); else (its replica died or
/// reset the stream) 14 UNAVAILABLE, which gRPC clients and their retry
/// policies read as "try again", where a reset stream would read as
/// INTERNAL, a bug.
fn code_for_break(error: &(dyn Error + 'static)) -> GrpcCode {
    match error.downcast_ref::<PayloadError>().and_then(CallerCut::of) {
        Some(CallerCut::OverLimit) => GrpcCode::ResourceExhausted,
        Some(CallerCut::BrokeOff) => GrpcCode::Cancelled,
        None => GrpcCode::Unavailable,
    }
}

/// The trailers that end a gRPC answer whose body broke off with `error`
/// after its head went out, with the code of [`code_for_break`].
pub fn broken_off(error: &(dyn Error + 'static)) -> http::HeaderMap {
    let mut trailers = HeaderMap::new();
    let code = code_for_break(error);
    let message = match code {
        GrpcCode::ResourceExhausted => "a request message went over max_body_bytes".to_string(),
        GrpcCode::Cancelled => "the request was cancelled".to_string(),
        _ => format!("the answer broke off: {error}"),
    };
    set_status(&mut trailers, code, &message);
    trailers.into()
}

/// `message` as `grpc-message` carries it: printable ASCII but `%` as it
/// is, every other byte of its UTF-8 as `%XX`.
fn percent_encoded(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The caller's `grpc-timeout`: 1 to 8 ASCII digits and a unit (`H`ours,
/// `M`inutes, `S`econds, `m`illiseconds, `u` microseconds, `n`anoseconds).
/// A malformed value is ignored, as gRPC servers ignore it: the call then
/// has no deadline of its own (`None`).
pub fn timeout_in(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(&GRPC_TIMEOUT)?.as_bytes())
}

/// A gRPC caller's deadline: its `grpc-timeout` in `headers` counted from
/// when the request `arrived`, and the timeout itself.
pub fn caller_deadline(headers: &HeaderMap, arrived: Instant) -> Option<(Instant, Duration)> {
    timeout_in(headers).map(|given| (arrived + given, given))
}

fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `budget` as a `grpc-timeout` value: in the finest unit whose amount has
/// at most 8 digits, rounded down (the replica is never told more time than
/// is left).
pub fn timeout_value(budget: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = budget.as_nanos();
    let (amount, unit) = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos / per, unit))
    .find(|(amount, _)| *amount <= MAX)
    .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{amount}{unit}")).expect("digits and a letter")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn a_grpc_request_is_told_by_its_content_type() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "Application/GRPC",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&with_content_type(grpc)), "{grpc}");
        }
        for plain in [
            "application/json",
            "application/grpc-web",
            "application/grpcx",
            "application/grp",
        ] {
            assert!(!is_grpc(&with_content_type(plain)), "{plain}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeout_is_read_in_each_unit_and_a_bad_one_is_ignored() {
        let read = |value: &str| parse_timeout(value.as_bytes());
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("10S"), Some(Duration::from_secs(10)));
        assert_eq!(read("200m"), Some(Duration::from_millis(200)));
        assert_eq!(read("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(read("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "12x", "1.5S", "-1S", " 1S", "1s"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_budget_is_written_in_the_finest_unit_that_fits_rounded_down() {
        let written = |budget| timeout_value(budget).to_str().unwrap().to_string();
        assert_eq!(written(Duration::from_millis(187)), "187000u");
        assert_eq!(written(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(written(Duration::from_secs(30)), "30000000u");
        assert_eq!(written(Duration::from_secs(3600)), "3600000m");
        assert_eq!(written(Duration::from_secs(400 * 86_400)), "34560000S");
        assert_eq!(written(Duration::from_secs(4000 * 86_400)), "5760000M");
        for budget in [Duration::from_micros(1234567), Duration::from_secs(86_400)] {
            let back = parse_timeout(timeout_value(budget).as_bytes()).unwrap();
            assert!(
                back <= budget && budget - back < Duration::from_secs(1),
                "{budget:?}"
            );
        }
    }

    #[test]
    fn refusals_map_as_the_contract_says() {
        let code = |error: ProxyError| code_for_refusal(&error);
        let m = || "x".to_string();
        assert_eq!(
            code(ProxyError::NoHealthyReplica(m())),
            GrpcCode::Unavailable
        );
        assert_eq!(
            code(ProxyError::UpstreamConnect(m())),
            GrpcCode::Unavailable
        );
        assert_eq!(code(ProxyError::Timeout(m())), GrpcCode::DeadlineExceeded);
        assert_eq!(
            code(ProxyError::RateLimited(m(), 1)),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(
            code(ProxyError::ConcurrencyLimit(m())),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(
            code(ProxyError::Unauthorized(m())),
            GrpcCode::Unauthenticated
        );
        assert_eq!(code(ProxyError::Forbidden(m())), GrpcCode::PermissionDenied);
        assert_eq!(code(ProxyError::UnknownService), GrpcCode::Unimplemented);
        assert_eq!(code(ProxyError::BadRequest(m())), GrpcCode::Internal);
        assert_eq!(
            code(ProxyError::BodyTooLarge(m())),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(code(ProxyError::BodyTimeout(m())), GrpcCode::Unknown);
    }

    #[test]
    fn a_refusal_is_trailers_only_with_its_reason() {
        let refused = refusal(&ProxyError::RateLimited("over 5 per 1s: 100%".into(), 2));
        assert_eq!(refused.status(), StatusCode::OK);
        let header = |name: &str| refused.headers().get(name).map(|v| v.to_str().unwrap());
        assert_eq!(header("content-type"), Some("application/grpc"));
        assert_eq!(header("grpc-status"), Some("8"));
        assert_eq!(header("grpc-message"), Some("over 5 per 1s: 100%25"));
        assert_eq!(header("x-outrigger"), Some("rate_limited"));
        assert_eq!(header("retry-after"), Some("2"));
    }

    #[test]
    fn a_replicas_http_error_maps_by_the_table_and_a_grpc_answer_passes() {
        for (status, code) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (500, 2),
            (418, 2),
        ] {
            let mut response =
                HttpResponse::build(StatusCode::from_u16(status).unwrap()).body("oops");
            assert_eq!(
                relayed(&mut response).map(GrpcCode::number),
                Some(code),
                "{status}"
            );
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                status_in(response.headers()).map(GrpcCode::number),
                Some(code)
            );
        }
        let mut streaming = HttpResponse::Ok().body("message");
        assert_eq!(
            relayed(&mut streaming),
            None,
            "its status comes in the trailers"
        );
        let mut trailers_only = HttpResponse::Ok()
            .insert_header(("grpc-status", "14"))
            .finish();
        assert_eq!(relayed(&mut trailers_only), Some(GrpcCode::Unavailable));
        let mut beyond = HttpResponse::Ok()
            .insert_header(("grpc-status", "99"))
            .finish();
        assert_eq!(relayed(&mut beyond), Some(GrpcCode::Unknown));
    }

    #[test]
    fn an_answer_that_broke_off_ends_unavailable_unless_its_caller_cut_it() {
        let trailers = broken_off(&std::io::Error::other("reset"));
        assert_eq!(trailers[&GRPC_STATUS], "14");
        assert_eq!(trailers[&GRPC_MESSAGE], "the answer broke off: reset");
        let trailers = broken_off(&CallerCut::BrokeOff.error());
        assert_eq!(trailers[&GRPC_STATUS], "1");
        let trailers = broken_off(&CallerCut::OverLimit.error());
        assert_eq!(trailers[&GRPC_STATUS], "8");
        assert_eq!(
            trailers[&GRPC_MESSAGE],
            "a request message went over max_body_bytes"
        );
    }

    #[actix_web::test]
    async fn an_answer_counted_at_its_end_counts_a_break_by_its_cause_and_a_drop_as_cancelled() {
        use actix_web::body::BodyStream;
        use futures_util::stream;
        let metrics = crate::metrics::Metrics::new();
        let series = metrics.requests("outbound", "echo");
        let answer = |items: Vec<Result<Bytes, PayloadError>>| {
            let mut response = HttpResponse::Ok().body(BodyStream::new(stream::iter(items)));
            response.extensions_mut().insert(Trailers::default());
            count_at_end(&mut response, series.grpc());
            response
        };
        let reset = PayloadError::Io(std::io::Error::other("reset"));
        let broken = answer(vec![Err(reset)]);
        assert!(actix_web::body::to_bytes(broken.into_body()).await.is_err());
        let over_limit = answer(vec![Err(CallerCut::OverLimit.error())]);
        assert!(actix_web::body::to_bytes(over_limit.into_body())
            .await
            .is_err());
        let cancelled = answer(vec![Err(CallerCut::BrokeOff.error())]);
        assert!(actix_web::body::to_bytes(cancelled.into_body())
            .await
            .is_err());
        drop(answer(vec![Ok(Bytes::from_static(b"m"))]));
        let ended = answer(vec![]);
        assert!(actix_web::body::to_bytes(ended.into_body()).await.is_ok());
        let counted = |code: &str| {
            metrics
                .grpc_responses
                .with_label_values(&["outbound", "echo", code])
                .get()
        };
        assert_eq!(
            [
                counted("UNAVAILABLE"),
                counted("RESOURCE_EXHAUSTED"),
                counted("CANCELLED"),
                counted("UNKNOWN")
            ],
            [1, 1, 2, 1]
        );
    }

    #[test]
    fn a_message_is_percent_encoded() {
        assert_eq!(percent_encoded("plain text"), "plain text");
        assert_eq!(percent_encoded("100% é\n"), "100%25 %C3%A9%0A");
    }
}
