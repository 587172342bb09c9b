//! http-logger: send each request's decision record to an HTTP endpoint (a
//! SIEM, a log collector) in batches (APISIX's plugin of the same name:
//! `uri`, `auth_header`, `timeout`, `concat_method`, and the batch
//! processor's `batch_max_size`, `inactive_timeout`, `buffer_duration`,
//! `max_retry_count`, `retry_delay`; portcullis adds `max_pending_entries`).
//!
//! The record is the redacted decision record (docs/decision-record.md);
//! custom `log_format`s and request/response bodies are refused, so no
//! configuration can make a logger leak a credential. Records are queued on
//! the request's task and sent from the sink's own thread; a full queue
//! drops and counts.
//!
//! This module also holds [`SinkPlugin`], the instance every logger plugin
//! builds: it hands the record to its sink in the log phase.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_core::decision::DecisionRecord;
use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use portcullis_telemetry::sink::batch::BatchOptions;
use portcullis_telemetry::sink::http::{Concat, HttpTarget};
use portcullis_telemetry::RecordSink;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{config_hash, parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const NAME: &str = "http-logger";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::BeforeProxy,
    priority: 410,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

/// A logger plugin instance: nothing per request but queueing the record.
pub(crate) struct SinkPlugin {
    pub name: &'static str,
    pub priority: i32,
    pub sink: Arc<RecordSink>,
}

impl Plugin for SinkPlugin {
    fn name(&self) -> &'static str {
        self.name
    }
    fn phase(&self) -> Phase {
        Phase::BeforeProxy
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn on_request(&self, _req: &mut RequestState) -> Flow {
        Flow::Continue
    }
    fn on_log(&self, _req: &RequestState, record: &DecisionRecord<'_>) {
        self.sink.send(portcullis_telemetry::json(record));
    }
}

/// The sink for `key`, started once and kept across snapshots (so a reload
/// does not lose queued records or restart threads).
pub(crate) fn shared_sink(
    ctx: &BuildContext,
    key: &str,
    start: impl FnOnce() -> std::io::Result<RecordSink>,
) -> Result<Arc<RecordSink>, ConfigError> {
    let slot = ctx
        .state
        .get_or_insert(key, || Mutex::new(None::<Arc<RecordSink>>));
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(sink) = slot.as_ref() {
        return Ok(sink.clone());
    }
    let sink =
        Arc::new(start().map_err(|e| ConfigError::new("", format!("cannot start the sink: {e}")))?);
    *slot = Some(sink.clone());
    Ok(sink)
}

/// Settings that would put bodies or free-form fields in the record.
pub(crate) fn refuse_unsafe(conf: &Value) -> Result<(), ConfigError> {
    for field in ["include_req_body", "include_resp_body"] {
        if conf.get(field).is_some_and(|v| v != &Value::Bool(false)) {
            return Err(ConfigError::new(
                field,
                "portcullis never logs bodies (they carry credentials and personal data)",
            ));
        }
    }
    for field in [
        "log_format",
        "include_req_body_expr",
        "include_resp_body_expr",
    ] {
        if conf.get(field).is_some() {
            return Err(ConfigError::new(
                field,
                "not supported: loggers send the decision record (docs/decision-record.md)",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    uri: String,
    auth_header: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: f64,
    #[serde(default = "default_concat")]
    concat_method: String,
    #[serde(default = "yes")]
    #[allow(dead_code)]
    ssl_verify: bool,
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    include_req_body: bool,
    #[serde(default)]
    include_resp_body: bool,
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

fn default_timeout() -> f64 {
    3.0
}
fn default_concat() -> String {
    "json".into()
}
fn yes() -> bool {
    true
}

fn schema() -> Value {
    let mut props = BatchOptions::schema_properties();
    for (k, v) in [
        ("uri", json!({"type": "string", "pattern": "^http://"})),
        ("auth_header", json!({"type": "string"})),
        (
            "timeout",
            json!({"type": "number", "exclusiveMinimum": 0, "default": 3}),
        ),
        (
            "concat_method",
            json!({"type": "string", "enum": ["json", "new_line"], "default": "json"}),
        ),
        ("ssl_verify", json!({"type": "boolean", "default": true})),
        (
            "include_req_body",
            json!({"type": "boolean", "enum": [false], "default": false}),
        ),
        (
            "include_resp_body",
            json!({"type": "boolean", "enum": [false], "default": false}),
        ),
    ] {
        props.insert(k.into(), v);
    }
    json!({
        "type": "object",
        "properties": props,
        "required": ["uri"],
        "additionalProperties": false
    })
}

pub(crate) fn batch_options(
    batch_max_size: usize,
    inactive_timeout: f64,
    buffer_duration: f64,
    max_retry_count: u32,
    retry_delay: f64,
    max_pending_entries: usize,
) -> Result<BatchOptions, ConfigError> {
    let opts = BatchOptions {
        batch_max_size,
        inactive_timeout,
        buffer_duration,
        max_retry_count,
        retry_delay,
        max_pending_entries,
    };
    opts.validate().map_err(|(field, msg)| {
        ConfigError::new(
            field,
            format!("property \"{field}\" validation failed: {msg}"),
        )
    })?;
    Ok(opts)
}

fn build(raw: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    refuse_unsafe(raw)?;
    let conf: Conf = parse_conf(raw)?;
    debug_assert!(!conf.include_req_body && !conf.include_resp_body);
    let uri = HttpTarget::parse_uri(&conf.uri).map_err(|e| ConfigError::new("uri", e))?;
    let auth_header = conf
        .auth_header
        .as_deref()
        .map(|h| {
            let mut v = http::HeaderValue::from_str(h)
                .map_err(|_| ConfigError::new("auth_header", "not a valid header value"))?;
            v.set_sensitive(true);
            Ok::<_, ConfigError>(v)
        })
        .transpose()?;
    if !(conf.timeout > 0.0 && conf.timeout.is_finite()) {
        return Err(ConfigError::new(
            "timeout",
            "must be a positive number of seconds",
        ));
    }
    let concat = match conf.concat_method.as_str() {
        "json" => Concat::Json,
        "new_line" => Concat::NewLine,
        _ => {
            return Err(ConfigError::new(
                "concat_method",
                "must be \"json\" or \"new_line\"",
            ))
        }
    };
    let opts = batch_options(
        conf.batch_max_size,
        conf.inactive_timeout,
        conf.buffer_duration,
        conf.max_retry_count,
        conf.retry_delay,
        conf.max_pending_entries,
    )?;
    let target = HttpTarget {
        uri,
        auth_header,
        timeout: Duration::from_secs_f64(conf.timeout),
        concat,
    };
    let key = format!("{}:{NAME}:{:x}", ctx.owner, config_hash(raw));
    let sink_name = format!("{NAME}:{}", ctx.owner);
    let sink = shared_sink(ctx, &key, move || {
        portcullis_telemetry::sink::http::spawn(sink_name, target, opts)
    })?;
    Ok(Arc::new(SinkPlugin {
        name: NAME,
        priority: SPEC.priority,
        sink,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;

    fn try_build(conf: Value) -> Result<Arc<dyn Plugin>, ConfigError> {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        build(&conf, &ctx)
    }

    #[test]
    fn config_is_checked_field_by_field() {
        assert!(try_build(json!({"uri": "http://127.0.0.1:9/logs"})).is_ok());
        let e = try_build(json!({})).err().unwrap();
        assert!(e.message.contains("uri"), "{}", e.message);
        let e = try_build(json!({"uri": "http://x/", "batch_max_size": 0}))
            .err()
            .unwrap();
        assert_eq!(e.field, "batch_max_size");
        let e = try_build(json!({"uri": "http://x/", "include_req_body": true}))
            .err()
            .unwrap();
        assert_eq!(e.field, "include_req_body");
        let e = try_build(json!({"uri": "http://x/", "log_format": {"a": "$http_authorization"}}))
            .err()
            .unwrap();
        assert_eq!(e.field, "log_format");
        let e = try_build(json!({"uri": "ftp://x/"})).err().unwrap();
        assert_eq!(e.field, "uri");
    }
}
