//! prometheus: accepted on routes and global rules for APISIX
//! compatibility. portcullis records metrics for every request whatever the
//! plugin (docs/metrics.md), so the instance does nothing per request;
//! `prefer_name` is accepted and not acted on (labels carry route ids).

use std::sync::Arc;

use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "prometheus",
    phase: Phase::BeforeProxy,
    priority: 500,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    #[allow(dead_code)]
    prefer_name: bool,
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"prefer_name": {"type": "boolean", "default": false}},
        "additionalProperties": false
    })
}

struct Prometheus;

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let _: Conf = parse_conf(conf)?;
    Ok(Arc::new(Prometheus))
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }
    fn on_request(&self, _req: &mut RequestState) -> Flow {
        Flow::Continue
    }
}
