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

/// The version of the decision record's JSON schema
/// (docs/decision-record.schema.json). Bump it on any incompatible change.
pub const RECORD_SCHEMA: &str = "portcullis.decision/v1";

/// Everything the log phase knows about one request, borrowed from the
/// request's state: building it copies nothing. The telemetry crate turns it
/// into the versioned JSON record (redacting as it goes) once, and caches
/// that encoding in `encoded` so every sink and logger plugin shares it.
///
/// It holds no credential: the query string, request headers and body are
/// only reachable through `query` and `headers`, which the encoder drops or
/// redacts.
pub struct DecisionRecord<'a> {
    pub time: std::time::SystemTime,
    pub request_id: Option<&'a str>,
    /// W3C trace id: from `traceparent` when the client sent one.
    pub trace_id: [u8; 16],
    /// `None` when no route matched (404).
    pub route: Option<&'a crate::request::RouteInfo>,
    pub identity: Option<&'a crate::consumer::Identity>,
    pub client_ip: std::net::IpAddr,
    pub client_port: u16,
    pub scheme: &'static str,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// The raw query: dropped by the encoder unless configured otherwise.
    pub query: Option<&'a str>,
    pub status: u16,
    pub latency: std::time::Duration,
    pub upstream_latency: Option<std::time::Duration>,
    pub upstream_addr: Option<&'a str>,
    pub upstream_attempts: u32,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub decisions: &'a [Decision],
    /// The request headers; only the configured ones reach the record.
    pub headers: Option<&'a http::HeaderMap>,
    /// The redacted JSON line, filled once by the telemetry crate.
    pub encoded: std::sync::OnceLock<bytes::Bytes>,
}
