//! Who is calling, and may they: the caller's mesh identity and the
//! `inbound.authorization` rules, exempt paths, bearer JWTs, API keys,
//! revocation, and role/scope rules. Every refusal is counted in
//! `jwt_validations_total` (or its rule's 403) and logged with its reason,
//! never with the credential.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::HttpRequest;
use prometheus::IntCounterVec;

use super::api_keys::ApiKeys;
use super::gate::store_failed;
use super::jwks::{FetchNow, JwksFetcher, StopRefreshing};
use super::jwt::{JwtRejection, TokenClaims, Verifier};
use super::websocket::{self, Carried};
use crate::config::{AccessRule, AuthConfig, IdentityRule, Satisfy, WebSocketToken};
use crate::error::ProxyError;
use crate::http::listener::{connection_data, PeerIdentity};
use crate::logging::summary;
use crate::store::Store;

/// How a caller was let in; the `x-outrigger-auth` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A valid bearer JWT.
    Jwt,
    /// A known API key.
    ApiKey,
    /// The path is exempt.
    Exempt,
    /// The caller's verified mesh identity (`inbound.auth.exempt_mesh`).
    Mesh,
    /// No authentication is configured.
    None,
}

impl AuthMethod {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
            Self::Exempt => "exempt",
            Self::Mesh => "mesh",
            Self::None => "none",
        }
    }
}

/// The caller, as the app will be told.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `sub`, or the API key's name; empty only for an anonymous caller
    /// (an exempt path, or no authentication configured).
    pub user: String,
    /// Roles.
    pub roles: Vec<String>,
    /// OAuth2 scopes.
    pub scopes: Vec<String>,
    /// How the caller got in.
    pub method: AuthMethod,
    /// What to revoke at logout: the token's id and its remaining lifetime.
    pub revocable: Option<(String, Duration)>,
    /// Where the caller is: the peer, or the last address before the
    /// `inbound.trusted_proxies` in `X-Forwarded-For`
    /// (`x-outrigger-client-ip`).
    pub client_ip: Option<IpAddr>,
    /// The SPIFFE ID the caller's certificate verified with, over mutual
    /// TLS (`x-outrigger-peer-identity`).
    pub peer: Option<PeerIdentity>,
}

impl Identity {
    fn anonymous(method: AuthMethod) -> Self {
        Identity {
            user: String::new(),
            roles: Vec::new(),
            scopes: Vec::new(),
            method,
            revocable: None,
            client_ip: None,
            peer: None,
        }
    }

    /// The `x-outrigger-*` headers that tell the app who is calling. Every
    /// name in an identity is usable ([`usable_name`](crate::config::usable_name)), so each is a valid
    /// header value and none is left out.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("x-outrigger-auth", self.method.as_str());
        if !self.user.is_empty() {
            set("x-outrigger-user", &self.user);
        }
        if !self.roles.is_empty() {
            set("x-outrigger-roles", &self.roles.join(","));
        }
        if !self.scopes.is_empty() {
            set("x-outrigger-scopes", &self.scopes.join(" "));
        }
        if let Some(ip) = self.client_ip {
            set("x-outrigger-client-ip", &ip.to_string());
        }
        if let Some(peer) = &self.peer {
            headers.insert(X_OUTRIGGER_PEER_IDENTITY, peer.0.clone());
        }
        headers
    }
}

/// The header that tells the app the caller's verified mesh identity.
const X_OUTRIGGER_PEER_IDENTITY: HeaderName = HeaderName::from_static("x-outrigger-peer-identity");

/// Whether the caller with the mesh identity `peer` (`None`: plain text or
/// no client certificate) may call `path`: the first of `rules` whose
/// prefix `path` starts with decides, and a path none matches is open.
pub fn authorize_peer(
    rules: &[IdentityRule],
    peer: Option<&PeerIdentity>,
    path: &str,
) -> Result<(), ProxyError> {
    let Some(rule) = rules.iter().find(|rule| path.starts_with(&rule.path)) else {
        return Ok(());
    };
    match peer {
        Some(peer) if rule.identities.iter().any(|id| id == peer.as_str()) => Ok(()),
        Some(peer) => Err(ProxyError::ForbiddenIdentity(format!(
            "{} may not call {}",
            peer.as_str(),
            rule.path
        ))),
        None => Err(ProxyError::ForbiddenIdentity(format!(
            "{} needs a caller with a mesh identity",
            rule.path
        ))),
    }
}

/// Checks inbound callers against the auth config.
pub struct Authenticator {
    exempt: Vec<String>,
    /// A verified mesh identity needs no credentials.
    exempt_mesh: bool,
    verifier: Option<Arc<Verifier>>,
    jwks: Option<Addr<JwksFetcher>>,
    api_keys: Option<ApiKeys>,
    rules: Vec<AccessRule>,
    revocations: Option<Arc<dyn Store>>,
    revocation_on_error_allow: bool,
    logout: Option<String>,
    /// Remove `Authorization` before forwarding.
    pub strip_authorization: bool,
    /// Where a WebSocket handshake may carry its token instead.
    websocket_token: Option<WebSocketToken>,
    validations: IntCounterVec,
}

impl Authenticator {
    /// The authenticator for `config`; `revocations` is the store used when
    /// `revocation` is on, `jwks` the fetcher keeping `verifier`'s keys fresh.
    pub fn new(
        config: &AuthConfig,
        verifier: Option<Arc<Verifier>>,
        jwks: Option<Addr<JwksFetcher>>,
        revocations: Option<Arc<dyn Store>>,
        validations: IntCounterVec,
    ) -> Result<Self, String> {
        let api_keys = config.api_keys.as_ref().map(ApiKeys::new).transpose()?;
        Ok(Authenticator {
            exempt: config.exempt.clone(),
            exempt_mesh: config.exempt_mesh,
            verifier,
            jwks,
            api_keys,
            rules: config.rules.clone(),
            revocations: revocations.filter(|_| config.revocation),
            revocation_on_error_allow: config.revocation_on_error_allow,
            logout: config.logout.clone(),
            strip_authorization: config.strip_authorization,
            websocket_token: config.websocket_token.clone(),
            validations,
        })
    }

    /// Stops the JWKS refresh, once a config reload replaced this
    /// authenticator; requests still holding it verify with the keys it has.
    pub fn stop_key_refresh(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.do_send(StopRefreshing);
        }
    }

    /// The token the WebSocket handshake `req` carries where
    /// `inbound.auth.websocket_token` says, and the handshake without it;
    /// `None` when it carries none or none is configured. Only for upgrade
    /// requests: any other request carries its token in `Authorization`.
    pub fn carried<'r>(&self, req: &'r HttpRequest) -> Result<Option<Carried<'r>>, ProxyError> {
        match &self.websocket_token {
            Some(config) => websocket::carried(config, req.uri(), req.headers()),
            None => Ok(None),
        }
    }

    /// Who is calling `path` (the request's, as the listener's
    /// `normal_path` made it), or why they may not; `carried` is the token
    /// a WebSocket handshake carried instead of `Authorization`.
    pub async fn authenticate(
        &self,
        req: &HttpRequest,
        path: &str,
        carried: Option<&str>,
    ) -> Result<Identity, ProxyError> {
        self.one_credential_each(req.headers(), carried.is_some())?;
        if self.exempt.iter().any(|rule| exempt_matches(rule, path)) {
            return Ok(Identity::anonymous(AuthMethod::Exempt));
        }
        if self.exempt_mesh && connection_data::<PeerIdentity>(req).is_some() {
            return Ok(Identity::anonymous(AuthMethod::Mesh));
        }
        if self.verifier.is_none() && self.api_keys.is_none() {
            return Ok(Identity::anonymous(AuthMethod::None));
        }
        let identity = if let Some(token) = carried.or_else(|| bearer_token(req.headers())) {
            self.check_token(token).await?
        } else if let Some((keys, presented)) = self.api_key(req.headers()) {
            let holder = keys
                .identify(presented.as_bytes())
                .ok_or_else(|| ProxyError::Unauthorized("the API key is not known".to_string()))?;
            Identity {
                user: holder.name.to_string(),
                roles: holder.roles.to_vec(),
                scopes: holder.scopes.to_vec(),
                method: AuthMethod::ApiKey,
                revocable: None,
                client_ip: None,
                peer: None,
            }
        } else {
            return Err(self.refuse(JwtRejection::Missing));
        };
        self.authorize(&identity, req.method(), path)?;
        Ok(identity)
    }

    /// Whether `req`, for `path`, is a logout whose token should be revoked
    /// once the app agrees.
    pub fn is_logout(&self, req: &HttpRequest, path: &str) -> bool {
        *req.method() == Method::POST && self.logout.as_deref() == Some(path)
    }

    /// Revokes a token for the rest of its life; `None` when revocation is off.
    pub async fn revoke(&self, id: &str, ttl: Duration) -> Option<Result<(), String>> {
        let store = self.revocations.as_ref()?;
        Some(store.revoke(id, ttl).await.map_err(|err| err.to_string()))
    }

    /// Verifies `token` for an admin revocation: its id and remaining life.
    pub fn revocable(&self, token: &str) -> Result<(String, Duration), String> {
        let verifier = self.verifier.as_ref().ok_or("JWT is not configured")?;
        let claims = verifier
            .verify(token)
            .map_err(|why| format!("the token is not valid: {}", why.label()))?;
        Ok(revocable(token, &claims))
    }

    async fn check_token(&self, token: &str) -> Result<Identity, ProxyError> {
        let Some(verifier) = &self.verifier else {
            return Err(ProxyError::Unauthorized(
                "bearer tokens are not accepted here".to_string(),
            ));
        };
        let mut verified = verifier.verify(token);
        if let (Err(JwtRejection::UnknownKid), Some(jwks)) = (&verified, &self.jwks) {
            // Keys may have rotated: fetch them (rate-limited) and try once more.
            let _ = jwks
                .send(FetchNow {
                    kid: Verifier::kid_of(token),
                })
                .await;
            verified = verifier.verify(token);
        }
        let claims = match verified {
            Ok(claims) => claims,
            Err(why) => return Err(self.refuse(why)),
        };
        let revocable = revocable(token, &claims);
        if let Some(store) = &self.revocations {
            match store.is_revoked(&revocable.0).await {
                Ok(false) => {}
                Ok(true) => return Err(self.refuse(JwtRejection::Revoked)),
                Err(err) if self.revocation_on_error_allow => {
                    if summary::first(store_failed("revocation_unchecked")) {
                        log::warn!("revocation not checked (revocation_on_error: allow): {err}");
                    }
                }
                Err(err) => {
                    self.validations.with_label_values(&["store_error"]).inc();
                    return Err(ProxyError::AuthUnavailable(format!(
                        "the revocation store ({}) cannot be checked: {err}",
                        store.kind()
                    )));
                }
            }
        }
        self.validations.with_label_values(&["ok"]).inc();
        Ok(Identity {
            user: claims.subject,
            roles: claims.roles,
            scopes: claims.scopes,
            method: AuthMethod::Jwt,
            revocable: Some(revocable),
            client_ip: None,
            peer: None,
        })
    }

    /// Refuses (400) a request with two `Authorization` headers, or two of
    /// the API key header, or either beside a token its WebSocket handshake
    /// `carried`: the sidecar would verify one while the app may read the
    /// other. Checked on exempt paths too, where the app may verify them
    /// itself.
    fn one_credential_each(&self, headers: &HeaderMap, carried: bool) -> Result<(), ProxyError> {
        let api_key = self.api_keys.as_ref().map(|keys| &keys.header);
        for name in std::iter::once(&header::AUTHORIZATION).chain(api_key) {
            let allowed = if carried { 0 } else { 1 };
            if headers.get_all(name).nth(allowed).is_some() {
                return Err(ProxyError::BadRequest(if carried {
                    format!("the handshake carries a token (inbound.auth.websocket_token) and a {name} header; send one credential")
                } else {
                    format!("the request has more than one {name} header; send one credential")
                }));
            }
        }
        Ok(())
    }

    fn api_key<'a>(&self, headers: &'a HeaderMap) -> Option<(&ApiKeys, &'a str)> {
        let keys = self.api_keys.as_ref()?;
        let presented = headers.get(&keys.header)?.to_str().ok()?;
        Some((keys, presented))
    }

    /// Counts a refused token and turns it into a 401.
    fn refuse(&self, why: JwtRejection) -> ProxyError {
        self.validations.with_label_values(&[why.label()]).inc();
        ProxyError::Unauthorized(format!("token refused: {}", why.label()))
    }

    fn authorize(
        &self,
        identity: &Identity,
        method: &Method,
        path: &str,
    ) -> Result<(), ProxyError> {
        let Some(rule) = self
            .rules
            .iter()
            .find(|rule| rule_matches(rule, method, path))
        else {
            return Ok(());
        };
        permits(rule, identity)
    }
}

/// Whether `identity` has what `rule` asks: one of its roles and every
/// scope, or with `satisfy: any` either of the two.
fn permits(rule: &AccessRule, identity: &Identity) -> Result<(), ProxyError> {
    let has_role =
        rule.roles.is_empty() || rule.roles.iter().any(|role| identity.roles.contains(role));
    let missing_scope = rule
        .scopes
        .iter()
        .find(|scope| !identity.scopes.contains(scope));
    let any = rule.satisfy == Satisfy::Any;
    match (has_role, missing_scope) {
        (true, None) => Ok(()),
        // Either will do: a role named by the rule, or all its scopes.
        (true, Some(_)) if any && !rule.roles.is_empty() => Ok(()),
        (false, None) if any && !rule.scopes.is_empty() => Ok(()),
        (false, _) if any && !rule.scopes.is_empty() => Err(ProxyError::Forbidden(format!(
            "{} needs one of the roles {}, or the scopes {}",
            rule.path,
            rule.roles.join(", "),
            rule.scopes.join(" ")
        ))),
        (false, _) => Err(ProxyError::Forbidden(format!(
            "{} needs one of the roles {}",
            rule.path,
            rule.roles.join(", ")
        ))),
        (true, Some(missing)) => Err(ProxyError::Forbidden(format!(
            "{} needs the scope {missing}",
            rule.path
        ))),
    }
}

/// The id a token is revoked under (`jti`, or the whole token, hashed by
/// the store) and how long it has left.
fn revocable(token: &str, claims: &TokenClaims) -> (String, Duration) {
    let id = claims.jti.clone().unwrap_or_else(|| token.to_string());
    let now = jsonwebtoken::get_current_timestamp();
    (
        id,
        Duration::from_secs(claims.expires_at.saturating_sub(now)),
    )
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `/health` matches itself and `/health/...`; `/auth/*` matches any path starting `/auth/`.
fn exempt_matches(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => {
            path == rule
                || path
                    .strip_prefix(rule)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
    }
}

fn rule_matches(rule: &AccessRule, method: &Method, path: &str) -> bool {
    let path_matches = path == rule.path
        || path
            .strip_prefix(rule.path.as_str())
            .is_some_and(|rest| rule.path.ends_with('/') || rest.starts_with('/'));
    path_matches && (rule.methods.is_empty() || rule.methods.iter().any(|m| m == method.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_rules_match_exactly_or_as_prefixes() {
        assert!(exempt_matches("/health", "/health"));
        assert!(exempt_matches("/health", "/health/db"));
        assert!(!exempt_matches("/health", "/healthz"));
        assert!(exempt_matches("/auth/*", "/auth/login"));
        assert!(!exempt_matches("/auth/*", "/authx"));
    }

    #[test]
    fn rules_match_path_prefixes_and_methods() {
        let rule = AccessRule {
            path: "/admin".to_string(),
            methods: vec!["DELETE".to_string()],
            roles: vec!["admin".to_string()],
            scopes: Vec::new(),
            satisfy: Satisfy::All,
        };
        assert!(rule_matches(&rule, &Method::DELETE, "/admin/users/1"));
        assert!(!rule_matches(&rule, &Method::GET, "/admin/users/1"));
        assert!(!rule_matches(&rule, &Method::DELETE, "/administrators"));
    }

    #[test]
    fn bearer_tokens_are_found_whatever_the_scheme_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc.def.ghi"),
        );
        assert_eq!(bearer_token(&headers), Some("abc.def.ghi"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn the_first_identity_rule_whose_prefix_matches_decides() {
        let rule = |path: &str, ids: &[&str]| IdentityRule {
            path: path.to_string(),
            identities: ids.iter().map(|id| id.to_string()).collect(),
        };
        let console = "spiffe://cluster.local/ns/ops/sa/console";
        let rules = [rule("/admin/", &[console]), rule("/", &[])];
        let peer = |id: &'static str| PeerIdentity(HeaderValue::from_static(id));
        assert!(authorize_peer(&rules, Some(&peer(console)), "/admin/users").is_ok());
        let frontend = peer("spiffe://cluster.local/ns/shop/sa/frontend");
        let refused = authorize_peer(&rules, Some(&frontend), "/admin/users");
        assert_eq!(refused.map_err(|e| e.reason()), Err("forbidden_identity"));
        assert!(
            authorize_peer(&rules, None, "/items").is_err(),
            "the catch-all allows no one"
        );
        assert!(
            authorize_peer(&rules[..1], None, "/items").is_ok(),
            "no rule: open"
        );
    }

    #[test]
    fn identity_headers_carry_user_roles_scopes_and_method() {
        let identity = Identity {
            user: "ana".to_string(),
            roles: vec!["admin".to_string(), "viewer".to_string()],
            scopes: vec!["read".to_string()],
            method: AuthMethod::Jwt,
            revocable: None,
            client_ip: Some(IpAddr::from([203, 0, 113, 7])),
            peer: Some(PeerIdentity(HeaderValue::from_static(
                "spiffe://cluster.local/ns/shop/sa/frontend",
            ))),
        };
        let headers = identity.headers();
        assert_eq!(
            headers
                .get("x-outrigger-peer-identity")
                .and_then(|v| v.to_str().ok()),
            Some("spiffe://cluster.local/ns/shop/sa/frontend")
        );
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-outrigger-user"), Some("ana"));
        assert_eq!(get("x-outrigger-roles"), Some("admin,viewer"));
        assert_eq!(get("x-outrigger-scopes"), Some("read"));
        assert_eq!(get("x-outrigger-auth"), Some("jwt"));
        assert_eq!(get("x-outrigger-client-ip"), Some("203.0.113.7"));
    }

    #[test]
    fn a_rule_may_accept_a_role_or_its_scopes() {
        let caller = |roles: &[&str], scopes: &[&str]| Identity {
            user: "u".to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            method: AuthMethod::ApiKey,
            revocable: None,
            client_ip: None,
            peer: None,
        };
        let rule = |satisfy| AccessRule {
            path: "/reports".to_string(),
            methods: Vec::new(),
            roles: vec!["analyst".to_string()],
            scopes: vec!["reports:read".to_string(), "reports:list".to_string()],
            satisfy,
        };
        let (person, machine) = (
            caller(&["analyst"], &[]),
            caller(&[], &["reports:read", "reports:list"]),
        );
        let half_scoped = caller(&[], &["reports:read"]);
        let all = rule(Satisfy::All);
        assert!(permits(&all, &person).is_err(), "all: the scopes too");
        assert!(permits(&all, &machine).is_err(), "all: a role too");
        assert!(permits(
            &all,
            &caller(&["analyst"], &["reports:read", "reports:list"])
        )
        .is_ok());
        let any = rule(Satisfy::Any);
        assert!(permits(&any, &person).is_ok());
        assert!(permits(&any, &machine).is_ok());
        assert!(
            permits(&any, &half_scoped).is_err(),
            "every scope, or a role"
        );
        let mut scopes_only = rule(Satisfy::Any);
        scopes_only.roles.clear();
        assert!(permits(&scopes_only, &person).is_err(), "no role to accept");
        assert!(permits(&scopes_only, &machine).is_ok());
    }
}
