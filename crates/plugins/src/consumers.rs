//! The credential index: for each auth plugin, credential lookup key →
//! consumer. Built once per snapshot from consumers and their credentials,
//! so a request's lookup is one hash probe.
//!
//! Lookup keys of secret credentials (API keys) are digests, never the
//! secret itself, so the index holds nothing an attacker could replay.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_core::{ConfigError, Consumer};
use serde_json::Value;

/// What an auth plugin extracts from its config on a consumer or credential.
#[derive(Debug, Clone)]
pub struct CredentialConf {
    /// The key the plugin finds this credential by at request time (an API
    /// key digest, a JWT `key` claim value, a basic-auth username).
    pub lookup_key: String,
    /// The plugin's settings for this credential (jwt secret or public key,
    /// basic-auth password digest); used by the plugin only.
    pub conf: Value,
}

#[derive(Debug, Clone)]
pub struct IndexedCredential {
    pub consumer: Arc<Consumer>,
    /// The credential resource id, when it came from one; `None` when the
    /// secret sits directly on the consumer.
    pub credential_id: Option<Arc<str>>,
    pub conf: Arc<Value>,
}

#[derive(Debug, Default)]
pub struct ConsumerIndex {
    by_plugin: HashMap<&'static str, HashMap<String, IndexedCredential>>,
    by_name: HashMap<Arc<str>, Arc<Consumer>>,
}

/// One source of credentials: a consumer's own plugins, or a credential
/// resource of it.
pub struct CredentialSource<'a> {
    pub consumer: Arc<Consumer>,
    pub credential_id: Option<Arc<str>>,
    pub plugins: &'a std::collections::BTreeMap<String, Value>,
}

impl ConsumerIndex {
    pub fn consumer(&self, username: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(username)
    }

    pub fn add_consumer(&mut self, consumer: Arc<Consumer>) {
        self.by_name.insert(consumer.username.clone(), consumer);
    }

    pub fn lookup(&self, plugin: &str, key: &str) -> Option<&IndexedCredential> {
        self.by_plugin.get(plugin)?.get(key)
    }

    pub fn credentials_of(&self, plugin: &str) -> usize {
        self.by_plugin.get(plugin).map_or(0, HashMap::len)
    }

    /// Index the auth plugins of one source. Plugins that are not auth
    /// plugins are left for the caller (consumer-level plugins such as
    /// limit-count are built as ordinary plugins). Errors name the plugin.
    pub fn add(&mut self, source: CredentialSource<'_>) -> Result<(), ConfigError> {
        for (name, conf) in source.plugins {
            let Some(spec) = crate::registry::plugin_spec(name) else {
                return Err(ConfigError::new(
                    format!("plugins.{name}"),
                    format!("unknown plugin [{name}]"),
                ));
            };
            let Some(check) = spec.consumer_conf else {
                continue;
            };
            let cred = check(conf).map_err(|e| {
                ConfigError::new(
                    e.field.clone(),
                    format!(
                        "invalid plugins configuration: failed to check the configuration of plugin {name} err: {}",
                        e.message
                    ),
                )
                .under(&format!("plugins.{name}"))
            })?;
            let entries = self.by_plugin.entry(spec.name).or_default();
            if let Some(existing) = entries.get(&cred.lookup_key) {
                if existing.consumer.username != source.consumer.username
                    || existing.credential_id != source.credential_id
                {
                    return Err(ConfigError::new(
                        format!("plugins.{name}"),
                        format!(
                            "duplicate {name} credential: already used by consumer {}",
                            existing.consumer.username
                        ),
                    ));
                }
            }
            entries.insert(
                cred.lookup_key,
                IndexedCredential {
                    consumer: source.consumer.clone(),
                    credential_id: source.credential_id.clone(),
                    conf: Arc::new(cred.conf),
                },
            );
        }
        Ok(())
    }
}
