//! Which service an outbound request is for, and what path it is sent with,
//! in this order: the first route of `routes:` that matches (its service,
//! and its `rewrite_prefix`); else an absolute-form request
//! (`GET http://budgeting/x`, via `HTTP_PROXY`) by its authority; else
//! `Host`; else the first path segment (`/budgeting/x`).

use std::borrow::Cow;
use std::sync::Arc;

use actix_http::RequestHead;
use actix_web::http::header::HOST;

use crate::service::{Service, ServiceTable};

/// Where a request goes.
pub struct Route<'t, 'p> {
    /// The service.
    pub service: &'t Arc<Service>,
    /// The path to request from the replica (the query is kept apart);
    /// owned only when a route's `rewrite_prefix` joins a new prefix to it.
    pub path: Cow<'p, str>,
    /// Whether the `Host` header names the service and should be passed on;
    /// otherwise the replica's address is sent as `Host`.
    pub keep_host: bool,
}

/// Resolves a request whose normalised path is `path`; `None` when it names
/// no configured service (or a route's `{service}` segment names none).
pub fn resolve<'t, 'p>(
    table: &'t ServiceTable,
    head: &RequestHead,
    path: &'p str,
) -> Option<Route<'t, 'p>> {
    let routed = table
        .routes()
        .find(&head.method, &head.headers, path, |name| table.get(name));
    if let Some(routed) = routed {
        return Some(Route {
            service: routed.service?,
            path: routed.path,
            keep_host: false,
        });
    }
    if let Some(host) = head.uri.host() {
        let service = service_for_host(table, host)?;
        return Some(Route {
            service,
            path: Cow::Borrowed(path),
            keep_host: true,
        });
    }
    let host_header = head.headers.get(HOST).and_then(|h| h.to_str().ok());
    if let Some(service) = host_header.and_then(|host| service_for_host(table, strip_port(host))) {
        return Some(Route {
            service,
            path: Cow::Borrowed(path),
            keep_host: true,
        });
    }
    let after_slash = path.strip_prefix('/')?;
    let name = after_slash.split('/').next()?;
    let service = table.get(name)?;
    let rest = &after_slash[name.len()..];
    let path = Cow::Borrowed(match (service.settings().strip_prefix, rest.is_empty()) {
        (false, _) => path,
        (true, true) => "/",
        (true, false) => rest,
    });
    Some(Route {
        service,
        path,
        keep_host: false,
    })
}

/// The service a host name stands for: `<service>`, `<service>.<ns>`,
/// `<service>.<ns>.svc` or `<service>.<ns>.svc.cluster.local`.
fn service_for_host<'a>(table: &'a ServiceTable, host: &str) -> Option<&'a Arc<Service>> {
    // Those forms have 1, 2, 3 or 5 labels: an IPv4 literal (4) is none of them.
    let dots = host.bytes().filter(|&b| b == b'.').count();
    if !matches!(dots, 0 | 1 | 2 | 4) {
        return None;
    }
    let mut labels = host.split('.');
    let name = labels.next()?;
    let namespace = labels.next();
    let rest: [Option<&str>; 4] = [labels.next(), labels.next(), labels.next(), labels.next()];
    let cluster_suffix = match rest {
        [None, None, None, None] => true,
        [Some(svc), None, None, None] => svc.eq_ignore_ascii_case("svc"),
        [Some(svc), Some(cluster), Some(local), None] => {
            svc.eq_ignore_ascii_case("svc")
                && cluster.eq_ignore_ascii_case("cluster")
                && local.eq_ignore_ascii_case("local")
        }
        _ => false,
    };
    if !cluster_suffix || namespace == Some("") {
        return None;
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return table.get(&name.to_ascii_lowercase());
    }
    table.get(name)
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(']') => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use actix_web::test::TestRequest;

    fn table() -> ServiceTable {
        let config = Config::from_yaml(
            "services:
  - { name: budgeting, endpoints: [\"127.0.0.1:1\"] }
  - { name: raw, endpoints: [\"127.0.0.1:2\"], strip_prefix: false }
routes:
  - { match: { path_prefix: /api/v1/budget/ }, service: budgeting, rewrite_prefix: /v1/ }",
            &|_| None,
        )
        .expect("valid");
        ServiceTable::new(
            &config.services,
            &config.routes,
            &crate::metrics::Metrics::new(),
        )
    }

    fn route(
        authority: Option<&str>,
        host: Option<&str>,
        path: &str,
    ) -> Option<(String, String, bool)> {
        let table = table();
        let target = match authority {
            Some(authority) => format!("http://{authority}{path}"),
            None => path.to_string(),
        };
        let mut request = TestRequest::default().uri(&target);
        if let Some(host) = host {
            request = request.insert_header((HOST, host));
        }
        let request = request.to_http_request();
        resolve(&table, request.head(), path)
            .map(|r| (r.service.name.to_string(), r.path.into_owned(), r.keep_host))
    }

    fn to(service: &str, path: &str, keep_host: bool) -> Option<(String, String, bool)> {
        Some((service.to_string(), path.to_string(), keep_host))
    }

    #[test]
    fn the_first_path_segment_names_the_service_and_is_stripped() {
        assert_eq!(
            route(None, Some("127.0.0.1:15001"), "/budgeting/api/v1"),
            to("budgeting", "/api/v1", false)
        );
        assert_eq!(route(None, None, "/budgeting"), to("budgeting", "/", false));
        assert_eq!(
            route(None, None, "/budgeting/"),
            to("budgeting", "/", false)
        );
        assert_eq!(route(None, None, "/raw/x"), to("raw", "/raw/x", false));
    }

    #[test]
    fn a_route_comes_before_the_host_and_the_first_segment() {
        assert_eq!(
            route(None, Some("raw"), "/api/v1/budget/plans"),
            to("budgeting", "/v1/plans", false)
        );
        assert_eq!(
            route(None, None, "/api/v1/other"),
            None,
            "no route, and no service named api"
        );
    }

    #[test]
    fn a_longer_segment_is_not_a_prefix_match() {
        assert_eq!(route(None, None, "/budgetingx/a"), None);
        assert_eq!(route(None, None, "/"), None);
        assert_eq!(route(None, None, "/nope/a"), None);
    }

    #[test]
    fn the_host_header_names_the_service_in_every_cluster_form() {
        for host in [
            "budgeting",
            "budgeting:8080",
            "budgeting.default",
            "budgeting.default.svc",
            "budgeting.default.svc.cluster.local",
            "Budgeting.Default.SVC.cluster.local:80",
        ] {
            assert_eq!(
                route(None, Some(host), "/api"),
                to("budgeting", "/api", true),
                "{host}"
            );
        }
        for host in [
            "budgeting.example.com",
            "budgeting.default.svc.cluster",
            "budgeting..svc",
        ] {
            assert_eq!(route(None, Some(host), "/api"), None, "{host}");
        }
    }

    #[test]
    fn an_absolute_form_request_is_routed_by_its_authority_only() {
        assert_eq!(
            route(Some("budgeting"), Some("budgeting"), "/x"),
            to("budgeting", "/x", true)
        );
        assert_eq!(route(Some("elsewhere.com"), None, "/budgeting/x"), None);
    }
}
