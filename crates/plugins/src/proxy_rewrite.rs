//! proxy-rewrite: change what goes upstream — the uri (`uri` with variables,
//! or `regex_uri` pairs, first match wins), the method, the `Host`, the
//! scheme, and request headers (`add` / `set` / `remove`, or APISIX's older
//! flat map, which means `set`). APISIX's plugin of the same name.
//!
//! This module also holds the small pieces the rewriting plugins share:
//! [`Template`] (`$var`, `${var ?? default}`, `$1`), [`Replacement`] (the
//! `$1` / `${1}` / `$$` language of `ngx.re.sub`), [`HeaderOps`] and the uri
//! encoders.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use portcullis_core::{ConfigError, Flow, Phase, Plugin, Rejection, RequestState};
use portcullis_router::expr::VarLookup;
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "proxy-rewrite",
    phase: Phase::BeforeProxy,
    priority: 1008,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

/// The scheme proxy-rewrite asks the proxy to use towards the upstream
/// (`scheme: https`). Put in the request's extensions; the proxy reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamScheme(pub &'static str);

/// The `Host` proxy-rewrite set (`host`). It is also written into the
/// request's `Host` header; this marker tells the proxy that it wins over the
/// upstream's `pass_host`, as APISIX's `upstream_host` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHost(pub HeaderValue);

/// The methods APISIX's schema allows.
const METHODS: [&str; 14] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK",
    "UNLOCK", "PATCH", "TRACE",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    uri: Option<String>,
    method: Option<String>,
    regex_uri: Option<Vec<String>>,
    host: Option<String>,
    scheme: Option<String>,
    headers: Option<Value>,
    #[serde(default)]
    use_real_request_uri_unsafe: bool,
}

fn schema() -> Value {
    let header_value = json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
    let multi_value = json!({"oneOf": [
        {"type": "string"}, {"type": "number"},
        {"type": "array", "minItems": 1, "items": {"oneOf": [{"type": "string"}, {"type": "number"}]}}
    ]});
    json!({
        "type": "object",
        "properties": {
            "uri": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^\\/.*"},
            "method": {"type": "string", "enum": METHODS},
            "regex_uri": {"type": "array", "minItems": 2, "items": {"type": "string"}},
            "host": {"type": "string", "pattern": "^[0-9a-zA-Z-.]+(:\\d{1,5})?$"},
            "scheme": {"type": "string", "enum": ["http", "https"]},
            "headers": {"oneOf": [
                {
                    "type": "object", "minProperties": 1, "additionalProperties": false,
                    "properties": {
                        "add": {"type": "object", "minProperties": 1,
                                "patternProperties": {"^[^:]+$": multi_value}},
                        "set": {"type": "object", "minProperties": 1,
                                "patternProperties": {"^[^:]+$": multi_value}},
                        "remove": {"type": "array", "minItems": 1,
                                   "items": {"type": "string", "pattern": "^[^:]+$"}}
                    }
                },
                {"type": "object", "minProperties": 1,
                 "patternProperties": {"^[^:]+$": header_value}}
            ]},
            "use_real_request_uri_unsafe": {"type": "boolean", "default": false}
        },
        "minProperties": 1,
        "additionalProperties": false
    })
}

struct ProxyRewrite {
    uri: Option<Template>,
    regex_uri: Vec<(Regex, Replacement)>,
    method: Option<Method>,
    host: Option<HeaderValue>,
    scheme: Option<&'static str>,
    headers: Option<HeaderOps>,
    unsafe_uri: bool,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    if conf.as_object().is_some_and(|m| m.is_empty()) {
        return Err(ConfigError::new(
            "",
            "expect object to have at least 1 properties",
        ));
    }
    let conf: Conf = parse_conf(conf)?;
    let uri = match &conf.uri {
        None => None,
        Some(u) if u.is_empty() || u.len() > 4096 => {
            return Err(ConfigError::new(
                "uri",
                "must be between 1 and 4096 characters",
            ))
        }
        Some(u) if !u.starts_with('/') => return Err(ConfigError::new("uri", "must start with /")),
        Some(u) => Some(Template::parse(u)),
    };
    let mut regex_uri = Vec::new();
    if let Some(pairs) = &conf.regex_uri {
        if pairs.len() < 2 || pairs.len() % 2 != 0 {
            return Err(ConfigError::new(
                "regex_uri",
                "The length of regex_uri should be an even number",
            ));
        }
        for (i, pair) in pairs.chunks(2).enumerate() {
            let re = compile_regex(&pair[0])
                .map_err(|e| ConfigError::new(format!("regex_uri[{}]", 2 * i), e))?;
            let rep = Replacement::parse(&pair[1])
                .map_err(|e| ConfigError::new(format!("regex_uri[{}]", 2 * i + 1), e))?;
            regex_uri.push((re, rep));
        }
    }
    let method = match &conf.method {
        None => None,
        Some(m) if METHODS.contains(&m.as_str()) => Some(
            Method::from_bytes(m.as_bytes())
                .map_err(|_| ConfigError::new("method", "not a valid method"))?,
        ),
        Some(m) => {
            return Err(ConfigError::new(
                "method",
                format!("\"{m}\" is not one of {}", METHODS.join(", ")),
            ))
        }
    };
    let host = match &conf.host {
        None => None,
        Some(h) => {
            if !valid_host(h) {
                return Err(ConfigError::new(
                    "host",
                    format!("\"{h}\" is not a host name with an optional port"),
                ));
            }
            Some(HeaderValue::from_str(h).map_err(|_| ConfigError::new("host", "invalid host"))?)
        }
    };
    let scheme = match conf.scheme.as_deref() {
        None => None,
        Some("http") => Some("http"),
        Some("https") => Some("https"),
        Some(other) => {
            return Err(ConfigError::new(
                "scheme",
                format!("\"{other}\" is not one of http, https"),
            ))
        }
    };
    let headers = match &conf.headers {
        None => None,
        Some(h) => Some(HeaderOps::parse(h, AddForm::Map).map_err(|e| e.under("headers"))?),
    };
    Ok(Arc::new(ProxyRewrite {
        uri,
        regex_uri,
        method,
        host,
        scheme,
        headers,
        unsafe_uri: conf.use_real_request_uri_unsafe,
    }))
}

/// `^[0-9a-zA-Z-.]+(:\d{1,5})?$`, as APISIX's schema says.
fn valid_host(h: &str) -> bool {
    let (name, port) = match h.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

impl ProxyRewrite {
    /// The new path and query, and the captures of the `regex_uri` pair that
    /// matched (for `$1` in header values). `None`: the uri stays as it is.
    fn new_uri(&self, req: &RequestState) -> (Option<String>, Vec<Option<String>>) {
        let original_query = req.query();
        let request_uri = req
            .head
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        // APISIX's `use_real_request_uri_unsafe` starts from the request uri
        // as the client sent it, query included, and encodes nothing.
        let base: &str = if self.unsafe_uri {
            request_uri
        } else {
            req.path()
        };
        let mut captures = Vec::new();
        let rewritten = if let Some(t) = &self.uri {
            // A `?` coming from a variable must not start a query.
            let mut out = t.render(req, &[], true);
            if self.unsafe_uri {
                if let Some(q) = original_query {
                    out.push(if out.contains('?') { '&' } else { '?' });
                    out.push_str(q);
                }
            }
            Some(out)
        } else {
            self.regex_uri.iter().find_map(|(re, rep)| {
                let caps = re.captures(base)?;
                captures = caps
                    .iter()
                    .map(|m| m.map(|m| m.as_str().to_string()))
                    .collect();
                Some(rep.substitute(base, &caps))
            })
        };
        let Some(rewritten) = rewritten else {
            if self.unsafe_uri && (self.uri.is_some() || !self.regex_uri.is_empty()) {
                return (Some(request_uri.to_string()), captures);
            }
            return (None, captures);
        };
        if self.unsafe_uri {
            return (Some(encode_unsafe(&rewritten)), captures);
        }
        let mut out = match rewritten.split_once('?') {
            Some((path, query)) => {
                let mut s = encode_path(path);
                s.push('?');
                s.push_str(&encode_query(query));
                s
            }
            None => encode_path(&rewritten),
        };
        if let Some(q) = original_query {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(q);
        }
        (Some(out), captures)
    }
}

impl Plugin for ProxyRewrite {
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
        // Everything is computed against the request as it arrived at this
        // plugin, then applied.
        let (new_uri, captures) = self.new_uri(req);
        let edits = self
            .headers
            .as_ref()
            .map(|ops| ops.edits(req, &captures))
            .unwrap_or_default();

        if let Some(new_uri) = new_uri {
            let mut parts = std::mem::take(&mut req.head.uri).into_parts();
            let original = parts.path_and_query.clone();
            match PathAndQuery::from_maybe_shared(new_uri) {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => {
                    parts.path_and_query = original;
                    req.head.uri = http::Uri::from_parts(parts).unwrap_or_default();
                    return Flow::Respond(Rejection::error_msg(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "failed to rewrite the uri",
                    ));
                }
            }
            match http::Uri::from_parts(parts) {
                Ok(uri) => req.head.uri = uri,
                Err(_) => {
                    return Flow::Respond(Rejection::error_msg(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "failed to rewrite the uri",
                    ))
                }
            }
        }
        if let Some(host) = &self.host {
            req.head.headers.insert(http::header::HOST, host.clone());
            req.head.extensions.insert(UpstreamHost(host.clone()));
        }
        if let Some(scheme) = self.scheme {
            req.head.extensions.insert(UpstreamScheme(scheme));
        }
        apply_edits(&mut req.head.headers, edits);
        if let Some(m) = &self.method {
            req.head.method = m.clone();
        }
        Flow::Continue
    }
}

/// Compile a regular expression from a config, bounded in size.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(portcullis_router::expr::REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression \"{pattern}\": {e}"))
}

// ---------------------------------------------------------------------------
// Templates: `$var`, `${var}`, `${var ?? default}`, `$1`, `\$`.

/// A string with variable references, resolved per request: APISIX's
/// `core.utils.resolve_var` plus the `$1` captures proxy-rewrite offers in
/// header values. A missing variable is the empty string. `\$` is a literal
/// `$`.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Var {
        name: String,
        default: Option<String>,
    },
    Capture(usize),
}

impl Template {
    pub(crate) fn parse(s: &str) -> Template {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < s.len() {
            let c = bytes[i];
            if c == b'\\' && bytes.get(i + 1) == Some(&b'$') {
                lit.push('$');
                i += 2;
                continue;
            }
            if c != b'$' {
                let ch = s[i..].chars().next().unwrap_or_default();
                lit.push(ch);
                i += ch.len_utf8();
                continue;
            }
            let rest = &s[i + 1..];
            if let Some(inner) = rest.strip_prefix('{') {
                if let Some(end) = inner.find('}') {
                    let body = inner[..end].trim();
                    let (name, default) = match body.split_once("??") {
                        Some((n, d)) => (n.trim(), Some(d.trim().to_string())),
                        None => (body, None),
                    };
                    if !name.is_empty() {
                        flush(&mut lit, &mut parts);
                        parts.push(var_part(name, default));
                        i += 1 + 1 + end + 1;
                        continue;
                    }
                }
            } else {
                let run = if rest.starts_with(|c: char| c.is_ascii_digit()) {
                    rest.bytes().take_while(u8::is_ascii_digit).count()
                } else {
                    rest.bytes()
                        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
                        .count()
                };
                if run > 0 {
                    flush(&mut lit, &mut parts);
                    parts.push(var_part(&rest[..run], None));
                    i += 1 + run;
                    continue;
                }
            }
            lit.push('$');
            i += 1;
        }
        flush(&mut lit, &mut parts);
        Template { parts }
    }

    /// Whether the template has no references.
    pub(crate) fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Resolve against the request's variables and the captures of a
    /// `regex_uri` match. `escape_query` writes a `?` inside a variable's
    /// value as `%3F`, so that it cannot start a query (APISIX does the same
    /// for proxy-rewrite's `uri`).
    pub(crate) fn render(
        &self,
        vars: &dyn VarLookup,
        captures: &[Option<String>],
        escape_query: bool,
    ) -> String {
        let mut out = String::new();
        for part in &self.parts {
            let value: Cow<'_, str> = match part {
                Part::Lit(s) => {
                    out.push_str(s);
                    continue;
                }
                Part::Capture(n) => Cow::Borrowed(
                    captures
                        .get(*n)
                        .and_then(|c| c.as_deref())
                        .unwrap_or_default(),
                ),
                Part::Var { name, default } => match vars.var(name) {
                    Some(v) => v,
                    None => Cow::Borrowed(default.as_deref().unwrap_or_default()),
                },
            };
            if escape_query {
                out.push_str(&value.replace('?', "%3F"));
            } else {
                out.push_str(&value);
            }
        }
        out
    }
}

fn flush(lit: &mut String, parts: &mut Vec<Part>) {
    if !lit.is_empty() {
        parts.push(Part::Lit(std::mem::take(lit)));
    }
}

fn var_part(name: &str, default: Option<String>) -> Part {
    match name.parse::<usize>() {
        Ok(n) if name.bytes().all(|b| b.is_ascii_digit()) => Part::Capture(n),
        _ => Part::Var {
            name: name.to_string(),
            default,
        },
    }
}

// ---------------------------------------------------------------------------
// Replacements: the template language of `ngx.re.sub`.

/// The replacement of a regex substitution: `$0`..`$9`, `${12}` name capture
/// groups, `$$` is a literal `$`; anything else after `$` is refused, as
/// `ngx.re.sub` refuses it.
#[derive(Debug, Clone)]
pub(crate) struct Replacement {
    parts: Vec<RepPart>,
}

#[derive(Debug, Clone)]
enum RepPart {
    Lit(String),
    Group(usize),
}

impl Replacement {
    pub(crate) fn parse(s: &str) -> Result<Replacement, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(r) = after.strip_prefix('$') {
                lit.push('$');
                rest = r;
                continue;
            }
            let (digits, consumed) = if let Some(inner) = after.strip_prefix('{') {
                match inner.find('}') {
                    Some(end) => (&inner[..end], end + 2),
                    None => return Err(format!("invalid capturing variable name in \"{s}\"")),
                }
            } else {
                let n = after.bytes().take_while(u8::is_ascii_digit).count();
                (&after[..n], n)
            };
            let group = digits
                .parse::<usize>()
                .ok()
                .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("invalid capturing variable name in \"{s}\""))?;
            if !lit.is_empty() {
                parts.push(RepPart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(RepPart::Group(group));
            rest = &after[consumed..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(RepPart::Lit(lit));
        }
        Ok(Replacement { parts })
    }

    fn expand_into(&self, caps: &regex::Captures<'_>, out: &mut String) {
        for p in &self.parts {
            match p {
                RepPart::Lit(s) => out.push_str(s),
                RepPart::Group(n) => out.push_str(caps.get(*n).map_or("", |m| m.as_str())),
            }
        }
    }

    pub(crate) fn expand_bytes_into(&self, caps: &regex::bytes::Captures<'_>, out: &mut Vec<u8>) {
        for p in &self.parts {
            match p {
                RepPart::Lit(s) => out.extend_from_slice(s.as_bytes()),
                RepPart::Group(n) => {
                    out.extend_from_slice(caps.get(*n).map_or(&b""[..], |m| m.as_bytes()))
                }
            }
        }
    }

    /// `ngx.re.sub`: replace the first match (whose captures are `caps`) in
    /// `haystack`.
    pub(crate) fn substitute(&self, haystack: &str, caps: &regex::Captures<'_>) -> String {
        let whole = caps.get(0).map_or(0..0, |m| m.range());
        let mut out = String::with_capacity(haystack.len());
        out.push_str(&haystack[..whole.start]);
        self.expand_into(caps, &mut out);
        out.push_str(&haystack[whole.end..]);
        out
    }
}

// ---------------------------------------------------------------------------
// Header operations.

/// How `add` is written: proxy-rewrite takes a map (`{"X-A": "v"}`),
/// response-rewrite a list of lines (`["X-A: v"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddForm {
    Map,
    Lines,
}

/// `headers` of proxy-rewrite and response-rewrite: `add`, then `set`, then
/// `remove` (the order APISIX's code applies them in). A map without those
/// keys is APISIX's older form and means `set`.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderOps {
    add: Vec<(HeaderName, Vec<Template>)>,
    set: Vec<(HeaderName, Vec<Template>)>,
    remove: Vec<HeaderName>,
}

/// One header change, resolved for one request.
pub(crate) enum HeaderEdit {
    Add(HeaderName, HeaderValue),
    Set(HeaderName, Vec<HeaderValue>),
    Remove(HeaderName),
}

impl HeaderOps {
    /// Errors name the field relative to `headers`.
    pub(crate) fn parse(v: &Value, add_form: AddForm) -> Result<HeaderOps, ConfigError> {
        let Value::Object(map) = v else {
            return Err(ConfigError::new("", "expected an object"));
        };
        if map.is_empty() {
            return Err(ConfigError::new(
                "",
                "expect object to have at least 1 properties",
            ));
        }
        let is_new_form = ["add", "set", "remove"]
            .iter()
            .any(|k| map.get(*k).is_some_and(|v| v.is_object() || v.is_array()));
        let mut ops = HeaderOps::default();
        if !is_new_form {
            ops.set = header_map(v, false)?;
            return Ok(ops);
        }
        for (key, value) in map {
            match key.as_str() {
                "add" => {
                    ops.add = match add_form {
                        AddForm::Map => header_map(value, true),
                        AddForm::Lines => header_lines(value),
                    }
                    .map_err(|e| e.under("add"))?
                }
                "set" => {
                    ops.set =
                        header_map(value, add_form == AddForm::Map).map_err(|e| e.under("set"))?
                }
                "remove" => {
                    let Value::Array(names) = value else {
                        return Err(ConfigError::new(
                            "remove",
                            "expected an array of header names",
                        ));
                    };
                    if names.is_empty() {
                        return Err(ConfigError::new(
                            "remove",
                            "expect array to have at least 1 items",
                        ));
                    }
                    for (i, n) in names.iter().enumerate() {
                        let name = n.as_str().ok_or_else(|| {
                            ConfigError::new(format!("remove[{i}]"), "expected a string")
                        })?;
                        ops.remove.push(
                            header_name(name)
                                .map_err(|e| ConfigError::new(format!("remove[{i}]"), e))?,
                        );
                    }
                }
                other => {
                    return Err(ConfigError::new(
                        other,
                        "unknown field, expected one of add, set, remove",
                    ))
                }
            }
        }
        Ok(ops)
    }

    /// Resolve every value for this request.
    pub(crate) fn edits(
        &self,
        vars: &dyn VarLookup,
        captures: &[Option<String>],
    ) -> Vec<HeaderEdit> {
        let mut edits = Vec::with_capacity(self.add.len() + self.set.len() + self.remove.len());
        let render = |t: &Template| HeaderValue::from_str(&t.render(vars, captures, false)).ok();
        for (name, values) in &self.add {
            for t in values {
                // A value that resolves to something a header cannot hold
                // (a control character from a decoded query argument) is
                // dropped rather than sent.
                if let Some(v) = render(t) {
                    edits.push(HeaderEdit::Add(name.clone(), v));
                }
            }
        }
        for (name, values) in &self.set {
            let vals: Vec<_> = values.iter().filter_map(render).collect();
            if !vals.is_empty() {
                edits.push(HeaderEdit::Set(name.clone(), vals));
            }
        }
        for name in &self.remove {
            edits.push(HeaderEdit::Remove(name.clone()));
        }
        edits
    }
}

pub(crate) fn apply_edits(headers: &mut HeaderMap, edits: Vec<HeaderEdit>) {
    for e in edits {
        match e {
            HeaderEdit::Add(n, v) => {
                headers.append(n, v);
            }
            HeaderEdit::Set(n, vals) => {
                let mut vals = vals.into_iter();
                if let Some(first) = vals.next() {
                    headers.insert(n.clone(), first);
                }
                for v in vals {
                    headers.append(n.clone(), v);
                }
            }
            HeaderEdit::Remove(n) => {
                headers.remove(n);
            }
        }
    }
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    if name.is_empty() {
        return Err("invalid field length in header".into());
    }
    if name.contains(':') {
        return Err(format!("\"{name}\" must not contain ':'"));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid field character in header \"{name}\""))
}

/// A header value: a string or a number.
fn header_template(v: &Value) -> Result<Template, String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err("invalid type as header value: expected a string or a number".into()),
    };
    let t = Template::parse(&s);
    if let Some(lit) = t.as_literal() {
        HeaderValue::from_str(lit).map_err(|_| "invalid value character in header".to_string())?;
    }
    Ok(t)
}

/// `{"Name": value}`; with `multi`, a value may be an array of values.
fn header_map(v: &Value, multi: bool) -> Result<Vec<(HeaderName, Vec<Template>)>, ConfigError> {
    let Value::Object(map) = v else {
        return Err(ConfigError::new("", "expected an object"));
    };
    if map.is_empty() {
        return Err(ConfigError::new(
            "",
            "expect object to have at least 1 properties",
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let hn = header_name(name).map_err(|e| ConfigError::new(name.as_str(), e))?;
        let templates = match value {
            Value::Array(items) if multi => {
                if items.is_empty() {
                    return Err(ConfigError::new(
                        name.as_str(),
                        "expect array to have at least 1 items",
                    ));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        header_template(item)
                            .map_err(|e| ConfigError::new(format!("{name}[{i}]"), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            other => vec![header_template(other).map_err(|e| ConfigError::new(name.as_str(), e))?],
        };
        out.push((hn, templates));
    }
    Ok(out)
}

/// `["Name: value", ...]` (response-rewrite's `add`).
fn header_lines(v: &Value) -> Result<Vec<(HeaderName, Vec<Template>)>, ConfigError> {
    let Value::Array(lines) = v else {
        return Err(ConfigError::new(
            "",
            "expected an array of \"Name: value\" strings",
        ));
    };
    if lines.is_empty() {
        return Err(ConfigError::new(
            "",
            "expect array to have at least 1 items",
        ));
    }
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let field = format!("[{i}]");
        let line = line
            .as_str()
            .ok_or_else(|| ConfigError::new(field.as_str(), "expected a string"))?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ConfigError::new(field.as_str(), "expected \"Name: value\""))?;
        let hn = header_name(name.trim()).map_err(|e| ConfigError::new(field.as_str(), e))?;
        let t = header_template(&Value::String(value.trim().to_string()))
            .map_err(|e| ConfigError::new(field.as_str(), e))?;
        out.push((hn, vec![t]));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Uri encoding.

/// Percent-encode what may not stand in a uri path. `%` is kept: the path
/// portcullis sees is the raw one, so escapes in it are already escapes.
pub(crate) fn encode_path(s: &str) -> String {
    encode(s, |b| {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)
    })
}

/// Percent-encode what may not stand in a query; its `?`, `=`, `&` stay.
pub(crate) fn encode_query(s: &str) -> String {
    encode(s, |b| {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
    })
}

/// `use_real_request_uri_unsafe`: only what a request line cannot carry at
/// all is encoded.
fn encode_unsafe(s: &str) -> String {
    encode(s, |b| b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b))
}

fn encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    if s.bytes().all(&keep) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;

    /// Build a plugin through the registry, as the snapshot does.
    pub(crate) fn build(name: &str, conf: Value) -> Result<Arc<dyn Plugin>, ConfigError> {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        crate::registry::build_plugin(name, &conf, &ctx).map(|p| p.expect("not disabled"))
    }

    pub(crate) fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestState {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080)
    }

    fn run(conf: Value, req: &mut RequestState) {
        let p = build("proxy-rewrite", conf).unwrap();
        assert!(matches!(p.on_request(req), Flow::Continue));
    }

    fn path_and_query(req: &RequestState) -> &str {
        req.head.uri.path_and_query().unwrap().as_str()
    }

    #[test]
    fn uri_replaces_the_path_and_keeps_the_query() {
        let mut req = request("GET", "/old/path?a=1&b=2", &[]);
        run(json!({"uri": "/new"}), &mut req);
        assert_eq!(path_and_query(&req), "/new?a=1&b=2");
    }

    #[test]
    fn uri_with_its_own_query_merges_the_original_one() {
        let mut req = request("GET", "/old?a=1", &[]);
        run(json!({"uri": "/new?x=y"}), &mut req);
        assert_eq!(path_and_query(&req), "/new?x=y&a=1");
    }

    #[test]
    fn uri_resolves_uri_arg_and_header_variables() {
        let mut req = request("GET", "/v1/users?id=42", &[("x-tenant", "acme")]);
        run(
            json!({"uri": "/t/$http_x_tenant/${arg_id}$uri/${arg_missing ?? none}"}),
            &mut req,
        );
        assert_eq!(path_and_query(&req), "/t/acme/42/v1/users/none?id=42");
    }

    #[test]
    fn a_question_mark_from_a_variable_does_not_start_a_query() {
        let mut req = request("GET", "/a?q=x%3Fy", &[]);
        run(json!({"uri": "/b/$arg_q"}), &mut req);
        assert_eq!(path_and_query(&req), "/b/x%3Fy?q=x%3Fy");
    }

    #[test]
    fn variable_values_that_a_path_cannot_hold_are_percent_encoded() {
        let mut req = request("GET", "/a?name=j%20son", &[]);
        run(json!({"uri": "/b/$arg_name"}), &mut req);
        assert_eq!(req.head.uri.path(), "/b/j%20son");
    }

    #[test]
    fn regex_uri_uses_the_first_matching_pair_and_its_captures() {
        let conf = json!({"regex_uri": [
            "^/iresty/(.*)/(.*)", "/$1-$2",
            "^/theothers/.*", "/theothers"
        ]});
        let mut req = request("GET", "/iresty/hello/world?k=v", &[]);
        run(conf.clone(), &mut req);
        assert_eq!(path_and_query(&req), "/hello-world?k=v");

        let mut req = request("GET", "/theothers/a/b", &[]);
        run(conf.clone(), &mut req);
        assert_eq!(path_and_query(&req), "/theothers");

        let mut req = request("GET", "/unmatched", &[]);
        run(conf, &mut req);
        assert_eq!(path_and_query(&req), "/unmatched");
    }

    #[test]
    fn regex_uri_replaces_only_the_matched_part() {
        let mut req = request("GET", "/api/v1/items", &[]);
        run(json!({"regex_uri": ["/v1/", "/v2/"]}), &mut req);
        assert_eq!(req.head.uri.path(), "/api/v2/items");
    }

    #[test]
    fn header_values_can_use_regex_uri_captures_and_variables() {
        let mut req = request("GET", "/user/42/orders?x=1", &[]);
        run(
            json!({
                "regex_uri": ["^/user/(\\d+)/(.*)", "/$2"],
                "headers": {"set": {"X-User": "$1", "X-Path": "$uri", "X-Arg": "$arg_x"}}
            }),
            &mut req,
        );
        assert_eq!(req.head.uri.path(), "/orders");
        assert_eq!(req.header_str("x-user"), Some("42"));
        assert_eq!(req.header_str("x-path"), Some("/user/42/orders"));
        assert_eq!(req.header_str("x-arg"), Some("1"));
    }

    #[test]
    fn headers_add_appends_set_replaces_and_remove_deletes() {
        let mut req = request(
            "GET",
            "/",
            &[("x-a", "old"), ("x-b", "old"), ("x-c", "gone")],
        );
        run(
            json!({"headers": {
                "add": {"X-A": "new", "X-Multi": ["1", 2]},
                "set": {"X-B": "new"},
                "remove": ["X-C"]
            }}),
            &mut req,
        );
        let all = |n: &str| -> Vec<_> {
            req.head
                .headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(all("x-a"), ["old", "new"]);
        assert_eq!(all("x-multi"), ["1", "2"]);
        assert_eq!(all("x-b"), ["new"]);
        assert!(all("x-c").is_empty());
    }

    #[test]
    fn the_flat_headers_form_sets_headers() {
        let mut req = request("GET", "/", &[("x-api-version", "v1")]);
        run(
            json!({"headers": {"X-Api-Version": "v2", "X-Num": 3}}),
            &mut req,
        );
        assert_eq!(req.header_str("x-api-version"), Some("v2"));
        assert_eq!(req.header_str("x-num"), Some("3"));
    }

    #[test]
    fn method_host_and_scheme_are_rewritten_for_the_upstream() {
        let mut req = request("GET", "/a", &[("host", "public.example.com")]);
        run(
            json!({"method": "POST", "host": "internal.svc:8080", "scheme": "https"}),
            &mut req,
        );
        assert_eq!(req.head.method, Method::POST);
        assert_eq!(req.header_str("host"), Some("internal.svc:8080"));
        assert_eq!(
            req.head.extensions.get::<UpstreamScheme>(),
            Some(&UpstreamScheme("https"))
        );
        assert!(req.head.extensions.get::<UpstreamHost>().is_some());
        assert_eq!(req.head.uri.path(), "/a");
    }

    #[test]
    fn a_full_form_uri_keeps_its_scheme_and_authority() {
        let mut req = request("GET", "https://api.example.com/a?b=1", &[]);
        run(json!({"uri": "/z"}), &mut req);
        assert_eq!(req.head.uri.to_string(), "https://api.example.com/z?b=1");
    }

    #[test]
    fn the_unsafe_mode_rewrites_from_the_raw_request_uri() {
        let mut req = request("GET", "/a%2Fb?x=1", &[]);
        run(
            json!({"regex_uri": ["^/a(.*)", "/z$1"], "use_real_request_uri_unsafe": true}),
            &mut req,
        );
        assert_eq!(path_and_query(&req), "/z%2Fb?x=1");
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build("proxy-rewrite", conf).err().unwrap();
        assert_eq!(err(json!({"uri": "nope"})).field, "proxy-rewrite.uri");
        assert_eq!(
            err(json!({"regex_uri": ["a"]})).field,
            "proxy-rewrite.regex_uri"
        );
        assert_eq!(
            err(json!({"regex_uri": ["/ok", "/x", "(", "/y"]})).field,
            "proxy-rewrite.regex_uri[2]"
        );
        assert_eq!(
            err(json!({"regex_uri": ["/ok", "/$x"]})).field,
            "proxy-rewrite.regex_uri[1]"
        );
        assert_eq!(
            err(json!({"method": "FETCH"})).field,
            "proxy-rewrite.method"
        );
        assert_eq!(err(json!({"host": "a b"})).field, "proxy-rewrite.host");
        assert_eq!(err(json!({"scheme": "ftp"})).field, "proxy-rewrite.scheme");
        assert_eq!(
            err(json!({"headers": {"set": {"Bad Name": "v"}}})).field,
            "proxy-rewrite.headers.set.Bad Name"
        );
        assert_eq!(
            err(json!({"headers": {"add": {"X": true}}})).field,
            "proxy-rewrite.headers.add.X"
        );
        assert_eq!(
            err(json!({"headers": {"add": {"X": "1"}, "bogus": {}}})).field,
            "proxy-rewrite.headers.bogus"
        );
        assert!(err(json!({})).message.contains("at least 1"));
        assert!(err(json!({"urii": "/x"})).message.contains("unknown field"));
    }

    #[test]
    fn templates_parse_variables_defaults_captures_and_escapes() {
        let vars: std::collections::HashMap<String, String> =
            [("a".to_string(), "A".to_string())].into();
        let t = Template::parse(r"x$a-${a}-${b ?? d}-$1-\$a-$-$");
        assert_eq!(
            t.render(&vars, &[None, Some("one".into())], false),
            "xA-A-d-one-$a-$-$"
        );
    }

    #[test]
    fn replacements_follow_ngx_re_sub() {
        let r = Replacement::parse("a$1${2}$$").unwrap();
        let re = Regex::new("(x)(y)").unwrap();
        let caps = re.captures("-xy-").unwrap();
        assert_eq!(r.substitute("-xy-", &caps), "-axy$-");
        assert!(Replacement::parse("$name").is_err());
    }
}
