//! A consumer: the identity a request is attributed to once authenticated.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub username: Arc<str>,
    pub group_id: Option<Arc<str>>,
    pub labels: BTreeMap<String, String>,
}

/// Who the request was attributed to and by which credential. The credential
/// id names the credential resource, never its secret.
#[derive(Debug, Clone)]
pub struct Identity {
    pub consumer: Arc<Consumer>,
    pub credential_id: Option<Arc<str>>,
    /// The plugin that authenticated the request (`key-auth`, ...).
    pub authenticated_by: &'static str,
}

#[derive(Debug, Clone)]
pub struct IndexedCredential {
    pub consumer: Arc<Consumer>,
    /// The credential resource id, when it came from one; `None` when the
    /// secret sits directly on the consumer.
    pub credential_id: Option<Arc<str>>,
    /// The auth plugin's settings for this credential (never a plain secret
    /// where a digest will do).
    pub conf: Arc<serde_json::Value>,
}

/// For each auth plugin, credential lookup key → consumer; and consumers by
/// name. Built once per snapshot and handed to each request, so that auth
/// plugins never hold on to one: a consumer edit rebuilds this index, not the
/// routes. Lookup keys of secret credentials (API keys) are digests.
#[derive(Debug, Default)]
pub struct ConsumerIndex {
    by_plugin: HashMap<&'static str, HashMap<String, IndexedCredential>>,
    by_name: HashMap<Arc<str>, Arc<Consumer>>,
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

    /// Index one credential. A key already held by another consumer or
    /// credential is refused, and the holder returned.
    pub fn insert_credential(
        &mut self,
        plugin: &'static str,
        lookup_key: String,
        credential: IndexedCredential,
    ) -> Result<(), Arc<Consumer>> {
        let entries = self.by_plugin.entry(plugin).or_default();
        if let Some(existing) = entries.get(&lookup_key) {
            if existing.consumer.username != credential.consumer.username
                || existing.credential_id != credential.credential_id
            {
                return Err(existing.consumer.clone());
            }
        }
        entries.insert(lookup_key, credential);
        Ok(())
    }
}
