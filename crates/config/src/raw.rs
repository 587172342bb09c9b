//! The raw configuration every source produces: resources as JSON values,
//! each with its id and where it came from. The file, the Admin API store and
//! etcd all hand this to [`crate::validate`], so they share one validation.

use std::collections::BTreeMap;

use std::sync::Arc;

use serde_json::Value;

/// Resource kinds, with APISIX's names for their collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Routes,
    Services,
    Upstreams,
    Consumers,
    Credentials,
    ConsumerGroups,
    PluginConfigs,
    GlobalRules,
    Ssls,
    PluginMetadata,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Routes,
        Kind::Services,
        Kind::Upstreams,
        Kind::Consumers,
        Kind::Credentials,
        Kind::ConsumerGroups,
        Kind::PluginConfigs,
        Kind::GlobalRules,
        Kind::Ssls,
        Kind::PluginMetadata,
    ];

    /// The collection name in APISIX's Admin API paths and etcd keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Services => "services",
            Kind::Upstreams => "upstreams",
            Kind::Consumers => "consumers",
            Kind::Credentials => "credentials",
            Kind::ConsumerGroups => "consumer_groups",
            Kind::PluginConfigs => "plugin_configs",
            Kind::GlobalRules => "global_rules",
            Kind::Ssls => "ssls",
            Kind::PluginMetadata => "plugin_metadata",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawResource {
    /// The resource id. For credentials, `username/credential_id`; for
    /// consumers, the username; for plugin_metadata, the plugin name.
    pub id: String,
    /// Shared, so that copying a whole configuration (an Admin API write
    /// builds a candidate from the served one) copies pointers, not JSON.
    pub value: Arc<Value>,
    /// Where it came from, for error messages: `routes[2]` in a file,
    /// `routes/42` from the store.
    pub origin: String,
}

/// Every resource of a configuration, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawConfig {
    resources: BTreeMap<Kind, Vec<RawResource>>,
}

impl RawConfig {
    pub fn of(&self, kind: Kind) -> &[RawResource] {
        self.resources.get(&kind).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn push(&mut self, kind: Kind, resource: RawResource) {
        self.resources.entry(kind).or_default().push(resource);
    }

    /// Replace or add one resource, as an Admin API write would.
    pub fn upsert(&mut self, kind: Kind, resource: RawResource) {
        let list = self.resources.entry(kind).or_default();
        match list.iter_mut().find(|r| r.id == resource.id) {
            Some(slot) => *slot = resource,
            None => list.push(resource),
        }
    }

    pub fn remove(&mut self, kind: Kind, id: &str) -> Option<RawResource> {
        let list = self.resources.get_mut(&kind)?;
        let at = list.iter().position(|r| r.id == id)?;
        Some(list.remove(at))
    }

    pub fn is_empty(&self) -> bool {
        self.resources.values().all(Vec::is_empty)
    }

    pub fn len(&self) -> usize {
        self.resources.values().map(Vec::len).sum()
    }
}
