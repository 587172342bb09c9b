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
//!     tracing:                    # OpenTelemetry traces over OTLP (docs/tracing.md)
//!       enabled: true
//!       endpoint: http://127.0.0.1:4318
//!       protocol: http/protobuf   # http/protobuf | grpc
//!       sampler_ratio: 0.1
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
    /// OpenTelemetry traces (docs/tracing.md).
    #[serde(default)]
    pub tracing: TracingSettings,
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
            tracing: TracingSettings::default(),
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
        self.tracing.validate()
    }
}

/// `gateway.telemetry.tracing`: one OpenTelemetry span per request, exported
/// over OTLP; W3C trace context continued from the client and passed to the
/// upstream (docs/tracing.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSettings {
    /// Off by default: the client's `traceparent` then passes through
    /// untouched, as through any proxy, and only names the record's
    /// `trace_id`.
    #[serde(default)]
    pub enabled: bool,
    /// The collector: `http://host:port` (OTLP/HTTP posts to `/v1/traces`
    /// under it unless a path is given; OTLP/gRPC ignores any path).
    #[serde(default = "TracingSettings::default_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of new traces recorded, 0 to 1. A client's sampled flag
    /// decides for the traces it continues (`parent_based`).
    #[serde(default = "TracingSettings::default_sampler_ratio")]
    pub sampler_ratio: f64,
    /// Honour the caller's sampled flag (`parentbased_traceidratio`);
    /// `false` applies `sampler_ratio` to every trace (`traceidratio`).
    #[serde(default = "TracingSettings::default_parent_based")]
    pub parent_based: bool,
    /// The `service.name` resource attribute.
    #[serde(default = "TracingSettings::default_service_name")]
    pub service_name: String,
    /// Headers sent to the collector with every export (credentials, for
    /// instance). Their values never reach a log line.
    #[serde(default)]
    pub headers: CollectorHeaders,
    #[serde(default)]
    pub batch: TraceBatchSettings,
    /// Seconds one export may take, retries included.
    #[serde(default = "TracingSettings::default_timeout")]
    pub timeout: f64,
}

impl TracingSettings {
    fn default_endpoint() -> String {
        "http://127.0.0.1:4318".into()
    }
    fn default_sampler_ratio() -> f64 {
        1.0
    }
    fn default_parent_based() -> bool {
        true
    }
    fn default_service_name() -> String {
        "portcullis".into()
    }
    fn default_timeout() -> f64 {
        10.0
    }

    /// Check what serde cannot; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sampler_ratio) {
            return Err("telemetry.tracing.sampler_ratio: must be between 0 and 1".into());
        }
        if self.service_name.is_empty() {
            return Err("telemetry.tracing.service_name: must not be empty".into());
        }
        if !(self.timeout > 0.0 && self.timeout <= 3600.0) {
            return Err(
                "telemetry.tracing.timeout: must be more than 0 and at most 3600 seconds".into(),
            );
        }
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|e| format!("telemetry.tracing.endpoint: invalid uri: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "telemetry.tracing.endpoint: https collectors are not supported yet; use http"
                        .into(),
                )
            }
            _ => return Err("telemetry.tracing.endpoint: must start with http://".into()),
        }
        if uri.host().is_none() {
            return Err("telemetry.tracing.endpoint: has no host".into());
        }
        for (name, value) in &self.headers.0 {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!(
                    "telemetry.tracing.headers: \"{name}\" is not a valid header name"
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                // Never echo the value: it may be a credential.
                return Err(format!(
                    "telemetry.tracing.headers.{name}: not a valid header value"
                ));
            }
        }
        let b = &self.batch;
        if b.max_queue == 0 {
            return Err("telemetry.tracing.batch.max_queue: must be at least 1".into());
        }
        if b.max_export_batch == 0 || b.max_export_batch > b.max_queue {
            return Err(
                "telemetry.tracing.batch.max_export_batch: must be at least 1 and at most max_queue"
                    .into(),
            );
        }
        if b.scheduled_delay_ms == 0 {
            return Err("telemetry.tracing.batch.scheduled_delay_ms: must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            enabled: false,
            endpoint: Self::default_endpoint(),
            protocol: OtlpProtocol::default(),
            sampler_ratio: Self::default_sampler_ratio(),
            parent_based: Self::default_parent_based(),
            service_name: Self::default_service_name(),
            headers: CollectorHeaders::default(),
            batch: TraceBatchSettings::default(),
            timeout: Self::default_timeout(),
        }
    }
}

/// OTLP's transports, named as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// The batch span processor's bounds (OpenTelemetry's defaults).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraceBatchSettings {
    /// Spans waiting for export; past that new ones are dropped and counted.
    #[serde(default = "TraceBatchSettings::default_max_queue")]
    pub max_queue: usize,
    /// Spans per export request.
    #[serde(default = "TraceBatchSettings::default_max_export_batch")]
    pub max_export_batch: usize,
    /// The longest a span waits for its batch to fill.
    #[serde(default = "TraceBatchSettings::default_scheduled_delay_ms")]
    pub scheduled_delay_ms: u64,
}

impl TraceBatchSettings {
    fn default_max_queue() -> usize {
        2048
    }
    fn default_max_export_batch() -> usize {
        512
    }
    fn default_scheduled_delay_ms() -> u64 {
        5000
    }
}

impl Default for TraceBatchSettings {
    fn default() -> Self {
        TraceBatchSettings {
            max_queue: Self::default_max_queue(),
            max_export_batch: Self::default_max_export_batch(),
            scheduled_delay_ms: Self::default_scheduled_delay_ms(),
        }
    }
}

/// Headers for the collector. Debug and Serialize show the names only.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct CollectorHeaders(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for CollectorHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, crate::redact::REDACTED)))
            .finish()
    }
}

impl Serialize for CollectorHeaders {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.keys().map(|k| (k, crate::redact::REDACTED)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracing(v: serde_json::Value) -> Result<TracingSettings, String> {
        let t: TracingSettings = serde_json::from_value(v).map_err(|e| e.to_string())?;
        t.validate().map(|()| t)
    }

    #[test]
    fn tracing_is_off_by_default_with_opentelemetry_defaults() {
        let t = TelemetrySettings::default().tracing;
        assert!(!t.enabled);
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.sampler_ratio, 1.0);
        assert!(t.parent_based);
        assert_eq!(t.service_name, "portcullis");
        assert_eq!(
            (
                t.batch.max_queue,
                t.batch.max_export_batch,
                t.batch.scheduled_delay_ms
            ),
            (2048, 512, 5000)
        );
        assert!(t.validate().is_ok());
    }

    #[test]
    fn tracing_settings_are_checked() {
        let ok = tracing(serde_json::json!({
            "enabled": true, "endpoint": "http://collector:4317", "protocol": "grpc",
            "sampler_ratio": 0.25, "headers": {"x-token": "t"},
            "batch": {"max_queue": 10, "max_export_batch": 5, "scheduled_delay_ms": 100},
            "timeout": 3
        }))
        .unwrap();
        assert_eq!(ok.protocol, OtlpProtocol::Grpc);
        for (bad, expected) in [
            (
                serde_json::json!({"sampler": "always_on"}),
                "unknown field `sampler`",
            ),
            (
                serde_json::json!({"protocol": "http/json"}),
                "unknown variant",
            ),
            (
                serde_json::json!({"batch": {"max_queue_size": 1}}),
                "unknown field",
            ),
            (serde_json::json!({"sampler_ratio": -0.1}), "sampler_ratio"),
            (serde_json::json!({"endpoint": "https://c:4318"}), "https"),
            (
                serde_json::json!({"endpoint": "collector:4318"}),
                "endpoint",
            ),
            (serde_json::json!({"timeout": 0}), "timeout"),
            (
                serde_json::json!({"headers": {"bad header": "v"}}),
                "headers",
            ),
            (serde_json::json!({"batch": {"max_queue": 0}}), "max_queue"),
        ] {
            let err = tracing(bad.clone()).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn collector_header_values_never_show() {
        let t =
            tracing(serde_json::json!({"headers": {"authorization": "Bearer s3cret"}})).unwrap();
        let shown = format!("{t:?} {}", serde_json::to_string(&t).unwrap());
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("s3cret"), "{shown}");
        // A bad value is refused without echoing it.
        let err = tracing(serde_json::json!({"headers": {"x-token": "s3cret\n"}})).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
