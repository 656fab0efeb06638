//! The one rule for request paths, applied by both listeners before any
//! path is matched (exempt paths, access rules, rate-limit and cache
//! routes, concurrency routes, outbound service routing) and to the path
//! that is forwarded, so the sidecar and whatever serves the path behind it
//! (nginx, Spring, a WSGI app) cannot read one target two ways.
//!
//! Percent-encoded unreserved characters (`%61`, `%2E`, RFC 3986 §2.3)
//! mean the same as the characters themselves and are decoded. What stays
//! ambiguous after that is refused with 400: servers disagree on it, and
//! clients that build paths properly never send it (browsers and HTTP
//! libraries resolve dot-segments before sending).
//!
//! | refused | because |
//! |---|---|
//! | a dot-segment (`/./`, `/../`, also `%2e%2e`) | a server that removes it (RFC 3986 §5.2.4) serves another path than the one matched |
//! | an empty segment (`//`) | nginx merges slashes, others do not |
//! | `%2F`, `%5C`, `\` | some servers decode them into separators (`..%2f` becomes `../`) |
//! | `;` | servlet containers strip path parameters (`/admin;x/`, `/..;/`) |
//! | an encoded control byte (`%00`-`%1F`, `%7F`) | NUL and line ends cut or split paths in some servers |
//! | a `%` not followed by two hex digits | no two servers read it the same |

use std::borrow::Cow;

use crate::error::ProxyError;

/// The path of a request target as the listeners match and forward it:
/// `path` with its percent-encoded unreserved characters decoded (borrowed
/// when it has none, so most requests allocate nothing), or 400 when it is
/// ambiguous (see the module's table). A target that is not a path (`*`)
/// is left as it is.
pub fn normal_path(path: &str) -> Result<Cow<'_, str>, ProxyError> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut decodes = false;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let byte = escaped_byte(bytes, at).ok_or_else(|| {
                    refuse("a '%' that is not followed by two hex digits".to_string())
                })?;
                if is_unreserved(byte) {
                    decodes = true;
                } else if byte == b'/' || byte == b'\\' {
                    return Err(refuse(format!(
                        "an encoded '{}' ({}), which some servers decode into a separator",
                        byte as char,
                        &path[at..at + 3]
                    )));
                } else if byte.is_ascii_control() {
                    return Err(refuse(format!(
                        "an encoded control byte ({})",
                        &path[at..at + 3]
                    )));
                }
                at += 3;
            }
            b'\\' => return Err(refuse("a '\\', which some servers read as '/'".to_string())),
            b';' => {
                return Err(refuse(
                    "a ';', whose path parameters servlet containers strip before matching"
                        .to_string(),
                ))
            }
            _ => at += 1,
        }
    }
    let path = if decodes {
        Cow::Owned(decode_unreserved(path))
    } else {
        Cow::Borrowed(path)
    };
    check_segments(&path)?;
    Ok(path)
}

/// Refuses a path (starting with `/`) with a dot-segment or an empty
/// segment other than the last one (`/a/` ends with one; `/a//b` has one
/// inside).
fn check_segments(path: &str) -> Result<(), ProxyError> {
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => {
                return Err(refuse(format!(
                "the dot-segment \"{segment}\", which servers that resolve it read as another path"
            )))
            }
            "" if segments.peek().is_some() => {
                return Err(refuse(
                    "an empty segment (\"//\"), which some servers merge and others keep"
                        .to_string(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The byte a `%XX` escape at `at` stands for, when it has two hex digits.
fn escaped_byte(bytes: &[u8], at: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let high = hex(*bytes.get(at + 1)?)?;
    let low = hex(*bytes.get(at + 2)?)?;
    u8::try_from(high * 16 + low).ok()
}

/// RFC 3986 §2.3: ALPHA, DIGIT, `-`, `.`, `_`, `~`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// `path` (checked: every `%` starts a valid escape) with the escapes of
/// unreserved characters decoded and every other escape kept as sent.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut at = 0;
    while at < bytes.len() {
        match escaped_byte(bytes, at).filter(|&byte| bytes[at] == b'%' && is_unreserved(byte)) {
            Some(byte) => {
                decoded.push(byte as char);
                at += 3;
            }
            None => {
                let next = path[at + 1..]
                    .find('%')
                    .map_or(path.len(), |offset| at + 1 + offset);
                decoded.push_str(&path[at..next]);
                at = next;
            }
        }
    }
    decoded
}

fn refuse(what: String) -> ProxyError {
    ProxyError::BadRequest(format!(
        "the request path has {what}; such paths are refused so that every server reads it the same way"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> Result<String, String> {
        normal_path(path)
            .map(Cow::into_owned)
            .map_err(|err| err.message().to_string())
    }

    #[test]
    fn ordinary_paths_pass_as_they_are_without_a_copy() {
        for path in [
            "/",
            "/a",
            "/a/b/",
            "/.well-known/x",
            "/a..b/c.",
            "/%20x%3F",
            "*",
        ] {
            assert!(
                matches!(normal_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn escaped_unreserved_characters_are_decoded_and_other_escapes_kept() {
        assert_eq!(normal("/p%75blic/%7euser"), Ok("/public/~user".to_string()));
        assert_eq!(normal("/a%2Eb/%41%20c"), Ok("/a.b/A%20c".to_string()));
        assert_eq!(normal("/%e2%82%ac"), Ok("/%e2%82%ac".to_string()));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for path in [
            "/public/../admin",
            "/public/..",
            "/./admin",
            "/public/%2e%2e/admin",
            "/public/.%2E/admin",
            "/public/%2e/admin",
            "/public/..%2fadmin",
            "/public/..%2Fadmin",
            "/public%5c..%5cadmin",
            "/public\\..\\admin",
            "/public/..;/admin",
            "/admin;jsessionid=1/x",
            "//admin",
            "/public//../admin",
            "/a%00b",
            "/a%0d%0ab",
            "/a%7Fb",
            "/a%zz",
            "/a%2",
            "/a%",
        ] {
            assert!(normal(path).is_err(), "{path} passed");
        }
    }

    #[test]
    fn the_refusal_names_what_was_ambiguous() {
        let message = normal("/public/%2e%2e/admin").expect_err("refused");
        assert!(message.contains("dot-segment \"..\""), "{message}");
        let message = normal("/public/..%2Fadmin").expect_err("refused");
        assert!(message.contains("%2F"), "{message}");
    }
}
