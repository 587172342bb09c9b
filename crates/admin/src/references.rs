//! What may not be deleted while something still uses it, worded as APISIX
//! words the refusal (`can not delete this upstream, route [1] is still
//! using it now`).

use portcullis_config::{Kind, RawConfig};
use serde_json::Value;

/// An id as written: APISIX accepts strings and integers alike.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first resource of `config` that still refers to `kind`/`id`, as the
/// message to refuse the deletion with.
pub fn still_used(config: &RawConfig, kind: Kind, id: &str) -> Option<String> {
    let users = |of: Kind, field: &str| {
        config
            .of(of)
            .iter()
            .find(|r| id_of(r.value.get(field)).as_deref() == Some(id))
            .map(|r| r.id.clone())
    };
    match kind {
        Kind::Upstreams => {
            if let Some(route) = users(Kind::Routes, "upstream_id") {
                return Some(format!(
                    "can not delete this upstream, route [{route}] is still using it now"
                ));
            }
            users(Kind::Services, "upstream_id").map(|service| {
                format!("can not delete this upstream, service [{service}] is still using it now")
            })
        }
        Kind::Services => users(Kind::Routes, "service_id").map(|route| {
            format!("can not delete this service directly, route [{route}] is still using it now")
        }),
        Kind::PluginConfigs => users(Kind::Routes, "plugin_config_id").map(|route| {
            format!("can not delete this plugin config, route [{route}] is still using it now")
        }),
        Kind::ConsumerGroups => users(Kind::Consumers, "group_id").map(|consumer| {
            format!(
                "can not delete this consumer group, consumer [{consumer}] is still using it now"
            )
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::RawResource;
    use serde_json::json;

    fn config() -> RawConfig {
        let mut c = RawConfig::default();
        let mut add = |kind, id: &str, value: serde_json::Value| {
            c.push(
                kind,
                RawResource {
                    id: id.into(),
                    value: value.into(),
                    origin: id.into(),
                },
            )
        };
        add(
            Kind::Routes,
            "1",
            json!({"upstream_id": 7, "service_id": "s"}),
        );
        add(Kind::Services, "s", json!({"upstream_id": "u2"}));
        add(Kind::Consumers, "jack", json!({"group_id": "g"}));
        c
    }

    #[test]
    fn names_the_route_that_uses_an_upstream_even_by_integer_id() {
        assert_eq!(
            still_used(&config(), Kind::Upstreams, "7").unwrap(),
            "can not delete this upstream, route [1] is still using it now"
        );
    }

    #[test]
    fn names_services_and_consumers_too() {
        let c = config();
        assert!(still_used(&c, Kind::Upstreams, "u2")
            .unwrap()
            .contains("service [s]"));
        assert!(still_used(&c, Kind::Services, "s")
            .unwrap()
            .contains("route [1]"));
        assert!(still_used(&c, Kind::ConsumerGroups, "g")
            .unwrap()
            .contains("consumer [jack]"));
        assert!(still_used(&c, Kind::Upstreams, "unused").is_none());
    }
}
