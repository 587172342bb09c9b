//! The credential index: for each auth plugin, credential lookup key →
//! consumer. Built once per snapshot from consumers and their credentials,
//! so a request's lookup is one hash probe.
//!
//! Lookup keys of secret credentials (API keys) are digests, never the
//! secret itself, so the index holds nothing an attacker could replay.

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

pub use portcullis_core::consumer::{ConsumerIndex, IndexedCredential};

/// One source of credentials: a consumer's own plugins, or a credential
/// resource of it.
pub struct CredentialSource<'a> {
    pub consumer: Arc<Consumer>,
    pub credential_id: Option<Arc<str>>,
    pub plugins: &'a std::collections::BTreeMap<String, Value>,
}

/// Indexing credentials needs the registry (which plugins are auth plugins
/// and how each reads its config), so it lives here, beside the registry.
pub trait AddCredentials {
    fn add(&mut self, source: CredentialSource<'_>) -> Result<(), ConfigError>;
}

impl AddCredentials for ConsumerIndex {
    /// Index the auth plugins of one source. Plugins that are not auth
    /// plugins are left for the caller (consumer-level plugins such as
    /// limit-count are built as ordinary plugins). Errors name the plugin.
    fn add(&mut self, source: CredentialSource<'_>) -> Result<(), ConfigError> {
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
            let lookup_key = cred.lookup_key;
            let credential = IndexedCredential {
                consumer: source.consumer.clone(),
                credential_id: source.credential_id.clone(),
                conf: Arc::new(cred.conf),
            };
            if let Err(holder) = self.insert_credential(spec.name, lookup_key, credential) {
                return Err(ConfigError::new(
                    format!("plugins.{name}"),
                    format!(
                        "duplicate {name} credential: already used by consumer {}",
                        holder.username
                    ),
                ));
            }
        }
        Ok(())
    }
}
