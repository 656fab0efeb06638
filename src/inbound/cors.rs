//! CORS for browser callers: preflights from allowed origins are answered
//! here; answers to allowed origins get the matching headers; a preflight
//! from another origin is refused (403 `forbidden`), and other answers to
//! it get no CORS headers.

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::HttpResponse;

use crate::config::CorsConfig;
use crate::error::ProxyError;

/// The allowed origins.
pub struct Cors {
    origins: Vec<String>,
    any: bool,
    max_age: String,
}

impl Cors {
    /// The policy for `config`.
    pub fn new(config: &CorsConfig) -> Self {
        Cors {
            any: config.origins.iter().any(|o| o == "*"),
            origins: config.origins.clone(),
            max_age: config.max_age.as_secs().to_string(),
        }
    }

    /// The request's `Origin`, when it is allowed.
    pub fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o == text)).then_some(origin)
    }

    /// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`),
    /// or `None` when the request is not one.
    pub fn preflight(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Result<HttpResponse, ProxyError>> {
        if *method != Method::OPTIONS
            || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let Some(origin) = self.allowed_origin(headers) else {
            return Some(Err(ProxyError::Forbidden(
                "this origin may not call the app".to_string(),
            )));
        };
        let mut response = HttpResponse::NoContent();
        response
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
            .insert_header((header::VARY, "Origin"))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
            ))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, self.max_age.as_str()));
        if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            response.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone()));
        }
        Some(Ok(response.finish()))
    }

    /// Adds the CORS headers for `origin` to an answer.
    pub fn decorate(origin: HeaderValue, response: &mut HttpResponse) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use std::time::Duration;

    fn cors() -> Cors {
        Cors::new(&CorsConfig {
            origins: vec!["https://app.example".to_string()],
            max_age: Duration::from_secs(60),
        })
    }

    fn headers(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).expect("value"),
        );
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("PUT"),
        );
        headers
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_its_headers() {
        let response = cors()
            .preflight(&Method::OPTIONS, &headers("https://app.example"))
            .expect("preflight")
            .expect("allowed");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let get = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://app.example")
        );
        assert_eq!(get(header::ACCESS_CONTROL_MAX_AGE), Some("60"));
    }

    #[test]
    fn another_origin_is_refused() {
        let refused = cors()
            .preflight(&Method::OPTIONS, &headers("https://evil.example"))
            .expect("preflight");
        assert!(matches!(refused, Err(ProxyError::Forbidden(_))));
        assert!(cors()
            .preflight(&Method::GET, &headers("https://app.example"))
            .is_none());
    }
}
