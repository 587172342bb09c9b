//! ip-restriction: allow only the client addresses on a `whitelist`, or
//! refuse those on a `blacklist` (IPv4 and IPv6 addresses and CIDRs).
//! APISIX's plugin of the same name: `{"message": "Your IP address is not
//! allowed"}`, `response_code` 403 or 404. The address is `client_ip`: the
//! peer, or what real-ip found.

use std::net::IpAddr;
use std::sync::Arc;

use http::StatusCode;
use ipnet::IpNet;
use portcullis_core::{ConfigError, Decision, Flow, Phase, Plugin, Rejection, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "ip-restriction",
    phase: Phase::Authorize,
    priority: 3000,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

const DEFAULT_MESSAGE: &str = "Your IP address is not allowed";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    whitelist: Option<Vec<String>>,
    blacklist: Option<Vec<String>>,
    #[serde(default = "default_message")]
    message: String,
    #[serde(default = "default_code")]
    response_code: u16,
}

fn default_message() -> String {
    DEFAULT_MESSAGE.into()
}
fn default_code() -> u16 {
    403
}

fn schema() -> Value {
    let list = json!({
        "type": "array", "minItems": 1,
        "items": {"type": "string", "description": "an IPv4 or IPv6 address or CIDR"}
    });
    json!({
        "type": "object",
        "properties": {
            "message": {"type": "string", "minLength": 1, "maxLength": 1024, "default": DEFAULT_MESSAGE},
            "response_code": {"type": "integer", "minimum": 403, "maximum": 404, "default": 403},
            "whitelist": list,
            "blacklist": list
        },
        "oneOf": [{"required": ["whitelist"]}, {"required": ["blacklist"]}],
        "additionalProperties": false
    })
}

enum Mode {
    Allow(Vec<IpNet>),
    Deny(Vec<IpNet>),
}

struct IpRestriction {
    mode: Mode,
    rejection: Rejection,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    let mode = match (&conf.whitelist, &conf.blacklist) {
        (Some(w), None) => Mode::Allow(parse_list(w, "whitelist")?),
        (None, Some(b)) => Mode::Deny(parse_list(b, "blacklist")?),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "",
                "set either whitelist or blacklist, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                "",
                "one of whitelist or blacklist is required",
            ))
        }
    };
    if conf.message.is_empty() || conf.message.len() > 1024 {
        return Err(ConfigError::new(
            "message",
            "must be between 1 and 1024 characters",
        ));
    }
    if !(403..=404).contains(&conf.response_code) {
        return Err(ConfigError::new(
            "response_code",
            format!("{} is not between 403 and 404", conf.response_code),
        ));
    }
    let status = StatusCode::from_u16(conf.response_code)
        .map_err(|_| ConfigError::new("response_code", "not a status code"))?;
    Ok(Arc::new(IpRestriction {
        mode,
        rejection: Rejection::message(status, &conf.message),
    }))
}

/// Parse a list of addresses and CIDRs, naming the entry at fault.
pub(crate) fn parse_list(items: &[String], field: &str) -> Result<Vec<IpNet>, ConfigError> {
    if items.is_empty() {
        return Err(ConfigError::new(
            field,
            "expect array to have at least 1 items",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse_ip_or_cidr(s).ok_or_else(|| {
                ConfigError::new(format!("{field}[{i}]"), format!("invalid ip address: {s}"))
            })
        })
        .collect()
}

/// `10.0.0.1`, `10.0.0.0/8`, `::1`, `2001:db8::/32`.
pub(crate) fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse::<IpNet>().ok()
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// Whether `ip` is in one of `nets`. An IPv4-mapped IPv6 address
/// (`::ffff:10.0.0.1`) counts as the IPv4 address it carries.
pub(crate) fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

impl Plugin for IpRestriction {
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
        let reason = match &self.mode {
            Mode::Allow(nets) if !contains(nets, req.client_ip) => {
                "client address not on the whitelist"
            }
            Mode::Deny(nets) if contains(nets, req.client_ip) => "client address on the blacklist",
            _ => return Flow::Continue,
        };
        req.decisions.push(Decision::reject(SPEC.name, reason));
        Flow::Respond(self.rejection.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_rewrite::tests::{build, request};

    fn from(ip: &str) -> RequestState {
        let mut req = request("GET", "/", &[]);
        req.client_ip = ip.parse().unwrap();
        req
    }

    fn status_and_body(flow: Flow) -> Option<(u16, String)> {
        match flow {
            Flow::Continue => None,
            Flow::Respond(r) => Some((
                r.status.as_u16(),
                String::from_utf8(r.body.to_vec()).unwrap(),
            )),
            Flow::Wait(_) | Flow::Retry(_) => panic!("ip-restriction never waits"),
        }
    }

    #[test]
    fn a_whitelist_admits_listed_v4_and_v6_addresses_and_refuses_others() {
        let p = build(
            "ip-restriction",
            json!({"whitelist": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]}),
        )
        .unwrap();
        for ok in [
            "10.1.2.3",
            "192.168.1.7",
            "2001:db8::5",
            "::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(
                status_and_body(p.on_request(&mut from(ok))).is_none(),
                "{ok}"
            );
        }
        let mut req = from("192.168.1.8");
        let (status, body) = status_and_body(p.on_request(&mut req)).unwrap();
        assert_eq!(status, 403);
        assert_eq!(body, "{\"message\":\"Your IP address is not allowed\"}\n");
        assert_eq!(req.decisions[0].plugin, "ip-restriction");
        assert!(status_and_body(p.on_request(&mut from("2001:db9::1"))).is_some());
    }

    #[test]
    fn a_blacklist_refuses_listed_addresses_with_the_configured_message_and_code() {
        let p = build(
            "ip-restriction",
            json!({"blacklist": ["203.0.113.0/24", "fe80::/10"], "message": "go away", "response_code": 404}),
        )
        .unwrap();
        assert_eq!(
            status_and_body(p.on_request(&mut from("203.0.113.9"))),
            Some((404, "{\"message\":\"go away\"}\n".into()))
        );
        assert!(status_and_body(p.on_request(&mut from("fe80::1"))).is_some());
        assert!(status_and_body(p.on_request(&mut from("198.51.100.1"))).is_none());
    }

    #[test]
    fn the_address_real_ip_found_is_the_one_checked() {
        let p = build("ip-restriction", json!({"whitelist": ["10.0.0.7"]})).unwrap();
        let mut req = request("GET", "/", &[]); // the peer is 10.0.0.7
        assert!(status_and_body(p.on_request(&mut req)).is_none());
        req.client_ip = "1.2.3.4".parse().unwrap();
        assert!(status_and_body(p.on_request(&mut req)).is_some());
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build("ip-restriction", conf).err().unwrap();
        let e = err(json!({"whitelist": ["10.0.0.1", "10.0.0.300"]}));
        assert_eq!(e.field, "ip-restriction.whitelist[1]");
        assert!(e.message.contains("invalid ip address: 10.0.0.300"));
        assert_eq!(
            err(json!({"whitelist": ["1.1.1.1"], "response_code": 401})).field,
            "ip-restriction.response_code"
        );
        assert_eq!(
            err(json!({"blacklist": ["1.1.1.1"], "message": ""})).field,
            "ip-restriction.message"
        );
        assert!(
            err(json!({"whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]}))
                .message
                .contains("not both")
        );
        assert!(err(json!({})).message.contains("required"));
        assert_eq!(
            err(json!({"whitelist": []})).field,
            "ip-restriction.whitelist"
        );
    }

    #[test]
    fn dry_run_is_allowed_because_ip_restriction_enforces() {
        let p = build(
            "ip-restriction",
            json!({"whitelist": ["10.0.0.1"], "_meta": {"dry_run": true}}),
        )
        .unwrap();
        assert!(p.dry_run());
    }
}
