//! Config of the route table (`routes:`): requests matched by path prefix or
//! exact path, and optionally by method and headers, sent to a service, to a
//! service named by a path segment (`{service}`), or split by weight among
//! services, with an optional prefix rewrite. Routes are tried in order
//! before the `Host` and `/<service>/` rules; the first that matches wins,
//! so a route that an earlier one shadows is refused here, with both key
//! paths.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_norway::Value;

use super::reader::{Problems, Table};

/// The path segment a route may capture the service's name from.
pub const SERVICE_SEGMENT: &str = "{service}";

/// The methods a route may match: the ones HTTP/1.1 defines, and PATCH.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The largest weight of one backend, so the sum of a route's weights fits.
const MAX_WEIGHT: u32 = 1_000_000;

/// One route: what it matches and where it sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    /// What a request must look like.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Where a matching request goes.
    #[serde(flatten)]
    pub to: RouteTo,
    /// Replaces the matched path prefix (the whole path for `match.path`)
    /// before forwarding; absent, the path goes as it came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
}

/// What a request must look like for a route to take it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteMatch {
    /// The path, by prefix (`path_prefix`) or whole (`path`).
    #[serde(flatten)]
    pub path: PathPattern,
    /// Any of these methods, upper case (empty: any method).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Each of these headers with exactly this value; names lower case.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Where a route sends what it matches.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteTo {
    /// One service (`service: auth`).
    Service(String),
    /// The service the `{service}` segment of the path names
    /// (`service: "{service}"`).
    FromPath,
    /// Services chosen per request in proportion to their weights
    /// (`backends: [{ service, weight }]`).
    Backends(Vec<Backend>),
}

/// One service of a weighted split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    /// The service.
    pub service: String,
    /// Its share, relative to the route's other backends (default 1).
    pub weight: u32,
}

impl Serialize for RouteTo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Self::Service(name) => map.serialize_entry("service", name)?,
            Self::FromPath => map.serialize_entry("service", SERVICE_SEGMENT)?,
            Self::Backends(backends) => map.serialize_entry("backends", backends)?,
        }
        map.end()
    }
}

/// A path a route matches: a prefix, by whole segments (`/api` matches
/// `/api` and `/api/x`, not `/apis`), or an exact path; at most one segment
/// may be `{service}`, which matches any one non-empty segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// As written, for showing.
    text: String,
    /// The whole path must match, not a prefix of it.
    exact: bool,
    /// The literal part before a `{service}` segment (all of it when there
    /// is none); a prefix's trailing `/` dropped, so the root prefix is "".
    head: String,
    /// Whether a `{service}` segment follows `head`.
    capture: bool,
    /// The literal part after the `{service}` segment: "" or from a `/`.
    tail: String,
}

/// What a request's path made of a [`PathPattern`] it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathMatch<'p> {
    /// The segment `{service}` matched.
    pub captured: Option<&'p str>,
    /// The path after the matched part: "" or from a `/`.
    pub rest: &'p str,
}

/// One segment of a pattern, for comparing patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    Any,
}

impl PathPattern {
    /// Reads `text` (`/api/v1/{service}/`) as a prefix or, with `exact`, a
    /// whole path; the error says what is wrong with it.
    pub fn parse(text: &str, exact: bool) -> Result<PathPattern, String> {
        check_path(text, true)?;
        if text.matches(SERVICE_SEGMENT).count() > 1 {
            return Err(format!(
                "\"{text}\" has {SERVICE_SEGMENT} twice: one segment names the service"
            ));
        }
        // check_path let {service} through only as a whole segment: a '/' precedes it.
        let (head, capture, tail) = match text.split_once(SERVICE_SEGMENT) {
            None => (text, false, ""),
            Some((head, tail)) => (&head[..head.len() - 1], true, tail),
        };
        let trim = |part: &str| -> String {
            if exact {
                part.to_string()
            } else {
                part.trim_end_matches('/').to_string()
            }
        };
        let (head, tail) = if capture {
            (head.to_string(), trim(tail))
        } else {
            (trim(head), String::new())
        };
        Ok(PathPattern {
            text: text.to_string(),
            exact,
            head,
            capture,
            tail,
        })
    }

    /// Whether this matches whole paths only.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Whether a `{service}` segment is part of it.
    pub fn captures(&self) -> bool {
        self.capture
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How `path` (normalised: no `//`, no dot-segments) matches, if it does.
    pub fn matches<'p>(&self, path: &'p str) -> Option<PathMatch<'p>> {
        let after_head = after_literal(path, &self.head)?;
        let (captured, after) = if self.capture {
            let segment = after_head.strip_prefix('/')?;
            let end = segment.find('/').unwrap_or(segment.len());
            if end == 0 {
                return None;
            }
            (Some(&segment[..end]), &segment[end..])
        } else {
            (None, after_head)
        };
        let rest = after_literal(after, &self.tail)?;
        if self.exact && !rest.is_empty() {
            return None;
        }
        Some(PathMatch { captured, rest })
    }

    /// Whether every path `other` matches, this matches too.
    fn covers(&self, other: &PathPattern) -> bool {
        let (mine, theirs) = (self.segments(), other.segments());
        let fits = |(a, b): (&Segment, &Segment)| match (a, b) {
            (Segment::Any, Segment::Any) => true,
            (Segment::Any, Segment::Literal(b)) => !b.is_empty(),
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::Literal(_), Segment::Any) => false,
        };
        let lengths_fit = if self.exact {
            other.exact && mine.len() == theirs.len()
        } else {
            mine.len() <= theirs.len()
        };
        lengths_fit && mine.iter().zip(&theirs).all(fits)
    }

    /// The pattern's segments: `/a/{service}/` as a prefix is `[a, Any]`,
    /// exact `[a, Any, ""]`; the root prefix has none.
    fn segments(&self) -> Vec<Segment<'_>> {
        let mut segments: Vec<Segment<'_>> = literal_segments(&self.head).collect();
        if self.capture {
            segments.push(Segment::Any);
            segments.extend(literal_segments(&self.tail));
        }
        segments
    }
}

impl Serialize for PathPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        let key = if self.exact { "path" } else { "path_prefix" };
        map.serialize_entry(key, &self.text)?;
        map.end()
    }
}

/// The segments of a literal part of a pattern ("" has none).
fn literal_segments(part: &str) -> impl Iterator<Item = Segment<'_>> {
    part.strip_prefix('/')
        .into_iter()
        .flat_map(|rest| rest.split('/').map(Segment::Literal))
}

/// `path` after `literal` when `literal` ends at a segment boundary of it.
fn after_literal<'p>(path: &'p str, literal: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(literal)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Why `text` can never equal a path the listeners route, if it cannot:
/// they refuse `//`, dot-segments, `;` and `\`, and decode `%`-escapes
/// first. With `placeholders`, `{service}` is let through.
fn check_path(text: &str, placeholders: bool) -> Result<(), String> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("expected a path starting with '/', got \"{text}\""));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() && index != last {
            return Err(format!(
                "\"{text}\" has an empty segment (//), which no request routed here has"
            ));
        }
        if matches!(*segment, "." | "..") {
            return Err(format!(
                "\"{text}\" has a dot-segment, which no request routed here has"
            ));
        }
        if placeholders && *segment == SERVICE_SEGMENT {
            continue;
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,=:@".contains(*c)))
        {
            let why = match c {
                '%' => "routes match the decoded path: write the character itself",
                '{' | '}' => "the only placeholder is a whole {service} segment",
                _ => "no request routed here has it in its path",
            };
            return Err(format!("\"{text}\" has '{c}': {why}"));
        }
    }
    Ok(())
}

/// Reads `routes:` (live: a reload swaps the table); `services` are the
/// configured names a route may send to.
pub(super) fn read_routes(
    top: &mut Table,
    services: &[&str],
    problems: &mut Problems,
) -> Vec<RouteConfig> {
    let mut read: Vec<(String, RouteConfig)> = Vec::new();
    let routes = top.tables("routes", problems, |t, problems| {
        read_route(t, services, problems).map(|route| (t.path().to_string(), route))
    });
    for (path, route) in routes {
        if let Some((earlier, _)) = read.iter().find(|(_, earlier)| shadows(earlier, &route)) {
            problems.add(
                &format!("{path}.match"),
                format!("never matched: {earlier} comes first and matches every request this route does; put the more specific route first"),
            );
        }
        read.push((path, route));
    }
    read.into_iter().map(|(_, route)| route).collect()
}

/// Whether `earlier` takes every request `later` would.
fn shadows(earlier: &RouteConfig, later: &RouteConfig) -> bool {
    let (a, b) = (&earlier.matches, &later.matches);
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a
        .headers
        .iter()
        .all(|(name, value)| b.headers.get(name) == Some(value));
    methods && headers && a.path.covers(&b.path)
}

fn read_route(t: &mut Table, services: &[&str], problems: &mut Problems) -> Option<RouteConfig> {
    let matches = match t.raw("match") {
        Some(value) => {
            let path = t.path_of("match");
            let mut table = Table::open(value, &path, problems)?;
            let matches = read_match(&mut table, problems);
            table.finish(problems);
            matches
        }
        None => {
            problems.add(
                &t.path_of("match"),
                "required: what the route matches, like { path_prefix: /api/v1/auth/ }",
            );
            None
        }
    };
    let to = read_target(t, services, problems);
    let rewrite_prefix: Option<String> = t.get("rewrite_prefix", problems);
    if let Some(Err(why)) = rewrite_prefix.as_deref().map(|p| check_path(p, false)) {
        problems.add(&t.path_of("rewrite_prefix"), why);
    }
    let matches = matches?;
    let to = to?;
    if to == RouteTo::FromPath && !matches.path.captures() {
        problems.add(
            &t.path_of("service"),
            format!("\"{SERVICE_SEGMENT}\" needs a {SERVICE_SEGMENT} segment in match.path_prefix or match.path to take the name from"),
        );
    }
    Some(RouteConfig {
        matches,
        to,
        rewrite_prefix,
    })
}

fn read_match(t: &mut Table, problems: &mut Problems) -> Option<RouteMatch> {
    let prefix: Option<String> = t.get("path_prefix", problems);
    let exact: Option<String> = t.get("path", problems);
    let path = match (prefix, exact) {
        (Some(text), None) => Some(("path_prefix", text, false)),
        (None, Some(text)) => Some(("path", text, true)),
        (Some(_), Some(_)) => {
            problems.add(t.path(), "set path_prefix or path, not both");
            None
        }
        (None, None) => {
            problems.add(
                t.path(),
                "required: path_prefix (\"/\" for every path) or path",
            );
            None
        }
    };
    let path = path.and_then(|(key, text, exact)| {
        PathPattern::parse(&text, exact)
            .map_err(|why| problems.add(&t.path_of(key), why))
            .ok()
    });
    let methods_path = t.path_of("methods");
    let methods: Vec<String> = match t.list("methods", problems) {
        Some(methods) if methods.is_empty() => {
            problems.add(
                &methods_path,
                "an empty list matches no request: leave it out to match every method",
            );
            methods
        }
        methods => methods.unwrap_or_default(),
    };
    for (index, method) in methods.iter().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            problems.add(
                &format!("{methods_path}[{index}]"),
                format!("expected a method in capitals like GET or POST, got \"{method}\""),
            );
        }
    }
    let headers = read_headers(t, problems);
    Some(RouteMatch {
        path: path?,
        methods,
        headers,
    })
}

fn read_headers(t: &mut Table, problems: &mut Problems) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    let path = t.path_of("headers");
    let map = match t.raw("headers") {
        None => return headers,
        Some(Value::Mapping(map)) => map,
        Some(_) => {
            problems.add(
                &path,
                "expected a mapping of header name to value, like { x-canary: \"1\" }",
            );
            return headers;
        }
    };
    for (name, value) in map {
        let (Some(name), Some(value)) = (name.as_str(), value.as_str()) else {
            problems.add(
                &path,
                "expected header names and values as strings (quote numbers: \"1\")",
            );
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if actix_web::http::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            problems.add(&format!("{path}.{name}"), "not a valid header name");
        } else if actix_web::http::header::HeaderValue::from_str(value).is_err() {
            problems.add(&format!("{path}.{name}"), "not a valid header value");
        } else {
            headers.insert(lower, value.to_string());
        }
    }
    headers
}

fn read_target(t: &mut Table, services: &[&str], problems: &mut Problems) -> Option<RouteTo> {
    let known = |name: &str, path: &str, problems: &mut Problems| {
        let found = services.contains(&name);
        if !found {
            problems.add(path, format!("no service named \"{name}\" in services"));
        }
        found
    };
    let service: Option<String> = t.get("service", problems);
    let listed = t
        .raw("backends")
        .map(|b| b.as_sequence().map_or(1, Vec::len));
    let backends = listed.map(|_| {
        t.tables("backends", problems, |b, problems| {
            let service: Option<String> = b.get("service", problems);
            let weight = b.get_or("weight", 1, problems);
            let service = match service {
                Some(name) => known(&name, &b.path_of("service"), problems).then_some(name),
                None => {
                    problems.add(
                        &b.path_of("service"),
                        "required: the service to send a share to",
                    );
                    None
                }
            };
            if weight > MAX_WEIGHT {
                problems.add(
                    &b.path_of("weight"),
                    format!("must be at most {MAX_WEIGHT}"),
                );
            }
            Some(Backend {
                service: service?,
                weight: weight.min(MAX_WEIGHT),
            })
        })
    });
    match (service, backends) {
        (Some(_), Some(_)) => {
            problems.add(t.path(), "set service or backends, not both");
            None
        }
        (None, None) => {
            problems.add(
                &t.path_of("service"),
                "required: the service to send to (or backends, or \"{service}\")",
            );
            None
        }
        (Some(name), None) if name == SERVICE_SEGMENT => Some(RouteTo::FromPath),
        (Some(name), None) => {
            known(&name, &t.path_of("service"), problems).then_some(RouteTo::Service(name))
        }
        (None, Some(backends)) => {
            let path = t.path_of("backends");
            if listed == Some(0) {
                problems.add(&path, "needs at least one { service, weight }");
                return None;
            }
            if backends.len() != listed.unwrap_or(0) {
                // Each unreadable backend was reported where it is.
                return None;
            }
            if backends.iter().all(|b| b.weight == 0) {
                problems.add(&path, "every weight is 0: no request could be sent");
                return None;
            }
            Some(RouteTo::Backends(backends))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::errors;
    use crate::config::Config;

    const SERVICES: &str = "services:
  - { name: auth, endpoints: [\"127.0.0.1:1\"] }
  - { name: catalog, endpoints: [\"127.0.0.1:2\"] }
  - { name: catalog-canary, endpoints: [\"127.0.0.1:3\"] }
";

    fn prefix(text: &str) -> PathPattern {
        PathPattern::parse(text, false).expect("a valid prefix")
    }

    fn exact(text: &str) -> PathPattern {
        PathPattern::parse(text, true).expect("a valid path")
    }

    #[test]
    fn a_prefix_matches_whole_segments_and_leaves_the_rest() {
        let api = prefix("/api/v1/auth/");
        let rest = |path| api.matches(path).map(|m| m.rest);
        assert_eq!(rest("/api/v1/auth"), Some(""));
        assert_eq!(rest("/api/v1/auth/"), Some("/"));
        assert_eq!(rest("/api/v1/auth/me"), Some("/me"));
        assert_eq!(rest("/api/v1/authx"), None);
        assert_eq!(rest("/api/v1"), None);
        assert_eq!(
            prefix("/").matches("/anything/at/all").map(|m| m.rest),
            Some("/anything/at/all")
        );
    }

    #[test]
    fn an_exact_path_matches_only_itself() {
        let health = exact("/health");
        assert!(health.matches("/health").is_some());
        assert!(health.matches("/health/").is_none());
        assert!(health.matches("/health/x").is_none());
        assert!(exact("/").matches("/").is_some());
        assert!(exact("/").matches("/x").is_none());
    }

    #[test]
    fn the_service_segment_captures_one_non_empty_segment() {
        let internal = prefix("/internal/{service}/");
        let m = internal
            .matches("/internal/catalog/items/7")
            .expect("matches");
        assert_eq!((m.captured, m.rest), (Some("catalog"), "/items/7"));
        let m = internal.matches("/internal/catalog").expect("matches");
        assert_eq!((m.captured, m.rest), (Some("catalog"), ""));
        assert!(internal.matches("/internal/").is_none());
        assert!(internal.matches("/internal").is_none());
        let inside = prefix("/api/{service}/v1");
        let m = inside.matches("/api/orders/v1/x").expect("matches");
        assert_eq!((m.captured, m.rest), (Some("orders"), "/x"));
        assert!(inside.matches("/api/orders/v2/x").is_none());
    }

    #[test]
    fn a_pattern_covers_what_it_always_matches_first() {
        assert!(prefix("/").covers(&prefix("/api")));
        assert!(prefix("/api").covers(&prefix("/api/v1/")));
        assert!(prefix("/api/").covers(&prefix("/api")));
        assert!(prefix("/api").covers(&exact("/api/x")));
        assert!(!prefix("/api/v1").covers(&prefix("/api")));
        assert!(!prefix("/api").covers(&prefix("/apis")));
        assert!(prefix("/api/{service}").covers(&prefix("/api/auth")));
        assert!(!prefix("/api/auth").covers(&prefix("/api/{service}")));
        assert!(!prefix("/api/{service}").covers(&exact("/api/")));
        assert!(!exact("/api").covers(&prefix("/api")));
        assert!(exact("/api/{service}").covers(&exact("/api/x")));
        assert!(!exact("/api/{service}").covers(&exact("/api/x/y")));
    }

    #[test]
    fn routes_read_in_their_three_forms_and_show_as_written() {
        let text = format!(
            "{SERVICES}routes:
  - match: {{ path_prefix: /api/v1/auth/, methods: [GET, POST], headers: {{ X-Canary: \"1\" }} }}
    service: auth
    rewrite_prefix: /
  - match: {{ path: /catalog }}
    backends: [{{ service: catalog, weight: 90 }}, {{ service: catalog-canary }}]
  - match: {{ path_prefix: \"/internal/{{service}}/\" }}
    service: \"{{service}}\"
"
        );
        let config = Config::from_yaml(&text, &|_| None).expect("valid");
        let routes = &config.routes;
        assert_eq!(routes[0].matches.methods, ["GET", "POST"]);
        assert_eq!(
            routes[0]
                .matches
                .headers
                .get("x-canary")
                .map(String::as_str),
            Some("1")
        );
        assert_eq!(routes[0].to, RouteTo::Service("auth".to_string()));
        assert_eq!(routes[0].rewrite_prefix.as_deref(), Some("/"));
        assert_eq!(
            routes[1].to,
            RouteTo::Backends(vec![
                Backend {
                    service: "catalog".to_string(),
                    weight: 90
                },
                Backend {
                    service: "catalog-canary".to_string(),
                    weight: 1
                },
            ])
        );
        assert_eq!(routes[2].to, RouteTo::FromPath);
        let shown = serde_json::to_value(routes).expect("json");
        assert_eq!(shown[0]["match"]["path_prefix"], "/api/v1/auth/");
        assert_eq!(shown[1]["match"]["path"], "/catalog");
        assert_eq!(shown[1]["backends"][0]["weight"], 90);
        assert_eq!(shown[2]["service"], "{service}");
    }

    #[test]
    fn a_shadowed_route_is_refused_naming_both_routes() {
        let text = format!(
            "{SERVICES}routes:
  - {{ match: {{ path_prefix: /api/ }}, service: catalog }}
  - {{ match: {{ path_prefix: /api/v1/auth, methods: [GET] }}, service: auth }}
  - {{ match: {{ path_prefix: \"/api/v1/{{service}}\", headers: {{ x-canary: \"1\" }} }}, service: \"{{service}}\" }}
  - {{ match: {{ path: /health, methods: [GET] }}, service: auth }}
  - {{ match: {{ path: /health }}, service: catalog }}
"
        );
        let never = |later: usize, earlier: usize| {
            format!("routes[{later}].match: never matched: routes[{earlier}] comes first and matches every request this route does; put the more specific route first")
        };
        assert_eq!(errors(&text), vec![never(1, 0), never(2, 0)]);
    }

    #[test]
    fn narrower_methods_or_headers_keep_a_later_route_reachable() {
        let text = format!(
            "{SERVICES}routes:
  - {{ match: {{ path_prefix: /api, methods: [POST] }}, service: auth }}
  - {{ match: {{ path_prefix: /api, headers: {{ x-canary: \"1\" }} }}, service: catalog-canary }}
  - {{ match: {{ path_prefix: /api }}, service: catalog }}
"
        );
        assert_eq!(errors(&text), Vec::<String>::new());
    }

    #[test]
    fn route_mistakes_are_reported_by_key_path() {
        let text = format!(
            "{SERVICES}routes:
  - {{ match: {{ path_prefix: api }}, service: billing }}
  - {{ match: {{ path_prefix: /a, path: /b }}, service: auth, backends: [{{ service: auth }}] }}
  - {{ match: {{ path_prefix: \"/x/{{service}}x\", methods: [get] }}, service: auth }}
  - {{ match: {{ path: /y }}, service: \"{{service}}\" }}
  - {{ match: {{ path: /z }}, backends: [{{ service: auth, weight: 0 }}] }}
  - {{ service: auth, rewrite_prefix: \"/a/../b\" }}
  - {{ match: {{ path: \"/c%2Fd\", headers: {{ \"bad header\": x }} }}, backends: [{{ weight: 2 }}], colour: red }}
"
        );
        assert_eq!(
            errors(&text),
            vec![
                "routes[0].match.path_prefix: expected a path starting with '/', got \"api\"",
                "routes[0].service: no service named \"billing\" in services",
                "routes[1].match: set path_prefix or path, not both",
                "routes[1]: set service or backends, not both",
                "routes[2].match.path_prefix: \"/x/{service}x\" has '{': the only placeholder is a whole {service} segment",
                "routes[2].match.methods[0]: expected a method in capitals like GET or POST, got \"get\"",
                "routes[3].service: \"{service}\" needs a {service} segment in match.path_prefix or match.path to take the name from",
                "routes[4].backends: every weight is 0: no request could be sent",
                "routes[5].match: required: what the route matches, like { path_prefix: /api/v1/auth/ }",
                "routes[5].rewrite_prefix: \"/a/../b\" has a dot-segment, which no request routed here has",
                "routes[6].match.path: \"/c%2Fd\" has '%': routes match the decoded path: write the character itself",
                "routes[6].match.headers.bad header: not a valid header name",
                "routes[6].backends[0].service: required: the service to send a share to",
                "routes[6].colour: unknown key",
            ]
        );
    }
}
