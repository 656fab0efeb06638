//! WebSocket handshakes from browsers, which cannot set `Authorization`:
//! the bearer JWT they carry where `inbound.auth.websocket_token` says (a
//! query parameter, or the `Sec-WebSocket-Protocol` entry after the
//! subprotocol that announces it), and the handshake as the app gets it,
//! with the token taken out. Nothing here logs, and the access log writes
//! the path without its query, so a token in a URL reaches no log line.

use std::borrow::Cow;

use actix_web::http::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::http::Uri;
use percent_encoding::percent_decode_str;

use crate::config::WebSocketToken;
use crate::error::ProxyError;

/// A token a handshake carried, and the handshake without it.
#[derive(Debug, PartialEq)]
pub struct Carried<'r> {
    /// The token, percent-decoded when it came in the query.
    pub token: Cow<'r, str>,
    /// The query the app gets: the caller's, less the token's parameter.
    pub query: Option<Cow<'r, str>>,
    /// The `Sec-WebSocket-Protocol` the app gets instead of the caller's
    /// (empty: none), when the token came in it.
    pub subprotocols: Option<String>,
    /// The subprotocol to answer with when the app chooses none: the one
    /// that announced the token. A browser that offered subprotocols fails
    /// a handshake whose answer names none of them.
    pub announced: Option<HeaderValue>,
}

/// The token the handshake `uri` and `headers` carry where `config` says,
/// `None` when they carry none; 400 when they carry two, or announce one
/// and leave it out.
pub fn carried<'r>(
    config: &WebSocketToken,
    uri: &'r Uri,
    headers: &'r HeaderMap,
) -> Result<Option<Carried<'r>>, ProxyError> {
    let in_query = match &config.query {
        Some(name) => from_query(name, uri.query())?,
        None => None,
    };
    let in_protocols = match &config.protocol {
        Some(announcing) => from_protocols(announcing, headers)?,
        None => None,
    };
    match (in_query, in_protocols) {
        (Some(_), Some(_)) => Err(two_tokens()),
        (Some((token, query)), None) => Ok(Some(Carried {
            token,
            query,
            subprotocols: None,
            announced: None,
        })),
        (None, Some((token, subprotocols, announced))) => Ok(Some(Carried {
            token: Cow::Borrowed(token),
            query: uri.query().map(Cow::Borrowed),
            subprotocols: Some(subprotocols),
            announced: Some(announced),
        })),
        (None, None) => Ok(None),
    }
}

fn two_tokens() -> ProxyError {
    ProxyError::BadRequest(
        "the handshake carries more than one token (inbound.auth.websocket_token); send one"
            .to_string(),
    )
}

/// A token found in a query, and what is left of the query without it.
type InQuery<'r> = (Cow<'r, str>, Option<Cow<'r, str>>);

/// The token in the query parameter `name`, and the query without it.
fn from_query<'r>(name: &str, query: Option<&'r str>) -> Result<Option<InQuery<'r>>, ProxyError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut token = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode_str(key).decode_utf8().ok().as_deref() != Some(name) {
            kept.push(pair);
            continue;
        }
        if token.is_some() {
            return Err(two_tokens());
        }
        let decoded = percent_decode_str(value).decode_utf8().map_err(|_| {
            ProxyError::BadRequest(format!("the {name} parameter is not UTF-8 once decoded"))
        })?;
        token = Some(decoded);
    }
    let Some(token) = token else {
        return Ok(None);
    };
    let rest = (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")));
    Ok(Some((token, rest)))
}

/// The token after the subprotocol `announcing` in `Sec-WebSocket-Protocol`,
/// the offer without both, and the announcing subprotocol as a value.
fn from_protocols<'r>(
    announcing: &str,
    headers: &'r HeaderMap,
) -> Result<Option<(&'r str, String, HeaderValue)>, ProxyError> {
    let entries = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty());
    let (mut token, mut announced, mut rest) = (None, false, Vec::new());
    let mut next_is_token = false;
    for entry in entries {
        if next_is_token {
            token = Some(entry);
            next_is_token = false;
        } else if entry == announcing {
            if announced {
                return Err(two_tokens());
            }
            (announced, next_is_token) = (true, true);
        } else {
            rest.push(entry);
        }
    }
    if !announced {
        return Ok(None);
    }
    let Some(token) = token else {
        return Err(ProxyError::BadRequest(format!(
            "Sec-WebSocket-Protocol announces a token with {announcing} but no entry follows it"
        )));
    };
    let value = HeaderValue::from_str(announcing)
        .map_err(|_| ProxyError::BadRequest(format!("{announcing} is not a header value")))?;
    Ok(Some((token, rest.join(", "), value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(query: Option<&str>, protocol: Option<&str>) -> WebSocketToken {
        WebSocketToken {
            query: query.map(str::to_string),
            protocol: protocol.map(str::to_string),
        }
    }

    fn offered(protocols: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in protocols {
            headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn a_query_token_is_decoded_and_its_parameter_removed() {
        let config = config(Some("access_token"), None);
        let (uri, none) = (
            "/ws?room=1&access_token=a.b%2Dc&x=%3D".parse::<Uri>(),
            HeaderMap::new(),
        );
        let uri = uri.expect("uri");
        let found = carried(&config, &uri, &none)
            .expect("valid")
            .expect("a token");
        assert_eq!(found.token, "a.b-c");
        assert_eq!(found.query.as_deref(), Some("room=1&x=%3D"));
        assert_eq!(found.subprotocols, None);
        let alone: Uri = "/ws?access_token=t".parse().expect("uri");
        let found = carried(&config, &alone, &none)
            .expect("valid")
            .expect("a token");
        assert_eq!(found.query, None, "nothing left: no query at all");
    }

    #[test]
    fn a_protocol_token_follows_its_announcing_entry_and_both_are_removed() {
        let config = config(None, Some("access_token"));
        let uri: Uri = "/ws?room=1".parse().expect("uri");
        let headers = offered(&["chat, access_token", "eyJ.x.y, superchat"]);
        let found = carried(&config, &uri, &headers)
            .expect("valid")
            .expect("a token");
        assert_eq!(found.token, "eyJ.x.y");
        assert_eq!(found.subprotocols.as_deref(), Some("chat, superchat"));
        assert_eq!(found.query.as_deref(), Some("room=1"));
        assert_eq!(
            found.announced,
            Some(HeaderValue::from_static("access_token"))
        );
        let only = offered(&["access_token, eyJ.x.y"]);
        let found = carried(&config, &uri, &only)
            .expect("valid")
            .expect("token");
        assert_eq!(found.subprotocols.as_deref(), Some(""));
    }

    #[test]
    fn no_token_two_tokens_and_an_announcement_without_one() {
        let both = config(Some("access_token"), Some("access_token"));
        let plain: Uri = "/ws?room=1".parse().expect("uri");
        assert_eq!(carried(&both, &plain, &offered(&["chat"])), Ok(None));
        let query: Uri = "/ws?access_token=a".parse().expect("uri");
        let twice: Uri = "/ws?access_token=a&access_token=b".parse().expect("uri");
        let announced = offered(&["access_token, b"]);
        for (uri, headers) in [(&query, &announced), (&twice, &HeaderMap::new())] {
            let refused = carried(&both, uri, headers).expect_err("two tokens");
            assert_eq!(refused.status().as_u16(), 400);
        }
        let dangling = offered(&["chat, access_token"]);
        let refused = carried(&both, &plain, &dangling).expect_err("no token after it");
        assert!(
            refused.message().contains("no entry follows"),
            "{}",
            refused.message()
        );
    }
}
