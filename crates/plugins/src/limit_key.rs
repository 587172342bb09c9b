//! What the limit plugins (limit-req, limit-count, limit-conn) share: how a
//! request is turned into the key it is counted under (`key` + `key_type`,
//! APISIX's rules) and how a rejection looks. The Redis settings live in
//! [`crate::redis_policy`].

use std::borrow::Cow;

use http::StatusCode;
use portcullis_core::{ConfigError, Rejection, RequestState};
use portcullis_router::expr::VarLookup;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// `key` names one variable: `remote_addr`, `http_x_user`, ...
    #[default]
    Var,
    /// `key` is text with `$variables` in it: `$remote_addr $http_x_user`.
    VarCombination,
    /// `key` is used as it is: every request shares one counter.
    Constant,
}

/// How a request is mapped to its counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// portcullis's default for limit-req without `key`: the authenticated
    /// consumer, else the client address.
    ConsumerOrClient,
    Var(String),
    Combination(Vec<Segment>),
    Constant(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Var(String),
}

impl LimitKey {
    pub fn new(key: Option<&str>, key_type: KeyType) -> Result<Self, ConfigError> {
        let Some(key) = key else {
            return Ok(LimitKey::ConsumerOrClient);
        };
        if key.is_empty() {
            return Err(ConfigError::new("key", "must not be empty"));
        }
        Ok(match key_type {
            // APISIX's var keys carry no `$`; accept one anyway.
            KeyType::Var => LimitKey::Var(key.strip_prefix('$').unwrap_or(key).to_string()),
            KeyType::Constant => LimitKey::Constant(key.to_string()),
            KeyType::VarCombination => {
                let segments = parse_combination(key);
                if !segments.iter().any(|s| matches!(s, Segment::Var(_))) {
                    return Err(ConfigError::new(
                        "key",
                        "a var_combination key needs at least one $variable",
                    ));
                }
                LimitKey::Combination(segments)
            }
        })
    }

    /// The counter key for this request. When the configured variables are
    /// all absent, the client address is used, as APISIX does. Kinds are
    /// prefixed so that a consumer named like an address shares nothing
    /// with that address.
    pub fn resolve<'r>(&'r self, req: &'r RequestState) -> Cow<'r, str> {
        match self {
            LimitKey::ConsumerOrClient => match req.consumer_name() {
                Some(name) => Cow::Owned(prefixed("consumer:", name)),
                None => client(req),
            },
            LimitKey::Var(name) => match req.var(name) {
                Some(v) => Cow::Owned(prefixed("var:", &v)),
                None => client(req),
            },
            LimitKey::Constant(c) => Cow::Borrowed(c.as_str()),
            LimitKey::Combination(segments) => {
                let mut out = String::from("vars:");
                let mut resolved = 0;
                for s in segments {
                    match s {
                        Segment::Text(t) => out.push_str(t),
                        Segment::Var(name) => {
                            if let Some(v) = req.var(name) {
                                resolved += 1;
                                out.push_str(&v);
                            }
                        }
                    }
                }
                if resolved == 0 {
                    client(req)
                } else {
                    Cow::Owned(out)
                }
            }
        }
    }
}

fn client(req: &RequestState) -> Cow<'static, str> {
    Cow::Owned(portcullis_core::request::with_ip_text(
        req.client_ip,
        |ip| prefixed("ip:", ip),
    ))
}

/// `prefix` and `text` in one allocation (format! costs more, per request).
fn prefixed(prefix: &str, text: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + text.len());
    key.push_str(prefix);
    key.push_str(text);
    key
}

/// Split `$a-${b} \$c` into text and variables, as APISIX's resolve_var
/// reads it: `$name` or `${name}`, names of letters, digits and `_`; `\$` is
/// a literal dollar.
fn parse_combination(key: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = key;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("\\$") {
            text.push('$');
            rest = after;
            continue;
        }
        if c == '$' {
            let after = &rest[1..];
            let (braced, body) = match after.strip_prefix('{') {
                Some(b) => (true, b),
                None => (false, after),
            };
            let len = body
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let closed = !braced || body[len..].starts_with('}');
            if len > 0 && closed {
                if !text.is_empty() {
                    out.push(Segment::Text(std::mem::take(&mut text)));
                }
                out.push(Segment::Var(body[..len].to_string()));
                rest = &body[len + usize::from(braced)..];
                continue;
            }
        }
        text.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !text.is_empty() {
        out.push(Segment::Text(text));
    }
    out
}

/// `rejected_code` as APISIX bounds it.
pub fn rejected_code(code: u16) -> Result<StatusCode, ConfigError> {
    if !(200..=599).contains(&code) {
        return Err(ConfigError::new(
            "rejected_code",
            format!("expected {code} to be between 200 and 599"),
        ));
    }
    StatusCode::from_u16(code).map_err(|_| ConfigError::new("rejected_code", "not a status code"))
}

/// `rejected_msg`, when set, must not be empty.
pub fn rejected_msg(msg: Option<String>) -> Result<Option<String>, ConfigError> {
    match msg {
        Some(m) if m.is_empty() => Err(ConfigError::new(
            "rejected_msg",
            "string too short, expected at least 1, got 0",
        )),
        other => Ok(other),
    }
}

/// The answer of a limit plugin: `{"error_msg": msg}` with `rejected_msg`,
/// else an empty body with the status.
pub fn rejection(code: StatusCode, msg: Option<&str>) -> Rejection {
    match msg {
        Some(m) => Rejection::error_msg(code, m),
        None => Rejection::empty(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestState {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080)
    }

    #[test]
    fn combination_reads_plain_braced_and_escaped_dollars() {
        assert_eq!(
            parse_combination("$a-${b_2} \\$c$"),
            vec![
                Segment::Var("a".into()),
                Segment::Text("-".into()),
                Segment::Var("b_2".into()),
                Segment::Text(" $c$".into()),
            ]
        );
    }

    #[test]
    fn missing_variables_fall_back_to_the_client_address() {
        let req = request("/?user=u1", &[]);
        let var = LimitKey::new(Some("http_x_user"), KeyType::Var).unwrap();
        assert_eq!(var.resolve(&req), "ip:10.0.0.7");
        let arg = LimitKey::new(Some("arg_user"), KeyType::Var).unwrap();
        assert_eq!(arg.resolve(&req), "var:u1");
        let combo = LimitKey::new(Some("$http_x_a $http_x_b"), KeyType::VarCombination).unwrap();
        assert_eq!(combo.resolve(&req), "ip:10.0.0.7");
        let req = request("/", &[("x-b", "2")]);
        assert_eq!(combo.resolve(&req), "vars: 2");
    }

    #[test]
    fn absent_key_counts_by_client_address_before_authentication() {
        let req = request("/", &[]);
        assert_eq!(
            LimitKey::new(None, KeyType::Var).unwrap().resolve(&req),
            "ip:10.0.0.7"
        );
    }
}
