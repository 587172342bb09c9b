//! response-rewrite: change the response before it goes to the client — its
//! status (`status_code`), its headers (`add` / `set` / `remove`, or the
//! flat map meaning `set`), and its body (`body`, optionally base64, or regex
//! `filters`), optionally only when `vars` match. APISIX's plugin of the
//! same name.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::StatusCode;
use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use portcullis_router::expr::{Expr, VarLookup};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::proxy_rewrite::{AddForm, HeaderOps, Replacement};
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "response-rewrite",
    phase: Phase::BeforeProxy,
    priority: 899,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

const DEFAULT_MAX_BODY: usize = 67_108_864;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    headers: Option<Value>,
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    status_code: Option<u16>,
    vars: Option<Value>,
    filters: Option<Vec<FilterConf>>,
    #[serde(default = "default_max_body")]
    max_resp_body_size: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConf {
    regex: String,
    #[serde(default = "default_scope")]
    scope: String,
    replace: String,
    #[serde(default = "default_options")]
    options: String,
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}
fn default_scope() -> String {
    "once".into()
}
fn default_options() -> String {
    "jo".into()
}

fn schema() -> Value {
    let header_value = json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
    json!({
        "type": "object",
        "properties": {
            "max_resp_body_size": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_BODY},
            "headers": {"anyOf": [
                {"type": "object", "minProperties": 1, "patternProperties": {"^[^:]+$": header_value}},
                {"properties": {
                    "add": {"type": "array", "minItems": 1,
                            "items": {"type": "string", "pattern": "^[^:]+:[^:]*[^/]$"}},
                    "set": {"type": "object", "minProperties": 1,
                            "patternProperties": {"^[^:]+$": header_value}},
                    "remove": {"type": "array", "minItems": 1,
                               "items": {"type": "string", "pattern": "^[^:]+$"}}
                }}
            ]},
            "body": {"type": "string"},
            "body_base64": {"type": "boolean", "default": false},
            "status_code": {"type": "integer", "minimum": 200, "maximum": 598},
            "vars": {"type": "array"},
            "filters": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["regex", "replace"],
                    "properties": {
                        "regex": {"type": "string", "minLength": 1},
                        "scope": {"type": "string", "enum": ["once", "global"], "default": "once"},
                        "replace": {"type": "string"},
                        "options": {"type": "string", "default": "jo"}
                    },
                    "additionalProperties": false
                }
            }
        },
        "dependencies": {
            "body": {"not": {"required": ["filters"]}},
            "filters": {"not": {"required": ["body"]}}
        },
        "additionalProperties": false
    })
}

struct Filter {
    regex: regex::bytes::Regex,
    replace: Replacement,
    global: bool,
}

struct ResponseRewrite {
    status: Option<StatusCode>,
    body: Option<Bytes>,
    filters: Vec<Filter>,
    headers: Option<HeaderOps>,
    vars: Option<Expr>,
    max_body: usize,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    if conf.body.is_some() && conf.filters.is_some() {
        return Err(ConfigError::new(
            "filters",
            "body and filters can not be set together",
        ));
    }
    let status = match conf.status_code {
        None => None,
        Some(c @ 200..=598) => Some(
            StatusCode::from_u16(c)
                .map_err(|_| ConfigError::new("status_code", "not a status code"))?,
        ),
        Some(c) => {
            return Err(ConfigError::new(
                "status_code",
                format!("{c} is not between 200 and 598"),
            ))
        }
    };
    let body = match (&conf.body, conf.body_base64) {
        (None, false) => None,
        (Some(b), false) => Some(Bytes::from(b.clone())),
        (Some(b), true) if !b.is_empty() => {
            Some(Bytes::from(decode_base64(b).ok_or_else(|| {
                ConfigError::new("body", "invalid base64 content")
            })?))
        }
        _ => return Err(ConfigError::new("body", "invalid base64 content")),
    };
    let mut filters = Vec::new();
    if let Some(list) = &conf.filters {
        if list.is_empty() {
            return Err(ConfigError::new(
                "filters",
                "expect array to have at least 1 items",
            ));
        }
        for (i, f) in list.iter().enumerate() {
            filters.push(compile_filter(f).map_err(|e| e.under(&format!("filters[{i}]")))?);
        }
    }
    let headers = match &conf.headers {
        None => None,
        Some(h) => Some(HeaderOps::parse(h, AddForm::Lines).map_err(|e| e.under("headers"))?),
    };
    let vars = match &conf.vars {
        None => None,
        Some(v) => {
            let expr = Expr::compile(v).map_err(|e| {
                ConfigError::new(
                    format!("vars{}", e.path()),
                    format!("failed to validate the 'vars' expression: {}", e.reason()),
                )
            })?;
            if (body.is_some() || !filters.is_empty()) && reads_response(v) {
                return Err(ConfigError::new(
                    "vars",
                    "vars that read the response (status, upstream_status, upstream_http_*, \
                     sent_http_*) can not yet be combined with body or filters",
                ));
            }
            Some(expr)
        }
    };
    if conf.max_resp_body_size == 0 {
        return Err(ConfigError::new("max_resp_body_size", "must be at least 1"));
    }
    Ok(Arc::new(ResponseRewrite {
        status,
        body,
        filters,
        headers,
        vars,
        max_body: conf.max_resp_body_size,
    }))
}

/// `ngx.decode_base64`: the standard alphabet, padding optional.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .ok()
}

fn compile_filter(f: &FilterConf) -> Result<Filter, ConfigError> {
    if f.regex.is_empty() {
        return Err(ConfigError::new("regex", "must not be empty"));
    }
    let global = match f.scope.as_str() {
        "once" => false,
        "global" => true,
        other => {
            return Err(ConfigError::new(
                "scope",
                format!("\"{other}\" is not one of once, global"),
            ))
        }
    };
    // PCRE options as `ngx.re` takes them: i, m, s, x change matching; a
    // anchors; j, o, u, d, D, J, U only tune the engine.
    let mut anchored = false;
    for c in f.options.chars() {
        match c {
            'i' | 'm' | 's' | 'x' | 'j' | 'o' | 'u' | 'U' | 'd' | 'D' | 'J' => {}
            'a' => anchored = true,
            other => {
                return Err(ConfigError::new(
                    "options",
                    format!("unknown regex option '{other}'"),
                ))
            }
        }
    }
    let pattern = if anchored {
        format!(r"\A(?:{})", f.regex)
    } else {
        f.regex.clone()
    };
    let regex = regex::bytes::RegexBuilder::new(&pattern)
        .size_limit(portcullis_router::expr::REGEX_SIZE_LIMIT)
        .case_insensitive(f.options.contains('i'))
        .multi_line(f.options.contains('m'))
        .dot_matches_new_line(f.options.contains('s'))
        .ignore_whitespace(f.options.contains('x'))
        .build()
        .map_err(|e| {
            ConfigError::new(
                "regex",
                format!("regex \"{}\" validation failed: {e}", f.regex),
            )
        })?;
    let replace = Replacement::parse(&f.replace).map_err(|e| ConfigError::new("replace", e))?;
    Ok(Filter {
        regex,
        replace,
        global,
    })
}

/// Whether a `vars` expression names a variable only the response has.
fn reads_response(v: &Value) -> bool {
    match v {
        Value::Array(items) => {
            let names_response = items
                .first()
                .and_then(Value::as_str)
                .is_some_and(is_response_var);
            names_response || items.iter().any(reads_response)
        }
        _ => false,
    }
}

fn is_response_var(name: &str) -> bool {
    name == "status"
        || name == "upstream_status"
        || name.starts_with("upstream_http_")
        || name.starts_with("sent_http_")
}

/// The request's variables, and the response's when there is one:
/// `status`, `upstream_status`, `upstream_http_*` / `sent_http_*` (response
/// headers).
struct ResponseVars<'a> {
    req: &'a RequestState,
    status: Option<StatusCode>,
    headers: Option<&'a HeaderMap>,
}

impl VarLookup for ResponseVars<'_> {
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if name == "status" || name == "upstream_status" {
            return self.status.map(|s| Cow::Owned(s.as_u16().to_string()));
        }
        if let Some(h) = name
            .strip_prefix("upstream_http_")
            .or_else(|| name.strip_prefix("sent_http_"))
        {
            let headers = self.headers?;
            return headers
                .get(h.replace('_', "-"))
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed);
        }
        self.req.var(name)
    }
}

impl ResponseRewrite {
    fn rewrites_body(&self) -> bool {
        self.body.is_some() || !self.filters.is_empty()
    }

    fn matches(&self, vars: &dyn VarLookup) -> bool {
        self.vars.as_ref().is_none_or(|e| e.eval(vars))
    }
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    /// Filters work on the plain body: ask the upstream not to compress it.
    fn on_request(&self, req: &mut RequestState) -> Flow {
        if !self.filters.is_empty() {
            req.head.headers.remove(header::ACCEPT_ENCODING);
        }
        Flow::Continue
    }

    fn on_response(&self, req: &RequestState, resp: &mut http::response::Parts) {
        let matched = self.matches(&ResponseVars {
            req,
            status: Some(resp.status),
            headers: Some(&resp.headers),
        });
        if !matched {
            return;
        }
        if let Some(s) = self.status {
            resp.status = s;
        }
        if self.rewrites_body() {
            // The proxy sets the new length once the body is rewritten.
            resp.headers.remove(header::CONTENT_LENGTH);
            resp.headers.remove(header::LAST_MODIFIED);
            resp.headers.remove(header::ETAG);
            if self.body.is_some() {
                resp.headers.remove(header::CONTENT_ENCODING);
            }
        }
        if let Some(ops) = &self.headers {
            // Header values may name response variables too; resolve them
            // against the response as the upstream sent it.
            let edits = ops.edits(
                &ResponseVars {
                    req,
                    status: Some(resp.status),
                    headers: Some(&resp.headers),
                },
                &[],
            );
            crate::proxy_rewrite::apply_edits(&mut resp.headers, edits);
        }
    }

    fn rewrites_response_body(&self) -> bool {
        self.rewrites_body()
    }

    fn on_response_body(&self, req: &RequestState, body: Bytes) -> Bytes {
        // `build` refused `vars` on response variables together with a body
        // rewrite, so the request's variables decide the same as in
        // on_response.
        let vars = ResponseVars {
            req,
            status: None,
            headers: None,
        };
        if !self.matches(&vars) {
            return body;
        }
        if let Some(b) = &self.body {
            return b.clone();
        }
        if self.filters.is_empty() || is_compressed(&body) {
            return body;
        }
        let mut current: Vec<u8> = if body.len() > self.max_body {
            body[..self.max_body].to_vec()
        } else {
            body.to_vec()
        };
        for f in &self.filters {
            current = apply_filter(f, &current);
        }
        Bytes::from(current)
    }
}

/// A gzip body (the upstream compressed despite the stripped
/// `Accept-Encoding`) is passed through untouched rather than corrupted.
fn is_compressed(body: &[u8]) -> bool {
    body.starts_with(&[0x1f, 0x8b])
}

fn apply_filter(f: &Filter, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut last = 0;
    for caps in f.regex.captures_iter(input) {
        let Some(m) = caps.get(0) else { continue };
        out.extend_from_slice(&input[last..m.start()]);
        f.replace.expand_bytes_into(&caps, &mut out);
        last = m.end();
        if !f.global {
            break;
        }
    }
    out.extend_from_slice(&input[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_rewrite::tests::{build, request};

    fn upstream(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn status_and_headers_are_rewritten() {
        let p = build(
            "response-rewrite",
            json!({
                "status_code": 202,
                "headers": {
                    "add": ["X-Added: one", "X-Added:two"],
                    "set": {"X-Server": "portcullis", "X-Route-Uri": "$uri", "X-Up": "$upstream_http_x_version"},
                    "remove": ["Server"]
                }
            }),
        )
        .unwrap();
        assert!(!p.rewrites_response_body());
        let req = request("GET", "/orders", &[]);
        let mut resp = upstream(
            200,
            &[("server", "nginx"), ("x-server", "old"), ("x-version", "7")],
        );
        p.on_response(&req, &mut resp);
        assert_eq!(resp.status.as_u16(), 202);
        let added: Vec<_> = resp.headers.get_all("x-added").iter().collect();
        assert_eq!(added, ["one", "two"]);
        assert_eq!(resp.headers.get("x-server").unwrap(), "portcullis");
        assert_eq!(resp.headers.get("x-route-uri").unwrap(), "/orders");
        assert_eq!(resp.headers.get("x-up").unwrap(), "7");
        assert!(resp.headers.get("server").is_none());
    }

    #[test]
    fn the_flat_headers_form_sets_headers() {
        let p = build(
            "response-rewrite",
            json!({"headers": {"X-A": "1", "X-B": 2}}),
        )
        .unwrap();
        let mut resp = upstream(200, &[("x-a", "0")]);
        p.on_response(&request("GET", "/", &[]), &mut resp);
        assert_eq!(resp.headers.get("x-a").unwrap(), "1");
        assert_eq!(resp.headers.get("x-b").unwrap(), "2");
    }

    #[test]
    fn a_new_body_replaces_the_upstream_body_and_its_length() {
        let p = build("response-rewrite", json!({"body": "{\"ok\":true}\n"})).unwrap();
        assert!(p.rewrites_response_body());
        let req = request("GET", "/", &[]);
        let mut resp = upstream(
            200,
            &[
                ("content-length", "3"),
                ("etag", "\"x\""),
                ("content-encoding", "gzip"),
            ],
        );
        p.on_response(&req, &mut resp);
        for gone in ["content-length", "etag", "content-encoding"] {
            assert!(resp.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(
            &p.on_response_body(&req, Bytes::from_static(b"old"))[..],
            b"{\"ok\":true}\n"
        );
    }

    #[test]
    fn a_base64_body_is_decoded() {
        let p = build(
            "response-rewrite",
            json!({"body": "aGVsbG8=", "body_base64": true}),
        )
        .unwrap();
        let req = request("GET", "/", &[]);
        assert_eq!(&p.on_response_body(&req, Bytes::new())[..], b"hello");
    }

    #[test]
    fn filters_replace_once_or_globally_with_captures() {
        let p = build(
            "response-rewrite",
            json!({"filters": [
                {"regex": "(\\w+)@example\\.com", "replace": "$1@redacted", "scope": "global"},
                {"regex": "SECRET", "replace": "***", "options": "ijo"}
            ]}),
        )
        .unwrap();
        let mut req = request("GET", "/", &[("accept-encoding", "gzip")]);
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert!(req.head.headers.get("accept-encoding").is_none());
        let out = p.on_response_body(
            &req,
            Bytes::from_static(b"a@example.com b@example.com secret Secret"),
        );
        assert_eq!(&out[..], b"a@redacted b@redacted *** Secret");
    }

    #[test]
    fn vars_decide_whether_anything_is_rewritten() {
        let p = build(
            "response-rewrite",
            json!({"vars": [["status", "==", 500]], "status_code": 503, "headers": {"X-Masked": "1"}}),
        )
        .unwrap();
        let req = request("GET", "/", &[]);
        let mut ok = upstream(200, &[]);
        p.on_response(&req, &mut ok);
        assert_eq!(ok.status.as_u16(), 200);
        assert!(ok.headers.get("x-masked").is_none());
        let mut failed = upstream(500, &[]);
        p.on_response(&req, &mut failed);
        assert_eq!(failed.status.as_u16(), 503);
        assert_eq!(failed.headers.get("x-masked").unwrap(), "1");
    }

    #[test]
    fn request_vars_guard_the_body_rewrite_too() {
        let p = build(
            "response-rewrite",
            json!({"vars": [["arg_mask", "==", "1"]], "body": "masked"}),
        )
        .unwrap();
        let masked = request("GET", "/?mask=1", &[]);
        let plain = request("GET", "/", &[]);
        assert_eq!(
            &p.on_response_body(&masked, Bytes::from_static(b"x"))[..],
            b"masked"
        );
        assert_eq!(
            &p.on_response_body(&plain, Bytes::from_static(b"x"))[..],
            b"x"
        );
        let mut resp = upstream(200, &[("content-length", "1")]);
        p.on_response(&plain, &mut resp);
        assert_eq!(resp.headers.get("content-length").unwrap(), "1");
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build("response-rewrite", conf).err().unwrap();
        assert_eq!(
            err(json!({"status_code": 199})).field,
            "response-rewrite.status_code"
        );
        assert_eq!(
            err(json!({"body": "x", "filters": [{"regex": "a", "replace": "b"}]})).field,
            "response-rewrite.filters"
        );
        assert_eq!(
            err(json!({"body": "!!!", "body_base64": true})).field,
            "response-rewrite.body"
        );
        assert_eq!(
            err(
                json!({"filters": [{"regex": "a", "replace": "b"}, {"regex": "(", "replace": ""}]})
            )
            .field,
            "response-rewrite.filters[1].regex"
        );
        assert_eq!(
            err(json!({"filters": [{"regex": "a", "replace": "b", "scope": "all"}]})).field,
            "response-rewrite.filters[0].scope"
        );
        assert!(err(json!({"filters": [{"regex": "a"}]}))
            .message
            .contains("replace"));
        assert_eq!(
            err(json!({"vars": [["arg_a", "bogus-op", "1"]]})).field,
            "response-rewrite.vars[0][1]"
        );
        assert_eq!(
            err(json!({"vars": [["status", "==", 200]], "body": "x"})).field,
            "response-rewrite.vars"
        );
        assert_eq!(
            err(json!({"headers": {"add": ["no colon"]}})).field,
            "response-rewrite.headers.add[0]"
        );
        assert_eq!(
            err(json!({"headers": {"set": {"X": []}}})).field,
            "response-rewrite.headers.set.X"
        );
    }
}
