//! The inbound GET response cache. Only 200 answers the app allows to be
//! kept (no `no-store`/`no-cache`/`private`, no `Set-Cookie`, no `Vary: *`)
//! and whose size is known and within `max_entry_bytes` are stored; each
//! entry is per user (the cache key holds the caller's identity) and per the
//! request headers the answer's `Vary` names. Concurrent misses for one key
//! wait for the first to fill it. A store that cannot be asked (Redis down)
//! means `X-Cache: BYPASS`, never a failed request. In process the entries
//! take at most `max_bytes`; an entry's bytes are shared by every answer
//! served from it, never copied per reader.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{BufMut, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use log::{debug, warn};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::auth::Identity;
use super::gate::store_failed;
use crate::config::CacheConfig;
use crate::error::ProxyError;
use crate::http::forward::UpstreamResponse;
use crate::logging::summary;
use crate::metrics::Metrics;
use crate::store::{key, Store};

/// How long a miss waits for another request's fill of the same key.
const FILL_WAIT: Duration = Duration::from_secs(5);

/// The most an entry's head (status, headers, `Vary` values) may take on
/// top of its body's `max_entry_bytes`; an answer with a larger head is
/// not kept.
const HEAD_ROOM: usize = 64 * 1024;

/// The slices a cached body is handed to the connection in: each
/// connection copies a slice into its write buffer only as the client
/// takes the one before, so a slow reader holds this much, not a copy of
/// the whole answer.
const BODY_SLICE: usize = 16 * 1024;

/// The header that says how an answer was served.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The GET cache of the inbound listener.
pub struct Cache {
    config: CacheConfig,
    store: Arc<dyn Store>,
    fills: Mutex<HashMap<String, Arc<Notify>>>,
    hits: IntCounter,
    misses: IntCounter,
    errors: IntCounter,
}

/// What a lookup found.
pub enum Lookup {
    /// The answer, from the cache.
    Hit(HttpResponse),
    /// Not cached: forward, then [`Cache::complete`] with this fill.
    Miss(Fill),
    /// Not cacheable here, or the store cannot be asked: forward as is.
    Bypass,
}

/// A miss being filled; other requests for the key wait until it drops.
pub struct Fill {
    cache: Arc<Cache>,
    key: String,
    ttl: Duration,
    leader: bool,
}

impl Drop for Fill {
    fn drop(&mut self) {
        if !self.leader {
            return;
        }
        if let Ok(mut fills) = self.cache.fills.lock() {
            if let Some(notify) = fills.remove(&self.key) {
                notify.notify_waiters();
            }
        }
    }
}

/// A stored answer.
#[derive(Serialize, Deserialize)]
struct Entry {
    status: u16,
    headers: Vec<(String, String)>,
    /// The request headers the answer varies on, with the values it was stored for.
    vary: Vec<(String, String)>,
}

impl Cache {
    /// A cache for `config` in `store`, counted in `metrics`.
    pub fn new(config: CacheConfig, store: Arc<dyn Store>, metrics: &Metrics) -> Self {
        store.bound_values(usize::try_from(config.max_bytes).unwrap_or(usize::MAX));
        Cache {
            config,
            store,
            fills: Mutex::new(HashMap::new()),
            hits: metrics.cache_hits.clone(),
            misses: metrics.cache_misses.clone(),
            errors: metrics.cache_errors.clone(),
        }
    }

    /// Looks `req` for `path` (normalised) up; GET and HEAD only (HEAD is
    /// served from the GET entry).
    pub async fn lookup(
        self: &Arc<Self>,
        req: &HttpRequest,
        path: &str,
        identity: &Identity,
        id: &str,
    ) -> Option<Lookup> {
        if *req.method() != Method::GET && *req.method() != Method::HEAD {
            return None;
        }
        if self
            .config
            .bypass
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            return Some(Lookup::Bypass);
        }
        let ttl = self
            .config
            .routes
            .iter()
            .find(|route| path.starts_with(route.path.as_str()))
            .map_or(self.config.default_ttl, |route| route.ttl);
        let key = key(
            "cache",
            &format!(
                "{path}?{}\0{}:{}",
                sorted_query(req.query_string()),
                identity.method.as_str(),
                identity.user
            ),
        );
        match self.cached(&key, req.headers()).await {
            Err(why) => {
                self.errors.inc();
                if summary::first(store_failed("cache_bypassed")) {
                    warn!("request {id}: cache bypassed: {why}");
                }
                return Some(Lookup::Bypass);
            }
            Ok(Some(hit)) => return Some(Lookup::Hit(self.hit(hit))),
            Ok(None) => {}
        }
        let waiting = match self.fills.lock() {
            Ok(mut fills) => match fills.get(&key) {
                Some(notify) => Some(Arc::clone(notify)),
                None => {
                    fills.insert(key.clone(), Arc::new(Notify::new()));
                    None
                }
            },
            Err(_) => None,
        };
        let Some(notify) = waiting else {
            return Some(Lookup::Miss(self.fill(key, ttl, true)));
        };
        // Another request is filling this key: wait for it, then look again.
        let filled = notify.notified();
        if self
            .fills
            .lock()
            .is_ok_and(|fills| fills.contains_key(&key))
        {
            let _ = tokio::time::timeout(FILL_WAIT, filled).await;
        }
        match self.cached(&key, req.headers()).await {
            Ok(Some(hit)) => Some(Lookup::Hit(self.hit(hit))),
            _ => Some(Lookup::Miss(self.fill(key, ttl, false))),
        }
    }

    /// Answers a miss with the app's `response`, storing it when it may be
    /// kept; its body must arrive within `deadline` (the app's `timeout`),
    /// or the refusal to answer with is returned.
    pub async fn complete<G: crate::http::forward::StreamGuard>(
        &self,
        fill: Fill,
        response: UpstreamResponse,
        guard: G,
        request: &HeaderMap,
        deadline: Duration,
    ) -> Result<HttpResponse, ProxyError> {
        self.misses.inc();
        let Some((ttl, vary_names)) = self.storable(&response, fill.ttl) else {
            let mut answer = crate::http::forward::respond(response, guard);
            answer
                .headers_mut()
                .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
            return Ok(answer);
        };
        let mut response = response;
        let status = response.status();
        let limit = self.config.max_entry_bytes as usize;
        let body = match tokio::time::timeout(deadline, response.body(limit)).await {
            Ok(Ok(body)) => body,
            Ok(Err(err)) => {
                debug!("cache: reading the body to store failed: {err}");
                return Err(ProxyError::UpstreamReset(format!(
                    "the app's answer broke off: {err}"
                )));
            }
            Err(_) => {
                return Err(ProxyError::Timeout(format!(
                    "the app's answer body did not arrive within {}ms",
                    deadline.as_millis()
                )));
            }
        };
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| {
                !crate::http::forward::is_hop_by_hop(name, response.headers())
                    && **name != header::CONTENT_LENGTH
            })
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect();
        let vary = vary_names
            .into_iter()
            .map(|name| {
                let value = request
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                (name, value)
            })
            .collect();
        let entry = Entry {
            status: status.as_u16(),
            headers,
            vary,
        };
        let body = match serde_json::to_vec(&entry) {
            Ok(head) if head.len() < HEAD_ROOM => {
                // One allocation holds the stored entry and the body this
                // answer and every later hit serve.
                let mut stored = BytesMut::with_capacity(head.len() + 1 + body.len());
                stored.put_slice(&head);
                stored.put_u8(b'\n');
                stored.put_slice(&body);
                let stored = stored.freeze();
                if let Err(err) = self.store.set(&fill.key, stored.clone(), ttl).await {
                    self.errors.inc();
                    if summary::first(store_failed("cache_store_failed")) {
                        warn!("cache: storing failed: {err}");
                    }
                }
                stored.slice(head.len() + 1..)
            }
            _ => body,
        };
        drop(fill);
        let mut answer = build(&entry, body);
        answer
            .headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
        Ok(answer)
    }

    fn fill(self: &Arc<Self>, key: String, ttl: Duration, leader: bool) -> Fill {
        Fill {
            cache: Arc::clone(self),
            key,
            ttl,
            leader,
        }
    }

    fn hit(&self, (entry, body): (Entry, Bytes)) -> HttpResponse {
        self.hits.inc();
        let mut answer = build(&entry, body);
        answer
            .headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static("HIT"));
        answer
    }

    /// The stored entry for `key` when its `Vary` headers match the request's.
    async fn cached(
        &self,
        key: &str,
        request: &HeaderMap,
    ) -> Result<Option<(Entry, Bytes)>, String> {
        let longest = self.config.max_entry_bytes as usize + HEAD_ROOM;
        let Some(stored) = self
            .store
            .get(key, longest)
            .await
            .map_err(|err| err.to_string())?
        else {
            return Ok(None);
        };
        let split = stored
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("a cache entry without a head")?;
        let entry: Entry =
            serde_json::from_slice(&stored[..split]).map_err(|err| err.to_string())?;
        let matches = entry.vary.iter().all(|(name, value)| {
            request
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                == value
        });
        Ok(matches.then(|| (entry, stored.slice(split + 1..))))
    }

    /// The time to live and the `Vary` header names when `response` may be kept.
    fn storable(
        &self,
        response: &UpstreamResponse,
        route_ttl: Duration,
    ) -> Option<(Duration, Vec<String>)> {
        let headers = response.headers();
        if response.status() != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
            return None;
        }
        let length: u64 = headers
            .get(header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if length > u64::from(self.config.max_entry_bytes) {
            return None;
        }
        let cache_control = headers
            .get_all(header::CACHE_CONTROL)
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        let mut ttl = route_ttl;
        for directive in cache_control.split(',').map(str::trim) {
            match directive {
                "no-store" | "no-cache" | "private" => return None,
                _ => {
                    if let Some(seconds) = directive
                        .strip_prefix("max-age=")
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        ttl = ttl.min(Duration::from_secs(seconds));
                    }
                }
            }
        }
        if ttl.is_zero() {
            return None;
        }
        let vary_names: Vec<String> = headers
            .get_all(header::VARY)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        if vary_names.iter().any(|name| name == "*") {
            return None;
        }
        Some((ttl, vary_names))
    }
}

fn build(entry: &Entry, body: Bytes) -> HttpResponse {
    let status = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let mut answer = HttpResponse::build(status);
    for (name, value) in &entry.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            answer.append_header((name, value));
        }
    }
    answer.body(SharedBody(body))
}

/// A cached body handed out in [`BODY_SLICE`] slices of the shared bytes.
struct SharedBody(Bytes);

impl MessageBody for SharedBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0.len() as u64)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let rest = &mut self.get_mut().0;
        if rest.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(rest.split_to(BODY_SLICE.min(rest.len())))))
    }
}

/// The query with its parameters in order, so `?a=1&b=2` and `?b=2&a=1` share an entry.
fn sorted_query(query: &str) -> String {
    let mut parameters: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    parameters.sort_unstable();
    parameters.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_cached_body_is_served_in_slices_of_the_shared_bytes() {
        let shared = Bytes::from(vec![7u8; 2 * BODY_SLICE + 5]);
        let mut body = SharedBody(shared.clone());
        assert_eq!(body.size(), BodySize::Sized(shared.len() as u64));
        let mut served = Vec::new();
        while let Some(slice) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
            served.push(slice.expect("infallible"));
        }
        let lengths: Vec<usize> = served.iter().map(Bytes::len).collect();
        assert_eq!(lengths, [BODY_SLICE, BODY_SLICE, 5]);
        assert_eq!(
            served[1].as_ptr(),
            shared[BODY_SLICE..].as_ptr(),
            "not copied"
        );
    }

    #[test]
    fn query_order_does_not_split_entries() {
        assert_eq!(sorted_query("b=2&a=1"), "a=1&b=2");
        assert_eq!(sorted_query(""), "");
    }
}
