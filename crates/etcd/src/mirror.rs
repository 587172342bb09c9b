//! What this node knows of etcd: every resource under the prefix, with its
//! revisions, and the active quarantines, as of one etcd revision. The sync
//! loop is its only writer; the Admin API reads it.

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis_config::{Kind, RawConfig, RawResource};
use serde_json::Value;

use crate::cache::{CachedConfig, CachedEntry};
use crate::keys;

/// One resource as etcd holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub id: String,
    pub value: Arc<Value>,
    /// etcd's `create_revision`: APISIX's `createdIndex`.
    pub create_revision: i64,
    /// etcd's `mod_revision`: APISIX's `modifiedIndex`.
    pub mod_revision: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Mirror {
    /// Resources by etcd key.
    pub entries: BTreeMap<String, Entry>,
    /// Keys that name a resource but whose value is not JSON: the whole
    /// config is refused while one is there, as a file with a syntax error
    /// would be.
    pub invalid: BTreeMap<String, String>,
    /// The etcd revision everything here is current at.
    pub revision: i64,
    /// `mod_revision` of `{prefix}/gen_id`, which every portcullis write
    /// bumps: a write is made only if nobody else wrote in between.
    pub guard: i64,
    /// Quarantines by id (`{prefix}/portcullis/quarantines/{id}`), as stored.
    pub quarantines: BTreeMap<String, Stored>,
}

/// A value of portcullis's own that a node follows (a quarantine).
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Value,
    pub mod_revision: i64,
}

impl Mirror {
    /// Note a put; whether a resource changed.
    pub fn put(
        &mut self,
        prefix: &str,
        key: &str,
        value: &[u8],
        create: i64,
        modified: i64,
    ) -> bool {
        if key == keys::gen_id_key(prefix) {
            self.guard = modified;
            return false;
        }
        let Some((kind, id)) = keys::parse_key(prefix, key) else {
            return false;
        };
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.mod_revision == modified)
        {
            return false;
        }
        match serde_json::from_slice::<Value>(value) {
            Ok(v) => {
                self.invalid.remove(key);
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        kind,
                        id,
                        value: Arc::new(v),
                        create_revision: create,
                        mod_revision: modified,
                    },
                );
            }
            Err(e) => {
                self.entries.remove(key);
                self.invalid
                    .insert(key.to_string(), format!("value is not JSON: {e}"));
            }
        }
        true
    }

    /// Note a delete; whether a resource changed.
    pub fn delete(&mut self, prefix: &str, key: &str) -> bool {
        if key == keys::gen_id_key(prefix) {
            self.guard = 0;
            return false;
        }
        let a = self.entries.remove(key).is_some();
        let b = self.invalid.remove(key).is_some();
        a || b
    }

    /// The configuration to validate and serve; the refusal's messages when
    /// a value is not JSON.
    pub fn raw(&self) -> Result<RawConfig, Vec<String>> {
        if !self.invalid.is_empty() {
            return Err(self
                .invalid
                .iter()
                .map(|(k, why)| format!("{k}: {why}"))
                .collect());
        }
        let mut raw = RawConfig::default();
        for e in self.entries.values() {
            raw.push(
                e.kind,
                RawResource {
                    id: e.id.clone(),
                    value: e.value.clone(),
                    origin: format!("{}/{}", e.kind.as_str(), e.id),
                },
            );
        }
        Ok(raw)
    }

    /// Note a put of a quarantine key; the stored value when it changed
    /// (`None`: unchanged, or not JSON, which is logged and ignored).
    pub fn put_quarantine(&mut self, id: &str, value: &[u8], modified: i64) -> Option<Value> {
        if self
            .quarantines
            .get(id)
            .is_some_and(|q| q.mod_revision == modified)
        {
            return None;
        }
        match serde_json::from_slice::<Value>(value) {
            Ok(v) => {
                self.quarantines.insert(
                    id.to_string(),
                    Stored {
                        value: v.clone(),
                        mod_revision: modified,
                    },
                );
                Some(v)
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "a quarantine in etcd is not JSON; ignored");
                None
            }
        }
    }

    pub fn to_cache(&self, prefix: &str, contact_at_ms: u64) -> CachedConfig {
        let quarantines = self.quarantines.iter().map(|(id, q)| CachedEntry {
            key: keys::quarantine_key(prefix, id),
            value: q.value.clone(),
            create_revision: q.mod_revision,
            mod_revision: q.mod_revision,
        });
        CachedConfig {
            format: 1,
            prefix: prefix.to_string(),
            revision: self.revision,
            contact_at_ms,
            entries: self
                .entries
                .iter()
                .map(|(key, e)| CachedEntry {
                    key: key.clone(),
                    value: Value::clone(&e.value),
                    create_revision: e.create_revision,
                    mod_revision: e.mod_revision,
                })
                .chain(quarantines)
                .collect(),
        }
    }

    pub fn from_cache(prefix: &str, cached: CachedConfig) -> Mirror {
        let mut m = Mirror {
            revision: cached.revision,
            ..Mirror::default()
        };
        for e in cached.entries {
            if let Some(id) = keys::parse_quarantine_key(prefix, &e.key) {
                m.quarantines.insert(
                    id.to_string(),
                    Stored {
                        value: e.value,
                        mod_revision: e.mod_revision,
                    },
                );
                continue;
            }
            if let Some((kind, id)) = keys::parse_key(prefix, &e.key) {
                m.entries.insert(
                    e.key,
                    Entry {
                        kind,
                        id,
                        value: Arc::new(e.value),
                        create_revision: e.create_revision,
                        mod_revision: e.mod_revision,
                    },
                );
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_and_deletes_make_the_config() {
        let mut m = Mirror::default();
        assert!(m.put("/apisix", "/apisix/routes/1", br#"{"uri":"/a"}"#, 2, 2));
        assert!(!m.put("/apisix", "/apisix/routes/1", br#"{"uri":"/a"}"#, 2, 2));
        assert!(m.put(
            "/apisix",
            "/apisix/consumers/jack/credentials/c1",
            br#"{"plugins":{}}"#,
            3,
            3
        ));
        assert!(!m.put("/apisix", "/apisix/gen_id", b"1", 4, 4));
        assert_eq!(m.guard, 4);
        let raw = m.raw().unwrap();
        assert_eq!(raw.of(Kind::Routes)[0].origin, "routes/1");
        assert_eq!(raw.of(Kind::Credentials)[0].id, "jack/c1");
        assert!(m.put("/apisix", "/apisix/routes/2", b"init_dir", 5, 5));
        assert_eq!(m.raw().unwrap_err().len(), 1);
        assert!(m.delete("/apisix", "/apisix/routes/2"));
        assert!(m.raw().is_ok());
    }

    #[test]
    fn quarantines_are_kept_beside_the_config_and_cached_with_it() {
        let mut m = Mirror::default();
        assert!(m.put("/apisix", "/apisix/routes/1", br#"{"uri":"/a"}"#, 2, 2));
        assert!(m.put_quarantine("q-1", br#"{"id":"q-1"}"#, 3).is_some());
        assert!(m.put_quarantine("q-1", br#"{"id":"q-1"}"#, 3).is_none());
        assert!(m.put_quarantine("q-2", b"not json", 4).is_none());
        assert_eq!(m.raw().unwrap().len(), 1);
        let back = Mirror::from_cache("/apisix", m.to_cache("/apisix", 0));
        assert_eq!(back.entries.len(), 1);
        assert_eq!(back.quarantines["q-1"].value["id"], "q-1");
    }
}
