//! Host patterns from a route's `hosts`: an exact name (`api.example.com`) or a leading
//! wildcard (`*.example.com`), compared case-insensitively against the request's `Host`.
//!
//! A wildcard stands for one or more whole labels: `*.example.com` matches `a.example.com`
//! and `a.b.example.com`, never the apex `example.com` and never `badexample.com`. A port on
//! the request host is ignored, as is one trailing dot (`example.com.` is the same name).

use std::fmt;

#[cfg(test)]
mod tests;

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host pattern \"{pattern}\": {reason}")]
pub struct HostPatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// One entry of a route's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Lower-cased name without a trailing dot.
    Exact(Box<str>),
    /// Lower-cased `.example.com` for `*.example.com`, kept with its dot so a suffix
    /// comparison cannot match across a label boundary.
    Wildcard(Box<str>),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<HostPattern, HostPatternError> {
        let refuse = |reason| HostPatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let name = pattern.strip_suffix('.').unwrap_or(pattern);
        if name.is_empty() {
            return Err(refuse("empty host"));
        }
        if name == "*" {
            return Err(refuse(
                "a bare \"*\" would match every host; leave hosts empty instead",
            ));
        }
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        if rest.contains('*') {
            return Err(refuse(
                "\"*\" is only allowed as the whole first label, as in *.example.com",
            ));
        }
        if rest.starts_with('[') {
            if wildcard {
                return Err(refuse("an IP address cannot have a wildcard"));
            }
            let inner = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(|| refuse("unclosed \"[\""))?;
            if inner.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(refuse("not an IPv6 address inside \"[...]\""));
            }
        } else {
            if rest.split('.').any(str::is_empty) {
                return Err(refuse("empty label"));
            }
            if !rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            {
                return Err(refuse(
                    "only letters, digits, '-', '_' and '.' are allowed (no port, scheme or path)",
                ));
            }
        }
        let lower = rest.to_ascii_lowercase();
        let kind = if wildcard {
            Kind::Wildcard(format!(".{lower}").into())
        } else {
            Kind::Exact(lower.into())
        };
        Ok(HostPattern { kind })
    }

    /// Whether the request host (as in the `Host` header, possibly with `:port`) matches.
    pub fn matches(&self, request_host: &str) -> bool {
        let host = strip_port(request_host);
        let host = host.strip_suffix('.').unwrap_or(host).as_bytes();
        match &self.kind {
            Kind::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            Kind::Wildcard(suffix) => {
                let suffix = suffix.as_bytes();
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self.kind, Kind::Wildcard(_))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Exact(name) => f.write_str(name),
            Kind::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The host without its `:port`. A bracketed IPv6 literal keeps its brackets; a bare IPv6
/// address (several colons, no brackets) is returned whole because it has no port.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.find(':') {
        Some(colon) if !host[colon + 1..].contains(':') => &host[..colon],
        _ => host,
    }
}
