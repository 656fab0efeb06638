//! The answers Outrigger gives itself, each with one status code, a reason
//! token for the `x-outrigger` header and a JSON body
//! `{"error", "service", "request_id"}`.

use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::HttpResponse;
use serde::Serialize;

/// Why Outrigger answered instead of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No configured service matches the request (404).
    UnknownService,
    /// The caller has no valid credentials (401).
    Unauthorized(String),
    /// The caller lacks a role or scope the route needs (403).
    Forbidden(String),
    /// The caller's mesh identity (or its lack of one) is not among those
    /// `inbound.authorization` allows for the path (403).
    ForbiddenIdentity(String),
    /// Credentials cannot be checked right now (503).
    AuthUnavailable(String),
    /// The request could not be turned into an upstream request, or its
    /// head could be read two ways (400).
    BadRequest(String),
    /// The request body is over the listener's `max_body_bytes` (413).
    BodyTooLarge(String),
    /// The client paused in its request body longer than the listener's
    /// `client_body_timeout` (408).
    BodyTimeout(String),
    /// The request line and headers are over the listener's `max_header_bytes` (431).
    HeadersTooLarge(String),
    /// The service has replicas but every breaker refuses traffic, or it has none (503).
    NoHealthyReplica(String),
    /// The replica could not be connected to (502).
    UpstreamConnect(String),
    /// The TLS handshake with the replica failed, or its certificate did
    /// not verify (502).
    UpstreamTls(String),
    /// The replica's certificate verified but carries another SPIFFE ID
    /// than the meshed service expects (502).
    UpstreamIdentity(String),
    /// The replica closed the connection before answering (502).
    UpstreamReset(String),
    /// The replica answered with invalid HTTP (502).
    UpstreamProtocol(String),
    /// No answer in time (504).
    Timeout(String),
    /// The service's concurrency limit is reached (429, `Retry-After: 1`).
    ConcurrencyLimit(String),
    /// The caller's rate limit is spent (429, `Retry-After` when the window has room).
    RateLimited(String, u64),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    service: Option<&'a str>,
    request_id: &'a str,
}

impl ProxyError {
    /// The status code it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownService => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::ForbiddenIdentity(_) => StatusCode::FORBIDDEN,
            Self::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoHealthyReplica(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnect(_)
            | Self::UpstreamTls(_)
            | Self::UpstreamIdentity(_)
            | Self::UpstreamReset(_)
            | Self::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::ConcurrencyLimit(_) | Self::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `x-outrigger` header value: a stable token scripts can match on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownService => "unknown_service",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::ForbiddenIdentity(_) => "forbidden_identity",
            Self::AuthUnavailable(_) => "auth_unavailable",
            Self::BadRequest(_) => "bad_request",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::BodyTimeout(_) => "client_body_timeout",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::NoHealthyReplica(_) => "no_healthy_replica",
            Self::UpstreamConnect(_) => "upstream_connect_failed",
            Self::UpstreamTls(_) => "upstream_tls",
            Self::UpstreamIdentity(_) => "upstream_identity",
            Self::UpstreamReset(_) => "upstream_reset",
            Self::UpstreamProtocol(_) => "upstream_protocol_error",
            Self::Timeout(_) => "upstream_timeout",
            Self::ConcurrencyLimit(_) => "concurrency_limit",
            Self::RateLimited(..) => "rate_limited",
        }
    }

    /// What happened, in words.
    pub fn message(&self) -> &str {
        match self {
            Self::UnknownService => "no configured service matches the path, Host or authority",
            Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::ForbiddenIdentity(m)
            | Self::AuthUnavailable(m)
            | Self::BadRequest(m)
            | Self::BodyTooLarge(m)
            | Self::BodyTimeout(m)
            | Self::HeadersTooLarge(m)
            | Self::NoHealthyReplica(m)
            | Self::UpstreamConnect(m)
            | Self::UpstreamTls(m)
            | Self::UpstreamIdentity(m)
            | Self::UpstreamReset(m)
            | Self::UpstreamProtocol(m)
            | Self::Timeout(m)
            | Self::ConcurrencyLimit(m)
            | Self::RateLimited(m, _) => m,
        }
    }

    /// Whether the connection is closed after the answer: for a request
    /// whose head or body cannot be trusted (or was not read to its end),
    /// so nothing the client sent after it is read as another request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_)
                | Self::BodyTooLarge(_)
                | Self::BodyTimeout(_)
                | Self::HeadersTooLarge(_)
        )
    }

    /// The seconds the caller should wait before trying again, as
    /// `Retry-After` says: 1 for a concurrency limit, the rate limit's
    /// window; `None` for other answers.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::ConcurrencyLimit(_) => Some(1),
            Self::RateLimited(_, seconds) => Some(*seconds),
            _ => None,
        }
    }

    /// The response: status, `x-outrigger` header, `Retry-After` where the
    /// caller should wait, the JSON body, and `Connection: close` when
    /// [`ProxyError::closes_connection`] says so. Listeners answer through
    /// `Arrival::refuse`, which also logs the refusal.
    pub fn response(&self, service: Option<&str>, request_id: &str) -> HttpResponse {
        let body = ErrorBody {
            error: self.message(),
            service,
            request_id,
        };
        let mut response = HttpResponse::build(self.status()).json(body);
        self.mark(&mut response);
        response
    }

    /// Marks `response`, an answer the sidecar makes for this error in
    /// whatever form (JSON, or trailers-only to a gRPC caller), as every
    /// such answer is marked: the `x-outrigger` reason, `Retry-After` when
    /// the error has a wait, and the connection closed when it must be.
    pub fn mark(&self, response: &mut HttpResponse) {
        let headers = response.headers_mut();
        headers.insert(
            HeaderName::from_static("x-outrigger"),
            HeaderValue::from_static(self.reason()),
        );
        if let Some(seconds) = self.retry_after() {
            headers.insert(RETRY_AFTER, seconds.into());
        }
        if self.closes_connection() {
            response
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;
    use actix_web::http::ConnectionType;

    #[test]
    fn each_error_owns_its_status_and_reason() {
        let cases = [
            (ProxyError::UnknownService, 404, "unknown_service"),
            (ProxyError::Unauthorized("x".into()), 401, "unauthorized"),
            (ProxyError::Forbidden("x".into()), 403, "forbidden"),
            (
                ProxyError::AuthUnavailable("x".into()),
                503,
                "auth_unavailable",
            ),
            (ProxyError::BadRequest("x".into()), 400, "bad_request"),
            (ProxyError::BodyTooLarge("x".into()), 413, "body_too_large"),
            (
                ProxyError::BodyTimeout("x".into()),
                408,
                "client_body_timeout",
            ),
            (
                ProxyError::HeadersTooLarge("x".into()),
                431,
                "headers_too_large",
            ),
            (
                ProxyError::NoHealthyReplica("x".into()),
                503,
                "no_healthy_replica",
            ),
            (
                ProxyError::UpstreamConnect("x".into()),
                502,
                "upstream_connect_failed",
            ),
            (ProxyError::UpstreamTls("x".into()), 502, "upstream_tls"),
            (
                ProxyError::UpstreamIdentity("x".into()),
                502,
                "upstream_identity",
            ),
            (
                ProxyError::ForbiddenIdentity("x".into()),
                403,
                "forbidden_identity",
            ),
            (ProxyError::UpstreamReset("x".into()), 502, "upstream_reset"),
            (
                ProxyError::UpstreamProtocol("x".into()),
                502,
                "upstream_protocol_error",
            ),
            (ProxyError::Timeout("x".into()), 504, "upstream_timeout"),
            (
                ProxyError::ConcurrencyLimit("x".into()),
                429,
                "concurrency_limit",
            ),
        ];
        for (error, status, reason) in cases {
            assert_eq!(error.status().as_u16(), status);
            assert_eq!(error.reason(), reason);
        }
    }

    #[test]
    fn only_an_untrusted_request_closes_its_connection() {
        let untrusted = [
            ProxyError::BadRequest("x".into()),
            ProxyError::BodyTooLarge("x".into()),
            ProxyError::BodyTimeout("x".into()),
            ProxyError::HeadersTooLarge("x".into()),
        ];
        let trusted = [
            ProxyError::UnknownService,
            ProxyError::Unauthorized("x".into()),
            ProxyError::Timeout("x".into()),
            ProxyError::RateLimited("x".into(), 1),
        ];
        let closes = |error: &ProxyError| {
            let response = error.response(None, "req-1");
            let closed = response.head().connection_type() == ConnectionType::Close;
            assert_eq!(closed, error.closes_connection(), "{error:?}");
            closed
        };
        assert!(untrusted.iter().all(closes));
        assert!(!trusted.iter().any(closes));
    }

    #[test]
    fn the_body_is_json_with_service_and_request_id() {
        let response = ProxyError::Timeout("slow".into()).response(Some("api"), "req-1");
        let reason = response.headers().get("x-outrigger").map(|v| v.as_bytes());
        assert_eq!(reason, Some(&b"upstream_timeout"[..]));
        let body = response.into_body().try_into_bytes().expect("in memory");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"error": "slow", "service": "api", "request_id": "req-1"})
        );
    }
}
