//! The config file: YAML with `${ENV}` substitution, a `gateway:` section of
//! node settings, and APISIX standalone resource sections.

use std::path::Path;

use portcullis_core::ConfigError;
use serde_json::Value;

use crate::raw::{Kind, RawConfig, RawResource};
use crate::settings::GatewaySettings;

/// What a config file holds, before the resources are validated.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub gateway: GatewaySettings,
    pub resources: RawConfig,
    /// Whether the file has any resource section at all (even an empty one):
    /// it decides the default config source.
    pub has_resource_sections: bool,
}

/// The file's top-level resource sections, in APISIX's standalone names,
/// in the order a reader expects them (what routes point at follows them);
/// export writes them in this order too.
pub const SECTIONS: [(&str, Kind); 9] = [
    ("routes", Kind::Routes),
    ("services", Kind::Services),
    ("upstreams", Kind::Upstreams),
    ("consumers", Kind::Consumers),
    ("consumer_groups", Kind::ConsumerGroups),
    ("plugin_configs", Kind::PluginConfigs),
    ("global_rules", Kind::GlobalRules),
    ("ssls", Kind::Ssls),
    ("plugin_metadata", Kind::PluginMetadata),
];

pub fn read(path: &Path) -> Result<ConfigFile, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<ConfigFile, Vec<ConfigError>> {
    let text = substitute_env(text, &|name| std::env::var(name).ok())?;
    let doc: Value = serde_norway::from_str(&text)
        .map_err(|e| vec![ConfigError::new("", format!("not valid YAML: {e}"))])?;
    let doc = match doc {
        Value::Object(map) => map,
        Value::Null => serde_json::Map::new(),
        _ => {
            return Err(vec![ConfigError::new(
                "",
                "expected a mapping at the top level",
            )])
        }
    };

    let mut errors = Vec::new();
    let mut gateway = GatewaySettings::default();
    let mut resources = RawConfig::default();
    let mut has_resource_sections = false;

    for (key, value) in doc {
        if key == "gateway" {
            match serde_path_to_error::deserialize::<_, GatewaySettings>(value) {
                Ok(g) => {
                    if let Err(msg) = g.telemetry.validate() {
                        errors.push(ConfigError::new("telemetry", msg).in_resource("gateway"));
                    }
                    if let Err(msg) = g.audit.validate() {
                        errors.push(ConfigError::new("audit", msg).in_resource("gateway"));
                    }
                    if let Err(msg) = g.anomaly.validate() {
                        errors.push(ConfigError::new("anomaly", msg).in_resource("gateway"));
                    }
                    gateway = g;
                }
                Err(e) => errors.push(
                    ConfigError::new(e.path().to_string(), e.inner().to_string())
                        .in_resource("gateway"),
                ),
            }
            continue;
        }
        let Some(&(_, kind)) = SECTIONS.iter().find(|(name, _)| *name == key) else {
            errors.push(ConfigError::new(
                key.clone(),
                "unknown section (expected gateway, routes, services, upstreams, consumers, consumer_groups, plugin_configs, global_rules, ssls or plugin_metadata)",
            ));
            continue;
        };
        has_resource_sections = true;
        let items = match value {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            _ => {
                errors.push(ConfigError::new(key.clone(), "expected a list"));
                continue;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let origin = format!("{key}[{i}]");
            match resource_id(kind, &item) {
                Ok((kind, id)) => resources.push(
                    kind,
                    RawResource {
                        id,
                        value: std::sync::Arc::new(item),
                        origin,
                    },
                ),
                Err(msg) => errors.push(ConfigError::new("", msg).in_resource(origin)),
            }
        }
    }

    if errors.is_empty() {
        Ok(ConfigFile {
            gateway,
            resources,
            has_resource_sections,
        })
    } else {
        Err(errors)
    }
}

/// The id a file resource is known by. Consumers are named by `username`;
/// a consumer entry whose id is `user/credentials/x` is a credential, as in
/// APISIX's standalone mode; plugin_metadata is keyed by plugin name.
fn resource_id(kind: Kind, item: &Value) -> Result<(Kind, String), String> {
    let field = |name: &str| -> Option<String> {
        match item.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    match kind {
        Kind::Consumers => {
            if let Some(id) = field("id") {
                if let Some((user, cred)) = id.split_once("/credentials/") {
                    return Ok((Kind::Credentials, format!("{user}/{cred}")));
                }
            }
            field("username")
                .map(|u| (Kind::Consumers, u))
                .ok_or_else(|| "username: required".to_string())
        }
        Kind::PluginMetadata => field("id")
            .map(|id| (kind, id))
            .ok_or_else(|| "id: required (the plugin name)".to_string()),
        _ => field("id")
            .map(|id| (kind, id))
            .ok_or_else(|| "id: required in a config file".to_string()),
    }
}

/// Replace `${NAME}`, `${{NAME}}` and `${NAME:=default}` with the
/// environment's value. An unset variable without default is an error naming
/// it and its line. Comment lines are left alone.
pub fn substitute_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let (inner, consumed) = if let Some(body) = after.strip_prefix('{') {
                match body.find("}}") {
                    Some(end) => (&body[..end], end + 3),
                    None => {
                        out.push_str("${");
                        rest = after;
                        continue;
                    }
                }
            } else {
                match after.find('}') {
                    Some(end) => (&after[..end], end + 1),
                    None => {
                        out.push_str("${");
                        rest = after;
                        continue;
                    }
                }
            };
            let (name, default) = match inner.split_once(":=") {
                Some((n, d)) => (n.trim(), Some(d)),
                None => (inner.trim(), None),
            };
            match lookup(name).or_else(|| default.map(str::to_string)) {
                Some(v) => out.push_str(&v),
                None => errors.push(ConfigError::new(
                    format!("line {}", lineno + 1),
                    format!("environment variable {name} is not set and has no default"),
                )),
            }
            rest = &after[consumed..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "s3cret".to_string())
    }

    #[test]
    fn substitutes_both_apisix_forms_and_defaults() {
        let out = substitute_env("a: ${KEY}\nb: ${{KEY}}\nc: ${NOPE:=x}\n", &env).unwrap();
        assert_eq!(out, "a: s3cret\nb: s3cret\nc: x\n");
    }

    #[test]
    fn unset_variable_is_an_error_naming_it_and_its_line() {
        let err = substitute_env("a: 1\nb: ${MISSING}\n", &env).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "line 2: environment variable MISSING is not set and has no default"
        );
    }

    #[test]
    fn comment_lines_are_not_substituted() {
        assert_eq!(
            substitute_env("# ${MISSING}\n", &env).unwrap(),
            "# ${MISSING}\n"
        );
    }

    #[test]
    fn resources_keep_their_file_position_as_origin() {
        let f = parse("routes:\n  - id: r1\n    uri: /a\n  - id: r2\n    uri: /b\n").unwrap();
        assert_eq!(f.resources.of(Kind::Routes)[1].origin, "routes[1]");
        assert!(f.has_resource_sections);
    }

    #[test]
    fn unknown_section_and_missing_id_are_reported_together() {
        let errs = parse("rootes: []\nroutes:\n  - uri: /a\n").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].to_string().starts_with("rootes: unknown section"));
        assert_eq!(
            errs[1].to_string(),
            "routes[0]: id: required in a config file"
        );
    }

    #[test]
    fn credentials_in_consumers_section_are_split_out() {
        let f = parse(
            "consumers:\n  - username: jack\n  - id: jack/credentials/c1\n    plugins: {key-auth: {key: k}}\n",
        )
        .unwrap();
        assert_eq!(f.resources.of(Kind::Credentials)[0].id, "jack/c1");
    }
}
