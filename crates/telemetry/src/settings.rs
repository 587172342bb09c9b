//! Node-wide telemetry settings: `gateway.telemetry` in the config file.
//!
//! ```yaml
//! gateway:
//!   access_log: stdout            # the node's own record sink: stdout | off | a file path
//!   telemetry:
//!     query: drop                 # drop | names: the query string never appears with values
//!     include_headers: [user-agent, x-tenant-id]
//!     redact:
//!       headers: [x-customer-token]
//!       fields: [client_addr, consumer.username]
//!     sink_queue: 65536
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// What of the query string reaches the record.
    #[serde(default)]
    pub query: QueryMode,
    /// Request headers copied into the record (`headers` object). None by
    /// default. Secret ones are always written as `[redacted]`.
    #[serde(default)]
    pub include_headers: Vec<String>,
    #[serde(default)]
    pub redact: RedactSettings,
    /// Records each sink may hold before it drops (and counts) new ones.
    #[serde(default = "TelemetrySettings::default_sink_queue")]
    pub sink_queue: usize,
}

impl TelemetrySettings {
    fn default_sink_queue() -> usize {
        64 * 1024
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            query: QueryMode::default(),
            include_headers: Vec::new(),
            redact: RedactSettings::default(),
            sink_queue: Self::default_sink_queue(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// The record's `path` has no query and there is no `query` field.
    #[default]
    Drop,
    /// `query` lists the parameter names, every value `[redacted]`.
    Names,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedactSettings {
    /// Header names whose values are secret, on top of the built-in ones
    /// (Authorization, Proxy-Authorization, Cookie, Set-Cookie, apikey,
    /// X-API-KEY, and any name containing `key`, `token`, `secret`,
    /// `auth`, `session`, `password` or `cookie`).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Record fields written as `[redacted]`: any of `client_addr`, `host`,
    /// `path`, `request_id`, `consumer.username`, `consumer.group`,
    /// `consumer.credential_id`, `upstream.addr`, `route.labels`,
    /// `decisions.reason`.
    #[serde(default)]
    pub fields: Vec<String>,
}

/// The record fields `redact.fields` may name.
pub const REDACTABLE_FIELDS: &[&str] = &[
    "client_addr",
    "host",
    "path",
    "request_id",
    "consumer.username",
    "consumer.group",
    "consumer.credential_id",
    "upstream.addr",
    "route.labels",
    "decisions.reason",
];

impl TelemetrySettings {
    /// Check what serde cannot: names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        for f in &self.redact.fields {
            if !REDACTABLE_FIELDS.contains(&f.as_str()) {
                return Err(format!(
                    "telemetry.redact.fields: unknown field \"{f}\" (one of {})",
                    REDACTABLE_FIELDS.join(", ")
                ));
            }
        }
        for h in self.include_headers.iter().chain(&self.redact.headers) {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(format!("telemetry: \"{h}\" is not a valid header name"));
            }
        }
        if self.sink_queue == 0 {
            return Err("telemetry.sink_queue: must be at least 1".into());
        }
        Ok(())
    }
}
