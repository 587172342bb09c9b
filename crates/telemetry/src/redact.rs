//! What never leaves the gateway: credentials in headers, query strings,
//! cookies and JWTs, and the record fields an operator chose to hide.
//!
//! The record is redacted when it is encoded, so every sink sees the same
//! redacted line; nothing downstream needs to know the rules.

use std::borrow::Cow;

use http::HeaderName;

use crate::settings::{QueryMode, TelemetrySettings};

pub const REDACTED: &str = "[redacted]";

/// Headers that always carry credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "apikey",
    "x-api-key",
];

/// A header whose name contains one of these is treated as secret: it
/// catches key-auth's configurable header and most custom token headers.
const SECRET_NAME_PARTS: &[&str] = &[
    "key",
    "token",
    "secret",
    "auth",
    "session",
    "password",
    "passwd",
    "cookie",
    "jwt",
    "signature",
];

/// Record fields `redact.fields` can hide, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ClientAddr = 1 << 0,
    Host = 1 << 1,
    Path = 1 << 2,
    RequestId = 1 << 3,
    ConsumerUsername = 1 << 4,
    ConsumerGroup = 1 << 5,
    ConsumerCredentialId = 1 << 6,
    UpstreamAddr = 1 << 7,
    RouteLabels = 1 << 8,
    DecisionReason = 1 << 9,
}

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "client_addr" => Field::ClientAddr,
            "host" => Field::Host,
            "path" => Field::Path,
            "request_id" => Field::RequestId,
            "consumer.username" => Field::ConsumerUsername,
            "consumer.group" => Field::ConsumerGroup,
            "consumer.credential_id" => Field::ConsumerCredentialId,
            "upstream.addr" => Field::UpstreamAddr,
            "route.labels" => Field::RouteLabels,
            "decisions.reason" => Field::DecisionReason,
            _ => return None,
        })
    }
}

/// The redaction rules in force, compiled from the settings once.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    pub query: QueryMode,
    pub include_headers: Vec<HeaderName>,
    secret_headers: Vec<HeaderName>,
    fields: u32,
}

impl Redaction {
    pub fn from_settings(s: &TelemetrySettings) -> Redaction {
        Redaction {
            query: s.query,
            include_headers: s
                .include_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            secret_headers: s
                .redact
                .headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            fields: s
                .redact
                .fields
                .iter()
                .filter_map(|f| Field::parse(f))
                .fold(0, |acc, f| acc | f as u32),
        }
    }

    pub fn hides(&self, f: Field) -> bool {
        self.fields & f as u32 != 0
    }

    /// Whether a header's value must never be written.
    pub fn is_secret_header(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        SECRET_HEADERS.contains(&n)
            || SECRET_NAME_PARTS.iter().any(|p| n.contains(p))
            || self.secret_headers.iter().any(|h| h == name)
    }

    /// A field's value, or `[redacted]` when the operator hid it.
    pub fn field<'a>(&self, f: Field, v: &'a str) -> &'a str {
        if self.hides(f) {
            REDACTED
        } else {
            v
        }
    }
}

/// Whether `s` looks like a JWT (three base64url parts, the first a JSON
/// object: `eyJ...`).
pub fn looks_like_jwt(s: &str) -> bool {
    let s = s.trim();
    let s = s
        .strip_prefix("Bearer ")
        .or_else(|| s.strip_prefix("bearer "))
        .unwrap_or(s);
    let mut parts = s.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    h.starts_with("eyJ") && h.len() > 8 && p.len() > 2 && s.bytes().all(is_b64url_or_dot)
}

fn is_b64url_or_dot(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=')
}

/// Replace anything in `s` that looks like a JWT or a bearer/basic
/// credential with `[redacted]`. Cheap when there is nothing to find.
pub fn scrub(s: &str) -> Cow<'_, str> {
    if !s.contains("eyJ") && !s.contains("Bearer ") && !s.contains("Basic ") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        // Split on separators that cannot be inside a token.
        let end = rest
            .find(['/', ' ', ',', ';', '"', '\'', '&', '='])
            .unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        if looks_like_jwt(word) {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
        let mut chars = tail.chars();
        if let Some(sep) = chars.next() {
            out.push(sep);
            // The word after `Bearer ` / `Basic ` is a credential whatever it looks like.
            if sep == ' ' && (word == "Bearer" || word == "Basic") {
                let after = chars.as_str();
                let cred_end = after.find([' ', ',', ';', '"']).unwrap_or(after.len());
                out.push_str(REDACTED);
                rest = &after[cred_end..];
                continue;
            }
        }
        rest = chars.as_str();
    }
    Cow::Owned(out)
}

/// A header value as the record may show it.
pub fn header_value<'a>(r: &Redaction, name: &HeaderName, value: &'a str) -> Cow<'a, str> {
    if r.is_secret_header(name) || looks_like_jwt(value) {
        Cow::Borrowed(REDACTED)
    } else {
        scrub(value)
    }
}

/// The names of a query's parameters, in order, values dropped.
pub fn query_names(query: &str) -> impl Iterator<Item = Cow<'_, str>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
        .map(|k| scrub(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA";

    #[test]
    fn jwts_are_recognised_bare_and_as_bearer() {
        assert!(looks_like_jwt(JWT));
        assert!(looks_like_jwt(&format!("Bearer {JWT}")));
        assert!(!looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("/api/v1/users"));
    }

    #[test]
    fn scrub_removes_jwts_and_bearer_credentials_anywhere() {
        let path = format!("/tokens/{JWT}/info");
        assert_eq!(scrub(&path), "/tokens/[redacted]/info");
        assert_eq!(
            scrub("failed: Bearer opaque-token-123 rejected"),
            "failed: Bearer [redacted] rejected"
        );
        assert_eq!(scrub("/plain/path"), "/plain/path");
    }

    #[test]
    fn secret_headers_include_builtins_patterns_and_configured() {
        let mut s = TelemetrySettings::default();
        s.redact.headers.push("x-customer".into());
        let r = Redaction::from_settings(&s);
        for h in [
            "authorization",
            "cookie",
            "apikey",
            "x-api-key",
            "x-my-key",
            "x-auth-token",
            "x-customer",
        ] {
            assert!(r.is_secret_header(&HeaderName::from_static(h)), "{h}");
        }
        assert!(!r.is_secret_header(&HeaderName::from_static("user-agent")));
    }

    #[test]
    fn query_names_drop_values() {
        let names: Vec<_> = query_names("apikey=s3cret&page=2&flag").collect();
        assert_eq!(names, ["apikey", "page", "flag"]);
    }

    #[test]
    fn configured_fields_are_hidden() {
        let mut s = TelemetrySettings::default();
        s.redact.fields = vec!["client_addr".into(), "consumer.username".into()];
        let r = Redaction::from_settings(&s);
        assert!(r.hides(Field::ClientAddr));
        assert!(r.hides(Field::ConsumerUsername));
        assert!(!r.hides(Field::Host));
        assert_eq!(r.field(Field::Host, "a.example"), "a.example");
        assert_eq!(r.field(Field::ClientAddr, "10.0.0.1"), REDACTED);
    }
}
