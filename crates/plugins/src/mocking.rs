//! mocking: answer with a canned response instead of proxying — a fixed
//! `response_example`, or an example generated from a `response_schema` —
//! optionally after a `delay`. APISIX's plugin of the same name.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use portcullis_core::{ConfigError, Flow, Phase, Plugin, Rejection, RequestState};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::context::{parse_conf, BuildContext};
use crate::proxy_rewrite::Template;
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "mocking",
    phase: Phase::BeforeProxy,
    priority: 10900,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

const DEFAULT_CONTENT_TYPE: &str = "application/json;charset=utf8";
const SUPPORTED_TYPES: [&str; 5] = [
    "application/xml",
    "application/json",
    "text/plain",
    "text/html",
    "text/xml",
];
/// The generated example's depth limit: a recursive-looking schema cannot
/// make the build run away.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    delay: i64,
    #[serde(default = "default_status")]
    response_status: u16,
    #[serde(default = "default_content_type")]
    content_type: String,
    response_example: Option<String>,
    response_schema: Option<Map<String, Value>>,
    #[serde(default = "yes")]
    with_mock_header: bool,
    response_headers: Option<Map<String, Value>>,
}

fn default_status() -> u16 {
    200
}
fn default_content_type() -> String {
    DEFAULT_CONTENT_TYPE.into()
}
fn yes() -> bool {
    true
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "delay": {"type": "integer", "default": 0},
            "response_status": {"type": "integer", "default": 200, "minimum": 100},
            "content_type": {"type": "string", "default": DEFAULT_CONTENT_TYPE},
            "response_example": {"type": "string"},
            "response_schema": {"type": "object"},
            "with_mock_header": {"type": "boolean", "default": true},
            "response_headers": {
                "type": "object", "minProperties": 1,
                "patternProperties": {"^[^:]+$": {"oneOf": [{"type": "string"}, {"type": "number"}]}}
            }
        },
        "anyOf": [{"required": ["response_example"]}, {"required": ["response_schema"]}],
        "additionalProperties": false
    })
}

struct Mocking {
    delay: Option<Duration>,
    status: StatusCode,
    body: Body,
    /// Content type, `x-mock-by` and the configured headers, in order.
    fixed_headers: Vec<(HeaderName, HeaderValue)>,
    templated_headers: Vec<(HeaderName, Template)>,
}

enum Body {
    Fixed(Bytes),
    /// The example names request variables (`$arg_id`), resolved per request
    /// as APISIX does.
    Templated(Template),
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    let status = match conf.response_status {
        s @ 100..=999 => StatusCode::from_u16(s)
            .map_err(|_| ConfigError::new("response_status", "not a status code"))?,
        s => {
            return Err(ConfigError::new(
                "response_status",
                format!("{s} is not a status code between 100 and 999"),
            ))
        }
    };
    let media_type = conf
        .content_type
        .split_once(';')
        .map_or(conf.content_type.as_str(), |(t, _)| t)
        .trim();
    if !SUPPORTED_TYPES.contains(&media_type) {
        return Err(ConfigError::new(
            "content_type",
            format!(
                "unsupported content type! (expected one of {})",
                SUPPORTED_TYPES.join(", ")
            ),
        ));
    }
    let content_type = HeaderValue::from_str(&conf.content_type)
        .map_err(|_| ConfigError::new("content_type", "invalid value character in header"))?;

    let text = match (&conf.response_example, &conf.response_schema) {
        (Some(example), _) => example.clone(),
        (None, Some(schema)) => {
            let value = gen_object(schema, 0);
            if media_type.ends_with("xml") {
                to_xml("data", &value)
            } else {
                // APISIX generates JSON for application/json and text/plain,
                // and nothing for text/html; JSON is the useful answer.
                value.to_string()
            }
        }
        (None, None) => {
            return Err(ConfigError::new(
                "",
                "one of response_example or response_schema is required",
            ))
        }
    };
    let template = Template::parse(&text);
    let body = match template.as_literal() {
        Some(lit) => Body::Fixed(Bytes::from(lit.to_string())),
        None => Body::Templated(template),
    };

    let mut fixed_headers = vec![(CONTENT_TYPE, content_type)];
    if conf.with_mock_header {
        fixed_headers.push((
            HeaderName::from_static("x-mock-by"),
            HeaderValue::from_static("portcullis"),
        ));
    }
    let mut templated_headers = Vec::new();
    if let Some(headers) = &conf.response_headers {
        if headers.is_empty() {
            return Err(ConfigError::new(
                "response_headers",
                "expect object to have at least 1 properties",
            ));
        }
        for (name, value) in headers {
            let field = format!("response_headers.{name}");
            let hn = HeaderName::from_bytes(name.as_bytes())
                .ok()
                .filter(|_| !name.contains(':'))
                .ok_or_else(|| {
                    ConfigError::new(field.as_str(), "invalid field character in header")
                })?;
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(ConfigError::new(
                        field.as_str(),
                        "invalid type as header value: expected a string or a number",
                    ))
                }
            };
            let t = Template::parse(&text);
            match t.as_literal() {
                Some(lit) => fixed_headers.push((
                    hn,
                    HeaderValue::from_str(lit).map_err(|_| {
                        ConfigError::new(field.as_str(), "invalid value character in header")
                    })?,
                )),
                None => templated_headers.push((hn, t)),
            }
        }
    }
    Ok(Arc::new(Mocking {
        delay: (conf.delay > 0).then(|| Duration::from_secs(conf.delay as u64)),
        status,
        body,
        fixed_headers,
        templated_headers,
    }))
}

// Example generation. APISIX draws random values; portcullis takes the
// schema's `example` when there is one and a fixed placeholder otherwise, so
// the same config always answers the same.

fn gen_object(schema: &Map<String, Value>, depth: usize) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (k, v) in props {
            if let Value::Object(prop) = v {
                out.insert(k.clone(), gen_value(prop, depth + 1));
            }
        }
    }
    Value::Object(out)
}

fn gen_value(prop: &Map<String, Value>, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    let example = prop.get("example");
    let typ = prop
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    match typ.as_str() {
        "object" => gen_object(prop, depth),
        "array" => match prop.get("items") {
            Some(Value::Object(items)) => Value::Array(vec![gen_value(items, depth + 1)]),
            _ => Value::Null,
        },
        "string" => match example {
            Some(Value::String(s)) => Value::String(s.clone()),
            _ => Value::String("string".into()),
        },
        "number" => match example {
            Some(Value::Number(n)) => Value::Number(n.clone()),
            _ => json!(0.0),
        },
        "integer" => match example.and_then(Value::as_f64) {
            Some(n) => json!(n.floor() as i64),
            None => json!(0),
        },
        "boolean" => match example {
            Some(Value::Bool(b)) => Value::Bool(*b),
            _ => Value::Bool(true),
        },
        _ => Value::Null,
    }
}

/// A small XML rendering of the generated value: objects become elements,
/// arrays repeat their element, scalars are escaped text.
fn to_xml(tag: &str, v: &Value) -> String {
    let mut out = String::new();
    write_xml(tag, v, &mut out);
    out
}

fn write_xml(tag: &str, v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            for item in items {
                write_xml(tag, item, out);
            }
        }
        Value::Null => {}
        _ => {
            out.push('<');
            out.push_str(tag);
            out.push('>');
            match v {
                Value::Object(m) => {
                    for (k, child) in m {
                        write_xml(k, child, out);
                    }
                }
                Value::String(s) => escape_xml(s, out),
                other => out.push_str(&other.to_string()),
            }
            out.push_str("</");
            out.push_str(tag);
            out.push('>');
        }
    }
}

fn escape_xml(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

impl Plugin for Mocking {
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
        let body = match &self.body {
            Body::Fixed(b) => b.clone(),
            Body::Templated(t) => Bytes::from(t.render(req, &[], false)),
        };
        let mut headers = self.fixed_headers.clone();
        for (name, t) in &self.templated_headers {
            if let Ok(v) = HeaderValue::from_str(&t.render(req, &[], false)) {
                headers.push((name.clone(), v));
            }
        }
        let answer = Rejection {
            status: self.status,
            body,
            headers,
        };
        match self.delay {
            None => Flow::Respond(answer),
            Some(d) => Flow::Wait(Box::pin(async move {
                tokio::time::sleep(d).await;
                Flow::Respond(answer)
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_rewrite::tests::{build, request};

    fn respond(conf: Value, uri: &str) -> Rejection {
        let p = build("mocking", conf).unwrap();
        match p.on_request(&mut request("GET", uri, &[])) {
            Flow::Respond(r) => r,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn header<'r>(r: &'r Rejection, name: &str) -> Vec<&'r str> {
        r.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn the_example_is_answered_with_status_content_type_and_mock_header() {
        let r = respond(json!({"response_example": "{\"a\":1}"}), "/");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"{\"a\":1}");
        assert_eq!(
            header(&r, "content-type"),
            ["application/json;charset=utf8"]
        );
        assert_eq!(header(&r, "x-mock-by"), ["portcullis"]);
    }

    #[test]
    fn status_content_type_and_headers_are_configurable() {
        let r = respond(
            json!({
                "response_example": "<p>hi $arg_name</p>",
                "response_status": 418,
                "content_type": "text/html",
                "with_mock_header": false,
                "response_headers": {"X-Env": "test", "X-Count": 3, "X-Id": "$arg_id"}
            }),
            "/?name=ann&id=7",
        );
        assert_eq!(r.status.as_u16(), 418);
        assert_eq!(&r.body[..], b"<p>hi ann</p>");
        assert_eq!(header(&r, "content-type"), ["text/html"]);
        assert!(header(&r, "x-mock-by").is_empty());
        assert_eq!(header(&r, "x-env"), ["test"]);
        assert_eq!(header(&r, "x-count"), ["3"]);
        assert_eq!(header(&r, "x-id"), ["7"]);
    }

    #[test]
    fn a_schema_alone_generates_an_example_from_its_types_and_examples() {
        let r = respond(
            json!({"response_schema": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "example": 42.7},
                    "name": {"type": "string", "example": "ann"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "owner": {"type": "object", "properties": {"admin": {"type": "boolean"}}},
                    "score": {"type": "number"}
                }
            }}),
            "/",
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({"id": 42, "name": "ann", "tags": ["string"], "owner": {"admin": true}, "score": 0.0})
        );
    }

    #[test]
    fn a_schema_with_an_xml_content_type_generates_xml() {
        let r = respond(
            json!({
                "content_type": "application/xml",
                "response_schema": {"properties": {"a": {"type": "string", "example": "x<y"}, "n": {"type": "array", "items": {"type": "integer"}}}}
            }),
            "/",
        );
        assert_eq!(&r.body[..], b"<data><a>x&lt;y</a><n>0</n></data>");
    }

    #[tokio::test]
    async fn a_delay_defers_the_answer() {
        let p = build("mocking", json!({"response_example": "late", "delay": 1})).unwrap();
        let started = std::time::Instant::now();
        let Flow::Wait(fut) = p.on_request(&mut request("GET", "/", &[])) else {
            panic!("a delayed mock waits");
        };
        let Flow::Respond(r) = fut.await else {
            panic!("then answers");
        };
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(&r.body[..], b"late");
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build("mocking", conf).err().unwrap();
        assert!(err(json!({}))
            .message
            .contains("response_example or response_schema"));
        assert_eq!(
            err(json!({"response_example": "x", "content_type": "image/png"})).field,
            "mocking.content_type"
        );
        assert_eq!(
            err(json!({"response_example": "x", "response_status": 42})).field,
            "mocking.response_status"
        );
        assert_eq!(
            err(json!({"response_example": "x", "response_headers": {"X-A": true}})).field,
            "mocking.response_headers.X-A"
        );
        assert_eq!(
            err(json!({"response_example": 1})).field,
            "mocking.response_example"
        );
    }
}
