//! What each enforcing plugin decided about a request. The log phase turns
//! these into the decision record; they never hold a secret.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Reject,
    /// A dry-run plugin would have rejected, but let the request through.
    WouldReject,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Reject => "reject",
            Outcome::WouldReject => "would_reject",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub plugin: &'static str,
    pub outcome: Outcome,
    /// Short reason, e.g. `missing API key`, `rate exceeded`,
    /// `/customer_id: "" is shorter than 1 character`.
    pub reason: Option<Cow<'static, str>>,
    /// Limit plugins record their limit and what remains.
    pub limit: Option<LimitState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: u64,
    pub remaining: u64,
}

impl Decision {
    pub fn allow(plugin: &'static str) -> Self {
        Decision {
            plugin,
            outcome: Outcome::Allow,
            reason: None,
            limit: None,
        }
    }

    pub fn reject(plugin: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Decision {
            plugin,
            outcome: Outcome::Reject,
            reason: Some(reason.into()),
            limit: None,
        }
    }
}
