//! file-logger: append each request's decision record as a JSON line to a
//! file (APISIX's plugin of the same name: `path`). The file is reopened on
//! SIGUSR1, so logrotate can move it away and signal the gateway. Routes
//! naming the same path share one writer.

use std::sync::Arc;

use portcullis_core::{ConfigError, Phase, Plugin};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::http_logger::{refuse_unsafe, shared_sink, SinkPlugin};
use crate::registry::PluginSpec;

pub const NAME: &str = "file-logger";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::BeforeProxy,
    priority: 399,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    path: String,
    #[serde(default)]
    #[allow(dead_code)]
    include_req_body: bool,
    #[serde(default)]
    #[allow(dead_code)]
    include_resp_body: bool,
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "include_req_body": {"type": "boolean", "enum": [false], "default": false},
            "include_resp_body": {"type": "boolean", "enum": [false], "default": false}
        },
        "required": ["path"],
        "additionalProperties": false
    })
}

fn build(raw: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    refuse_unsafe(raw)?;
    let conf: Conf = parse_conf(raw)?;
    if conf.path.is_empty() {
        return Err(ConfigError::new("path", "must not be empty"));
    }
    let key = format!("{NAME}:{}", conf.path);
    let path = conf.path.clone();
    let sink = shared_sink(ctx, &key, move || {
        let queue = portcullis_telemetry::global().sink_queue();
        portcullis_telemetry::sink::line::file(&format!("{NAME}:{path}"), &path, queue)
    })
    .map_err(|e| ConfigError::new("path", e.message))?;
    Ok(Arc::new(SinkPlugin {
        name: NAME,
        priority: SPEC.priority,
        sink,
    }))
}
