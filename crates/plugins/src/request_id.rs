//! request-id: give every request an id, keep the client's if it sent one,
//! pass it upstream and return it to the client (APISIX's plugin of the
//! same name; `header_name`, `include_in_response`, `algorithm` uuid).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "request-id",
    phase: Phase::Rewrite,
    priority: 12015,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default = "default_header")]
    header_name: String,
    #[serde(default = "yes")]
    include_in_response: bool,
    #[serde(default = "default_algorithm")]
    algorithm: String,
}

fn default_header() -> String {
    "X-Request-Id".into()
}
fn default_algorithm() -> String {
    "uuid".into()
}
fn yes() -> bool {
    true
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "header_name": {"type": "string", "default": "X-Request-Id"},
            "include_in_response": {"type": "boolean", "default": true},
            "algorithm": {"type": "string", "enum": ["uuid"], "default": "uuid"}
        },
        "additionalProperties": false
    })
}

struct RequestId {
    header: HeaderName,
    include_in_response: bool,
}

/// A client may choose its id, within reason: it ends up in logs.
const MAX_CLIENT_ID_LEN: usize = 128;

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    if conf.algorithm != "uuid" {
        return Err(ConfigError::new("algorithm", "only \"uuid\" is supported"));
    }
    let header = HeaderName::from_bytes(conf.header_name.as_bytes())
        .map_err(|_| ConfigError::new("header_name", "not a valid header name"))?;
    Ok(Arc::new(RequestId {
        header,
        include_in_response: conf.include_in_response,
    }))
}

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    fn on_request(&self, req: &mut RequestState) -> Flow {
        let from_client = req
            .head
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_CLIENT_ID_LEN)
            .map(Arc::<str>::from);
        let id = from_client.unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()));
        if let Ok(value) = HeaderValue::from_str(&id) {
            req.head.headers.insert(self.header.clone(), value.clone());
            if self.include_in_response {
                req.response_headers.insert(self.header.clone(), value);
            }
        }
        req.request_id = Some(id);
        Flow::Continue
    }
}
