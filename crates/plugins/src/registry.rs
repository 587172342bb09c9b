//! The explicit list of plugins portcullis knows, and the one function that
//! turns a plugin's config into an instance. `_meta` (APISIX's per-plugin
//! settings: `disable`, and portcullis's `dry_run`) is handled here once, so
//! no plugin repeats it.

use std::sync::Arc;

use portcullis_core::{ConfigError, Phase, Plugin};
use serde_json::Value;

use crate::context::BuildContext;
use crate::dry_run::DryRun;

/// Builds a plugin instance from its (already `_meta`-free) config.
pub type BuildFn = fn(&Value, &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError>;
/// Checks an auth plugin's config on a consumer or credential.
pub type ConsumerConfFn = fn(&Value) -> Result<crate::consumers::CredentialConf, ConfigError>;

/// What the registry knows about one plugin.
pub struct PluginSpec {
    pub name: &'static str,
    pub phase: Phase,
    /// APISIX's priority, so the order within a phase matches APISIX.
    pub priority: i32,
    /// Whether `_meta.dry_run` makes sense: only plugins that can reject.
    pub enforcing: bool,
    pub build: BuildFn,
    /// Auth plugins: check the plugin's config on a consumer or credential
    /// and return the key it is looked up by.
    pub consumer_conf: Option<ConsumerConfFn>,
    /// JSON schema served by `/apisix/admin/plugins/{name}`.
    pub schema: fn() -> Value,
}

/// Every plugin, by name. Keep sorted by name.
pub static REGISTRY: &[PluginSpec] = &[
    crate::basic_auth::SPEC,
    crate::consumer_restriction::SPEC,
    crate::cors::SPEC,
    crate::file_logger::SPEC,
    crate::http_logger::SPEC,
    crate::ip_restriction::SPEC,
    crate::jwt_auth::SPEC,
    crate::key_auth::SPEC,
    crate::limit_conn::SPEC,
    crate::limit_count::SPEC,
    crate::limit_req::SPEC,
    crate::mocking::SPEC,
    crate::mtls_auth::SPEC,
    crate::openid_connect::SPEC,
    crate::policy::SPEC,
    crate::prometheus::SPEC,
    crate::proxy_rewrite::SPEC,
    crate::real_ip::SPEC,
    crate::redirect::SPEC,
    crate::request_id::SPEC,
    crate::request_validation::SPEC,
    crate::response_rewrite::SPEC,
    crate::syslog::SPEC,
];

pub fn plugin_spec(name: &str) -> Option<&'static PluginSpec> {
    REGISTRY.iter().find(|s| s.name == name)
}

pub fn plugin_names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|s| s.name)
}

pub fn plugin_schema(name: &str) -> Option<Value> {
    plugin_spec(name).map(|s| (s.schema)())
}

/// Build one plugin instance. `Ok(None)`: the plugin is disabled by
/// `_meta.disable`. Errors name the field inside the plugin's config and are
/// worded as APISIX words them (`unknown plugin [x]`).
pub fn build_plugin(
    name: &str,
    conf: &Value,
    ctx: &BuildContext,
) -> Result<Option<Arc<dyn Plugin>>, ConfigError> {
    let spec = plugin_spec(name)
        .ok_or_else(|| ConfigError::new(name, format!("unknown plugin [{name}]")))?;
    let (conf, meta) = split_meta(conf).map_err(|e| e.under(name))?;
    if meta.disable {
        return Ok(None);
    }
    if meta.dry_run && !spec.enforcing {
        return Err(ConfigError::new(
            "_meta.dry_run",
            format!("{name} never rejects a request, so it has no dry-run mode"),
        )
        .under(name));
    }
    let plugin = (spec.build)(&conf, ctx).map_err(|e| {
        ConfigError::new(
            e.field.clone(),
            format!(
                "failed to check the configuration of plugin {name} err: {}",
                e.message
            ),
        )
        .under(name)
    })?;
    Ok(Some(if meta.dry_run {
        Arc::new(DryRun::new(plugin))
    } else {
        plugin
    }))
}

#[derive(Default)]
struct Meta {
    disable: bool,
    dry_run: bool,
}

/// Separate `_meta` from the plugin's own settings.
fn split_meta(conf: &Value) -> Result<(std::borrow::Cow<'_, Value>, Meta), ConfigError> {
    // Most configs have no `_meta`: hand them on without a copy.
    if matches!(conf, Value::Object(m) if !m.contains_key("_meta")) {
        return Ok((std::borrow::Cow::Borrowed(conf), Meta::default()));
    }
    let mut conf = match conf {
        Value::Object(m) => m.clone(),
        Value::Null => serde_json::Map::new(),
        _ => return Err(ConfigError::new("", "expected an object")),
    };
    let mut meta = Meta::default();
    if let Some(m) = conf.remove("_meta") {
        let Value::Object(m) = m else {
            return Err(ConfigError::new("_meta", "expected an object"));
        };
        for (k, v) in m {
            match (k.as_str(), v) {
                ("disable", Value::Bool(b)) => meta.disable = b,
                ("dry_run", Value::Bool(b)) => meta.dry_run = b,
                // APISIX's other _meta fields are accepted and not acted on.
                ("error_response" | "priority" | "filter" | "pre_function", _) => {}
                ("disable" | "dry_run", _) => {
                    return Err(ConfigError::new(format!("_meta.{k}"), "expected a boolean"))
                }
                (other, _) => {
                    return Err(ConfigError::new(format!("_meta.{other}"), "unknown field"))
                }
            }
        }
    }
    Ok((std::borrow::Cow::Owned(Value::Object(conf)), meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;

    fn ctx_build(name: &str, conf: Value) -> Result<Option<Arc<dyn Plugin>>, ConfigError> {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        build_plugin(name, &conf, &ctx)
    }

    #[test]
    fn unknown_plugin_is_refused_in_apisix_words() {
        let err = ctx_build("no-such-plugin", serde_json::json!({}))
            .err()
            .unwrap();
        assert_eq!(err.message, "unknown plugin [no-such-plugin]");
    }

    #[test]
    fn meta_disable_builds_nothing() {
        let built = ctx_build(
            "request-id",
            serde_json::json!({"_meta": {"disable": true}}),
        )
        .unwrap();
        assert!(built.is_none());
    }

    #[test]
    fn registry_is_sorted_and_unique() {
        let names: Vec<_> = plugin_names().collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
