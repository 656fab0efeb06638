//! The route table in force (`routes:`): which service a request goes to by
//! its path, method and headers, and the path it is forwarded with. It is
//! part of the [`crate::service::ServiceTable`], so a request loads both at
//! once and a reload swaps both at once; the outbound listener tries it
//! before the `Host` and `/<service>/` rules (`src/outbound/route.rs`).

use std::borrow::Cow;

use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::http::Method;
use rand::Rng;

use crate::config::{Backend, PathPattern, RouteConfig, RouteTo};

/// The routes, in config order: the first that matches wins.
#[derive(Default)]
pub struct RouteTable {
    routes: Box<[Route]>,
}

/// One route as a request meets it.
struct Route {
    path: PathPattern,
    /// Upper case; empty for any method.
    methods: Box<[String]>,
    /// Parsed once here, so a lookup does not parse the name per request.
    headers: Box<[(HeaderName, String)]>,
    to: RouteTo,
    /// The sum of the backends' weights (0 unless `to` is `Backends`).
    total_weight: u32,
    /// `rewrite_prefix` without its trailing `/`, so "/" is "".
    rewrite: Option<Box<str>>,
}

/// Where a route sends a request.
pub struct Routed<'p, S> {
    /// The service; `None` when the `{service}` segment names no service.
    pub service: Option<S>,
    /// The path to forward: the request's, or rewritten.
    pub path: Cow<'p, str>,
}

impl RouteTable {
    /// The table for `configs`, read and checked by the config reader.
    ///
    /// # Panics
    /// On a header name the config reader would have refused: a
    /// [`crate::config::Config`] comes only from the reader.
    pub fn new(configs: &[RouteConfig]) -> Self {
        let routes = configs
            .iter()
            .map(|config| {
                let headers = config
                    .matches
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        let name = HeaderName::try_from(name.as_str())
                            .expect("the config reader checked each header name");
                        (name, value.clone())
                    })
                    .collect();
                let total_weight = match &config.to {
                    RouteTo::Backends(backends) => backends.iter().map(|b| b.weight).sum(),
                    RouteTo::Service(_) | RouteTo::FromPath => 0,
                };
                Route {
                    path: config.matches.path.clone(),
                    methods: config.matches.methods.clone().into_boxed_slice(),
                    headers,
                    to: config.to.clone(),
                    total_weight,
                    rewrite: config
                        .rewrite_prefix
                        .as_deref()
                        .map(|prefix| prefix.trim_end_matches('/').into()),
                }
            })
            .collect();
        RouteTable { routes }
    }

    /// The first route matching the request, with its service looked up
    /// by `service` and its path rewritten; `None` when no route matches.
    pub fn find<'p, S>(
        &self,
        method: &Method,
        headers: &HeaderMap,
        path: &'p str,
        service: impl Fn(&str) -> Option<S>,
    ) -> Option<Routed<'p, S>> {
        self.routes.iter().find_map(|route| {
            let matched = route.matches(method, headers, path)?;
            let name = match &route.to {
                RouteTo::Service(name) => name.as_str(),
                RouteTo::FromPath => matched.captured.unwrap_or_default(),
                RouteTo::Backends(backends) => {
                    // The reader refuses a total of 0; were it 0, no backend is picked.
                    let roll = rand::rng().random_range(0..route.total_weight.max(1));
                    weighted(backends, roll)?
                }
            };
            Some(Routed {
                service: service(name),
                path: rewritten(route.rewrite.as_deref(), path, matched.rest),
            })
        })
    }
}

impl Route {
    /// How `path` matched, when the method, headers and path all do.
    fn matches<'p>(
        &self,
        method: &Method,
        headers: &HeaderMap,
        path: &'p str,
    ) -> Option<crate::config::PathMatch<'p>> {
        let method_fits =
            self.methods.is_empty() || self.methods.iter().any(|m| m == method.as_str());
        let headers_fit = self.headers.iter().all(|(name, value)| {
            headers
                .get(name)
                .is_some_and(|seen| seen.as_bytes() == value.as_bytes())
        });
        if !(method_fits && headers_fit) {
            return None;
        }
        self.path.matches(path)
    }
}

/// The backend `roll` (below the sum of the weights) falls on.
fn weighted(backends: &[Backend], mut roll: u32) -> Option<&str> {
    backends
        .iter()
        .find(|backend| {
            if roll < backend.weight {
                return true;
            }
            roll -= backend.weight;
            false
        })
        .map(|backend| backend.service.as_str())
}

/// `path` with its matched part replaced by `prefix` (already without a
/// trailing `/`), `rest` being what followed the match; borrowed unless a
/// new prefix must be joined to it.
fn rewritten<'p>(prefix: Option<&str>, path: &'p str, rest: &'p str) -> Cow<'p, str> {
    match prefix {
        None => Cow::Borrowed(path),
        Some("") if rest.is_empty() => Cow::Borrowed("/"),
        Some("") => Cow::Borrowed(rest),
        Some(prefix) => Cow::Owned(format!("{prefix}{rest}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use actix_web::http::header::HeaderValue;

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            "services:
  - {{ name: auth, endpoints: [\"127.0.0.1:1\"] }}
  - {{ name: a, endpoints: [\"127.0.0.1:2\"] }}
  - {{ name: b, endpoints: [\"127.0.0.1:3\"] }}
routes:
{routes}"
        );
        RouteTable::new(&Config::from_yaml(&text, &|_| None).expect("valid").routes)
    }

    /// Where `method path` with `headers` goes: the service name and path.
    fn find(
        table: &RouteTable,
        method: Method,
        path: &str,
        headers: &[(&'static str, &'static str)],
    ) -> Option<(String, String)> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        table
            .find(&method, &map, path, |name| Some(name.to_string()))
            .map(|routed| (routed.service.unwrap_or_default(), routed.path.into_owned()))
    }

    fn to(service: &str, path: &str) -> Option<(String, String)> {
        Some((service.to_string(), path.to_string()))
    }

    #[test]
    fn the_first_matching_route_wins_and_rewrites_its_prefix() {
        let routes = table(
            "  - { match: { path_prefix: /api/v1/auth/ }, service: auth, rewrite_prefix: / }
  - { match: { path_prefix: /api/v1/ }, service: a, rewrite_prefix: /v1/ }
  - { match: { path_prefix: /keep }, service: b }",
        );
        let get = |path| find(&routes, Method::GET, path, &[]);
        assert_eq!(get("/api/v1/auth/me"), to("auth", "/me"));
        assert_eq!(get("/api/v1/auth"), to("auth", "/"));
        assert_eq!(get("/api/v1/orders/7"), to("a", "/v1/orders/7"));
        assert_eq!(get("/api/v1"), to("a", "/v1"));
        assert_eq!(get("/keep/x"), to("b", "/keep/x"));
        assert_eq!(get("/other"), None);
    }

    #[test]
    fn the_service_segment_names_the_service() {
        let routes = table(
            "  - { match: { path_prefix: \"/internal/{service}/\" }, service: \"{service}\", rewrite_prefix: / }",
        );
        let get = |path| find(&routes, Method::GET, path, &[]);
        assert_eq!(get("/internal/catalog/items"), to("catalog", "/items"));
        assert_eq!(get("/internal/"), None);
    }

    #[test]
    fn methods_and_headers_narrow_a_route() {
        let routes = table(
            "  - { match: { path_prefix: /x, methods: [POST] }, service: a }
  - { match: { path_prefix: /x, headers: { x-canary: \"1\" } }, service: b }
  - { match: { path_prefix: /x }, service: auth }",
        );
        assert_eq!(find(&routes, Method::POST, "/x", &[]), to("a", "/x"));
        assert_eq!(
            find(&routes, Method::GET, "/x", &[("x-canary", "1")]),
            to("b", "/x")
        );
        assert_eq!(
            find(&routes, Method::GET, "/x", &[("x-canary", "2")]),
            to("auth", "/x")
        );
    }

    #[test]
    fn a_roll_falls_on_each_backend_by_its_weight() {
        let backends = [
            Backend {
                service: "a".to_string(),
                weight: 3,
            },
            Backend {
                service: "off".to_string(),
                weight: 0,
            },
            Backend {
                service: "b".to_string(),
                weight: 1,
            },
        ];
        let picks: Vec<_> = (0..4).map(|roll| weighted(&backends, roll)).collect();
        assert_eq!(picks, [Some("a"), Some("a"), Some("a"), Some("b")]);
    }
}
