//! Sliding-window rate limits on the inbound side: per route where a route
//! limit matches, else per role; keyed by the caller's identity, or by
//! client address for anonymous callers. An `exact` limit is counted in the
//! shared store on every request (exact across workers and across sidecars
//! sharing Redis); an `approximate` one in this process, synced with the
//! store in the background ([`approximate`]). While Redis is down,
//! `on_redis_error` decides (by default: count in this process).

mod approximate;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::HttpRequest;
use log::warn;
use prometheus::IntCounterVec;

use super::auth::Identity;
use super::gate::{client_ip, store_failed};
use crate::config::{LimitMode, OnRedisError, RateLimitConfig};
use crate::logging::summary;
use crate::metrics::Metrics;
use crate::store::{key, owned_key, MemoryStore, Store, WindowCount};
use approximate::{Approximate, Tally};

/// The verdict for one request, and what its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests left in the window.
    pub remaining: u32,
    /// Until the window has room again.
    pub reset_after: Duration,
    /// The window.
    pub window: Duration,
    /// `route` or `role`: the `scope` label of `rate_limited_total`.
    pub scope: &'static str,
}

impl Verdict {
    /// The `X-RateLimit-*` headers for this verdict.
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 4] {
        let reset_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |now| (now + self.reset_after).as_secs());
        let number =
            |n: u64| HeaderValue::from_str(&n.to_string()).unwrap_or(HeaderValue::from_static("0"));
        [
            (
                HeaderName::from_static("x-ratelimit-limit"),
                number(u64::from(self.limit)),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining"),
                number(u64::from(self.remaining)),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset"),
                number(reset_at),
            ),
            (
                HeaderName::from_static("x-ratelimit-window"),
                number(self.window.as_secs()),
            ),
        ]
    }

    /// Whole seconds to wait, for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.reset_after.as_secs() + u64::from(self.reset_after.subsec_nanos() > 0)
    }
}

/// The limits and where they are counted.
pub struct RateLimiter {
    config: RateLimitConfig,
    store: Arc<dyn Store>,
    /// Counts while Redis is down (`on_redis_error: local`).
    local: MemoryStore,
    /// Where `approximate` limits count, when a rule has one.
    approximate: Option<Approximate>,
    limited: IntCounterVec,
}

/// The limit that applies to a request.
struct Rule<'a> {
    /// `route` or `role`.
    scope: &'static str,
    /// What the window is kept for: the route's path, or `role`.
    bucket: &'a str,
    limit: u32,
    window: Duration,
    mode: LimitMode,
}

impl RateLimiter {
    /// A limiter counting in `store`; refusals and syncs are counted in
    /// `metrics`.
    pub fn new(config: RateLimitConfig, store: Arc<dyn Store>, metrics: &Metrics) -> Self {
        let approximate = (config.mode == LimitMode::Approximate
            || config
                .routes
                .iter()
                .any(|route| route.mode == LimitMode::Approximate))
        .then(|| {
            Approximate::new(
                Arc::clone(&store),
                config.sync_interval,
                &metrics.rate_limit_sync_duration,
            )
        });
        RateLimiter {
            config,
            store,
            local: MemoryStore::new(),
            approximate,
            limited: metrics.rate_limited.clone(),
        }
    }

    /// Counts `req` for `path` (normalised) against its limit; `None` when
    /// no limit applies to it.
    pub async fn check(
        &self,
        req: &HttpRequest,
        path: &str,
        identity: &Identity,
        request_id: &str,
    ) -> Option<Verdict> {
        let rule = self.limit_for(path, identity)?;
        let subject = self.subject(req, identity);
        // The subject owns the key: its windows and usage share a slot.
        let window_key = owned_key("ratelimit", &subject, rule.bucket);
        let approximate = self
            .approximate
            .as_ref()
            .filter(|_| rule.mode == LimitMode::Approximate);
        let counted = match approximate {
            // Its attempts reach the usage record with its next sync.
            Some(approximate) => {
                match approximate.hit(&window_key, &subject, path, rule.limit, rule.window) {
                    Tally::Counted(counted) => counted,
                    Tally::Offline => {
                        self.record_usage_locally(&subject, path, rule.window).await;
                        let reason = "the last sync of its key failed";
                        self.fallback(&window_key, &rule, request_id, reason)
                            .await?
                    }
                }
            }
            None => {
                let counted = match self.store.hit(&window_key, rule.limit, rule.window).await {
                    Ok(count) => count,
                    Err(err) => self.fallback(&window_key, &rule, request_id, err).await?,
                };
                self.record_usage(&subject, path, rule.window, request_id)
                    .await;
                counted
            }
        };
        if !counted.allowed {
            self.limited.with_label_values(&[rule.scope]).inc();
        }
        Some(Verdict {
            allowed: counted.allowed,
            limit: rule.limit,
            remaining: rule.limit.saturating_sub(counted.count),
            reset_after: counted.reset_after,
            window: rule.window,
            scope: rule.scope,
        })
    }

    /// Counts a hit the store could not take as `on_redis_error` says:
    /// `None` when the request goes on without a limit.
    async fn fallback(
        &self,
        window_key: &str,
        rule: &Rule<'_>,
        request_id: &str,
        err: impl std::fmt::Display,
    ) -> Option<WindowCount> {
        match self.config.on_redis_error {
            OnRedisError::Local => {
                if summary::first(store_failed("rate_limit_counted_in_process")) {
                    warn!("request {request_id}: rate limit counted in process: {err}");
                }
                self.local
                    .hit(window_key, rule.limit, rule.window)
                    .await
                    .ok()
            }
            OnRedisError::Allow => {
                if summary::first(store_failed("rate_limit_skipped")) {
                    warn!("request {request_id}: rate limit skipped: {err}");
                }
                None
            }
            OnRedisError::Deny => Some(WindowCount {
                allowed: false,
                count: rule.limit,
                reset_after: rule.window,
            }),
        }
    }

    /// Adds the attempt on the endpoint itself, not its limit's bucket, to
    /// the subject's usage record: at most `limit` distinct paths a window,
    /// since each one is counted against it.
    async fn record_usage(&self, subject: &str, path: &str, window: Duration, request_id: &str) {
        let usage_key = key("usage", subject);
        if let Err(err) = self.store.record_usage(&usage_key, path, window).await {
            let _ = self.local.record_usage(&usage_key, path, window).await;
            log::debug!("request {request_id}: usage kept in process: {err}");
        }
    }

    /// Adds the attempt to the subject's usage record in this process only.
    async fn record_usage_locally(&self, subject: &str, path: &str, window: Duration) {
        let _ = self
            .local
            .record_usage(&key("usage", subject), path, window)
            .await;
    }

    /// Attempts per endpoint of user `id` within the window.
    pub async fn usage(&self, id: &str) -> Result<Vec<(String, u64)>, String> {
        let usage_key = key("usage", &format!("user:{id}"));
        match self.store.usage(&usage_key).await {
            Ok(usage) => Ok(usage),
            Err(err) => {
                let local = self
                    .local
                    .usage(&usage_key)
                    .await
                    .map_err(|e| e.to_string())?;
                warn!("rate-limit usage from this process only: {err}");
                Ok(local)
            }
        }
    }

    /// The limit on `path` for `identity`.
    fn limit_for<'a>(&'a self, path: &str, identity: &Identity) -> Option<Rule<'a>> {
        if let Some(route) = self
            .config
            .routes
            .iter()
            .find(|route| path.starts_with(&route.path))
        {
            return Some(Rule {
                scope: "route",
                bucket: route.path.as_str(),
                limit: route.limit,
                window: route.window,
                mode: route.mode,
            });
        }
        let role_limit = |role: &str| {
            self.config
                .roles
                .iter()
                .find(|(r, _)| r == role)
                .map(|(_, l)| *l)
        };
        let limit = if identity.user.is_empty() {
            role_limit("anonymous")
        } else {
            identity
                .roles
                .iter()
                .filter_map(|role| role_limit(role))
                .max()
                .or(self.config.default)
        }?;
        Some(Rule {
            scope: "role",
            bucket: "role",
            limit,
            window: self.config.window,
            mode: self.config.mode,
        })
    }

    /// Who is counted: the user, or the client address when anonymous.
    fn subject(&self, req: &HttpRequest, identity: &Identity) -> String {
        if !identity.user.is_empty() {
            return format!("user:{}", identity.user);
        }
        format!(
            "ip:{}",
            client_ip(req, &self.config.trusted_proxies)
                .map_or_else(String::new, |ip| ip.to_string())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use std::net::IpAddr;

    fn proxy() -> IpAddr {
        "10.0.0.1".parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let through_proxy = TestRequest::default()
            .peer_addr("10.0.0.1:1000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "203.0.113.9, 10.0.0.1"))
            .to_http_request();
        assert_eq!(
            client_ip(&through_proxy, &[proxy()]),
            "203.0.113.9".parse().ok()
        );
        assert_eq!(
            client_ip(&through_proxy, &[]),
            Some(proxy()),
            "an untrusted peer's header is ignored"
        );
        let direct = TestRequest::default()
            .peer_addr("198.51.100.4:1000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .to_http_request();
        assert_eq!(client_ip(&direct, &[proxy()]), "198.51.100.4".parse().ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let verdict = Verdict {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_after: Duration::from_millis(1500),
            window: Duration::from_secs(60),
            scope: "route",
        };
        assert_eq!(verdict.retry_after_secs(), 2);
        let headers = verdict.headers();
        assert_eq!(headers[0].1, "5");
        assert_eq!(headers[3].1, "60");
    }
}
