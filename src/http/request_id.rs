//! The request id every answer carries: `x-request-id` taken from the
//! caller or made here, and the way log lines and error bodies show it.

use std::fmt;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::HttpRequest;

use crate::trace;

/// The request-id header, accepted from the app or created here.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of `req`, or a new UUID v4 when it has none.
pub fn request_id(req: &HttpRequest) -> HeaderValue {
    match req.headers().get(&REQUEST_ID) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => trace::new_request_id(),
    }
}

/// A request id as log lines and error bodies show it: read as text only
/// when one is written (checking its bytes on every request costs).
#[derive(Clone, Copy)]
pub struct IdText<'a>(pub &'a HeaderValue);

impl IdText<'_> {
    /// The id, or `-` when it is not visible ASCII.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

impl fmt::Display for IdText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn an_existing_request_id_is_kept() {
        let req = TestRequest::default()
            .insert_header(("x-request-id", "abc"))
            .to_http_request();
        assert_eq!(request_id(&req), "abc");
        let fresh = request_id(&TestRequest::default().to_http_request());
        assert_eq!(fresh.len(), 36, "a UUID");
    }
}
