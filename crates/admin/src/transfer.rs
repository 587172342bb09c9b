//! Moving a store's resources to and from a config file, for the CLI
//! (`portcullis export` / `portcullis import`). The file uses APISIX's
//! standalone sections, which `portcullis_config::file::parse` reads back:
//! consumers by username, credentials as consumers entries with id
//! `user/credentials/cid`.

use portcullis_config::{Kind, Live, RawConfig};
use portcullis_core::ConfigError;
use portcullis_store::{ChangeMeta, Store, StoreError};
use serde_json::{Map, Value};

/// Every resource in the store as config file YAML. API keys and basic-auth
/// passwords are already digests in the store; other secrets (jwt-auth HMAC
/// secrets, TLS keys) are written as stored, since the file is a backup that
/// must restore working credentials: treat it like the database itself. ttl is not kept: exported resources
/// are permanent.
pub fn export_yaml(store: &Store) -> Result<String, StoreError> {
    let all = store.all()?;
    let mut doc = Map::new();
    for (section, kind) in portcullis_config::file::SECTIONS {
        let mut items: Vec<Value> = all
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| file_value(r.kind, &r.id, &r.value))
            .collect();
        if kind == Kind::Consumers {
            items.extend(
                all.iter()
                    .filter(|r| r.kind == Kind::Credentials)
                    .map(|r| file_value(r.kind, &r.id, &r.value)),
            );
        }
        if !items.is_empty() {
            doc.insert(section.to_string(), Value::Array(items));
        }
    }
    Ok(serde_norway::to_string(&Value::Object(doc)).unwrap_or_default())
}

/// A stored value as the file spells it: with its id, without the store's
/// timestamps.
fn file_value(kind: Kind, id: &str, value: &Value) -> Value {
    let mut v = value.clone();
    if let Value::Object(obj) = &mut v {
        obj.remove("create_time");
        obj.remove("update_time");
        match kind {
            Kind::Consumers => {}
            Kind::Credentials => {
                let file_id = match id.split_once('/') {
                    Some((user, cred)) => format!("{user}/credentials/{cred}"),
                    None => id.to_string(),
                };
                obj.insert("id".into(), Value::String(file_id));
            }
            _ => {
                obj.insert("id".into(), Value::String(id.to_string()));
            }
        }
    }
    v
}

#[derive(Debug)]
pub enum ImportError {
    /// The store plus the imported resources is not a valid configuration;
    /// nothing was written.
    Invalid(Vec<ConfigError>),
    Store(StoreError),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Invalid(errors) => {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                write!(f, "{}", lines.join("\n"))
            }
            ImportError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ImportError {}

impl From<StoreError> for ImportError {
    fn from(e: StoreError) -> Self {
        ImportError::Store(e)
    }
}

/// Add (or replace) every resource of `raw` in the store, in one
/// transaction, after checking that the result is a valid configuration.
/// Resources already stored and not in `raw` are kept. Returns how many
/// were written. A running gateway picks them up on its next apply; the
/// CLI is expected to run it against a stopped node or restart it.
pub fn import(store: &Store, raw: RawConfig) -> Result<usize, ImportError> {
    let mut candidate = store.load_raw()?;
    let mut items = Vec::new();
    for kind in Kind::ALL {
        for r in raw.of(kind) {
            let mut value = Value::clone(&r.value);
            crate::resources::seal(kind, &mut value);
            if let Value::Object(obj) = &mut value {
                obj.remove("create_time");
                obj.remove("update_time");
                match kind {
                    Kind::Consumers => {}
                    Kind::Credentials => {
                        let own = r.id.split_once('/').map(|(_, c)| c).unwrap_or(&r.id);
                        obj.insert("id".into(), Value::String(own.to_string()));
                    }
                    _ => {
                        obj.insert("id".into(), Value::String(r.id.clone()));
                    }
                }
            }
            let mut stored = r.clone();
            stored.value = value.clone().into();
            stored.origin = format!("{}/{}", kind.as_str(), r.id);
            candidate.upsert(kind, stored);
            items.push((kind, r.id.clone(), value));
        }
    }
    Live::default()
        .check(candidate)
        .map_err(ImportError::Invalid)?;
    let n = items.len();
    store.put_all(items, &ChangeMeta::new("import", "", "IMPORT"))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_reads_back_as_the_same_resources() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let file = "upstreams:\n  - id: u1\n    nodes: {\"127.0.0.1:8080\": 1}\nroutes:\n  - id: r1\n    uri: /a\n    upstream_id: u1\nconsumers:\n  - username: jack\n  - id: jack/credentials/c1\n    plugins: {}\n";
        let parsed = portcullis_config::file::parse(file).unwrap();
        assert_eq!(import(&store, parsed.resources).unwrap(), 4);
        assert_eq!(
            store
                .get(Kind::Credentials, "jack/c1")
                .unwrap()
                .unwrap()
                .value["id"],
            "c1"
        );

        let yaml = export_yaml(&store).unwrap();
        let again = portcullis_config::file::parse(&yaml).unwrap().resources;
        assert_eq!(again.of(Kind::Routes)[0].id, "r1");
        assert_eq!(again.of(Kind::Routes)[0].value["upstream_id"], "u1");
        assert_eq!(again.of(Kind::Credentials)[0].id, "jack/c1");
        assert_eq!(again.of(Kind::Consumers)[0].id, "jack");
        assert!(!yaml.contains("create_time"));
    }

    #[test]
    fn an_invalid_import_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let parsed = portcullis_config::file::parse(
            "routes:\n  - id: r1\n    uri: /a\n    upstream_id: missing\n",
        )
        .unwrap();
        assert!(matches!(
            import(&store, parsed.resources),
            Err(ImportError::Invalid(_))
        ));
        assert!(store.all().unwrap().is_empty());
    }
}
