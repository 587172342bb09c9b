//! real-ip: take the client address from a header or query argument the
//! peer set (`X-Forwarded-For`, `X-Real-IP`, ...), but only when the peer is
//! one of `trusted_addresses`. APISIX's plugin of the same name. The result
//! goes to `client_ip`, which the restriction and limit plugins, `vars`'
//! `remote_addr` and the log use; `peer_addr` keeps the TCP peer.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use portcullis_router::expr::VarLookup;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::ip_restriction::{contains, parse_list};
use crate::registry::PluginSpec;

/// Made at compile time, not parsed on every request.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

pub const SPEC: PluginSpec = PluginSpec {
    name: "real-ip",
    phase: Phase::Rewrite,
    priority: 23000,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    source: String,
    trusted_addresses: Option<Vec<String>>,
    #[serde(default)]
    recursive: bool,
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "trusted_addresses": {
                "type": "array", "minItems": 1,
                "items": {"type": "string", "description": "an IPv4 or IPv6 address or CIDR"}
            },
            "source": {"type": "string", "minLength": 1},
            "recursive": {"type": "boolean", "default": false}
        },
        "required": ["source"],
        "additionalProperties": false
    })
}

struct RealIp {
    source: Source,
    /// `None`: every peer is believed (APISIX's default when the list is
    /// absent).
    trusted: Option<Vec<IpNet>>,
    recursive: bool,
}

enum Source {
    /// `http_x_forwarded_for`: the last address, or with `recursive` the
    /// right-most untrusted one.
    ForwardedFor,
    /// Any other variable: `http_x_real_ip`, `arg_realip`, ...
    Var(String),
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    if conf.source.is_empty() {
        return Err(ConfigError::new("source", "must not be empty"));
    }
    let trusted = match &conf.trusted_addresses {
        None => None,
        Some(list) => Some(parse_list(list, "trusted_addresses")?),
    };
    let source = if conf.source == "http_x_forwarded_for" {
        Source::ForwardedFor
    } else {
        Source::Var(conf.source)
    };
    Ok(Arc::new(RealIp {
        source,
        trusted,
        recursive: conf.recursive,
    }))
}

impl RealIp {
    fn is_trusted(&self, addr: &str) -> bool {
        match (&self.trusted, parse_addr(addr)) {
            (Some(nets), Some(ip)) => contains(nets, ip),
            _ => false,
        }
    }

    /// The address text the source names, not yet parsed.
    fn address<'r>(&self, req: &'r RequestState) -> Option<std::borrow::Cow<'r, str>> {
        let name = match &self.source {
            Source::Var(name) => return req.var(name),
            Source::ForwardedFor => X_FORWARDED_FOR,
        };
        // The last X-Forwarded-For line, as APISIX reads it.
        let line = req
            .head
            .headers
            .get_all(&name)
            .iter()
            .next_back()?
            .to_str()
            .ok()?;
        if self.recursive && self.trusted.is_some() {
            let addrs: Vec<&str> = line.split(',').map(str::trim).collect();
            // Walk from the right past the proxies we trust; the first one we
            // do not trust is the client. If all are trusted, the left-most.
            let found = addrs
                .iter()
                .skip(1)
                .rev()
                .find(|a| !self.is_trusted(a))
                .or(addrs.first())
                .copied()?;
            return Some(found.into());
        }
        Some(line.rsplit(',').next()?.trim_start().into())
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| p > 0);
        return port_ok.then(|| ip.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    }
    let (ip, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

impl Plugin for RealIp {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    fn on_request(&self, req: &mut RequestState) -> Flow {
        if let Some(nets) = &self.trusted {
            if !contains(nets, req.peer_addr.ip()) {
                return Flow::Continue;
            }
        }
        let Some(found) = self.address(req).and_then(|a| parse_addr(&a)) else {
            // Missing or malformed: keep the peer, as APISIX does.
            return Flow::Continue;
        };
        req.client_ip = found;
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_rewrite::tests::{build, request};

    /// Run real-ip on a request from `peer` and return the client address.
    fn client_ip(conf: Value, peer: &str, uri: &str, headers: &[(&str, &str)]) -> String {
        let p = build("real-ip", conf).unwrap();
        let mut req = request("GET", uri, headers);
        req.peer_addr = peer.parse().unwrap();
        req.client_ip = req.peer_addr.ip();
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert_eq!(req.peer_addr, peer.parse().unwrap(), "the peer is kept");
        req.client_ip.to_string()
    }

    #[test]
    fn a_trusted_peer_is_believed_about_the_client_address() {
        let conf = json!({"source": "http_x_real_ip", "trusted_addresses": ["10.0.0.0/8"]});
        assert_eq!(
            client_ip(conf, "10.1.1.1:4000", "/", &[("x-real-ip", "203.0.113.5")]),
            "203.0.113.5"
        );
    }

    #[test]
    fn an_untrusted_peer_is_not_believed() {
        let conf = json!({"source": "http_x_real_ip", "trusted_addresses": ["10.0.0.0/8"]});
        assert_eq!(
            client_ip(
                conf,
                "198.51.100.9:4000",
                "/",
                &[("x-real-ip", "203.0.113.5")]
            ),
            "198.51.100.9"
        );
    }

    #[test]
    fn without_trusted_addresses_every_peer_is_believed_as_in_apisix() {
        let conf = json!({"source": "arg_realip"});
        assert_eq!(
            client_ip(
                conf,
                "198.51.100.9:4000",
                "/?realip=[2001:db8::1]:8080",
                &[]
            ),
            "2001:db8::1"
        );
    }

    #[test]
    fn forwarded_for_takes_the_last_address_of_the_last_line() {
        let conf = json!({"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.1"]});
        assert_eq!(
            client_ip(
                conf,
                "127.0.0.1:1",
                "/",
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "2.2.2.2,  3.3.3.3")
                ]
            ),
            "3.3.3.3"
        );
    }

    #[test]
    fn recursive_forwarded_for_skips_trusted_proxies_from_the_right() {
        let conf = json!({
            "source": "http_x_forwarded_for",
            "trusted_addresses": ["127.0.0.1", "10.0.0.0/8"],
            "recursive": true
        });
        let xff = [("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.0.0.2, 10.0.0.1")];
        assert_eq!(client_ip(conf.clone(), "127.0.0.1:1", "/", &xff), "5.5.5.5");
        let all_trusted = [("x-forwarded-for", "10.0.0.3, 10.0.0.2")];
        assert_eq!(
            client_ip(conf, "127.0.0.1:1", "/", &all_trusted),
            "10.0.0.3"
        );
    }

    #[test]
    fn a_missing_or_malformed_source_keeps_the_peer() {
        let conf = json!({"source": "http_x_real_ip"});
        assert_eq!(client_ip(conf.clone(), "10.0.0.1:1", "/", &[]), "10.0.0.1");
        assert_eq!(
            client_ip(conf, "10.0.0.1:1", "/", &[("x-real-ip", "not-an-ip")]),
            "10.0.0.1"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build("real-ip", conf).err().unwrap();
        assert!(err(json!({})).message.contains("source"));
        assert_eq!(
            err(json!({"source": "http_x_real_ip", "trusted_addresses": ["nope"]})).field,
            "real-ip.trusted_addresses[0]"
        );
        assert_eq!(err(json!({"source": ""})).field, "real-ip.source");
        assert_eq!(
            err(json!({"source": "x", "recursive": "yes"})).field,
            "real-ip.recursive"
        );
    }

    #[test]
    fn addresses_parse_with_and_without_ports() {
        assert_eq!(parse_addr("1.2.3.4:80"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parse_addr("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_addr("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(parse_addr("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_addr("1.2.3.4:0"), None);
        assert_eq!(parse_addr("1.2.3.4:99999"), None);
    }
}
