//! syslog: send each request's decision record as an RFC 5424 message over
//! UDP or TCP (APISIX's plugin of the same name: `host`, `port`,
//! `sock_type`, `timeout`, and the batch processor's options; portcullis
//! adds `facility`, `severity` and `app_name`). TCP uses octet-counting
//! framing (RFC 6587) on one connection, re-established after a failure.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{ConfigError, Phase, Plugin};
use portcullis_telemetry::sink::batch::BatchOptions;
use portcullis_telemetry::sink::syslog::{facility_code, severity_code, Protocol, SyslogTarget};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{config_hash, parse_conf, BuildContext};
use crate::http_logger::{batch_options, refuse_unsafe, shared_sink, SinkPlugin};
use crate::registry::PluginSpec;

pub const NAME: &str = "syslog";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::BeforeProxy,
    priority: 401,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    host: String,
    port: u16,
    #[serde(default = "default_sock_type")]
    sock_type: String,
    #[serde(default = "default_timeout")]
    timeout: f64,
    #[serde(default = "default_facility")]
    facility: String,
    #[serde(default = "default_severity")]
    severity: String,
    #[serde(default = "default_app_name")]
    app_name: String,
    #[serde(default)]
    tls: bool,
    // Accepted for APISIX compatibility; the batch options govern flushing.
    #[allow(dead_code)]
    flush_limit: Option<u64>,
    #[allow(dead_code)]
    drop_limit: Option<u64>,
    #[allow(dead_code)]
    pool_size: Option<u64>,
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    include_req_body: bool,
    #[serde(default = "BatchOptions::default_batch_max_size")]
    batch_max_size: usize,
    #[serde(default = "BatchOptions::default_inactive_timeout")]
    inactive_timeout: f64,
    #[serde(default = "BatchOptions::default_buffer_duration")]
    buffer_duration: f64,
    #[serde(default)]
    max_retry_count: u32,
    #[serde(default = "BatchOptions::default_retry_delay")]
    retry_delay: f64,
    #[serde(default = "BatchOptions::default_max_pending_entries")]
    max_pending_entries: usize,
}

fn default_sock_type() -> String {
    "tcp".into()
}
fn default_timeout() -> f64 {
    3.0
}
fn default_facility() -> String {
    "local0".into()
}
fn default_severity() -> String {
    "info".into()
}
fn default_app_name() -> String {
    "portcullis".into()
}

fn schema() -> Value {
    let mut props = BatchOptions::schema_properties();
    for (k, v) in [
        ("host", json!({"type": "string"})),
        (
            "port",
            json!({"type": "integer", "minimum": 1, "maximum": 65535}),
        ),
        (
            "sock_type",
            json!({"type": "string", "enum": ["tcp", "udp"], "default": "tcp"}),
        ),
        (
            "timeout",
            json!({"type": "number", "exclusiveMinimum": 0, "default": 3}),
        ),
        ("facility", json!({"type": "string", "default": "local0"})),
        ("severity", json!({"type": "string", "default": "info"})),
        (
            "app_name",
            json!({"type": "string", "default": "portcullis"}),
        ),
        (
            "tls",
            json!({"type": "boolean", "enum": [false], "default": false}),
        ),
        ("flush_limit", json!({"type": "integer", "minimum": 1})),
        ("drop_limit", json!({"type": "integer", "minimum": 1})),
        ("pool_size", json!({"type": "integer", "minimum": 5})),
        (
            "include_req_body",
            json!({"type": "boolean", "enum": [false], "default": false}),
        ),
    ] {
        props.insert(k.into(), v);
    }
    json!({
        "type": "object",
        "properties": props,
        "required": ["host", "port"],
        "additionalProperties": false
    })
}

fn build(raw: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    refuse_unsafe(raw)?;
    let conf: Conf = parse_conf(raw)?;
    if conf.host.is_empty() {
        return Err(ConfigError::new("host", "must not be empty"));
    }
    if conf.port == 0 {
        return Err(ConfigError::new("port", "must be 1-65535"));
    }
    if conf.tls {
        return Err(ConfigError::new("tls", "TLS syslog is not supported yet"));
    }
    let protocol = match conf.sock_type.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(ConfigError::new("sock_type", "must be \"tcp\" or \"udp\"")),
    };
    let facility = facility_code(&conf.facility)
        .ok_or_else(|| ConfigError::new("facility", "not a syslog facility (kern ... local7)"))?;
    let severity = severity_code(&conf.severity)
        .ok_or_else(|| ConfigError::new("severity", "not a syslog severity (emerg ... debug)"))?;
    if conf.app_name.len() > 48 || !conf.app_name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "app_name",
            "at most 48 printable ASCII characters without spaces",
        ));
    }
    if !(conf.timeout > 0.0 && conf.timeout.is_finite()) {
        return Err(ConfigError::new(
            "timeout",
            "must be a positive number of seconds",
        ));
    }
    let opts = batch_options(
        conf.batch_max_size,
        conf.inactive_timeout,
        conf.buffer_duration,
        conf.max_retry_count,
        conf.retry_delay,
        conf.max_pending_entries,
    )?;
    let target = SyslogTarget {
        host: conf.host,
        port: conf.port,
        protocol,
        facility,
        severity,
        app_name: conf.app_name,
        timeout: Duration::from_secs_f64(conf.timeout),
    };
    let key = format!("{}:{NAME}:{:x}", ctx.owner, config_hash(raw));
    let sink_name = format!("{NAME}:{}", ctx.owner);
    let sink = shared_sink(ctx, &key, move || {
        portcullis_telemetry::sink::syslog::spawn(sink_name, target, opts)
    })?;
    Ok(Arc::new(SinkPlugin {
        name: NAME,
        priority: SPEC.priority,
        sink,
    }))
}
