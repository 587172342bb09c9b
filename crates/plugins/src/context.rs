//! What a plugin constructor gets besides its own config.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_core::ConfigError;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::consumers::ConsumerIndex;

pub struct BuildContext<'a> {
    /// The credential index of the snapshot being built, for auth plugins.
    pub consumers: &'a Arc<ConsumerIndex>,
    /// Who owns this plugin instance: `routes/1`, `services/s`,
    /// `global_rules/g`. Keys state that must outlive reloads.
    pub owner: &'a str,
    pub state: &'a SharedState,
}

/// State that outlives snapshots: limit counters, caches. Each entry is keyed
/// by its owner, the plugin, and a hash of the plugin's own config, so an edit
/// elsewhere keeps it and an edit to the plugin's settings starts afresh.
#[derive(Default)]
pub struct SharedState {
    entries: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl SharedState {
    /// The entry for `key`, made by `make` the first time.
    pub fn get_or_insert<T: Any + Send + Sync>(
        &self,
        key: &str,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = entries.get(key) {
            if let Ok(t) = existing.clone().downcast::<T>() {
                return t;
            }
        }
        let made = Arc::new(make());
        entries.insert(key.to_string(), made.clone());
        made
    }

    /// Drop the entries no plugin instance holds any more (their routes or
    /// settings are gone), so deleted routes do not keep counters or logger
    /// threads for ever. Called after a snapshot swap; an entry still held
    /// by the previous snapshot (requests in flight) goes at the next one.
    pub fn sweep_unused(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, v| Arc::strong_count(v) > 1);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Deserialize a plugin config, naming the failing field.
pub fn parse_conf<T: DeserializeOwned>(conf: &Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(conf).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().to_string())
    })
}

/// A stable hash of a JSON value, for state keys. serde_json's map keeps
/// insertion order, so keys are sorted first to make equal configs hash alike.
pub fn config_hash(conf: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(v: &Value, h: &mut std::collections::hash_map::DefaultHasher) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                for k in keys {
                    k.hash(h);
                    feed(&m[k], h);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| feed(x, h)),
            other => other.to_string().hash(h),
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    feed(conf, &mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_drops_only_entries_no_plugin_holds() {
        let state = SharedState::default();
        let held = state.get_or_insert("routes/1#limit-count#1", || 1u32);
        drop(state.get_or_insert("routes/2#limit-count#1", || 2u32));
        assert_eq!(state.len(), 2);
        state.sweep_unused();
        assert_eq!(state.len(), 1);
        // The held entry is the same one, not a fresh counter.
        assert!(Arc::ptr_eq(
            &held,
            &state.get_or_insert("routes/1#limit-count#1", || 9u32)
        ));
    }
}
