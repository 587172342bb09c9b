//! consumer-restriction: decide by who is calling (or which route or service
//! the request is on) whether it may go on. APISIX's plugin of the same name
//! (`apisix/plugins/consumer-restriction.lua`), to the letter:
//!
//! - `type`: what is compared: `consumer_name` (default),
//!   `consumer_group_id`, `service_id` or `route_id`;
//! - `blacklist`: listed values are refused;
//! - `whitelist`: only listed values pass;
//! - `allowed_by_methods`: `[{user, methods}]`: a listed value may only use
//!   its methods; values not listed are not restricted by it, and a value on
//!   the whitelist is not restricted by it either;
//! - `rejected_code` (default 403) and `rejected_msg`; the default body is
//!   `{"message":"The <type> is forbidden."}`;
//! - no value to compare (no consumer, a consumer without a group, a route
//!   without a service) → 401 `{"message":"The request is rejected, please
//!   check the <type> for this request"}`.
//!
//! It runs in Authorize at APISIX's priority 2400, after authentication.

use std::sync::Arc;

use http::StatusCode;
use portcullis_core::{ConfigError, Decision, Flow, Phase, Plugin, Rejection, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const NAME: &str = "consumer-restriction";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Authorize,
    priority: 2400,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

/// APISIX's `core.schema.method_schema`.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestrictBy {
    #[default]
    ConsumerName,
    ConsumerGroupId,
    ServiceId,
    RouteId,
}

impl RestrictBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestrictBy::ConsumerName => "consumer_name",
            RestrictBy::ConsumerGroupId => "consumer_group_id",
            RestrictBy::ServiceId => "service_id",
            RestrictBy::RouteId => "route_id",
        }
    }

    fn value(self, req: &RequestState) -> Option<&str> {
        match self {
            RestrictBy::ConsumerName => req.consumer_name(),
            RestrictBy::ConsumerGroupId => req.identity.as_ref()?.consumer.group_id.as_deref(),
            RestrictBy::ServiceId => req.route.service_id.as_deref(),
            RestrictBy::RouteId => Some(&req.route.id)
                .filter(|id| !id.is_empty())
                .map(|s| &**s),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default, rename = "type")]
    by: RestrictBy,
    blacklist: Option<Vec<String>>,
    whitelist: Option<Vec<String>>,
    allowed_by_methods: Option<Vec<MethodRule>>,
    #[serde(default = "default_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodRule {
    #[serde(default)]
    user: Option<String>,
    methods: Vec<String>,
}

fn default_code() -> u16 {
    403
}

fn schema() -> Value {
    let list = json!({"type": "array", "minItems": 1, "items": {"type": "string"}});
    json!({
        "type": "object",
        "properties": {
            "type": {
                "type": "string",
                "enum": ["consumer_name", "service_id", "route_id", "consumer_group_id"],
                "default": "consumer_name"
            },
            "blacklist": list,
            "whitelist": list,
            "allowed_by_methods": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "user": {"type": "string"},
                        "methods": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": METHODS}}
                    }
                }
            },
            "rejected_code": {"type": "integer", "minimum": 200, "default": 403},
            "rejected_msg": {"type": "string"}
        },
        "anyOf": [
            {"required": ["blacklist"]},
            {"required": ["whitelist"]},
            {"required": ["allowed_by_methods"]}
        ]
    })
}

/// A built consumer-restriction instance.
pub struct ConsumerRestriction {
    by: RestrictBy,
    blacklist: Vec<String>,
    whitelist: Vec<String>,
    allowed_by_methods: Vec<(Option<String>, Vec<http::Method>)>,
    rejection: Rejection,
    /// 401 with "please check the <type> for this request".
    missing: Rejection,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    Ok(Arc::new(ConsumerRestriction::from_conf(conf)?))
}

impl ConsumerRestriction {
    fn from_conf(conf: &Value) -> Result<Self, ConfigError> {
        let conf: Conf = parse_conf(conf)?;
        if conf.blacklist.is_none() && conf.whitelist.is_none() && conf.allowed_by_methods.is_none()
        {
            return Err(ConfigError::new(
                "",
                "value should match at least one schema, but matches none: one of blacklist, whitelist or allowed_by_methods is required",
            ));
        }
        for (field, list) in [
            ("blacklist", &conf.blacklist),
            ("whitelist", &conf.whitelist),
        ] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                return Err(ConfigError::new(
                    field,
                    "expect array to have at least 1 items",
                ));
            }
        }
        let mut allowed_by_methods = Vec::new();
        for (i, rule) in conf.allowed_by_methods.iter().flatten().enumerate() {
            if rule.methods.is_empty() {
                return Err(ConfigError::new(
                    format!("allowed_by_methods[{i}].methods"),
                    "expect array to have at least 1 items",
                ));
            }
            let mut methods = Vec::new();
            for (j, m) in rule.methods.iter().enumerate() {
                if !METHODS.contains(&m.as_str()) {
                    return Err(ConfigError::new(
                        format!("allowed_by_methods[{i}].methods[{j}]"),
                        format!("matches none of the enum values: \"{m}\""),
                    ));
                }
                methods.push(
                    http::Method::from_bytes(m.as_bytes())
                        .map_err(|_| ConfigError::new("allowed_by_methods", "bad method"))?,
                );
            }
            allowed_by_methods.push((rule.user.clone(), methods));
        }
        if conf.rejected_code < 200 {
            return Err(ConfigError::new(
                "rejected_code",
                format!("expected {} to be at least 200", conf.rejected_code),
            ));
        }
        let status = StatusCode::from_u16(conf.rejected_code)
            .ok()
            .filter(|s| s.as_u16() <= 599)
            .ok_or_else(|| {
                ConfigError::new(
                    "rejected_code",
                    format!("{} is not an HTTP status code", conf.rejected_code),
                )
            })?;
        let message = conf
            .rejected_msg
            .clone()
            .unwrap_or_else(|| format!("The {} is forbidden.", conf.by.as_str()));
        Ok(ConsumerRestriction {
            by: conf.by,
            blacklist: conf.blacklist.unwrap_or_default(),
            whitelist: conf.whitelist.unwrap_or_default(),
            allowed_by_methods,
            rejection: Rejection::message(status, &message),
            missing: Rejection::message(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "The request is rejected, please check the {} for this request",
                    conf.by.as_str()
                ),
            ),
        })
    }

    /// APISIX's `is_method_allowed`: the first rule for `value` decides;
    /// a value without a rule is not restricted.
    fn method_allowed(&self, method: &http::Method, value: &str) -> bool {
        match self
            .allowed_by_methods
            .iter()
            .find(|(user, _)| user.as_deref() == Some(value))
        {
            Some((_, methods)) => methods.contains(method),
            None => true,
        }
    }

    /// Why the request is refused, or `None` when it may go on.
    fn verdict(&self, method: &http::Method, value: &str) -> Option<String> {
        let by = self.by.as_str();
        if self.blacklist.iter().any(|v| v == value) {
            return Some(format!("{by} \"{value}\" is on the blacklist"));
        }
        let mut whitelisted = false;
        let mut block = None;
        if !self.whitelist.is_empty() {
            whitelisted = self.whitelist.iter().any(|v| v == value);
            if !whitelisted {
                block = Some(format!("{by} \"{value}\" is not on the whitelist"));
            }
        }
        if !self.allowed_by_methods.is_empty()
            && !whitelisted
            && !self.method_allowed(method, value)
        {
            block.get_or_insert_with(|| {
                format!("{by} \"{value}\" may not use {method} (allowed_by_methods)")
            });
        }
        block
    }
}

impl Plugin for ConsumerRestriction {
    fn name(&self) -> &'static str {
        NAME
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    fn on_request(&self, req: &mut RequestState) -> Flow {
        let Some(value) = self.by.value(req) else {
            let reason = format!("no {} to check", self.by.as_str());
            req.decisions.push(Decision::reject(NAME, reason));
            return Flow::Respond(self.missing.clone());
        };
        match self.verdict(&req.head.method, value) {
            None => {
                let mut d = Decision::allow(NAME);
                d.reason = Some(format!("{} \"{value}\" allowed", self.by.as_str()).into());
                req.decisions.push(d);
                Flow::Continue
            }
            Some(reason) => {
                req.decisions.push(Decision::reject(NAME, reason));
                Flow::Respond(self.rejection.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portcullis_core::consumer::Identity;
    use portcullis_core::{Consumer, Outcome};

    use super::*;
    use crate::proxy_rewrite::tests::build;

    fn request(method: &str, consumer: Option<(&str, Option<&str>)>) -> RequestState {
        let (head, ()) = http::Request::builder()
            .method(method)
            .uri("/orders/1")
            .body(())
            .unwrap()
            .into_parts();
        let mut req = RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080);
        req.route = Arc::new(portcullis_core::request::RouteInfo {
            id: "orders".into(),
            name: None,
            service_id: None,
            labels: BTreeMap::new(),
        });
        if let Some((name, group)) = consumer {
            req.identity = Some(Identity {
                consumer: Arc::new(Consumer {
                    username: name.into(),
                    group_id: group.map(Into::into),
                    labels: BTreeMap::new(),
                }),
                credential_id: None,
                authenticated_by: "key-auth",
            });
        }
        req
    }

    fn answer(p: &Arc<dyn Plugin>, req: &mut RequestState) -> Option<(u16, String)> {
        match p.on_request(req) {
            Flow::Continue => None,
            Flow::Respond(r) => Some((
                r.status.as_u16(),
                String::from_utf8(r.body.to_vec()).unwrap(),
            )),
            other => panic!("consumer-restriction never defers: {other:?}"),
        }
    }

    #[test]
    fn a_whitelist_admits_listed_consumers_and_forbids_others_in_apisix_words() {
        let p = build(NAME, json!({"whitelist": ["jack"]})).unwrap();
        assert_eq!(answer(&p, &mut request("GET", Some(("jack", None)))), None);
        let mut req = request("GET", Some(("rose", None)));
        assert_eq!(
            answer(&p, &mut req),
            Some((
                403,
                "{\"message\":\"The consumer_name is forbidden.\"}\n".into()
            ))
        );
        assert_eq!(req.decisions[0].outcome, Outcome::Reject);
        assert_eq!(
            req.decisions[0].reason.as_deref(),
            Some("consumer_name \"rose\" is not on the whitelist")
        );
    }

    #[test]
    fn a_request_without_a_consumer_is_refused_with_401() {
        let p = build(NAME, json!({"whitelist": ["jack"]})).unwrap();
        assert_eq!(
            answer(&p, &mut request("GET", None)),
            Some((
                401,
                "{\"message\":\"The request is rejected, please check the consumer_name for this request\"}\n".into()
            ))
        );
        let p = build(
            NAME,
            json!({"type": "consumer_group_id", "whitelist": ["g"]}),
        )
        .unwrap();
        assert_eq!(
            answer(&p, &mut request("GET", Some(("jack", None)))),
            Some((
                401,
                "{\"message\":\"The request is rejected, please check the consumer_group_id for this request\"}\n".into()
            ))
        );
    }

    #[test]
    fn a_blacklist_refuses_listed_consumers_with_the_configured_code_and_message() {
        let p = build(
            NAME,
            json!({"blacklist": ["rose"], "rejected_code": 451, "rejected_msg": "not you"}),
        )
        .unwrap();
        assert_eq!(
            answer(&p, &mut request("GET", Some(("rose", None)))),
            Some((451, "{\"message\":\"not you\"}\n".into()))
        );
        assert_eq!(answer(&p, &mut request("GET", Some(("jack", None)))), None);
    }

    #[test]
    fn allowed_by_methods_restricts_only_the_listed_users() {
        let p = build(
            NAME,
            json!({"allowed_by_methods": [{"user": "jack", "methods": ["GET"]}]}),
        )
        .unwrap();
        assert_eq!(answer(&p, &mut request("GET", Some(("jack", None)))), None);
        let mut req = request("POST", Some(("jack", None)));
        assert_eq!(answer(&p, &mut req).unwrap().0, 403);
        assert!(req.decisions[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("may not use POST"));
        assert_eq!(answer(&p, &mut request("POST", Some(("rose", None)))), None);
    }

    #[test]
    fn a_whitelisted_consumer_is_not_held_to_allowed_by_methods() {
        let p = build(
            NAME,
            json!({"whitelist": ["jack"], "allowed_by_methods": [{"user": "jack", "methods": ["GET"]}]}),
        )
        .unwrap();
        assert_eq!(
            answer(&p, &mut request("DELETE", Some(("jack", None)))),
            None
        );
    }

    #[test]
    fn group_service_and_route_ids_can_be_restricted() {
        let p = build(
            NAME,
            json!({"type": "consumer_group_id", "whitelist": ["partners"]}),
        )
        .unwrap();
        assert_eq!(
            answer(&p, &mut request("GET", Some(("jack", Some("partners"))))),
            None
        );
        assert_eq!(
            answer(&p, &mut request("GET", Some(("jack", Some("staff"))))),
            Some((
                403,
                "{\"message\":\"The consumer_group_id is forbidden.\"}\n".into()
            ))
        );
        let p = build(NAME, json!({"type": "route_id", "blacklist": ["orders"]})).unwrap();
        assert_eq!(
            answer(&p, &mut request("GET", None)).unwrap().1,
            "{\"message\":\"The route_id is forbidden.\"}\n"
        );
        let p = build(NAME, json!({"type": "service_id", "whitelist": ["s1"]})).unwrap();
        assert_eq!(answer(&p, &mut request("GET", None)).unwrap().0, 401);
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build(NAME, conf).err().unwrap();
        assert!(err(json!({})).message.contains("at least one"));
        assert_eq!(
            err(json!({"whitelist": []})).field,
            "consumer-restriction.whitelist"
        );
        assert_eq!(
            err(json!({"whitelist": ["a"], "type": "ip"})).field,
            "consumer-restriction.type"
        );
        assert_eq!(
            err(json!({"whitelist": ["a"], "rejected_code": 100})).field,
            "consumer-restriction.rejected_code"
        );
        assert_eq!(
            err(json!({"allowed_by_methods": [{"user": "a", "methods": ["FETCH"]}]})).field,
            "consumer-restriction.allowed_by_methods[0].methods[0]"
        );
    }
}
