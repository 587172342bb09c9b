//! request-validation: check request headers and the buffered body against
//! JSON Schemas before anything reaches the upstream (APISIX's plugin of
//! the same name: `header_schema`, `body_schema`, `rejected_code`,
//! `rejected_msg`), and, as a portcullis extension, the query arguments and
//! the route's path parameters (`query_schema`, `path_schema`, in
//! [`params`]).
//!
//! Schemas are compiled once, when the snapshot is built. Only references
//! inside the schema itself (`#/...`) resolve: a schema that points at a
//! URL or a file is refused then, so validation never does IO.
//!
//! The body is validated as APISIX does: JSON (the default, also without a
//! Content-Type) or `application/x-www-form-urlencoded`. The upstream must
//! parse exactly what was checked: a JSON body goes on as sent unless JSON
//! parsers could read it differently (a duplicate key, a number serde_json
//! reads inexactly; [`json_body`]), and is then re-encoded from the
//! validated value. The answer to a failure is the first error as plain
//! text, with the JSON pointer of the field, never the offending value.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, ValidationError, Validator};
use portcullis_core::request::percent_decode;
use portcullis_core::{ConfigError, Decision, Flow, Phase, Plugin, Rejection, RequestState};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

mod document;
mod json_body;
mod params;

use params::ParamSchema;

pub const NAME: &str = "request-validation";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Validate,
    priority: 2800,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Error texts are cut here: they go to the client and the log.
const MAX_ERROR_LEN: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    header_schema: Option<Map<String, Value>>,
    body_schema: Option<Map<String, Value>>,
    /// portcullis: the query arguments, as an object of names.
    query_schema: Option<Map<String, Value>>,
    /// portcullis: the path parameters the route's uri captures.
    path_schema: Option<Map<String, Value>>,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    /// APISIX names it `max_req_body_size` (default 64 MiB).
    #[serde(default = "default_max_body", alias = "max_req_body_size")]
    max_body_bytes: usize,
}

fn default_rejected_code() -> u16 {
    400
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "header_schema": {"type": "object"},
            "body_schema": {"type": "object"},
            "query_schema": {"type": "object"},
            "path_schema": {"type": "object"},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 400},
            "rejected_msg": {"type": "string", "minLength": 1, "maxLength": 256},
            "max_body_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_BODY}
        },
        "anyOf": [{"required": ["header_schema"]}, {"required": ["body_schema"]},
                  {"required": ["query_schema"]}, {"required": ["path_schema"]}],
        "additionalProperties": false
    })
}

struct RequestValidation {
    header_schema: Option<HeaderSchema>,
    path_schema: Option<ParamSchema>,
    query_schema: Option<ParamSchema>,
    body_schema: Option<BodySchema>,
    rejected_code: StatusCode,
    rejected_msg: Option<String>,
    max_body_bytes: usize,
}

/// The body schema compiled twice: for the borrowed document that a JSON
/// body is read into first ([`document`]), and for `serde_json::Value`,
/// which form bodies, error messages and the bodies the document does not
/// vouch for use.
struct BodySchema {
    borrowed: Validator<document::Borrowed>,
    value: Validator,
}

struct HeaderSchema {
    validator: Validator,
    /// Header names the schema spells with capitals. Headers arrive in
    /// lower case; APISIX's header table answers any spelling, so these
    /// are added under the schema's spelling too.
    aliases: Vec<(String, HeaderName)>,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    if conf.header_schema.is_none()
        && conf.body_schema.is_none()
        && conf.query_schema.is_none()
        && conf.path_schema.is_none()
    {
        return Err(ConfigError::new(
            "",
            "object matches none of the required: [\"header_schema\"] or [\"body_schema\"]",
        ));
    }
    if !(200..=599).contains(&conf.rejected_code) {
        return Err(ConfigError::new(
            "rejected_code",
            format!("expected {} to be between 200 and 599", conf.rejected_code),
        ));
    }
    let rejected_code = StatusCode::from_u16(conf.rejected_code)
        .map_err(|_| ConfigError::new("rejected_code", "not a status code"))?;
    if let Some(m) = &conf.rejected_msg {
        if m.is_empty() || m.len() > 256 {
            return Err(ConfigError::new(
                "rejected_msg",
                "must hold 1 to 256 characters",
            ));
        }
    }
    if conf.max_body_bytes == 0 {
        return Err(ConfigError::new("max_body_bytes", "must be at least 1"));
    }
    let header_schema = conf
        .header_schema
        .map(|s| {
            let schema = Value::Object(s);
            let validator = compile(&schema).map_err(|e| e.under("header_schema"))?;
            Ok::<_, ConfigError>(HeaderSchema {
                aliases: capitalised_headers(&schema),
                validator,
            })
        })
        .transpose()?;
    let body_schema = conf
        .body_schema
        .map(|s| {
            let schema = Value::Object(s);
            Ok::<_, ConfigError>(BodySchema {
                value: compile(&schema).map_err(|e| e.under("body_schema"))?,
                borrowed: compile(&schema).map_err(|e| e.under("body_schema"))?,
            })
        })
        .transpose()?;
    let param_schema = |field: &str, s: Map<String, Value>| {
        let schema = Value::Object(s);
        params::check_shape(field, &schema)?;
        let validator = compile(&schema).map_err(|e| e.under(field))?;
        Ok::<_, ConfigError>(ParamSchema::new(validator, &schema))
    };
    let path_schema = conf
        .path_schema
        .map(|s| param_schema("path_schema", s))
        .transpose()?;
    let query_schema = conf
        .query_schema
        .map(|s| param_schema("query_schema", s))
        .transpose()?;
    Ok(Arc::new(RequestValidation {
        header_schema,
        path_schema,
        query_schema,
        body_schema,
        rejected_code,
        rejected_msg: conf.rejected_msg,
        max_body_bytes: conf.max_body_bytes,
    }))
}

/// Compile a schema with no way to fetch anything. Draft 7 unless the
/// schema names its own `$schema` (APISIX's validator reads drafts 4-7).
fn compile<F: jsonschema::json::Json>(schema: &Value) -> Result<Validator<F>, ConfigError> {
    if let Some((path, target)) = external_ref(schema, String::new()) {
        return Err(ConfigError::new(
            path,
            format!(
                "$ref \"{}\" is not allowed: only references inside the schema (\"#...\") are resolved",
                truncate(&target, 100)
            ),
        ));
    }
    let mut options = jsonschema::options_for::<F>().offline();
    if schema.get("$schema").is_none() {
        options = options.with_draft(Draft::Draft7);
    }
    options.build(schema).map_err(|e| {
        ConfigError::new(
            "",
            format!("invalid schema: {}", truncate(&e.to_string(), 300)),
        )
    })
}

/// The first `$ref` that leaves the schema, with where it sits. Literal
/// data (`enum`, `const`, `default`, `examples`) is not searched.
fn external_ref(schema: &Value, at: String) -> Option<(String, String)> {
    match schema {
        Value::Object(m) => {
            if let Some(Value::String(target)) = m.get("$ref") {
                if !target.starts_with('#') {
                    return Some((join(&at, "$ref"), target.clone()));
                }
            }
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "enum" | "const" | "default" | "examples"))
                .find_map(|(k, v)| external_ref(v, join(&at, k)))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| external_ref(v, format!("{at}[{i}]"))),
        _ => None,
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn capitalised_headers(schema: &Value) -> Vec<(String, HeaderName)> {
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.keys().cloned());
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string));
    let mut out: Vec<(String, HeaderName)> = properties
        .chain(required)
        .filter(|name| name.bytes().any(|b| b.is_ascii_uppercase()))
        .filter_map(|name| {
            let header = HeaderName::from_bytes(name.as_bytes()).ok()?;
            Some((name, header))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Cut `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// APISIX's wording for the first failure (`property "x" is required`,
/// `property "x" validation failed: ...`), plus the JSON pointer of the
/// field. The value itself is masked: it is the caller's data.
fn describe(err: &ValidationError<'_>) -> String {
    let pointer = err.instance_path().to_string();
    let text = match err.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_string);
            if pointer.is_empty() {
                format!("property \"{name}\" is required")
            } else {
                format!("property \"{name}\" is required at {pointer}")
            }
        }
        _ => {
            let detail = err.masked().to_string();
            match pointer.split('/').nth(1) {
                Some(top) => format!(
                    "property \"{}\" validation failed: {detail} at {pointer}",
                    top.replace("~1", "/").replace("~0", "~")
                ),
                None => format!("validation failed: {detail}"),
            }
        }
    };
    truncate(&text, MAX_ERROR_LEN)
}

/// The first failure of `instance`, described; `None` when it is valid.
/// `is_valid` is the cheap question; errors are collected only on failure.
fn first_error(validator: &Validator, instance: &Value) -> Option<String> {
    if validator.is_valid(instance) {
        return None;
    }
    Some(
        validator
            .iter_errors(instance)
            .next()
            .map_or_else(|| "validation failed".to_string(), |e| describe(&e)),
    )
}

enum BodyKind {
    Json,
    Form,
}

impl RequestValidation {
    fn reject(&self, req: &mut RequestState, error: String) -> Flow {
        let body = match &self.rejected_msg {
            Some(m) => Bytes::from(m.clone()),
            None => Bytes::from(error.clone()),
        };
        req.decisions.push(Decision::reject(NAME, error));
        Flow::Respond(Rejection::plain(self.rejected_code, body))
    }

    fn check_headers(&self, schema: &HeaderSchema, req: &RequestState) -> Result<(), String> {
        let mut headers = Map::new();
        for name in req.head.headers.keys() {
            headers.insert(name.as_str().to_string(), header_value(req, name));
        }
        for (spelling, name) in &schema.aliases {
            if req.head.headers.contains_key(name) {
                headers.insert(spelling.clone(), header_value(req, name));
            }
        }
        first_error(&schema.validator, &Value::Object(headers)).map_or(Ok(()), Err)
    }

    /// Path parameters, then query arguments; the first failure, named as
    /// a body failure is but with where it was found.
    fn check_params(&self, req: &RequestState) -> Result<(), String> {
        let checks = [
            (
                "path",
                self.path_schema.as_ref().map(|s| (s, s.path_object(req))),
            ),
            (
                "query",
                self.query_schema.as_ref().map(|s| (s, s.query_object(req))),
            ),
        ];
        for (what, check) in checks {
            let Some((schema, value)) = check else {
                continue;
            };
            if let Some(e) = first_error(&schema.validator, &value) {
                return Err(truncate(&format!("{what}: {e}"), MAX_ERROR_LEN));
            }
        }
        Ok(())
    }

    fn body_kind(req: &RequestState) -> Result<BodyKind, String> {
        let mut types = req.head.headers.get_all(http::header::CONTENT_TYPE).iter();
        let Some(ct) = types.next() else {
            return Ok(BodyKind::Json);
        };
        if types.next().is_some() {
            return Err("duplicated Content-Type header".into());
        }
        // Borrowed (no copy) unless the value is not UTF-8.
        let ct = String::from_utf8_lossy(ct.as_bytes());
        let media = ct.split(';').next().unwrap_or("").trim();
        let json_suffix = media
            .len()
            .checked_sub(5)
            .is_some_and(|at| media.as_bytes()[at..].eq_ignore_ascii_case(b"+json"));
        if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Ok(BodyKind::Form)
        } else if media.eq_ignore_ascii_case("application/json") || json_suffix {
            Ok(BodyKind::Json)
        } else {
            Err(format!(
                "unsupported Content-Type \"{}\": expected application/json or application/x-www-form-urlencoded",
                truncate(&media.to_ascii_lowercase(), 64)
            ))
        }
    }

    /// Decode and check the body; for a JSON body that parsers could read
    /// differently, the re-encoded body to send on instead.
    fn check_body(&self, schema: &BodySchema, req: &RequestState) -> Result<Option<Bytes>, String> {
        let kind = Self::body_kind(req)?;
        let raw = req.body.as_deref().unwrap_or_default();
        if raw.is_empty() {
            return Err("request body is empty".into());
        }
        if raw.len() > self.max_body_bytes {
            return Err("request body is too large".into());
        }
        match kind {
            BodyKind::Json => {
                // The common case: a body the borrowed document vouches
                // for, valid, goes on as sent. Anything else is decided
                // (and its error worded) on a `Value`.
                if let Some(document) = document::parse(raw) {
                    if schema.borrowed.is_valid(document.root()) {
                        return Ok(None);
                    }
                }
                let body = json_body::parse(raw)
                    .map_err(|e| truncate(&format!("invalid JSON body: {e}"), MAX_ERROR_LEN))?;
                if let Some(e) = first_error(&schema.value, &body.value) {
                    return Err(e);
                }
                match body.differential {
                    None => Ok(None),
                    Some(_) => serde_json::to_vec(&body.value)
                        .map(|encoded| Some(Bytes::from(encoded)))
                        .map_err(|e| {
                            truncate(&format!("JSON body not re-encoded: {e}"), MAX_ERROR_LEN)
                        }),
                }
            }
            BodyKind::Form => first_error(&schema.value, &decode_form(raw)).map_or(Ok(None), Err),
        }
    }
}

fn header_value(req: &RequestState, name: &HeaderName) -> Value {
    let mut values = req
        .head
        .headers
        .get_all(name)
        .iter()
        .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()));
    match (values.next(), values.next()) {
        (Some(one), None) => one,
        (Some(first), Some(second)) => {
            Value::Array([first, second].into_iter().chain(values).collect())
        }
        (None, _) => Value::Null,
    }
}

/// `application/x-www-form-urlencoded` as nginx's `decode_args` reads it:
/// a name without `=` is `true`, a repeated name an array.
fn decode_form(raw: &[u8]) -> Value {
    let text = String::from_utf8_lossy(raw);
    let mut out = Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Value::String(percent_decode(v).into_owned())),
            None => (pair, Value::Bool(true)),
        };
        let k = percent_decode(k).into_owned();
        match out.get_mut(&k) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

impl Plugin for RequestValidation {
    fn name(&self) -> &'static str {
        NAME
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    fn body_limit(&self) -> Option<usize> {
        self.body_schema.as_ref().map(|_| self.max_body_bytes)
    }

    fn on_request(&self, req: &mut RequestState) -> Flow {
        if let Some(schema) = &self.header_schema {
            if let Err(e) = self.check_headers(schema, req) {
                return self.reject(req, e);
            }
        }
        if let Err(e) = self.check_params(req) {
            return self.reject(req, e);
        }
        if let Some(schema) = &self.body_schema {
            match self.check_body(schema, req) {
                Err(e) => return self.reject(req, e),
                Ok(Some(encoded)) => {
                    if req.head.headers.contains_key(http::header::CONTENT_LENGTH) {
                        req.head.headers.insert(
                            http::header::CONTENT_LENGTH,
                            HeaderValue::from(encoded.len()),
                        );
                    }
                    req.body = Some(encoded);
                }
                Ok(None) => {}
            }
        }
        req.decisions.push(Decision::allow(NAME));
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::Outcome;

    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;
    use crate::registry::build_plugin;

    fn try_build(conf: Value) -> Result<Arc<dyn Plugin>, ConfigError> {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        build_plugin(NAME, &conf, &ctx).map(Option::unwrap)
    }

    fn customer_api() -> Arc<dyn Plugin> {
        try_build(json!({"body_schema": {"type": "object",
            "properties": {"customer_id": {"type": "string", "minLength": 1},
                           "action": {"type": "string", "enum": ["read", "update"]}},
            "required": ["customer_id", "action"]}}))
        .unwrap()
    }

    fn request(content_type: Option<&str>, body: &[u8]) -> RequestState {
        let mut b = http::Request::builder()
            .method("POST")
            .uri("/internal/customers/profile");
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        b = b.header("content-length", body.len());
        let (head, ()) = b.body(()).unwrap().into_parts();
        let mut req = RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080);
        req.body = Some(Bytes::copy_from_slice(body));
        req
    }

    const JSON: Option<&str> = Some("application/json");

    fn rejection(flow: Flow) -> (StatusCode, String) {
        match flow {
            Flow::Respond(r) => (r.status, String::from_utf8(r.body.to_vec()).unwrap()),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// Passes `body` through `p` and answers what goes to the upstream:
    /// the body and its content-length.
    fn forwarded(p: &Arc<dyn Plugin>, body: &[u8]) -> (Vec<u8>, String) {
        let mut req = request(JSON, body);
        let flow = p.on_request(&mut req);
        assert!(
            matches!(flow, Flow::Continue),
            "{}: {flow:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(req.decisions[0].outcome, Outcome::Allow);
        let length = req.header_str("content-length").unwrap().to_string();
        (req.body.unwrap().to_vec(), length)
    }

    #[test]
    fn valid_json_body_passes_and_is_forwarded_as_sent() {
        let body = br#"{ "customer_id": "cus_123", "action": "read" }"#;
        let mut req = request(JSON, body);
        let sent = req.body.clone().unwrap();
        assert!(matches!(
            customer_api().on_request(&mut req),
            Flow::Continue
        ));
        assert_eq!(req.body.as_deref(), Some(&body[..]));
        // The very buffer: no copy.
        assert_eq!(req.body.as_ref().unwrap().as_ptr(), sent.as_ptr());
        assert_eq!(req.header_str("content-length"), Some("46"));
        assert_eq!(req.decisions[0].outcome, Outcome::Allow);
    }

    #[test]
    fn formatting_of_a_valid_body_reaches_the_upstream_unchanged() {
        let p = try_build(json!({"body_schema": {"type": "object",
            "properties": {"customer_id": {"type": "string"},
                           "n": {"type": "array", "items": {"type": "number"}}},
            "required": ["customer_id"]}}))
        .unwrap();
        let body = "\r\n\t{\n  \"customer_id\" :\t\"cus_\\u0031\\/2\u{e9}\",\r\n  \"n\": [ 1.50, 1E2, -0, 0.1e-3, 10.5, 18446744073709551615 ],\n  \"extra\": {\"a\": [ ], \"A\": { } }\n}\n  ";
        let (out, length) = forwarded(&p, body.as_bytes());
        assert_eq!(out, body.as_bytes());
        assert_eq!(length, body.len().to_string());
    }

    #[test]
    fn duplicate_keys_reach_the_upstream_as_validated() {
        let mut req = request(
            JSON,
            br#"{"customer_id": "c", "action": "delete", "action": "read"}"#,
        );
        assert!(matches!(
            customer_api().on_request(&mut req),
            Flow::Continue
        ));
        assert_eq!(
            req.body.as_deref(),
            Some(&br#"{"customer_id":"c","action":"read"}"#[..])
        );
        assert_eq!(req.header_str("content-length"), Some("35"));
        // Also when one spelling hides behind escapes, at any depth.
        let (out, length) = forwarded(
            &customer_api(),
            br#"{"customer_id": "c", "action": "read", "\u0061ction": "read", "x": {"k": 1, "k": 2}}"#,
        );
        assert_eq!(out, br#"{"customer_id":"c","action":"read","x":{"k":2}}"#);
        assert_eq!(length, out.len().to_string());
        // The validator sees the last value: a bad one last is refused.
        let mut req = request(
            JSON,
            br#"{"customer_id": "c", "action": "read", "action": "delete"}"#,
        );
        let (status, _) = rejection(customer_api().on_request(&mut req));
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    /// Numbers serde_json reads inexactly would say another value to an
    /// upstream that keeps big integers or decimals exactly (Python's
    /// `json` does integers): such a body goes on as the validator read it.
    #[test]
    fn numbers_read_inexactly_reach_the_upstream_as_validated() {
        let p = try_build(json!({"body_schema": {"type": "object",
            "properties": {"amount": {"type": "number", "maximum": 1e29, "exclusiveMinimum": -1}}}}))
        .unwrap();
        for (body, validated) in [
            (
                &br#"{"amount": 100000000000000000000000000001}"#[..],
                &br#"{"amount":1e+29}"#[..],
            ),
            (br#"{"amount": 1e-400}"#, br#"{"amount":0.0}"#),
            (
                br#"{"amount": 1.00000000000000000001, "n": 7}"#,
                br#"{"amount":1.0,"n":7}"#,
            ),
            (
                br#"{"amount": 18446744073709551616}"#,
                br#"{"amount":1.8446744073709552e+19}"#,
            ),
        ] {
            let (out, length) = forwarded(&p, body);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(validated)
            );
            assert_eq!(length, out.len().to_string());
        }
        // Read exactly beyond what an f64 holds: the upstream sees it too.
        let (_, body) = rejection(p.on_request(&mut request(
            JSON,
            br#"{"amount": 100000000000000000000000000001e1}"#,
        )));
        assert!(
            body.starts_with("property \"amount\" validation failed"),
            "{body}"
        );
    }

    /// What other parsers might read differently and serde_json refuses.
    #[test]
    fn bodies_other_parsers_might_read_otherwise_are_refused() {
        for body in [
            &b"\xEF\xBB\xBF{\"customer_id\": \"c\", \"action\": \"read\"}"[..],
            br#"{"customer_id": "c\ud800", "action": "read"}"#,
            br#"{"customer_id": "c\udc00x", "action": "read"}"#,
            b"{\"customer_id\": \"c\xed\xa0\x80\", \"action\": \"read\"}",
            b"{\"customer_id\": \"c\", \"action\": \"read\"}\x00",
            b"{\"customer_id\": \"c\", \"action\": \"read\"} {}",
            b"{\"customer_id\": \"c\x00\", \"action\": \"read\"}",
            br#"{"customer_id": "c", "action": "read", "n": NaN}"#,
            br#"{"customer_id": "c", "action": "read",}"#,
            br#"{"customer_id": "c", "action": "read", "n": 1e400}"#,
        ] {
            let (status, text) = rejection(customer_api().on_request(&mut request(JSON, body)));
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(
                text.starts_with("invalid JSON body: "),
                "{}: {text}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn value_outside_the_enum_is_refused_with_its_pointer_and_without_its_value() {
        let mut req = request(JSON, br#"{"customer_id": "cus_123", "action": "delete"}"#);
        let (status, body) = rejection(customer_api().on_request(&mut req));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.starts_with("property \"action\" validation failed: ")
                && body.ends_with(" at /action"),
            "{body}"
        );
        assert!(!body.contains("delete"), "{body}");
        assert_eq!(req.decisions[0].reason.as_deref(), Some(body.as_str()));
    }

    #[test]
    fn missing_required_field_is_named_as_apisix_names_it() {
        let mut req = request(JSON, br#"{"customer_id": "cus_123"}"#);
        let (status, body) = rejection(customer_api().on_request(&mut req));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "property \"action\" is required");
    }

    #[test]
    fn empty_and_non_json_bodies_are_refused() {
        let (status, body) = rejection(customer_api().on_request(&mut request(JSON, b"")));
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "request body is empty")
        );
        let (status, body) =
            rejection(customer_api().on_request(&mut request(JSON, b"customer_id=1")));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.starts_with("invalid JSON body: "), "{body}");
    }

    #[test]
    fn body_without_content_type_is_read_as_json() {
        let mut req = request(None, br#"{"customer_id": "c", "action": "update"}"#);
        assert!(matches!(
            customer_api().on_request(&mut req),
            Flow::Continue
        ));
    }

    #[test]
    fn other_content_types_and_duplicated_content_type_are_refused() {
        let mut req = request(
            Some("text/plain"),
            br#"{"customer_id": "c", "action": "read"}"#,
        );
        let (status, body) = rejection(customer_api().on_request(&mut req));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.starts_with("unsupported Content-Type \"text/plain\""),
            "{body}"
        );
        let mut req = request(JSON, br#"{"customer_id": "c", "action": "read"}"#);
        req.head.headers.append(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let (_, body) = rejection(customer_api().on_request(&mut req));
        assert_eq!(body, "duplicated Content-Type header");
    }

    #[test]
    fn form_bodies_are_validated_as_decoded_arguments() {
        let form = Some("application/x-www-form-urlencoded; charset=utf-8");
        let mut req = request(form, b"customer_id=cus%20123&action=update");
        assert!(matches!(
            customer_api().on_request(&mut req),
            Flow::Continue
        ));
        // Form bodies go on as they came.
        assert_eq!(
            req.body.as_deref(),
            Some(&b"customer_id=cus%20123&action=update"[..])
        );
        let mut req = request(form, b"customer_id=&action=read");
        let (_, body) = rejection(customer_api().on_request(&mut req));
        assert!(
            body.starts_with("property \"customer_id\" validation failed"),
            "{body}"
        );
        assert_eq!(
            decode_form(b"a=1&a=2&flag&b=x+y"),
            json!({"a": ["1", "2"], "flag": true, "b": "x y"})
        );
    }

    #[test]
    fn header_schema_is_checked_before_the_body() {
        let p = try_build(json!({
            "header_schema": {"type": "object", "required": ["X-Tenant"],
                "properties": {"X-Tenant": {"type": "string", "enum": ["a", "b"]}}},
            "rejected_msg": "customize reject message for header_schema.required"
        }))
        .unwrap();
        assert_eq!(p.body_limit(), None);
        let mut req = request(None, b"");
        let (status, body) = rejection(p.on_request(&mut req));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "customize reject message for header_schema.required");
        assert_eq!(
            req.decisions[0].reason.as_deref(),
            Some("property \"X-Tenant\" is required")
        );
        let mut req = request(None, b"");
        req.head
            .headers
            .insert("x-tenant", HeaderValue::from_static("a"));
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
    }

    fn pets_api() -> Arc<dyn Plugin> {
        try_build(json!({
            "path_schema": {"type": "object", "required": ["petId"],
                "properties": {"petId": {"type": "integer", "minimum": 1}}},
            "query_schema": {"type": "object", "required": ["limit"],
                "properties": {"limit": {"type": "integer", "maximum": 100},
                               "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                               "debug": {"type": "boolean"}}}
        }))
        .unwrap()
    }

    fn get(uri: &str, pet_id: &str) -> RequestState {
        let (head, ()) = http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts();
        let mut req = RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080);
        req.path_params = vec![("petId".into(), pet_id.into())];
        req
    }

    #[test]
    fn path_and_query_text_is_validated_as_the_schema_types_it() {
        let p = pets_api();
        assert_eq!(p.body_limit(), None);
        for uri in [
            "/pets/7?limit=10",
            "/pets/7?limit=100&tags=a&tags=b&debug=true",
        ] {
            assert!(
                matches!(p.on_request(&mut get(uri, "7")), Flow::Continue),
                "{uri}"
            );
        }
        let (status, body) = rejection(p.on_request(&mut get("/pets/x?limit=10", "x")));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.starts_with("path: property \"petId\" validation failed"),
            "{body}"
        );
        let (_, body) = rejection(p.on_request(&mut get("/pets/0?limit=10", "0")));
        assert!(body.starts_with("path: property \"petId\""), "{body}");
        let (_, body) = rejection(p.on_request(&mut get("/pets/7", "7")));
        assert_eq!(body, "query: property \"limit\" is required");
        for uri in [
            "/pets/7?limit=101",
            "/pets/7?limit=ten",
            "/pets/7?limit=1&limit=2",
            "/pets/7?limit=1&tags=a&tags=b&tags=c",
            "/pets/7?limit=1&debug=yes",
        ] {
            let (status, body) = rejection(p.on_request(&mut get(uri, "7")));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(body.starts_with("query: property "), "{uri}: {body}");
        }
    }

    #[test]
    fn parameter_schemas_must_describe_an_object() {
        let err = try_build(json!({"query_schema": {"type": "string"}}))
            .err()
            .unwrap();
        assert_eq!(err.field, "request-validation.query_schema.type");
        let err = try_build(json!({"path_schema": {"properties": {"a": {"$ref": "https://x/y"}}}}))
            .err()
            .unwrap();
        assert_eq!(
            err.field,
            "request-validation.path_schema.properties.a.$ref"
        );
    }

    #[test]
    fn rejected_code_is_honoured() {
        let p =
            try_build(json!({"body_schema": {"type": "object"}, "rejected_code": 422})).unwrap();
        let (status, _) = rejection(p.on_request(&mut request(JSON, b"[]")));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn body_limit_is_asked_for_only_with_a_body_schema() {
        assert_eq!(customer_api().body_limit(), Some(DEFAULT_MAX_BODY));
        let p = try_build(json!({"body_schema": {}, "max_req_body_size": 10})).unwrap();
        assert_eq!(p.body_limit(), Some(10));
    }

    #[test]
    fn hostile_bodies_are_refused_without_panicking() {
        let p = try_build(json!({"body_schema": {"type": "object"}})).unwrap();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let (_, body) = rejection(p.on_request(&mut request(JSON, deep.as_bytes())));
        assert!(body.contains("recursion limit"), "{body}");
        let (_, body) = rejection(p.on_request(&mut request(JSON, b"{\"a\": 1e400}")));
        assert!(body.starts_with("invalid JSON body"), "{body}");
        let (_, body) = rejection(p.on_request(&mut request(JSON, b"{\"a\": \"\xff\xfe\"}")));
        assert!(body.starts_with("invalid JSON body"), "{body}");
        let long = format!("{{\"{}\": 1", "k".repeat(10_000));
        let (_, body) = rejection(p.on_request(&mut request(JSON, long.as_bytes())));
        assert!(body.len() <= MAX_ERROR_LEN + 3, "{}", body.len());
    }

    #[test]
    fn long_error_texts_are_cut_short() {
        let p = try_build(json!({"body_schema": {"type": "object",
            "properties": {"a": {"type": "string", "enum": ["x".repeat(500)]}}}}))
        .unwrap();
        let (_, body) = rejection(p.on_request(&mut request(JSON, b"{\"a\": \"y\"}")));
        assert!(body.len() <= MAX_ERROR_LEN + 3, "{}", body.len());
    }

    #[test]
    fn remote_and_file_refs_are_refused_at_build() {
        for target in [
            "https://example.com/s.json",
            "file:///etc/passwd",
            "other.json#/a",
        ] {
            let err = try_build(json!({"body_schema": {"type": "object",
                "properties": {"a": {"$ref": target}}}}))
            .err()
            .unwrap();
            assert_eq!(
                err.field,
                "request-validation.body_schema.properties.a.$ref"
            );
            assert!(err.message.contains("is not allowed"), "{}", err.message);
        }
        let local = try_build(json!({"body_schema": {
            "definitions": {"id": {"type": "string"}},
            "properties": {"a": {"$ref": "#/definitions/id"}}}}));
        assert!(local.is_ok());
    }

    #[test]
    fn configs_without_a_schema_or_with_an_invalid_one_are_refused() {
        let err = try_build(json!({"rejected_code": 400})).err().unwrap();
        assert!(
            err.message.contains("object matches none of the required"),
            "{}",
            err.message
        );
        let err = try_build(json!({"body_schema": {"type": "no-such-type"}}))
            .err()
            .unwrap();
        assert_eq!(err.field, "request-validation.body_schema");
        let err = try_build(json!({"body_schema": {}, "rejected_code": 10000}))
            .err()
            .unwrap();
        assert_eq!(err.field, "request-validation.rejected_code");
    }
}
