//! Risk tiers: a route's `tier` label names the controls its effective
//! plugins must include, and a route lacking any of them is refused by every
//! source (the file, the Admin API, etcd, `portcullis validate`), with a
//! message listing what is missing. docs/risk-tiers.md is the matrix for
//! people; keep the two in step.
//!
//! The effective plugins are the ones that run for every request on the
//! route: the service's, then the plugin_config's, then the route's own (by
//! name, later wins, as the snapshot merges them), plus every global rule.
//! Consumer-group plugins do not count: they apply only to the consumers of
//! that group, so they cannot guarantee a control for every caller. A plugin
//! disabled with `_meta.disable` or running in `_meta.dry_run` does not
//! count either: it does not enforce. An auth plugin with an
//! `anonymous_consumer` lets unauthenticated callers in, so it does not
//! count as authentication.
//!
//! The check runs inside the snapshot build, on the cache-miss path of a
//! route: its inputs (the route, its service and plugin_config, the global
//! rules) are exactly what the route's fingerprint covers.

use std::collections::{BTreeMap, HashMap};

use portcullis_core::ConfigError;
use serde_json::Value;

use crate::model;
use crate::raw::RawResource;

/// The route label that names the tier.
pub const TIER_LABEL: &str = "tier";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    LowRiskReadApi,
    CustomerDataApi,
    PaymentOrAdminApi,
}

impl Tier {
    pub const ALL: [Tier; 3] = [
        Tier::LowRiskReadApi,
        Tier::CustomerDataApi,
        Tier::PaymentOrAdminApi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::LowRiskReadApi => "low_risk_read_api",
            Tier::CustomerDataApi => "customer_data_api",
            Tier::PaymentOrAdminApi => "payment_or_admin_api",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// What this tier requires, in the order the message lists it.
    pub fn requires(self) -> &'static [Control] {
        match self {
            Tier::LowRiskReadApi => &[Control::Authentication, Control::RateLimit],
            Tier::CustomerDataApi => &[
                Control::Authentication,
                Control::Authorization,
                Control::RateLimit,
                Control::RequestValidation,
            ],
            Tier::PaymentOrAdminApi => &[
                Control::StrongAuthentication,
                Control::AllowList,
                Control::RateLimit,
                Control::RequestValidation,
            ],
        }
    }
}

/// The top tier: writes touching it need a second admin's approval.
pub const TOP_TIER: Tier = Tier::PaymentOrAdminApi;

pub const AUTH_PLUGINS: &[&str] = &[
    "key-auth",
    "basic-auth",
    "jwt-auth",
    "openid-connect",
    "mtls-auth",
];
pub const STRONG_AUTH_PLUGINS: &[&str] = &["jwt-auth", "openid-connect", "mtls-auth"];
pub const AUTHZ_PLUGINS: &[&str] = &["consumer-restriction", "policy"];
pub const LIMIT_PLUGINS: &[&str] = &["limit-req", "limit-count", "limit-conn"];
pub const VALIDATION_PLUGINS: &[&str] = &["request-validation"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Authentication,
    StrongAuthentication,
    Authorization,
    /// An authorization plugin that names who may call: consumer-restriction
    /// with a `whitelist`, or a `policy` (Cedar denies what no policy
    /// permits).
    AllowList,
    RateLimit,
    RequestValidation,
}

impl Control {
    /// How the refusal names the missing control.
    pub fn describe(self) -> &'static str {
        match self {
            Control::Authentication => {
                "authentication (one of key-auth, basic-auth, jwt-auth, openid-connect, mtls-auth)"
            }
            Control::StrongAuthentication => {
                "strong authentication (one of jwt-auth, openid-connect, mtls-auth; key-auth and basic-auth are not enough)"
            }
            Control::Authorization => "authorization (consumer-restriction or policy)",
            Control::AllowList => {
                "an explicit allow-list (consumer-restriction with a whitelist, or policy)"
            }
            Control::RateLimit => "a rate limit (one of limit-req, limit-count, limit-conn)",
            Control::RequestValidation => "request validation (request-validation)",
        }
    }

    fn satisfied_by(self, name: &str, conf: &Value) -> bool {
        match self {
            Control::Authentication => {
                AUTH_PLUGINS.contains(&name) && conf.get("anonymous_consumer").is_none()
            }
            Control::StrongAuthentication => {
                STRONG_AUTH_PLUGINS.contains(&name) && conf.get("anonymous_consumer").is_none()
            }
            Control::Authorization => AUTHZ_PLUGINS.contains(&name),
            Control::AllowList => match name {
                "policy" => true,
                "consumer-restriction" => conf
                    .get("whitelist")
                    .and_then(Value::as_array)
                    .is_some_and(|l| !l.is_empty()),
                _ => false,
            },
            Control::RateLimit => LIMIT_PLUGINS.contains(&name),
            Control::RequestValidation => VALIDATION_PLUGINS.contains(&name),
        }
    }
}

/// `_meta.disable` / `_meta.dry_run`: such a plugin does not enforce.
fn meta_flag(conf: &Value, flag: &str) -> bool {
    conf.get("_meta")
        .and_then(|m| m.get(flag))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The tier a route's labels name: `Ok(None)` without a `tier` label, an
/// error naming the label for an unknown value.
pub fn tier_of(labels: &BTreeMap<String, String>) -> Result<Option<Tier>, ConfigError> {
    let Some(value) = labels.get(TIER_LABEL) else {
        return Ok(None);
    };
    Tier::parse(value).map(Some).ok_or_else(|| {
        ConfigError::new(
            format!("labels.{TIER_LABEL}"),
            format!(
                "unknown tier \"{value}\" (expected one of {})",
                Tier::ALL.map(Tier::as_str).join(", ")
            ),
        )
    })
}

/// The tier named by a raw route value (for the Admin API's dual control);
/// `None` without a label or with an unknown one.
pub fn tier_of_value(route: &Value) -> Option<Tier> {
    route
        .get("labels")?
        .get(TIER_LABEL)?
        .as_str()
        .and_then(Tier::parse)
}

/// Check one plugin set against a tier: the controls it lacks, and the
/// plugins that would have provided one but are in dry-run or disabled.
pub fn missing<'a>(
    tier: Tier,
    plugins: impl IntoIterator<Item = (&'a str, &'a Value)> + Clone,
) -> (Vec<Control>, Vec<String>) {
    let mut lacking = Vec::new();
    let mut inactive = Vec::new();
    for &control in tier.requires() {
        let mut present = false;
        for (name, conf) in plugins.clone() {
            if !control.satisfied_by(name, conf) {
                continue;
            }
            if meta_flag(conf, "disable") {
                inactive.push(format!("{name} is disabled"));
            } else if meta_flag(conf, "dry_run") {
                inactive.push(format!("{name} is in dry-run"));
            } else {
                present = true;
            }
        }
        if !present {
            lacking.push(control);
        }
    }
    inactive.sort();
    inactive.dedup();
    (lacking, inactive)
}

/// Refuse a route whose effective plugins lack its tier's controls. Called
/// by the snapshot build for every route it compiles.
pub fn check_route(
    route: &model::Route,
    services: &HashMap<&str, (&RawResource, &model::Service)>,
    plugin_configs: &HashMap<&str, &model::PluginSet>,
    global_rules: &[(&RawResource, model::PluginSet)],
) -> Result<(), Vec<ConfigError>> {
    let tier = match tier_of(&route.labels) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(()),
        Err(e) => return Err(vec![e]),
    };
    // The same precedence as the snapshot's merge: service < plugin_config < route.
    let mut merged: BTreeMap<&str, &Value> = BTreeMap::new();
    if let Some((_, s)) = route
        .service_id
        .as_ref()
        .and_then(|id| services.get(id.0.as_str()))
    {
        merged.extend(s.plugins.iter().map(|(k, v)| (k.as_str(), v)));
    }
    if let Some(pc) = route
        .plugin_config_id
        .as_ref()
        .and_then(|id| plugin_configs.get(id.0.as_str()))
    {
        merged.extend(pc.plugins.iter().map(|(k, v)| (k.as_str(), v)));
    }
    merged.extend(route.plugins.iter().map(|(k, v)| (k.as_str(), v)));
    let effective = merged.iter().map(|(k, v)| (*k, *v)).chain(
        global_rules
            .iter()
            .flat_map(|(_, g)| g.plugins.iter().map(|(k, v)| (k.as_str(), v))),
    );
    let (lacking, inactive) = missing(tier, effective);
    if lacking.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "tier {} requires controls this route's effective plugins (service, plugin_config, route and global rules) lack: {}",
        tier.as_str(),
        lacking
            .iter()
            .map(|c| c.describe())
            .collect::<Vec<_>>()
            .join("; ")
    );
    if !inactive.is_empty() {
        message.push_str(&format!(
            " (not counted because they do not enforce: {})",
            inactive.join(", ")
        ));
    }
    Err(vec![ConfigError::new(
        format!("labels.{TIER_LABEL}"),
        message,
    )])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lacking(tier: Tier, plugins: Value) -> Vec<Control> {
        let map = plugins.as_object().unwrap();
        missing(tier, map.iter().map(|(k, v)| (k.as_str(), v))).0
    }

    #[test]
    fn low_risk_reads_need_authentication_and_a_rate_limit() {
        assert_eq!(
            lacking(Tier::LowRiskReadApi, json!({})),
            vec![Control::Authentication, Control::RateLimit]
        );
        assert!(lacking(
            Tier::LowRiskReadApi,
            json!({"key-auth": {}, "limit-count": {"count": 1, "time_window": 1}})
        )
        .is_empty());
    }

    #[test]
    fn customer_data_needs_authorization_and_validation_too() {
        assert_eq!(
            lacking(
                Tier::CustomerDataApi,
                json!({"key-auth": {}, "limit-req": {}})
            ),
            vec![Control::Authorization, Control::RequestValidation]
        );
        assert!(lacking(
            Tier::CustomerDataApi,
            json!({"basic-auth": {}, "limit-req": {}, "consumer-restriction": {"blacklist": ["x"]}, "request-validation": {}})
        )
        .is_empty());
    }

    #[test]
    fn the_top_tier_wants_strong_auth_and_an_allow_list() {
        let base = json!({"key-auth": {}, "limit-req": {}, "request-validation": {},
            "consumer-restriction": {"blacklist": ["x"]}});
        assert_eq!(
            lacking(Tier::PaymentOrAdminApi, base),
            vec![Control::StrongAuthentication, Control::AllowList]
        );
        assert!(lacking(
            Tier::PaymentOrAdminApi,
            json!({"jwt-auth": {}, "limit-req": {}, "request-validation": {},
                "consumer-restriction": {"whitelist": ["x"]}})
        )
        .is_empty());
        assert!(lacking(
            Tier::PaymentOrAdminApi,
            json!({"jwt-auth": {}, "limit-req": {}, "request-validation": {}, "policy": {}})
        )
        .is_empty());
    }

    #[test]
    fn dry_run_disabled_and_anonymous_plugins_do_not_count() {
        let (lack, inactive) = {
            let p = json!({"key-auth": {"anonymous_consumer": "guest"},
                "limit-count": {"_meta": {"dry_run": true}}});
            let map = p.as_object().unwrap().clone();
            let (l, i) = missing(
                Tier::LowRiskReadApi,
                map.iter().map(|(k, v)| (k.as_str(), v)),
            );
            (l, i)
        };
        assert_eq!(lack, vec![Control::Authentication, Control::RateLimit]);
        assert_eq!(inactive, vec!["limit-count is in dry-run".to_string()]);
        assert_eq!(
            lacking(
                Tier::LowRiskReadApi,
                json!({"key-auth": {}, "limit-req": {"_meta": {"disable": true}}})
            ),
            vec![Control::RateLimit]
        );
    }

    #[test]
    fn an_unknown_tier_is_an_error_naming_the_label() {
        let labels = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
        let e = tier_of(&labels).unwrap_err();
        assert_eq!(e.field, "labels.tier");
        assert!(e.message.contains("unknown tier \"gold\""));
        assert_eq!(tier_of(&BTreeMap::new()).unwrap(), None);
    }
}
