//! policy: authorize requests with Cedar policies (docs/plugins/policy.md).
//!
//! The plugin's config holds the policy text: `{"policies": "<cedar>"}`.
//! It is parsed and type-checked against portcullis's Cedar schema
//! ([`SCHEMA`]) when the config is built, so a policy that does not parse,
//! names an attribute that does not exist or compares a string with a
//! number is a config error naming `plugins.policy.policies`: the Admin API
//! answers 400 and the file loader keeps the last good config.
//!
//! Per request the plugin builds a small Cedar request:
//! - principal: `Consumer::"<username>"` (attributes `username`, `group`;
//!   labels as tags; parent `Group::"<group id>"`), or `Anonymous::"anonymous"`
//!   when nobody authenticated;
//! - action: `Action::"<METHOD>"`;
//! - resource: `Route::"<route id>"` (attributes `id`, `name`, `service_id`;
//!   labels as tags; parent `Service::"<service id>"`);
//! - context: `headers` (an entity whose tags are the request headers,
//!   lowercased), `params` (the path parameters, as tags), `client_ip`
//!   (`ipaddr`, after real-ip), `method`, `path`, `host`, `scheme`,
//!   `authenticated`, `now` (unix seconds), `hour_utc` (0-23) and
//!   `weekday_utc` (1 = Monday … 7 = Sunday).
//!
//! Cedar's semantics apply: a `forbid` that matches wins, otherwise a
//! matching `permit` allows, otherwise the request is denied. The decision
//! record names the deciding policies by their `@id("...")` annotation (or
//! Cedar's `policy0`, `policy1`, ... when a policy has none).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use http::StatusCode;
use portcullis_core::{ConfigError, Decision, Flow, Phase, Plugin, Rejection, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

mod client_ip;
mod inputs;
mod scope;
mod verdicts;
use scope::{ScopeIndex, Scoped};
use verdicts::Verdict;

pub const NAME: &str = "policy";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Authorize,
    // After consumer-restriction (2400): the cheap list check first.
    priority: 2390,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

const DEFAULT_MESSAGE: &str = "Access denied by policy";

/// The Cedar schema every policy is type-checked against. Maps whose keys
/// are not known in advance (labels, headers, path parameters) are entity
/// tags: `principal.hasTag("team") && principal.getTag("team") == "payments"`.
pub const SCHEMA: &str = r#"
entity Group;
entity Service;
entity Consumer in [Group] = {
  username: String,
  group: String,
} tags String;
entity Anonymous;
entity Route in [Service] = {
  id: String,
  name: String,
  service_id: String,
} tags String;
entity Headers tags String;
entity Params tags String;

type RequestContext = {
  headers: Headers,
  params: Params,
  client_ip: ipaddr,
  method: String,
  path: String,
  host: String,
  scheme: String,
  authenticated: Bool,
  now: Long,
  hour_utc: Long,
  weekday_utc: Long,
};

action "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"
  appliesTo {
    principal: [Consumer, Anonymous],
    resource: [Route],
    context: RequestContext,
  };
"#;

fn cedar_schema() -> &'static Schema {
    static SCHEMA_PARSED: OnceLock<Schema> = OnceLock::new();
    SCHEMA_PARSED.get_or_init(|| match Schema::from_cedarschema_str(SCHEMA) {
        Ok((schema, _warnings)) => schema,
        // The schema is a constant checked by the tests.
        Err(e) => panic!("portcullis's Cedar schema does not parse: {e}"),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    policies: String,
    #[serde(default = "default_code")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
}

fn default_code() -> u16 {
    403
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "policies": {"type": "string", "minLength": 1, "description": "Cedar policies, type-checked against portcullis's schema"},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 403},
            "rejected_msg": {"type": "string", "minLength": 1}
        },
        "required": ["policies"],
        "additionalProperties": false
    })
}

/// Entity type names, made once.
struct Types {
    consumer: EntityTypeName,
    anonymous: EntityTypeName,
    group: EntityTypeName,
    route: EntityTypeName,
    service: EntityTypeName,
    headers: EntityTypeName,
    params: EntityTypeName,
    action: EntityTypeName,
}

fn types() -> &'static Types {
    static TYPES: OnceLock<Types> = OnceLock::new();
    TYPES.get_or_init(|| {
        let t = |s: &str| {
            EntityTypeName::from_str(s).unwrap_or_else(|_| unreachable!("valid type name {s}"))
        };
        Types {
            consumer: t("Consumer"),
            anonymous: t("Anonymous"),
            group: t("Group"),
            route: t("Route"),
            service: t("Service"),
            headers: t("Headers"),
            params: t("Params"),
            action: t("Action"),
        }
    })
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

pub struct Policy {
    /// The whole set, by (action, route): each request sees only the
    /// policies whose scope can match it.
    scopes: ScopeIndex,
    authorizer: Authorizer,
    /// This instance's number in the per-thread verdict cache.
    instance: u64,
    /// `Action::"GET"` and friends, made once.
    actions: HashMap<http::Method, EntityUid>,
    rejection: Rejection,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    Ok(Arc::new(Policy::from_conf(conf)?))
}

/// Parse and type-check Cedar text. Errors name `policies` and say what
/// Cedar said, with the policy's id.
pub fn compile(text: &str) -> Result<PolicySet, ConfigError> {
    let err = |msg: String| ConfigError::new("policies", msg);
    if text.trim().is_empty() {
        return Err(err("must hold at least one Cedar policy".into()));
    }
    let parsed = PolicySet::from_str(text)
        .map_err(|e| err(format!("Cedar policies do not parse: {}", cedar_error(&e))))?;
    if parsed.templates().next().is_some() {
        return Err(err(
            "templates (policies with ?principal or ?resource) are not supported".into(),
        ));
    }
    // Name each policy by its @id annotation, so decisions read as the
    // author named them.
    let mut named = PolicySet::new();
    let mut policies: Vec<_> = parsed.policies().collect();
    policies.sort_by_key(|p| p.id().to_string());
    for p in policies {
        let policy = match p.annotation("id") {
            Some(id) => p.new_id(PolicyId::new(id)),
            None => p.clone(),
        };
        let id = policy.id().to_string();
        named
            .add(policy)
            .map_err(|_| err(format!("two policies share the id \"{id}\"")))?;
    }
    let result = Validator::new(cedar_schema().clone()).validate(&named, ValidationMode::Strict);
    if !result.validation_passed() {
        let errors: Vec<String> = result.validation_errors().map(|e| cedar_error(e)).collect();
        return Err(err(format!(
            "Cedar policies do not type-check: {}",
            errors.join("; ")
        )));
    }
    Ok(named)
}

/// A Cedar error with its causes, on one line.
fn cedar_error(e: &(dyn std::error::Error + '_)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Policy {
    fn from_conf(conf: &Value) -> Result<Self, ConfigError> {
        let conf: Conf = parse_conf(conf)?;
        let policies = compile(&conf.policies)?;
        let status = StatusCode::from_u16(conf.rejected_code)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .ok_or_else(|| {
                ConfigError::new(
                    "rejected_code",
                    format!("{} is not between 200 and 599", conf.rejected_code),
                )
            })?;
        let t = types();
        let actions = [
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
        ]
        .into_iter()
        .filter_map(|m| {
            Some((
                http::Method::from_bytes(m.as_bytes()).ok()?,
                uid(&t.action, m),
            ))
        })
        .collect::<HashMap<_, _>>();
        let scopes = ScopeIndex::build(&policies, &actions, |u| u.type_name() == &t.route);
        Ok(Policy {
            scopes,
            authorizer: Authorizer::new(),
            instance: verdicts::next_instance(),
            actions,
            rejection: Rejection::message(
                status,
                conf.rejected_msg.as_deref().unwrap_or(DEFAULT_MESSAGE),
            ),
        })
    }

    fn action_of(&self, method: &http::Method) -> EntityUid {
        match self.actions.get(method) {
            Some(a) => a.clone(),
            None => uid(&types().action, method.as_str()),
        }
    }

    /// The Cedar request and entities for one HTTP request. The header and
    /// path-parameter entities are made only when a policy that may apply
    /// names them, and the context only when one reads it.
    fn cedar_request(
        &self,
        req: &RequestState,
        action: EntityUid,
        scoped: &Scoped,
    ) -> Result<(Request, Entities), String> {
        let t = types();
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let mut entities = Vec::with_capacity(6);

        let principal = match &req.identity {
            Some(identity) => {
                let c = &identity.consumer;
                let me = uid(&t.consumer, &c.username);
                let mut parents = Vec::new();
                if let Some(g) = &c.group_id {
                    let group = uid(&t.group, g);
                    entities.push(Entity::with_uid(group.clone()));
                    parents.push(group);
                }
                let attrs = [
                    ("username".to_string(), s(&c.username)),
                    ("group".to_string(), s(c.group_id.as_deref().unwrap_or(""))),
                ];
                entities.push(
                    Entity::new_with_tags(me.clone(), attrs, parents, tags(&c.labels))
                        .map_err(|e| e.to_string())?,
                );
                me
            }
            None => {
                let me = uid(&t.anonymous, "anonymous");
                entities.push(Entity::with_uid(me.clone()));
                me
            }
        };

        let route = &req.route;
        let resource = uid(&t.route, &route.id);
        let mut parents = Vec::new();
        if let Some(sid) = &route.service_id {
            let service = uid(&t.service, sid);
            entities.push(Entity::with_uid(service.clone()));
            parents.push(service);
        }
        let attrs = [
            ("id".to_string(), s(&route.id)),
            ("name".to_string(), s(route.name.as_deref().unwrap_or(""))),
            (
                "service_id".to_string(),
                s(route.service_id.as_deref().unwrap_or("")),
            ),
        ];
        entities.push(
            Entity::new_with_tags(resource.clone(), attrs, parents, tags(&route.labels))
                .map_err(|e| e.to_string())?,
        );

        let context = if !scoped.needs_context {
            Context::empty()
        } else {
            let headers = uid(&t.headers, "request");
            if scoped.needs_headers {
                let mut header_tags: BTreeMap<String, String> = BTreeMap::new();
                for (name, value) in req.head.headers.iter() {
                    if let Ok(v) = value.to_str() {
                        header_tags
                            .entry(name.as_str().to_string())
                            .and_modify(|prev| {
                                prev.push_str(", ");
                                prev.push_str(v);
                            })
                            .or_insert_with(|| v.to_string());
                    }
                }
                entities.push(
                    Entity::new_with_tags(
                        headers.clone(),
                        [],
                        [],
                        header_tags
                            .into_iter()
                            .map(|(k, v)| (k, RestrictedExpression::new_string(v))),
                    )
                    .map_err(|e| e.to_string())?,
                );
            }
            let params = uid(&t.params, "request");
            if scoped.needs_params {
                entities.push(
                    Entity::new_with_tags(
                        params.clone(),
                        [],
                        [],
                        req.path_params
                            .iter()
                            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
                    )
                    .map_err(|e| e.to_string())?,
                );
            }

            let clock = Clock::now();
            Context::from_pairs([
                (
                    "headers".to_string(),
                    RestrictedExpression::new_entity_uid(headers),
                ),
                (
                    "params".to_string(),
                    RestrictedExpression::new_entity_uid(params),
                ),
                (
                    "client_ip".to_string(),
                    client_ip::expression(req.client_ip),
                ),
                ("method".to_string(), s(req.head.method.as_str())),
                ("path".to_string(), s(req.path())),
                ("host".to_string(), s(req.host().unwrap_or(""))),
                ("scheme".to_string(), s(req.scheme)),
                (
                    "authenticated".to_string(),
                    RestrictedExpression::new_bool(req.identity.is_some()),
                ),
                (
                    "now".to_string(),
                    RestrictedExpression::new_long(clock.unix),
                ),
                (
                    "hour_utc".to_string(),
                    RestrictedExpression::new_long(clock.hour_utc),
                ),
                (
                    "weekday_utc".to_string(),
                    RestrictedExpression::new_long(clock.weekday_utc),
                ),
            ])
            .map_err(|e| e.to_string())?
        };

        let request =
            Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())?;
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

/// The context's clock attributes, read once per request.
#[derive(Clone, Copy)]
struct Clock {
    unix: i64,
    hour_utc: i64,
    weekday_utc: i64,
}

impl Clock {
    fn now() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let days = unix.div_euclid(86_400);
        Clock {
            unix,
            hour_utc: unix.rem_euclid(86_400) / 3600,
            // 1970-01-01 was a Thursday (ISO weekday 4).
            weekday_utc: (days + 3).rem_euclid(7) + 1,
        }
    }
}

/// The `headers` entity's tag `name`, as the context builds it: the
/// header's values that are text, joined with ", ".
fn header_tag(req: &RequestState, name: &str) -> Option<String> {
    let mut joined: Option<String> = None;
    for value in req.head.headers.get_all(name) {
        let Ok(v) = value.to_str() else { continue };
        match &mut joined {
            Some(prev) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            None => joined = Some(v.to_string()),
        }
    }
    joined
}

fn tags(
    map: &BTreeMap<String, String>,
) -> impl Iterator<Item = (String, RestrictedExpression)> + '_ {
    map.iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
}

fn ids<'a>(ids: impl Iterator<Item = &'a PolicyId>) -> String {
    let mut v: Vec<String> = ids.map(|id| id.to_string()).collect();
    v.sort();
    v.join(", ")
}

impl Plugin for Policy {
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
        let scoped = self.scopes.select(&req.head.method, &req.route.id);
        if scoped.policies.policies().next().is_none() {
            // Nothing can permit: denied without building a request.
            let reason = format!(
                "no policy permits {} on route {}",
                req.head.method, req.route.id
            );
            req.decisions.push(Decision::reject(NAME, reason));
            return Flow::Respond(self.rejection.clone());
        }
        // The context values the policies read, when they can be named and
        // are small: the verdict is remembered for requests agreeing on them.
        let inputs = match &scoped.inputs {
            _ if !scoped.needs_context => Some(Vec::new()),
            Some(named) => named.read(req),
            None => None,
        };
        let verdict = match inputs {
            Some(inputs) => {
                let consumer = req.identity.as_ref().map(|i| &i.consumer);
                let key = verdicts::Key::new(
                    self.instance,
                    &req.route,
                    consumer,
                    &req.head.method,
                    inputs,
                );
                verdicts::get_or_decide(key, &req.route, consumer, || self.evaluate(req, scoped))
            }
            None => self.evaluate(req, scoped),
        };
        match verdict {
            Ok(Verdict {
                allow: true,
                reason,
            }) => {
                let mut d = Decision::allow(NAME);
                d.reason = Some(reason.to_string().into());
                req.decisions.push(d);
                Flow::Continue
            }
            Ok(Verdict {
                allow: false,
                reason,
            }) => {
                req.decisions
                    .push(Decision::reject(NAME, reason.to_string()));
                Flow::Respond(self.rejection.clone())
            }
            Err(e) => {
                // Fail closed: a request that cannot be described is denied.
                tracing::warn!(error = %e, "policy: cannot build the Cedar request");
                req.decisions.push(Decision::reject(
                    NAME,
                    "the request could not be evaluated; denied",
                ));
                Flow::Respond(self.rejection.clone())
            }
        }
    }
}

impl Policy {
    /// Ask Cedar, with the policies that can apply.
    fn evaluate(&self, req: &RequestState, scoped: &Scoped) -> Result<Verdict, String> {
        let action = self.action_of(&req.head.method);
        let (request, entities) = self.cedar_request(req, action, scoped)?;
        let response = self
            .authorizer
            .is_authorized(&request, &scoped.policies, &entities);
        let diagnostics = response.diagnostics();
        let deciding = ids(diagnostics.reason());
        let errored = diagnostics.errors().count();
        let note = if errored > 0 {
            format!(" ({errored} policies failed to evaluate and were skipped)")
        } else {
            String::new()
        };
        let (allow, reason) = match response.decision() {
            CedarDecision::Allow => (true, format!("permitted by policy {deciding}{note}")),
            CedarDecision::Deny if deciding.is_empty() => (
                false,
                format!(
                    "no policy permits {} on route {}{note}",
                    req.head.method, req.route.id
                ),
            ),
            CedarDecision::Deny => (false, format!("forbidden by policy {deciding}{note}")),
        };
        Ok(Verdict {
            allow,
            reason: reason.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::consumer::Identity;
    use portcullis_core::{Consumer, Outcome};

    use super::*;
    use crate::proxy_rewrite::tests::build;

    fn request(method: &str, consumer: Option<(&str, Option<&str>)>) -> RequestState {
        let (head, ()) = http::Request::builder()
            .method(method)
            .uri("/orders/42")
            .header("X-Tenant", "acme")
            .body(())
            .unwrap()
            .into_parts();
        let mut req = RequestState::new(head, "10.1.2.3:5555".parse().unwrap(), "http", 9080);
        req.route = Arc::new(portcullis_core::request::RouteInfo {
            id: "orders".into(),
            name: Some("orders".into()),
            service_id: Some("shop".into()),
            labels: BTreeMap::from([("team".to_string(), "sales".to_string())]),
        });
        req.path_params = vec![("id".into(), "42".into())];
        if let Some((name, group)) = consumer {
            req.identity = Some(Identity {
                consumer: Arc::new(Consumer {
                    username: name.into(),
                    group_id: group.map(Into::into),
                    labels: BTreeMap::from([("team".to_string(), "sales".to_string())]),
                }),
                credential_id: None,
                authenticated_by: "key-auth",
            });
        }
        req
    }

    fn decide(p: &Arc<dyn Plugin>, req: &mut RequestState) -> (Option<u16>, String) {
        let status = match p.on_request(req) {
            Flow::Continue => None,
            Flow::Respond(r) => Some(r.status.as_u16()),
            other => panic!("policy never defers: {other:?}"),
        };
        let reason = req
            .decisions
            .last()
            .and_then(|d| d.reason.as_deref())
            .unwrap_or_default()
            .to_string();
        (status, reason)
    }

    const POLICIES: &str = r#"
        @id("partners-read")
        permit(principal in Group::"partners", action in [Action::"GET", Action::"HEAD"], resource);

        @id("same-team-writes")
        permit(principal, action == Action::"POST", resource)
        when { principal has username && principal.hasTag("team") && resource.hasTag("team")
               && principal.getTag("team") == resource.getTag("team") };

        @id("tenant-header")
        permit(principal == Consumer::"ops", action, resource in Service::"shop")
        when { context.headers.hasTag("x-tenant") && context.headers.getTag("x-tenant") == "acme"
               && context.params.hasTag("id") && context.params.getTag("id") == "42"
               && context.client_ip.isInRange(ip("10.0.0.0/8")) };

        @id("no-deletes-off-hours")
        forbid(principal, action == Action::"DELETE", resource)
        when { context.hour_utc < 0 || context.hour_utc > 23 || principal is Anonymous };
    "#;

    #[test]
    fn the_schema_parses() {
        let _ = cedar_schema();
    }

    #[test]
    fn a_permit_allows_and_the_decision_names_it() {
        let p = build(NAME, json!({"policies": POLICIES})).unwrap();
        let mut req = request("GET", Some(("jack", Some("partners"))));
        let (status, reason) = decide(&p, &mut req);
        assert_eq!(status, None);
        assert_eq!(reason, "permitted by policy partners-read");
        assert_eq!(req.decisions[0].outcome, Outcome::Allow);
    }

    #[test]
    fn without_a_permit_the_request_is_denied_with_403() {
        let p = build(NAME, json!({"policies": POLICIES})).unwrap();
        let mut req = request("DELETE", Some(("jack", Some("partners"))));
        let (status, reason) = decide(&p, &mut req);
        assert_eq!(status, Some(403));
        assert_eq!(reason, "no policy permits DELETE on route orders");
        let mut req = request("GET", None);
        assert_eq!(decide(&p, &mut req).0, Some(403));
    }

    #[test]
    fn a_forbid_wins_and_is_named() {
        let p = build(
            NAME,
            json!({"policies": "@id(\"all\") permit(principal, action, resource);\n@id(\"anon-no-delete\") forbid(principal is Anonymous, action == Action::\"DELETE\", resource);",
                   "rejected_code": 401, "rejected_msg": "nope"}),
        )
        .unwrap();
        let mut req = request("DELETE", None);
        match p.on_request(&mut req) {
            Flow::Respond(r) => {
                assert_eq!(r.status, 401);
                assert_eq!(r.body, "{\"message\":\"nope\"}\n");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            req.decisions[0].reason.as_deref(),
            Some("forbidden by policy anon-no-delete")
        );
        assert_eq!(
            decide(&p, &mut request("DELETE", Some(("jack", None)))).0,
            None
        );
    }

    #[test]
    fn labels_headers_params_and_client_address_reach_the_policy() {
        let p = build(NAME, json!({"policies": POLICIES})).unwrap();
        let (status, reason) = decide(&p, &mut request("POST", Some(("jack", None))));
        assert_eq!(
            (status, reason.as_str()),
            (None, "permitted by policy same-team-writes")
        );
        let (status, reason) = decide(&p, &mut request("PUT", Some(("ops", None))));
        assert_eq!(
            (status, reason.as_str()),
            (None, "permitted by policy tenant-header")
        );
        let mut req = request("PUT", Some(("ops", None)));
        req.client_ip = "192.168.1.1".parse().unwrap();
        assert_eq!(decide(&p, &mut req).0, Some(403));
    }

    #[test]
    fn policies_that_do_not_parse_or_type_check_are_config_errors_naming_the_field() {
        let err = |text: &str| build(NAME, json!({ "policies": text })).err().unwrap();
        let e = err("permit(principal, action, resource");
        assert_eq!(e.field, "policy.policies");
        assert!(e.message.contains("do not parse"), "{}", e.message);
        let e = err("permit(principal, action, resource) when { principal.usrname == \"x\" };");
        assert!(e.message.contains("do not type-check"), "{}", e.message);
        let e = err("permit(principal, action == Action::\"FETCH\", resource);");
        assert!(e.message.contains("do not type-check"), "{}", e.message);
        let e = err("permit(principal, action, resource) when { context.now == \"noon\" };");
        assert!(e.message.contains("do not type-check"), "{}", e.message);
        // An unguarded tag read is refused: it would fail at request time.
        let e = err(
            "permit(principal, action, resource) when { context.params.getTag(\"id\") == \"1\" };",
        );
        assert!(e.message.contains("tag"), "{}", e.message);
        let e = err("permit(principal == ?principal, action, resource);");
        assert!(e.message.contains("templates"), "{}", e.message);
        assert!(build(NAME, json!({})).is_err());
        assert!(build(NAME, json!({"policies": "  "})).is_err());
    }

    #[test]
    fn per_route_rules_decide_as_the_whole_set_would() {
        // Rules scoped to other routes or actions are left out of the
        // evaluation; the decision and the deciding policies stay the same.
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!(
                "@id(\"svc-{i}\") permit(principal, action == Action::\"POST\", resource == Route::\"svc-{i}\");\n"
            ));
        }
        text.push_str(
            r#"@id("orders-read") permit(principal, action in [Action::"GET", Action::"HEAD"], resource == Route::"orders");
               @id("no-anonymous") forbid(principal is Anonymous, action, resource in Route::"orders");
               @id("tenant") permit(principal, action == Action::"PUT", resource)
                 when { context.headers.hasTag("x-tenant") && context.headers.getTag("x-tenant") == "acme" };
            "#,
        );
        let p = build(NAME, json!({ "policies": text })).unwrap();
        let cases = [
            ("GET", Some("jack"), None, "permitted by policy orders-read"),
            (
                "HEAD",
                Some("jack"),
                None,
                "permitted by policy orders-read",
            ),
            ("GET", None, Some(403), "forbidden by policy no-anonymous"),
            (
                "POST",
                Some("jack"),
                Some(403),
                "no policy permits POST on route orders",
            ),
            // An unscoped rule still reads the headers it needs.
            ("PUT", Some("jack"), None, "permitted by policy tenant"),
            (
                "DELETE",
                Some("jack"),
                Some(403),
                "no policy permits DELETE on route orders",
            ),
        ];
        for (method, consumer, status, reason) in cases {
            let mut req = request(method, consumer.map(|c| (c, None)));
            assert_eq!(
                decide(&p, &mut req),
                (status, reason.to_string()),
                "{method}"
            );
        }
    }

    #[test]
    fn context_free_verdicts_follow_the_consumer_and_route_values() {
        let p = build(
            NAME,
            json!({"policies": r#"@id("sales-only") permit(principal, action, resource)
                when { principal.hasTag("team") && principal.getTag("team") == "sales" };"#}),
        )
        .unwrap();
        let mut first = request("GET", Some(("jack", None)));
        let permitted = (None, "permitted by policy sales-only".to_string());
        assert_eq!(decide(&p, &mut first), permitted);
        // The same consumer and route values again: the remembered answer.
        let mut again = request("GET", None);
        again.route = first.route.clone();
        again.identity = first.identity.clone();
        assert_eq!(decide(&p, &mut again), permitted);
        // A config edit moves jack to another team: a new consumer value,
        // decided afresh.
        let mut edited = request("GET", Some(("jack", None)));
        edited.route = first.route.clone();
        edited.identity = Some(Identity {
            consumer: Arc::new(Consumer {
                username: "jack".into(),
                group_id: None,
                labels: BTreeMap::from([("team".to_string(), "ops".to_string())]),
            }),
            credential_id: None,
            authenticated_by: "key-auth",
        });
        assert_eq!(decide(&p, &mut edited).0, Some(403));
    }

    #[test]
    fn remembered_verdicts_follow_the_context_values_the_policies_read() {
        let p = build(
            NAME,
            json!({"policies": r#"@id("office") permit(principal, action, resource)
                when { context.client_ip.isInRange(ip("10.0.0.0/8"))
                       && !context.headers.hasTag("x-blocked")
                       && context.params.hasTag("id") && context.params.getTag("id") == "42" };"#}),
        )
        .unwrap();
        let first = request("GET", Some(("jack", None)));
        // Every request shares the consumer and route values, so only the
        // context values tell them apart.
        let decide_with = |ip: &str, blocked: Option<&str>, id: &str| {
            let mut req = request("GET", None);
            req.route = first.route.clone();
            req.identity = first.identity.clone();
            req.client_ip = ip.parse().unwrap();
            if let Some(v) = blocked {
                req.head.headers.append("x-blocked", v.parse().unwrap());
            }
            req.path_params = vec![("id".into(), id.into())];
            decide(&p, &mut req).0
        };
        for _ in 0..2 {
            assert_eq!(decide_with("10.1.2.3", None, "42"), None);
            assert_eq!(decide_with("10.1.2.3", Some("yes"), "42"), Some(403));
            assert_eq!(decide_with("192.168.1.1", None, "42"), Some(403));
            assert_eq!(decide_with("10.9.9.9", None, "43"), Some(403));
            assert_eq!(decide_with("10.9.9.9", None, "42"), None);
        }
    }

    #[test]
    fn policies_reading_the_context_in_unnamed_ways_are_evaluated_each_time() {
        let p = build(
            NAME,
            json!({"policies": r#"@id("own-path") permit(principal, action, resource)
                when { context.headers.hasTag(context.host) };"#}),
        )
        .unwrap();
        let first = request("GET", Some(("jack", None)));
        for (host, expected) in [("x-tenant", None), ("other", Some(403)), ("x-tenant", None)] {
            let mut req = request("GET", None);
            req.route = first.route.clone();
            req.identity = first.identity.clone();
            req.head
                .headers
                .insert(http::header::HOST, host.parse().unwrap());
            assert_eq!(decide(&p, &mut req).0, expected, "host {host}");
        }
    }

    #[test]
    fn a_hundred_rules_evaluate_in_microseconds() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!(
                "@id(\"r{i}\") permit(principal == Consumer::\"user{i}\", action == Action::\"GET\", resource) when {{ context.headers.hasTag(\"x-tenant\") }};\n"
            ));
        }
        let p = build(NAME, json!({ "policies": text })).unwrap();
        let mut req = request("GET", Some(("user99", None)));
        assert_eq!(decide(&p, &mut req).1, "permitted by policy r99");
        let n = 200;
        let started = std::time::Instant::now();
        for _ in 0..n {
            let mut req = request("GET", Some(("user50", None)));
            assert!(matches!(p.on_request(&mut req), Flow::Continue));
        }
        let per = started.elapsed() / n;
        eprintln!("policy with 100 rules: {per:?} per request");
        // Debug builds are slow; the bound only catches something pathological.
        assert!(
            per < std::time::Duration::from_millis(5),
            "{per:?} per request"
        );
    }
}
