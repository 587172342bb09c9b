//! A consumer: the identity a request is attributed to once authenticated.

use std::collections::BTreeMap;
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
